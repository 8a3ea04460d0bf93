"""The controller database's migrations: a database written before them loses nothing.

The fixtures below are the DDL of the store before migrations existed, verbatim (its
``_SCHEMA`` and ``_AUTH_SCHEMA``, and the two columns its ``_upgrade`` added by ALTER
TABLE). A database of each variant is filled with rows in every table, opened with today's
store, and read back through the store's API. Pure: files in tmp_path, no processes.
"""

from __future__ import annotations

import json
import sqlite3
import warnings
from fnmatch import fnmatch
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from setuptools.config.pyprojecttoml import read_configuration
from sqlalchemy import create_engine

from fleet.db import migrate
from fleet.db.engine import sqlite_engine
from fleet.db.tables import metadata
from fleet.errors import StoreError
from fleet.records import DesiredRow, Operator
from fleet.store import SqliteFleetStore

ROOT = Path(__file__).resolve().parents[2]

# fleet/store.py before migrations: _SCHEMA, verbatim.
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
# ... its _ADDED_COLUMNS, added by _upgrade at open (absent from the oldest databases).
_ADDED_COLUMNS = """
ALTER TABLE devices ADD COLUMN telemetry_ts REAL;
ALTER TABLE telemetry ADD COLUMN ts_epoch REAL;
"""
# ... and _AUTH_SCHEMA (operators, request nonces, admission), verbatim.
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

VARIANTS = {
    "first": _SCHEMA,
    "with-columns": _SCHEMA + _ADDED_COLUMNS,
    "with-columns-and-auth": _SCHEMA + _ADDED_COLUMNS + _AUTH_SCHEMA,
}
# Revision 0004: new and empty on every migrated database.
ROLLOUT_TABLES = ["device_tags", "rollouts", "rollout_transitions"]
TABLES = [
    "devices",
    "telemetry",
    "events",
    "reported",
    "desired",
    "dead_letters",
    "operators",
    "request_nonces",
    "operator_log",
    "admissions",
]
ALICE_KEY = "ZmFrZSBwdWJsaWMga2V5IG9mIGFsaWNlLCAzMiBieXQ="


def _telemetry(device: str, seq: int) -> str:
    return json.dumps({"device_id": device, "stream": "s", "seq": seq, "ts": f"T{seq}"})


def _fill(db: sqlite3.Connection, *, auth: bool, columns: bool) -> None:
    """Rows in every table of the variant, as the store before migrations wrote them."""
    status = json.dumps({"state": "online", "agent_version": "1.2"})
    for n, device in enumerate(["pi-1", "pi-2"]):
        db.execute(
            "INSERT INTO devices (device_id, state, status_json, status_received, telemetry_json,"
            " telemetry_seq, telemetry_received, first_seen, last_seen, duplicates) "
            "VALUES (?, 'online', ?, 1.0, ?, 3, 2.0, 1.0, 2.0, ?)",
            (device, status, _telemetry(device, 3), n),
        )
        for seq in (1, 2, 3):
            db.execute(
                "INSERT INTO telemetry (device_id, stream, seq, ts, received, payload) "
                "VALUES (?, 's', ?, ?, ?, ?)",
                (device, seq, f"T{seq}", float(seq), _telemetry(device, seq)),
            )
        for event in ("boot", "link_up"):
            body = json.dumps({"event": event, "ts": "t"})
            db.execute(
                "INSERT INTO events (device_id, event, ts, received, payload) "
                "VALUES (?, ?, 't', 1.0, ?)",
                (device, event, body),
            )
        db.execute(
            "INSERT INTO reported VALUES (?, 1.0, ?)", (device, json.dumps({"models": {"m": n}}))
        )
        # pi-1 was sent 5 directives, pi-2 9: the next ones must be numbered above.
        db.execute(
            "INSERT INTO desired VALUES (?, ?, 'digits', ?, 'deploy', 1.0)",
            (device, 5 + 4 * n, str(n)),
        )
    for n in range(3):
        db.execute(
            "INSERT INTO dead_letters (topic, reason, detail, excerpt, retained, received) "
            "VALUES (?, 'schema', ?, ?, ?, ?)",
            (f"fleet/x{n}/telemetry", f"d{n}", b"\xff{" + bytes([48 + n]), n % 2, float(n)),
        )
    if columns:
        db.execute("UPDATE devices SET telemetry_ts = 3.0")
        db.execute("UPDATE telemetry SET ts_epoch = seq")
    if auth:
        db.execute("INSERT INTO operators VALUES ('alice', 'kid-a', ?, 1.0)", (ALICE_KEY,))
        db.execute("INSERT INTO request_nonces VALUES ('n-1', 9e9)")
        db.execute(
            "INSERT INTO operator_log (received, operator, method, outcome, detail) "
            "VALUES (1.0, 'alice', 'devices-accept', 'ok', 'pi-1')"
        )
        db.execute("INSERT INTO admissions VALUES ('pi-1', 'accepted', 'alice', 1.0)")


