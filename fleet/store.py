"""The controller's device store: presence, telemetry and events of every device.

``FleetStore`` is the interface the controller and CLI use; ``SqlFleetStore`` implements it on
SQLAlchemy Core, on a SQLite file (the embedded default) or a PostgreSQL server URL
(``fleet.db.engine.open_engine``; ``SqliteFleetStore`` is its older name). The schema lives in
``fleet.db.tables`` and is migrated with Alembic at open (``fleet.db.migrate``): a database
written before migrations existed is adopted, its rows kept. Reads return the typed rows of
``fleet.records``.

Portable: the statements are SQLAlchemy Core over portable types; upserts and ``INSERT ...
DO NOTHING`` are built by the dialect's own ``insert`` (SQLite or PostgreSQL, both spell it
``ON CONFLICT``); retention deletes use ``ROW_NUMBER()`` over the primary key, no rowid.
Not portable, and kept to ``fleet.db.engine``: the connection settings (WAL,
synchronous=NORMAL, busy_timeout) and ``BEGIN IMMEDIATE`` for writes, which SQLite needs
so that two writers wait for each other instead of failing; PostgreSQL runs the same
statements at its default READ COMMITTED (upserts take row locks). Ids and counters are
64-bit on both (revision 0003). tests/integration/test_store_postgres.py runs this store on
a private PostgreSQL server.

Telemetry is keyed by (device, stream, seq): a resent message (agent restarted before the
PUBACK was recorded) is counted as a duplicate, not stored twice. ``stream`` changes only
when a device's state dir is recreated, so its seq restarting at 1 is not mistaken for
duplicates. Retention is bounded by age and by rows per device. The newest telemetry of a
device is chosen by its parsed ``ts`` (``telemetry_ts``, Unix seconds), not by comparing
text. Refused messages are kept as dead letters, the newest ``DEAD_LETTERS_KEPT`` only.
"""

from __future__ import annotations

import json
import time

from sqlalchemy import (
    Connection,
    delete,
    func,
    select,
    tuple_,
    update,
)

from edge_contract import payloads
from edge_runtime.mqtt.rejections import DeadLetter
from fleet.db.access import AccessRecords
from fleet.db.base import _keep_newest_ids, _text
from fleet.db.rollout_records import RolloutRecords, Sign
from fleet.db.tables import (
    dead_letters,
    desired,
    desired_counters,
    devices,
    events,
    reported,
    telemetry,
)
from fleet.errors import StoreError, UnknownDeviceError
from fleet.records import (
    ACCEPTED,
    PENDING,
    REVOKED,
    DesiredRow,
    DeviceDetail,
    DeviceDocuments,
    DeviceSummary,
    FleetStore,
    Inbound,
    Retention,
    StoredDeadLetter,
    StoredEvent,
    TelemetryRow,
    device_summary,
    document,
)

# The store's interface (fleet.records) is importable from here, beside its implementation.
__all__ = [
    "ACCEPTED",
    "DEAD_LETTERS_KEPT",
    "PENDING",
    "REVOKED",
    "FleetStore",
    "Inbound",
    "Retention",
    "Sign",
    "SqlFleetStore",
    "SqliteFleetStore",
]

DEAD_LETTERS_KEPT = 1000


