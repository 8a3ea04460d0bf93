"""The controller's device store: presence, telemetry and events of every device, in SQLite.

``FleetStore`` is the interface the controller and CLI use; ``SqliteFleetStore`` is the
embedded default. The SQL is plain (no SQLite-only syntax beyond ``INSERT OR IGNORE`` /
upserts that PostgreSQL spells ``ON CONFLICT``), so a PostgreSQL implementation can take its
place behind the same interface.

Telemetry is keyed by (device, stream, seq): a resent message (agent restarted before the
PUBACK was recorded) is counted as a duplicate, not stored twice. ``stream`` changes only
when a device's state dir is recreated, so its seq restarting at 1 is not mistaken for
duplicates. Retention is bounded by age and by rows per device.

The newest telemetry of a device is chosen by its parsed ``ts`` (``telemetry_ts``, Unix
seconds), not by comparing text. Refused messages are kept as dead letters, the newest
``DEAD_LETTERS_KEPT`` only. A database written by an older schema is upgraded in place at
open (missing columns and tables added, rows kept). Reads are defensive: a stored row that
is not what today's ingest writes is shown as missing values, never an exception.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edge_contract import payloads
from edge_runtime.mqtt.rejections import DeadLetter
from fleet.errors import FleetError, StoreError, UnknownDeviceError
from fleet.operators import TrustedKey, key_id

DEAD_LETTERS_KEPT = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    device_id        TEXT PRIMARY KEY,
    state            TEXT,
    status_json      TEXT,
    status_received  REAL,
    telemetry_json   TEXT,
    telemetry_seq    INTEGER,
    telemetry_received REAL,
    first_seen       REAL NOT NULL,
    last_seen        REAL NOT NULL,
    duplicates       INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS telemetry (
    device_id TEXT NOT NULL,
    stream    TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    ts        TEXT NOT NULL,
    received  REAL NOT NULL,
    payload   TEXT NOT NULL,
    PRIMARY KEY (device_id, stream, seq)
);
CREATE INDEX IF NOT EXISTS telemetry_received ON telemetry (device_id, received);
CREATE TABLE IF NOT EXISTS events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL,
    event     TEXT NOT NULL,
    ts        TEXT NOT NULL,
    received  REAL NOT NULL,
    payload   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_device ON events (device_id, id);
CREATE TABLE IF NOT EXISTS reported (
    device_id TEXT PRIMARY KEY,
    received  REAL NOT NULL,
    payload   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    topic     TEXT NOT NULL,
    reason    TEXT NOT NULL,
    detail    TEXT NOT NULL,
    excerpt   BLOB NOT NULL,
    retained  INTEGER NOT NULL,
    received  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS desired (
    device_id TEXT PRIMARY KEY,
    counter   INTEGER NOT NULL,
    model     TEXT NOT NULL,
    version   TEXT NOT NULL,
    action    TEXT NOT NULL,
    updated   REAL NOT NULL
);
"""
# Columns added after the first schema: (table, column, type), added to older databases.
_ADDED_COLUMNS = (
    ("devices", "telemetry_ts", "REAL"),
    ("telemetry", "ts_epoch", "REAL"),
)

# -- operators, request nonces and device admission (fleet.operators) -------------------------
# Separate tables, not columns of ``devices``: an existing database gets them from CREATE TABLE
# IF NOT EXISTS at open, and a device with no admission row is pending.
_AUTH_SCHEMA = """
CREATE TABLE IF NOT EXISTS operators (
    name       TEXT PRIMARY KEY,
    key_id     TEXT NOT NULL UNIQUE,
    public_key TEXT NOT NULL,
    added      REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS request_nonces (
    nonce   TEXT PRIMARY KEY,
    expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS request_nonces_expires ON request_nonces (expires);
CREATE TABLE IF NOT EXISTS operator_log (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    received REAL NOT NULL,
    operator TEXT,
    method   TEXT NOT NULL,
    outcome  TEXT NOT NULL,
    detail   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS admissions (
    device_id   TEXT PRIMARY KEY,
    state       TEXT NOT NULL,
    operator    TEXT NOT NULL,
    updated     REAL NOT NULL
);
"""
_OPERATOR_LOG_ROWS = 10_000
ACCEPTED, PENDING = "accepted", "pending"