def _old_database(path: Path, variant: str) -> dict[str, int]:
    """A database as the store before migrations left it; returns its row counts."""
    db = sqlite3.connect(path)
    db.executescript(VARIANTS[variant])
    _fill(db, auth="auth" in variant, columns="columns" in variant)
    db.commit()
    counts = _counts(db)
    db.close()
    return counts


def _counts(db: sqlite3.Connection) -> dict[str, int]:
    present = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    return {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in present}


def _snapshot(path: Path) -> tuple[list[tuple[str, str]], dict[str, int], str]:
    """Schema, row counts and revision of a database file."""
    with sqlite3.connect(path) as db:
        schema = db.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall()
        version = db.execute("SELECT version_num FROM alembic_version").fetchone()[0]
        return schema, _counts(db), version


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_a_database_from_before_migrations_loses_nothing(tmp_path: Path, variant: str) -> None:
    path = tmp_path / "old.db"
    before = _old_database(path, variant)
    store = SqliteFleetStore(path)
    try:
        assert [d.device_id for d in store.list_devices()] == ["pi-1", "pi-2"]
        for n, device in enumerate(["pi-1", "pi-2"]):
            assert store.telemetry_seqs(device) == [1, 2, 3]
            detail = store.device_detail(device)
            assert detail.summary.last_seq == 3 and detail.summary.duplicates == n
            assert detail.summary.agent_version == "1.2"
            assert [e and e["event"] for e in detail.events] == ["link_up", "boot"]
            assert detail.reported == {"models": {"m": n}}
            assert detail.telemetry == json.loads(_telemetry(device, 3))
            assert store.desired_states(device) == [
                DesiredRow(counter=5 + 4 * n, model="digits", version=str(n), action="deploy")
            ]
            assert detail.desired == DesiredRow(
                counter=5 + 4 * n, model="digits", version=str(n), action="deploy"
            )
        letters = store.dead_letters(100)
        assert [(d.detail, d.excerpt, d.retained) for d in letters] == [
            ("d2", "\ufffd{2", False),
            ("d1", "\ufffd{1", True),
            ("d0", "\ufffd{0", False),
        ]
        if "auth" in variant:
            assert store.list_operators() == [
                Operator(name="alice", key_id="kid-a", public_key=ALICE_KEY, added=1.0)
            ]
            assert store.nonce_used("n-1")
            assert [(e.operator, e.outcome) for e in store.operator_log()] == [("alice", "ok")]
            assert store.admissions() == {"pi-1": "accepted"}
        else:
            assert store.list_operators() == [] and store.admissions() == {}
    finally:
        store.close()
    _, after, version = _snapshot(path)
    assert version == migrate.HEAD
    # Every table of the old database kept its rows; the new ones start where the old left.
    assert {t: after[t] for t in before} == before
    assert after["desired_counters"] == 2
    assert set(after) == {
        *TABLES,
        *ROLLOUT_TABLES,
        "desired_counters",
        "alembic_version",
        "sqlite_sequence",
    }
    assert all(after[t] == 0 for t in ROLLOUT_TABLES)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_counter_grows_past_every_old_one_per_device(tmp_path: Path, variant: str) -> None:
    """The agent refuses a counter that does not grow: after the migration, the next one of
    each device is above all it was sent, whichever model the new directive is for."""
    path = tmp_path / "old.db"
    _old_database(path, variant)
    store = SqliteFleetStore(path)
    try:
        assert store.next_desired("pi-1", model="digits", version="7", action="deploy", now=2) == 6
        assert store.next_desired("pi-1", model="words", version="1", action="deploy", now=2) == 7
        assert store.next_desired("pi-2", model="words", version="1", action="deploy", now=2) == 10
        assert store.next_desired("pi-3", model="words", version="1", action="deploy", now=2) == 1
        assert [(d.counter, d.model) for d in store.desired_states("pi-1")] == [
            (7, "words"),
            (6, "digits"),
        ]
        assert store.device_detail("pi-1").desired == DesiredRow(
            counter=7, model="words", version="1", action="deploy"
        )
    finally:
        store.close()