class SqlFleetStore(AccessRecords, RolloutRecords):
    """``FleetStore`` on a SQLite file or a PostgreSQL server; safe to call from threads.

    Ingest, device reads, dead letters and retention are here; access (operators, nonces,
    admission, tags) in ``fleet.db.access``; rollouts in ``fleet.db.rollout_records``.

    ``location``: a SQLite file path, or a URL (``sqlite:///path``,
    ``postgresql+psycopg://user:password@host:5432/fleet``).
    """

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

    def _touch(self, db: Connection, item: Inbound) -> None:
        insert = self._insert(devices).values(
            device_id=item.device_id, first_seen=item.received, last_seen=item.received
        )
        db.execute(
            insert.on_conflict_do_update(
                index_elements=[devices.c.device_id],
                set_={"last_seen": insert.excluded.last_seen},
            )
        )

    def _status(self, db: Connection, item: Inbound) -> None:
        db.execute(
            update(devices)
            .where(devices.c.device_id == item.device_id)
            .values(
                state=str(item.body.get("state")),
                status_json=json.dumps(item.body),
                status_received=item.received,
            )
        )

    def _telemetry(self, db: Connection, item: Inbound) -> None:
        body = item.body
        seq = body.get("seq")  # validated at ingest (TelemetryMessage): an int in range
        if not isinstance(seq, int) or not 0 <= seq <= payloads.INT_MAX:
            raise StoreError(f"telemetry seq {seq} outside 0..2^63-1", path=self._path)
        ts_epoch = _epoch(body.get("ts"))
        added = db.execute(
            self._insert(telemetry)
            .values(
                device_id=item.device_id,
                stream=str(body.get("stream", "")),
                seq=seq,
                ts=str(body["ts"]),
                ts_epoch=ts_epoch,
                received=item.received,
                payload=json.dumps(body),
            )
            .on_conflict_do_nothing()
        )
        row = devices.c.device_id == item.device_id
        if added.rowcount == 0:
            db.execute(update(devices).where(row).values(duplicates=devices.c.duplicates + 1))
            return
        if ts_epoch is None:
            return  # kept in the history, never shown as the newest
        # A backlog drains oldest first, so the newest measurement is the one with the
        # latest ts, not the one that arrived last. Compared as numbers: a row stored by an
        # older version (telemetry_ts NULL) is replaced by the first parsed one.
        newer = (
            devices.c.telemetry_json.is_(None)
            | devices.c.telemetry_ts.is_(None)
            | (devices.c.telemetry_ts <= ts_epoch)
        )
        db.execute(
            update(devices)
            .where(row & newer)
            .values(
                telemetry_json=json.dumps(body),
                telemetry_seq=seq,
                telemetry_received=item.received,
                telemetry_ts=ts_epoch,
            )
        )

    def _event(self, db: Connection, item: Inbound) -> None:
        db.execute(
            events.insert().values(
                device_id=item.device_id,
                event=str(item.body.get("event")),
                ts=str(item.body.get("ts", "")),
                received=item.received,
                payload=json.dumps(item.body),
            )
        )

    def _reported(self, db: Connection, item: Inbound) -> None:
        insert = self._insert(reported).values(
            device_id=item.device_id, received=item.received, payload=json.dumps(item.body)
        )
        db.execute(
            insert.on_conflict_do_update(
                index_elements=[reported.c.device_id],
                set_={"received": insert.excluded.received, "payload": insert.excluded.payload},
            )
        )

    def next_desired(
        self, device_id: str, *, model: str, version: str, action: str, now: float
    ) -> int:
        """Record the desired state of ``model`` on ``device_id``; returns its counter.

        The counter is one sequence per device, across its models: the agent takes only a
        directive whose counter is above the last one it took.
        """
        with self._tx() as db:
            bump = self._insert(desired_counters).values(device_id=device_id, counter=1)
            db.execute(
                bump.on_conflict_do_update(
                    index_elements=[desired_counters.c.device_id],
                    set_={"counter": desired_counters.c.counter + 1},
                )
            )
            counter = int(
                db.execute(
                    select(desired_counters.c.counter).where(
                        desired_counters.c.device_id == device_id
                    )
                ).scalar_one()
            )
            state = {"counter": counter, "version": version, "action": action, "updated": now}
            insert = self._insert(desired).values(device_id=device_id, model=model, **state)
            db.execute(
                insert.on_conflict_do_update(
                    index_elements=[desired.c.device_id, desired.c.model], set_=state
                )
            )
        return counter

    def add_dead_letters(self, letters: list[DeadLetter]) -> None:
        """Keep refused messages, the newest ``DEAD_LETTERS_KEPT`` of them."""
        if not letters:
            return
        rows = [
            {
                "topic": _text(d.topic),
                "reason": _text(d.reason),
                "detail": _text(d.detail),
                "excerpt": d.excerpt,
                "retained": int(d.retained),
                "received": d.at,
            }
            for d in letters
        ]
        with self._tx() as db:
            db.execute(dead_letters.insert(), rows)
            db.execute(_keep_newest_ids(dead_letters, DEAD_LETTERS_KEPT))

    def prune(self, now: float | None = None) -> int:
        """Apply retention; returns the number of rows removed."""
        cutoff = (now or time.time()) - self._retention.max_age_s
        keep_t, keep_e = self._retention.max_telemetry_rows, self._retention.max_event_rows
        newest_t = func.row_number().over(
            partition_by=telemetry.c.device_id,
            order_by=(telemetry.c.received.desc(), telemetry.c.seq.desc()),
        )
        newest_e = func.row_number().over(
            partition_by=events.c.device_id, order_by=events.c.id.desc()
        )
        key = tuple_(telemetry.c.device_id, telemetry.c.stream, telemetry.c.seq)
        ranked_t = select(*key.clauses, newest_t.label("n")).subquery()
        ranked_e = select(events.c.id, newest_e.label("n")).subquery()
        statements = [
            delete(telemetry).where(telemetry.c.received < cutoff),
            delete(events).where(events.c.received < cutoff),
            delete(telemetry).where(
                key.in_(
                    select(ranked_t.c.device_id, ranked_t.c.stream, ranked_t.c.seq).where(
                        ranked_t.c.n > keep_t
                    )
                )
            ),
            delete(events).where(
                events.c.id.in_(select(ranked_e.c.id).where(ranked_e.c.n > keep_e))
            ),
        ]
        with self._tx() as db:
            return sum(int(db.execute(s).rowcount) for s in statements)

    # -- reads -----------------------------------------------------------------------------

    def list_devices(self, now: float | None = None) -> list[DeviceSummary]:
        """A summary per device, sorted by id."""
        rows = self._query(select(devices).order_by(devices.c.device_id))
        admitted = self.admissions()  # operator auth: pending until accepted
        at = now or time.time()
        return [device_summary(row, at, admitted.get(row["device_id"], PENDING)) for row in rows]

    def device_detail(self, device_id: str, *, events: int = 20) -> DeviceDetail:
        rows = self._query(select(devices).where(devices.c.device_id == device_id))
        if not rows:
            raise UnknownDeviceError(device_id)
        row = rows[0]
        recent = self._query(
            select(_events.c.payload)
            .where(_events.c.device_id == device_id)
            .order_by(_events.c.id.desc())
            .limit(events)
        )
        report = self._query(select(reported.c.payload).where(reported.c.device_id == device_id))
        desired_now = self.desired_states(device_id)
        return DeviceDetail(
            summary=device_summary(row, time.time(), self.admission(device_id) or PENDING),
            reported=document(report[0]["payload"]) if report else None,
            desired=desired_now[0] if desired_now else None,
            status=document(row["status_json"]),
            telemetry=document(row["telemetry_json"]),
            events=[document(r["payload"]) for r in recent],
        )

    def device_documents(self, *, telemetry_for: int) -> list[DeviceDocuments]:
        """Every device, the most recently seen first, with its status and reported state;
        the telemetry of the first ``telemetry_for`` only (``/metrics``: parsing every
        device's telemetry on each scrape would cost the store thread for nothing)."""
        query = (
            select(
                devices.c.device_id,
                devices.c.state,
                devices.c.last_seen,
                devices.c.status_json,
                devices.c.telemetry_json,
                reported.c.payload.label("reported_json"),
            )
            .select_from(devices.outerjoin(reported, reported.c.device_id == devices.c.device_id))
            .order_by(devices.c.last_seen.desc(), devices.c.device_id)
        )
        admitted = self.admissions()
        return [
            DeviceDocuments(
                device_id=row["device_id"],
                state=row["state"] if isinstance(row["state"], str) else "unknown",
                admission=admitted.get(row["device_id"], PENDING),
                last_seen=float(row["last_seen"]),
                status=document(row["status_json"]),
                telemetry=document(row["telemetry_json"]) if index < telemetry_for else None,
                reported=document(row["reported_json"]),
            )
            for index, row in enumerate(self._query(query))
        ]

    def desired_states(self, device_id: str) -> list[DesiredRow]:
        """The desired state of each model on ``device_id``, newest first."""
        rows = self._query(
            select(desired.c.counter, desired.c.model, desired.c.version, desired.c.action)
            .where(desired.c.device_id == device_id)
            .order_by(desired.c.counter.desc())
        )
        return [DesiredRow(**row) for row in rows]

    def dead_letters(self, limit: int = 10) -> list[StoredDeadLetter]:
        """The newest dead letters, newest first."""
        rows = self._query(
            select(dead_letters)
            .order_by(dead_letters.c.id.desc())
            .limit(max(0, min(limit, DEAD_LETTERS_KEPT)))
        )
        return [
            StoredDeadLetter(
                topic=r["topic"],
                reason=r["reason"],
                detail=r["detail"],
                excerpt=bytes(r["excerpt"]).decode("utf-8", errors="replace"),
                retained=bool(r["retained"]),
                received=r["received"],
            )
            for r in rows
        ]

    def telemetry_seqs(self, device_id: str) -> list[int]:
        """Stored seqs of a device in arrival order (for tests and gap reports)."""
        rows = self._query(
            select(telemetry.c.seq)
            .where(telemetry.c.device_id == device_id)
            .order_by(telemetry.c.received, telemetry.c.seq)
        )
        return [int(r["seq"]) for r in rows]

    def telemetry_range(
        self, device_id: str, since: float, until: float, *, limit: int
    ) -> tuple[list[TelemetryRow], bool]:
        """The device's telemetry with its own ``ts`` in ``[since, until]``, oldest first, at
        most ``limit`` rows; the flag says the range held more (the oldest are returned).

        Raises:
            UnknownDeviceError: the controller has never seen the device.
        """
        self._require_known(device_id)
        rows = self._query(
            select(telemetry.c.ts_epoch, telemetry.c.payload)
            .where(
                (telemetry.c.device_id == device_id)
                & (telemetry.c.ts_epoch >= since)
                & (telemetry.c.ts_epoch <= until)
            )
            .order_by(telemetry.c.ts_epoch, telemetry.c.seq)
            .limit(limit + 1)
        )
        found = [
            TelemetryRow(ts=float(r["ts_epoch"]), body=body)
            for r in rows[:limit]
            if (body := document(r["payload"])) is not None
        ]
        return found, len(rows) > limit

    def device_events(
        self, device_id: str, *, limit: int, before: int | None = None
    ) -> list[StoredEvent]:
        """The device's newest ``limit`` events (older than id ``before``), newest first.

        Raises:
            UnknownDeviceError: the controller has never seen the device.
        """
        self._require_known(device_id)
        query = select(_events).where(_events.c.device_id == device_id)
        if before is not None:
            query = query.where(_events.c.id < before)
        rows = self._query(query.order_by(_events.c.id.desc()).limit(max(0, limit)))
        return [
            StoredEvent(
                id=int(r["id"]),
                event=str(r["event"]),
                received=float(r["received"]),
                body=document(r["payload"]),
            )
            for r in rows
        ]

    def _require_known(self, device_id: str) -> None:
        known = self._query(select(devices.c.device_id).where(devices.c.device_id == device_id))
        if not known:
            raise UnknownDeviceError(device_id)


# The name the store had while it ran on SQLite only (the tests and devtools use both).
SqliteFleetStore = SqlFleetStore

_events = events  # ``device_detail`` has a parameter named ``events``


def _epoch(ts: object) -> float | None:
    """Unix seconds of an ISO 8601 ``ts``; None when it does not parse."""
    if not isinstance(ts, str):
        return None
    try:
        return payloads.from_iso(ts).timestamp()
    except (ValueError, OverflowError):
        return None