@dataclass(frozen=True)
class Retention:
    """How much history is kept per device."""

    max_age_s: float = 7 * 86400
    max_telemetry_rows: int = 10000
    max_event_rows: int = 1000


@dataclass(frozen=True)
class Inbound:
    """One validated message from a device, ready to store."""

    device_id: str
    kind: str  # "status" | "telemetry" | "events" | "reported"
    body: dict[str, Any]
    received: float


class FleetStore(Protocol):
    """What the controller needs from storage."""

    def ingest(self, batch: list[Inbound]) -> None: ...

    def list_devices(self, now: float | None = None) -> list[dict[str, Any]]: ...

    def device_detail(self, device_id: str, *, events: int = 20) -> dict[str, Any]: ...

    def telemetry_seqs(self, device_id: str) -> list[int]: ...

    def prune(self, now: float | None = None) -> int: ...

    def add_dead_letters(self, letters: list[DeadLetter]) -> None: ...

    def dead_letters(self, limit: int = 10) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...

    def next_desired(
        self, device_id: str, *, model: str, version: str, action: str, now: float
    ) -> int: ...

    # -- operators, nonces, admission --

    def add_operator(self, name: str, public_key: str, *, now: float) -> str: ...

    def remove_operator(self, name: str) -> None: ...

    def list_operators(self) -> list[dict[str, Any]]: ...

    def trusted_keys(self) -> dict[str, TrustedKey]: ...

    def nonce_used(self, nonce: str) -> bool: ...

    def remember_nonce(self, nonce: str, *, expires: float, now: float) -> bool: ...

    def log_request(
        self, *, operator: str | None, method: str, outcome: str, detail: str, now: float
    ) -> None: ...

    def accept_device(self, device_id: str, *, operator: str, now: float) -> bool: ...

    def admission(self, device_id: str) -> str | None: ...

    def admissions(self) -> dict[str, str]: ...

    def ota_devices(self) -> set[str]: ...