def test_head_names_the_newest_revision() -> None:
    assert migrate.scripts().get_current_head() == migrate.HEAD


def test_opening_a_migrated_database_again_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _old_database(path, "first")
    SqliteFleetStore(path).close()
    first = _snapshot(path)
    SqliteFleetStore(path).close()
    assert _snapshot(path) == first


@pytest.mark.parametrize("fresh_from_tables", [True, False])
def test_a_new_database_has_the_schema_of_the_tables(
    tmp_path: Path, fresh_from_tables: bool
) -> None:
    """The revisions and ``fleet.db.tables`` describe the same schema (types included), so
    creating a new database from the tables and stamping it is the same as migrating it."""
    engine = sqlite_engine(tmp_path / "new.db")
    migrate.upgrade(engine, fresh_from_tables=fresh_from_tables)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []
        assert migrate.current(connection) == migrate.HEAD
    engine.dispose()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_a_migrated_old_database_has_the_schema_of_the_tables(tmp_path: Path, variant: str) -> None:
    """Up to what SQLite treats alike: INTEGER / BIGINT (the old DDL said INTEGER), and the
    NOT NULL of a one-column primary key, which the old DDL left out (the store never
    writes a NULL key)."""
    path = tmp_path / "old.db"
    _old_database(path, variant)
    SqliteFleetStore(path).close()
    engine = create_engine(f"sqlite:///{path}")
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": False})
        diffs = [d[0] if isinstance(d, list) else d for d in compare_metadata(context, metadata)]
    engine.dispose()
    keys = {
        (table.name, column.name)
        for table in metadata.tables.values()
        if len(table.primary_key.columns) == 1
        for column in table.primary_key.columns
    }
    assert [d for d in diffs if not (d[0] == "modify_nullable" and d[2:4] in keys)] == []


def test_a_database_from_a_newer_controller_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    SqliteFleetStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(StoreError, match="9999"):
        SqliteFleetStore(path)


def test_the_wheel_ships_every_migration() -> None:
    """Alembic reads migrations/ from the installed package: pyproject's package-data names
    each file of it (setuptools' own reading of the configuration, no build)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # setuptools < 69: [tool.setuptools] is "beta"
        config = read_configuration(ROOT / "pyproject.toml")
    patterns = config["tool"]["setuptools"]["package-data"]["fleet.db"]
    package = ROOT / "fleet" / "db"
    files = [
        path.relative_to(package).as_posix()
        for path in migrate.MIGRATIONS.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    ]
    assert files and all(any(fnmatch(f, p) for p in patterns) for f in files), files


def test_revision_2_goes_back_to_one_desired_state_per_device(tmp_path: Path) -> None:
    """Downgraded, each device keeps its newest directive; upgraded again, its counter goes on."""
    path = tmp_path / "old.db"
    _old_database(path, "with-columns-and-auth")
    store = SqliteFleetStore(path)
    store.next_desired("pi-1", model="words", version="1", action="deploy", now=2)
    store.close()
    engine = sqlite_engine(path)
    with engine.begin() as connection:
        config = migrate._config()
        config.attributes["connection"] = connection
        command.downgrade(config, "0001")
    engine.dispose()
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT device_id, counter, model FROM desired ORDER BY device_id")
        assert rows.fetchall() == [("pi-1", 6, "words"), ("pi-2", 9, "digits")]
    store = SqliteFleetStore(path)
    assert store.next_desired("pi-1", model="digits", version="8", action="deploy", now=3) == 7
    store.close()