class SqliteFleetStore:
    """SQLite implementation of ``FleetStore``; safe to call from several threads."""

    def __init__(self, path: Path, retention: Retention | None = None) -> None:
        self._path = path
        self._retention = retention or Retention()
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
            self._db.executescript(_AUTH_SCHEMA)
            self._upgrade()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the fleet database ({exc})", path=str(path)) from exc

    def _upgrade(self) -> None:
        """Add the columns a database made by an older version lacks; its rows stay."""
        for table, column, kind in _ADDED_COLUMNS:
            present = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                yield self._db
                self._db.execute("COMMIT")
            except BaseException as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"database error ({exc})", path=str(self._path)) from exc
                raise

    # -- writes ----------------------------------------------------------------------------

    def ingest(self, batch: list[Inbound]) -> None:
        """Store a batch of messages in one transaction."""
        with self._tx() as db:
            for item in batch:
                self._touch(db, item)
                if item.kind == "status":
                    self._status(db, item)
                elif item.kind == "telemetry":
                    self._telemetry(db, item)
                elif item.kind == "events":
                    self._event(db, item)
                elif item.kind == "reported":
                    self._reported(db, item)

    def _touch(self, db: sqlite3.Connection, item: Inbound) -> None:
        db.execute(
            "INSERT INTO devices (device_id, first_seen, last_seen) VALUES (?, ?, ?) "
            "ON CONFLICT(device_id) DO UPDATE SET last_seen = excluded.last_seen",
            (item.device_id, item.received, item.received),
        )

    def _status(self, db: sqlite3.Connection, item: Inbound) -> None:
        db.execute(
            "UPDATE devices SET state = ?, status_json = ?, status_received = ? "
            "WHERE device_id = ?",
            (str(item.body.get("state")), json.dumps(item.body), item.received, item.device_id),
        )

    def _telemetry(self, db: sqlite3.Connection, item: Inbound) -> None:
        body = item.body
        seq = int(body["seq"])
        if not 0 <= seq <= payloads.INT_MAX:
            raise StoreError(f"telemetry seq {seq} outside 0..2^63-1", path=str(self._path))
        ts_epoch = _epoch(body.get("ts"))
        cursor = db.execute(
            "INSERT OR IGNORE INTO telemetry "
            "(device_id, stream, seq, ts, ts_epoch, received, payload) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                item.device_id,
                str(body.get("stream", "")),
                seq,
                str(body["ts"]),
                ts_epoch,
                item.received,
                json.dumps(body),
            ),
        )
        if cursor.rowcount == 0:
            db.execute(
                "UPDATE devices SET duplicates = duplicates + 1 WHERE device_id = ?",
                (item.device_id,),
            )
            return
        if ts_epoch is None:
            return  # kept in the history, never shown as the newest
        # A backlog drains oldest first, so the newest measurement is the one with the
        # latest ts, not the one that arrived last. Compared as numbers: a row stored by an
        # older version (telemetry_ts NULL) is replaced by the first parsed one.
        db.execute(
            "UPDATE devices SET telemetry_json = ?, telemetry_seq = ?, telemetry_received = ?, "
            "telemetry_ts = ? WHERE device_id = ? AND (telemetry_json IS NULL "
            "OR telemetry_ts IS NULL OR telemetry_ts <= ?)",
            (json.dumps(body), seq, item.received, ts_epoch, item.device_id, ts_epoch),
        )

    def _event(self, db: sqlite3.Connection, item: Inbound) -> None:
        db.execute(
            "INSERT INTO events (device_id, event, ts, received, payload) VALUES (?, ?, ?, ?, ?)",
            (
                item.device_id,
                str(item.body.get("event")),
                str(item.body.get("ts", "")),
                item.received,
                json.dumps(item.body),
            ),
        )

    def _reported(self, db: sqlite3.Connection, item: Inbound) -> None:
        db.execute(
            "INSERT INTO reported (device_id, received, payload) VALUES (?, ?, ?) "
            "ON CONFLICT(device_id) DO UPDATE SET received = excluded.received, "
            "payload = excluded.payload",
            (item.device_id, item.received, json.dumps(item.body)),
        )

    def next_desired(
        self, device_id: str, *, model: str, version: str, action: str, now: float
    ) -> int:
        """Record a new desired state for ``device_id``; returns its counter (only grows)."""
        with self._tx() as db:
            row = db.execute(
                "SELECT counter FROM desired WHERE device_id = ?", (device_id,)
            ).fetchone()
            counter = (int(row[0]) if row else 0) + 1
            db.execute(
                "INSERT INTO desired (device_id, counter, model, version, action, updated) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(device_id) DO UPDATE SET "
                "counter = excluded.counter, model = excluded.model, "
                "version = excluded.version, action = excluded.action, updated = excluded.updated",
                (device_id, counter, model, version, action, now),
            )
        return counter

    def add_dead_letters(self, letters: list[DeadLetter]) -> None:
        """Keep refused messages, the newest ``DEAD_LETTERS_KEPT`` of them."""
        if not letters:
            return
        with self._tx() as db:
            db.executemany(
                "INSERT INTO dead_letters (topic, reason, detail, excerpt, retained, received) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(d.topic, d.reason, d.detail, d.excerpt, int(d.retained), d.at) for d in letters],
            )
            db.execute(
                "DELETE FROM dead_letters WHERE id <= (SELECT MAX(id) FROM dead_letters) - ?",
                (DEAD_LETTERS_KEPT,),
            )

    def dead_letters(self, limit: int = 10) -> list[dict[str, Any]]:
        """The newest dead letters, newest first."""
        rows = self._query(
            "SELECT topic, reason, detail, excerpt, retained, received FROM dead_letters "
            "ORDER BY id DESC LIMIT ?",
            (max(0, min(limit, DEAD_LETTERS_KEPT)),),
        )
        return [
            {
                "topic": r["topic"],
                "reason": r["reason"],
                "detail": r["detail"],
                "excerpt": bytes(r["excerpt"]).decode("utf-8", errors="replace"),
                "retained": bool(r["retained"]),
                "received": r["received"],
            }
            for r in rows
        ]

    def prune(self, now: float | None = None) -> int:
        """Apply retention; returns the number of rows removed."""
        cutoff = (now or time.time()) - self._retention.max_age_s
        keep_t, keep_e = self._retention.max_telemetry_rows, self._retention.max_event_rows
        with self._tx() as db:
            removed = db.execute("DELETE FROM telemetry WHERE received < ?", (cutoff,)).rowcount
            removed += db.execute("DELETE FROM events WHERE received < ?", (cutoff,)).rowcount
            removed += db.execute(
                "DELETE FROM telemetry WHERE rowid IN (SELECT rowid FROM (SELECT rowid, "
                "ROW_NUMBER() OVER (PARTITION BY device_id ORDER BY received DESC) AS n "
                "FROM telemetry) WHERE n > ?)",
                (keep_t,),
            ).rowcount
            removed += db.execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM (SELECT id, "
                "ROW_NUMBER() OVER (PARTITION BY device_id ORDER BY id DESC) AS n "
                "FROM events) WHERE n > ?)",
                (keep_e,),
            ).rowcount
        return int(removed)

    # -- reads -----------------------------------------------------------------------------

    def list_devices(self, now: float | None = None) -> list[dict[str, Any]]:
        """A summary row per device, sorted by id."""
        rows = self._query("SELECT * FROM devices ORDER BY device_id")
        summaries = [device_summary(row, now or time.time()) for row in rows]
        admitted = self.admissions()  # operator auth: pending until accepted
        for summary in summaries:
            summary["admission"] = admitted.get(summary["device_id"], PENDING)
        return summaries

    def device_detail(self, device_id: str, *, events: int = 20) -> dict[str, Any]:
        rows = self._query("SELECT * FROM devices WHERE device_id = ?", (device_id,))
        if not rows:
            raise UnknownDeviceError(device_id)
        row = rows[0]
        recent = self._query(
            "SELECT payload FROM events WHERE device_id = ? ORDER BY id DESC LIMIT ?",
            (device_id, events),
        )
        reported = self._query("SELECT payload FROM reported WHERE device_id = ?", (device_id,))
        desired = self._query(
            "SELECT counter, model, version, action FROM desired WHERE device_id = ?", (device_id,)
        )
        summary = device_summary(row, time.time())
        summary["admission"] = self.admission(device_id) or PENDING  # operator auth
        return {
            "summary": summary,
            "reported": _document(reported[0]["payload"]) if reported else None,
            "desired": dict(desired[0]) if desired else None,
            "status": _document(row["status_json"]),
            "telemetry": _document(row["telemetry_json"]),
            "events": [_document(r["payload"]) for r in recent],
        }

    # -- operators, request nonces and device admission (fleet.operators) -----------------

    def add_operator(self, name: str, public_key: str, *, now: float) -> str:
        """Trust ``public_key`` (base64) as ``name``; returns its key id.

        Raises:
            FleetError: the name or the key is already registered.
        """
        kid = key_id(public_key)
        with self._tx() as db:
            clash = db.execute(
                "SELECT name FROM operators WHERE name = ? OR key_id = ?", (name, kid)
            ).fetchone()
            if clash:
                raise FleetError(f"operator {clash[0]!r} already has this name or key ({kid})")
            db.execute(
                "INSERT INTO operators (name, key_id, public_key, added) VALUES (?, ?, ?, ?)",
                (name, kid, public_key, now),
            )
        return kid

    def remove_operator(self, name: str) -> None:
        """Raises ``FleetError`` when no operator has that name."""
        with self._tx() as db:
            if db.execute("DELETE FROM operators WHERE name = ?", (name,)).rowcount == 0:
                raise FleetError(f"no operator named {name!r}")

    def list_operators(self) -> list[dict[str, Any]]:
        rows = self._query("SELECT name, key_id, public_key, added FROM operators ORDER BY name")
        return [dict(row) for row in rows]

    def trusted_keys(self) -> dict[str, TrustedKey]:
        """Key id -> operator, for ``fleet.operators.verify_request``."""
        return {
            row["key_id"]: TrustedKey(row["name"], row["public_key"])
            for row in self._query("SELECT name, key_id, public_key FROM operators")
        }

    def nonce_used(self, nonce: str) -> bool:
        rows = self._query("SELECT 1 FROM request_nonces WHERE nonce = ?", (nonce,))
        return bool(rows)

    def remember_nonce(self, nonce: str, *, expires: float, now: float) -> bool:
        """Record a used nonce until ``expires``; False if it was already recorded."""
        with self._tx() as db:
            db.execute("DELETE FROM request_nonces WHERE expires < ?", (now,))
            cursor = db.execute(
                "INSERT OR IGNORE INTO request_nonces (nonce, expires) VALUES (?, ?)",
                (nonce, expires),
            )
        return cursor.rowcount == 1

    def log_request(
        self, *, operator: str | None, method: str, outcome: str, detail: str, now: float
    ) -> None:
        """Append to the bounded audit log of mutating requests (accepted and refused)."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO operator_log (received, operator, method, outcome, detail) "
                "VALUES (?, ?, ?, ?, ?)",
                (now, operator, method[:64], outcome, detail[:500]),
            )
            db.execute(
                "DELETE FROM operator_log WHERE id <= (SELECT MAX(id) FROM operator_log) - ?",
                (_OPERATOR_LOG_ROWS,),
            )

    def operator_log(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._query("SELECT * FROM operator_log ORDER BY id DESC LIMIT ?", (limit,))
        return [dict(row) for row in rows]

    def accept_device(self, device_id: str, *, operator: str, now: float) -> bool:
        """Make a known device a deploy target; False if it already was.

        Raises:
            UnknownDeviceError: the controller has never seen the device.
        """
        with self._tx() as db:
            known = db.execute("SELECT 1 FROM devices WHERE device_id = ?", (device_id,))
            if known.fetchone() is None:
                raise UnknownDeviceError(device_id)
            cursor = db.execute(
                "INSERT INTO admissions (device_id, state, operator, updated) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(device_id) DO NOTHING",
                (device_id, ACCEPTED, operator, now),
            )
        return cursor.rowcount == 1

    def admission(self, device_id: str) -> str | None:
        """accepted, pending, or None for a device never seen."""
        if not self._query("SELECT 1 FROM devices WHERE device_id = ?", (device_id,)):
            return None
        rows = self._query("SELECT state FROM admissions WHERE device_id = ?", (device_id,))
        return str(rows[0]["state"]) if rows else PENDING

    def admissions(self) -> dict[str, str]:
        """The admission state of every device that has one (others are pending)."""
        rows = self._query("SELECT device_id, state FROM admissions")
        return {row["device_id"]: row["state"] for row in rows}

    def ota_devices(self) -> set[str]:
        """Devices that publish a reported OTA state (the agent does only with OTA enabled)."""
        return {row["device_id"] for row in self._query("SELECT device_id FROM reported")}

    def telemetry_seqs(self, device_id: str) -> list[int]:
        """Stored seqs of a device in arrival order (for tests and gap reports)."""
        rows = self._query(
            "SELECT seq FROM telemetry WHERE device_id = ? ORDER BY received, seq", (device_id,)
        )
        return [int(r["seq"]) for r in rows]

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                cursor = self._db.execute(sql, params)
                cursor.row_factory = sqlite3.Row
                return list(cursor.fetchall())
            except sqlite3.Error as exc:
                raise StoreError(f"database error ({exc})", path=str(self._path)) from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()


def device_summary(row: sqlite3.Row, now: float) -> dict[str, Any]:
    """The device-list view of one device row; odd stored values read as missing."""
    telemetry = _document(row["telemetry_json"]) or {}
    status = _document(row["status_json"]) or {}
    temps = [t for t in (_section(telemetry, "temperatures_c")).values() if _is_number(t)]
    received = row["telemetry_received"]
    state = row["state"] if isinstance(row["state"], str) else None
    models = status.get("models")
    return {
        "device_id": row["device_id"],
        "online": state == "online",
        "state": state or "unknown",
        "agent_version": _text(status.get("agent_version")),
        "last_telemetry_age_s": round(now - received, 1) if _is_number(received) else None,
        "last_seq": row["telemetry_seq"] if isinstance(row["telemetry_seq"], int) else None,
        "cpu_percent": _number(_section(telemetry, "cpu").get("percent")),
        "memory_percent": _number(_section(telemetry, "memory").get("used_percent")),
        "temperature_c": max(temps) if temps else None,
        "health": _text(_section(telemetry, "health").get("status")),
        "queue_depth": _number(_section(telemetry, "queue").get("depth")),
        "models": models if isinstance(models, dict) else {},
        "duplicates": row["duplicates"],
    }


def _document(text: object) -> dict[str, Any] | None:
    """A stored JSON object, or None for anything else (NULL, not JSON, not an object)."""
    if not isinstance(text, str | bytes) or not text:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _section(document: dict[str, Any], key: str) -> dict[str, Any]:
    value = document.get(key)
    return value if isinstance(value, dict) else {}


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(value: object) -> int | float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _epoch(ts: object) -> float | None:
    """Unix seconds of an ISO 8601 ``ts``; None when it does not parse."""
    if not isinstance(ts, str):
        return None
    try:
        return payloads.from_iso(ts).timestamp()
    except (ValueError, OverflowError):
        return None
