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
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import (
    Connection,
    Executable,
    RowMapping,
    Table,
    delete,
    func,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from edge_contract import payloads
from edge_contract.reasons import Reason
from edge_runtime.mqtt.rejections import DeadLetter
from fleet.db import migrate
from fleet.db.engine import (
    READ,
    DatabaseUrlError,
    cause,
    describe,
    dialect_insert,
    hide_password,
    open_engine,
    sqlite_path,
)
from fleet.db.tables import (
    admissions,
    dead_letters,
    desired,
    desired_counters,
    device_tags,
    devices,
    events,
    operator_log,
    operators,
    reported,
    request_nonces,
    rollout_transitions,
    rollouts,
    telemetry,
)
from fleet.errors import FleetError, StoreError, UnknownDeviceError
from fleet.operators import TrustedKey, key_id
from fleet.records import (
    ACCEPTED,
    PENDING,
    DesiredRow,
    DeviceDetail,
    DeviceSummary,
    Directive,
    FleetStore,
    Inbound,
    JsonObject,
    Operator,
    OperatorLogEntry,
    Retention,
    StoredDeadLetter,
    TaggedDevice,
    TelemetrySample,
    device_summary,
    document,
)
from fleet.rollouts.model import (
    ACTIVE_PHASES,
    DeviceInstall,
    GateResult,
    Phase,
    RolloutState,
    Transition,
)

# The store's interface (fleet.records) is importable from here, beside its implementation.
__all__ = [
    "ACCEPTED",
    "DEAD_LETTERS_KEPT",
    "PENDING",
    "FleetStore",
    "Inbound",
    "Retention",
    "SqlFleetStore",
    "SqliteFleetStore",
]

DEAD_LETTERS_KEPT = 1000
_OPERATOR_LOG_ROWS = 10_000
# The OTA events that mean a device did not install a version (``DeviceInstall.failed_reason``).
# ``ota_rolled_back`` too: the agent's own health window refused the version after loading it
# (an operator's rollback names the version it went back to, and is no failure of it).
_INSTALL_FAILURES = ("ota_failed", "ota_rejected", "ota_rolled_back")
# Telemetry a health window reads from before its start (the sample at or before the start).
_SAMPLE_LOOKBACK_S = 3600.0
# Signs one directive with the counter the store gave it (``ReleaseService.signer``).
Sign = Callable[[Directive, int], bytes]


class SqlFleetStore:
    """``FleetStore`` on a SQLite file or a PostgreSQL server; safe to call from threads.

    ``location``: a SQLite file path, or a URL (``sqlite:///path``,
    ``postgresql+psycopg://user:password@host:5432/fleet``).
    """

    def __init__(self, location: Path | str, retention: Retention | None = None) -> None:
        self._retention = retention or Retention()
        self._lock = threading.Lock()
        try:
            self._path = describe(location)  # in errors: a URL without its password
            file = sqlite_path(location)
            if file is not None:
                file.parent.mkdir(parents=True, exist_ok=True)
            self._engine = open_engine(location)
        except DatabaseUrlError as exc:
            raise StoreError(str(exc), path=hide_password(str(location))) from None
        try:
            migrate.upgrade(self._engine)
        except (SQLAlchemyError, RuntimeError) as exc:
            self._engine.dispose()
            raise StoreError(
                f"cannot open the fleet database ({cause(exc)})", path=self._path
            ) from exc

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        """One write transaction, under the store's lock; database errors as ``StoreError``."""
        with self._lock:
            try:
                with self._engine.begin() as db:
                    yield db
            except SQLAlchemyError as exc:
                raise StoreError(f"database error ({cause(exc)})", path=self._path) from exc

    def _query(self, statement: Executable) -> Sequence[RowMapping]:
        with self._lock:
            try:
                with self._engine.connect() as db:
                    db.execution_options(**{READ: True})
                    return db.execute(statement).mappings().all()
            except SQLAlchemyError as exc:
                raise StoreError(f"database error ({cause(exc)})", path=self._path) from exc

    def _insert(self, table: Table) -> sqlite.Insert | postgresql.Insert:
        """The dialect's INSERT, whose ``rowcount`` says whether ``ON CONFLICT`` skipped it.

        SQLAlchemy guarantees ``rowcount`` for UPDATE and DELETE only: for an INSERT it is
        -1 on psycopg unless asked for (SQLite's driver happened to keep it).
        """
        insert = dialect_insert(self._engine.dialect.name, table)
        return insert.execution_options(preserve_rowcount=True)

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

    def ota_devices(self) -> set[str]:
        """Devices that publish a reported OTA state (the agent does only with OTA enabled)."""
        return {row["device_id"] for row in self._query(select(reported.c.device_id))}

    # -- operators, request nonces and device admission (fleet.operators) -----------------

    def add_operator(self, name: str, public_key: str, *, now: float) -> str:
        """Trust ``public_key`` (base64) as ``name``; returns its key id.

        Raises:
            FleetError: the name or the key is already registered.
        """
        kid = key_id(public_key)
        with self._tx() as db:
            clash = db.execute(
                select(operators.c.name).where(
                    (operators.c.name == name) | (operators.c.key_id == kid)
                )
            ).first()
            if clash:
                raise FleetError(f"operator {clash[0]!r} already has this name or key ({kid})")
            db.execute(
                operators.insert().values(name=name, key_id=kid, public_key=public_key, added=now)
            )
        return kid

    def remove_operator(self, name: str) -> None:
        """Raises ``FleetError`` when no operator has that name."""
        with self._tx() as db:
            if db.execute(delete(operators).where(operators.c.name == name)).rowcount == 0:
                raise FleetError(f"no operator named {name!r}")

    def list_operators(self) -> list[Operator]:
        rows = self._query(select(operators).order_by(operators.c.name))
        return [Operator(**row) for row in rows]

    def trusted_keys(self) -> dict[str, TrustedKey]:
        """Key id -> operator, for ``fleet.operators.verify_request``."""
        return {o.key_id: TrustedKey(o.name, o.public_key) for o in self.list_operators()}

    def nonce_used(self, nonce: str) -> bool:
        return bool(
            self._query(select(request_nonces.c.nonce).where(request_nonces.c.nonce == nonce))
        )

    def remember_nonce(self, nonce: str, *, expires: float, now: float) -> bool:
        """Record a used nonce until ``expires``; False if it was already recorded."""
        with self._tx() as db:
            db.execute(delete(request_nonces).where(request_nonces.c.expires < now))
            added = db.execute(
                self._insert(request_nonces)
                .values(nonce=nonce, expires=expires)
                .on_conflict_do_nothing()
            )
        return added.rowcount == 1

    def log_request(
        self, *, operator: str | None, method: str, outcome: str, detail: str, now: float
    ) -> None:
        """Append to the bounded audit log of mutating requests (accepted and refused)."""
        with self._tx() as db:
            db.execute(
                operator_log.insert().values(
                    received=now,
                    operator=None if operator is None else _text(operator),
                    method=_text(method[:64]),
                    outcome=_text(outcome),
                    detail=_text(detail[:500]),
                )
            )
            db.execute(_keep_newest_ids(operator_log, _OPERATOR_LOG_ROWS))

    def operator_log(self, limit: int = 100) -> list[OperatorLogEntry]:
        rows = self._query(select(operator_log).order_by(operator_log.c.id.desc()).limit(limit))
        return [OperatorLogEntry(**row) for row in rows]

    def accept_device(self, device_id: str, *, operator: str, now: float) -> bool:
        """Make a known device a deploy target; False if it already was.

        Raises:
            UnknownDeviceError: the controller has never seen the device.
        """
        with self._tx() as db:
            known = db.execute(select(devices.c.device_id).where(devices.c.device_id == device_id))
            if known.first() is None:
                raise UnknownDeviceError(device_id)
            added = db.execute(
                self._insert(admissions)
                .values(device_id=device_id, state=ACCEPTED, operator=operator, updated=now)
                .on_conflict_do_nothing()
            )
        return added.rowcount == 1

    def admission(self, device_id: str) -> str | None:
        """accepted, pending, or None for a device never seen."""
        if not self._query(select(devices.c.device_id).where(devices.c.device_id == device_id)):
            return None
        rows = self._query(select(admissions.c.state).where(admissions.c.device_id == device_id))
        return str(rows[0]["state"]) if rows else PENDING

    def admissions(self) -> dict[str, str]:
        """The admission state of every device that has one (others are pending)."""
        rows = self._query(select(admissions.c.device_id, admissions.c.state))
        return {row["device_id"]: row["state"] for row in rows}

    # -- device tags (fleet devices tag / untag) -------------------------------------------

    def set_tags(self, device_id: str, tags: Mapping[str, str]) -> None:
        """Set the operator's ``tags`` on a device (replacing those keys' values).

        Raises:
            UnknownDeviceError: the controller has never seen the device.
        """
        with self._tx() as db:
            self._require_device(db, device_id)
            for key, value in tags.items():
                insert = self._insert(device_tags).values(
                    device_id=device_id, key=_text(key), value=_text(value)
                )
                db.execute(
                    insert.on_conflict_do_update(
                        index_elements=[device_tags.c.device_id, device_tags.c.key],
                        set_={"value": insert.excluded.value},
                    )
                )

    def remove_tags(self, device_id: str, keys: Iterable[str]) -> list[str]:
        """Remove the operator's tags ``keys``; returns the keys that were set.

        Raises:
            UnknownDeviceError: the controller has never seen the device.
        """
        wanted = sorted(set(keys))
        with self._tx() as db:
            self._require_device(db, device_id)
            row = device_tags.c.device_id == device_id
            present = db.execute(
                select(device_tags.c.key).where(row & device_tags.c.key.in_(wanted))
            )
            removed = sorted(str(r[0]) for r in present)
            db.execute(delete(device_tags).where(row & device_tags.c.key.in_(wanted)))
        return removed

    def device_tags(self, device_id: str) -> dict[str, str]:
        """The operator's tags of a device (the device's own are in ``tagged_devices``)."""
        rows = self._query(
            select(device_tags.c.key, device_tags.c.value)
            .where(device_tags.c.device_id == device_id)
            .order_by(device_tags.c.key)
        )
        return {r["key"]: r["value"] for r in rows}

    def tagged_devices(self) -> list[TaggedDevice]:
        """Every device seen with its merged tags (``TaggedDevice``), sorted by id."""
        rows = self._query(
            select(devices.c.device_id, devices.c.status_json).order_by(devices.c.device_id)
        )
        operator: dict[str, dict[str, str]] = {}
        for tag in self._query(select(device_tags).order_by(device_tags.c.key)):
            operator.setdefault(tag["device_id"], {})[tag["key"]] = tag["value"]
        admitted = self.admissions()
        with_ota = self.ota_devices()
        result = []
        for row in rows:
            device_id = row["device_id"]
            own = operator.get(device_id, {})
            result.append(
                TaggedDevice(
                    device_id=device_id,
                    tags={**_status_tags(device_id, document(row["status_json"])), **own},
                    operator_tags=own,
                    admission=admitted.get(device_id, PENDING),
                    ota=device_id in with_ota,
                )
            )
        return result

    def _require_device(self, db: Connection, device_id: str) -> None:
        known = db.execute(select(devices.c.device_id).where(devices.c.device_id == device_id))
        if known.first() is None:
            raise UnknownDeviceError(device_id)

    # -- rollouts (fleet.app.rollouts, fleet.rollouts_driver) ----------------------------

    def save_rollout(
        self,
        state: RolloutState,
        transitions: Sequence[Transition],
        directives: Sequence[Directive] = (),
        sign: Sign | None = None,
    ) -> list[tuple[str, bytes]]:
        """Persist a rollout's state, its new transitions and the desired states it sets, in
        ONE transaction; returns (device id, signed payload) of each directive, to publish.

        Each directive takes the device's next counter and is signed by ``sign`` inside the
        transaction, and the signed payload is kept (``desired_payloads``): a controller
        killed after the commit re-publishes it, one killed before it decides again.
        """
        if directives and sign is None:
            raise FleetError("a rollout's desired states need a signer (is OTA enabled?)")
        spec = state.spec
        values = {
            "model": spec.model,
            "version": spec.version,
            "name": _text(spec.name),
            "phase": state.phase.value,
            "state_json": state.model_dump_json(),
            "created_at": spec.created_at,
            "updated_at": state.updated_at,
        }
        signed: list[tuple[str, bytes]] = []
        with self._tx() as db:
            insert = self._insert(rollouts).values(rollout_id=spec.rollout_id, **values)
            db.execute(
                insert.on_conflict_do_update(
                    index_elements=[rollouts.c.rollout_id],
                    set_={k: v for k, v in values.items() if k != "created_at"},
                )
            )
            for t in transitions:
                db.execute(
                    rollout_transitions.insert().values(
                        rollout_id=spec.rollout_id,
                        at=t.at,
                        from_phase=None if t.from_phase is None else t.from_phase.value,
                        to_phase=t.to_phase.value,
                        stage=t.stage,
                        reason=_text(t.reason),
                        gate_json=None if t.gate is None else t.gate.model_dump_json(),
                    )
                )
            for directive in directives:
                assert sign is not None
                counter = self._bump_counter(db, directive.device_id)
                payload = sign(directive, counter)
                self._set_desired(db, directive, counter, payload, now=state.updated_at)
                signed.append((directive.device_id, payload))
        return signed

    def _bump_counter(self, db: Connection, device_id: str) -> int:
        bump = self._insert(desired_counters).values(device_id=device_id, counter=1)
        db.execute(
            bump.on_conflict_do_update(
                index_elements=[desired_counters.c.device_id],
                set_={"counter": desired_counters.c.counter + 1},
            )
        )
        return int(
            db.execute(
                select(desired_counters.c.counter).where(desired_counters.c.device_id == device_id)
            ).scalar_one()
        )

    def _set_desired(
        self, db: Connection, directive: Directive, counter: int, payload: bytes, *, now: float
    ) -> None:
        state = {
            "counter": counter,
            "version": directive.version,
            "action": directive.action,
            "updated": now,
            "payload": payload,
        }
        insert = self._insert(desired).values(
            device_id=directive.device_id, model=directive.model, **state
        )
        db.execute(
            insert.on_conflict_do_update(
                index_elements=[desired.c.device_id, desired.c.model], set_=state
            )
        )

    def rollout(self, rollout_id: str) -> RolloutState | None:
        rows = self._query(select(rollouts.c.state_json).where(rollouts.c.rollout_id == rollout_id))
        return RolloutState.model_validate_json(rows[0]["state_json"]) if rows else None

    def rollouts(self, *, active: bool = False, model: str | None = None) -> list[RolloutState]:
        """Rollouts, newest first; ``active``: only those in an active phase."""
        query = select(rollouts.c.state_json).order_by(
            rollouts.c.created_at.desc(), rollouts.c.rollout_id
        )
        if active:
            query = query.where(rollouts.c.phase.in_([p.value for p in ACTIVE_PHASES]))
        if model is not None:
            query = query.where(rollouts.c.model == model)
        return [RolloutState.model_validate_json(r["state_json"]) for r in self._query(query)]

    def rollout_history(self, rollout_id: str) -> list[Transition]:
        """Every transition of a rollout, oldest first."""
        rows = self._query(
            select(rollout_transitions)
            .where(rollout_transitions.c.rollout_id == rollout_id)
            .order_by(rollout_transitions.c.id)
        )
        return [
            Transition(
                at=r["at"],
                from_phase=None if r["from_phase"] is None else Phase(r["from_phase"]),
                to_phase=Phase(r["to_phase"]),
                stage=r["stage"],
                reason=r["reason"],
                gate=None
                if r["gate_json"] is None
                else GateResult.model_validate_json(r["gate_json"]),
            )
            for r in rows
        ]

    def desired_payloads(self, model: str, device_ids: Iterable[str]) -> dict[str, bytes]:
        """The signed desired state last sent for ``model`` to each device (when kept)."""
        wanted = sorted(set(device_ids))
        rows = self._query(
            select(desired.c.device_id, desired.c.payload).where(
                (desired.c.model == model)
                & desired.c.device_id.in_(wanted)
                & desired.c.payload.is_not(None)
            )
        )
        return {r["device_id"]: bytes(r["payload"]) for r in rows}

    def installs(
        self, model: str, version: str, since: Mapping[str, float]
    ) -> dict[str, DeviceInstall]:
        """What each device of ``since`` runs of ``model``: the active version (and variant)
        it reports, its newest ``ota_failed``/``ota_rejected`` of ``version`` received after
        its ``since`` time, and when it was last seen."""
        wanted = sorted(since)
        if not wanted:
            return {}
        seen = {
            r["device_id"]: float(r["last_seen"])
            for r in self._query(
                select(devices.c.device_id, devices.c.last_seen).where(
                    devices.c.device_id.in_(wanted)
                )
            )
        }
        active = {
            r["device_id"]: _active_slot(document(r["payload"]), model)
            for r in self._query(
                select(reported.c.device_id, reported.c.payload).where(
                    reported.c.device_id.in_(wanted)
                )
            )
        }
        failures = self._install_failures(wanted, version, min(since.values()), since)
        result = {}
        for device_id in wanted:
            slot_version, variant = active.get(device_id, (None, None))
            result[device_id] = DeviceInstall(
                active_version=slot_version,
                variant=variant,
                failed_reason=failures.get(device_id),
                last_seen=seen.get(device_id),
            )
        return result

    def _install_failures(
        self, wanted: list[str], version: str, after: float, since: Mapping[str, float]
    ) -> dict[str, str]:
        rows = self._query(
            select(events.c.device_id, events.c.received, events.c.payload)
            .where(
                events.c.device_id.in_(wanted)
                & events.c.event.in_(_INSTALL_FAILURES)
                & (events.c.received >= after)
            )
            .order_by(events.c.id)
        )
        found: dict[str, str] = {}
        for row in rows:  # oldest first: the newest of a device wins
            body = document(row["payload"]) or {}
            if row["received"] < since[row["device_id"]] or body.get("version") != version:
                continue
            if body.get("reason") == Reason.OPERATOR_ROLLBACK:
                continue
            found[row["device_id"]] = _failure_reason(body)
        return found

    def telemetry_samples(
        self, device_ids: Iterable[str], start: float, end: float
    ) -> dict[str, list[TelemetrySample]]:
        """Each device's telemetry from just before ``start`` (the health window reads the
        sample at or before it) to ``end``, oldest first, by the device's own ``ts``."""
        wanted = sorted(set(device_ids))
        rows = self._query(
            select(telemetry.c.device_id, telemetry.c.ts_epoch, telemetry.c.payload)
            .where(
                telemetry.c.device_id.in_(wanted)
                & (telemetry.c.ts_epoch >= start - _SAMPLE_LOOKBACK_S)
                & (telemetry.c.ts_epoch <= end)
            )
            .order_by(telemetry.c.device_id, telemetry.c.ts_epoch)
        )
        samples: dict[str, list[TelemetrySample]] = {d: [] for d in wanted}
        for row in rows:
            inference = (document(row["payload"]) or {}).get("inference")
            samples[row["device_id"]].append(
                TelemetrySample(
                    ts=float(row["ts_epoch"]),
                    inference=inference if isinstance(inference, dict) else None,
                )
            )
        return samples

    def close(self) -> None:
        with self._lock:
            self._engine.dispose()


# The name the store had while it ran on SQLite only (the tests and devtools use both).
SqliteFleetStore = SqlFleetStore

_events = events  # ``device_detail`` has a parameter named ``events``


def _keep_newest_ids(table: Table, keep: int) -> Executable:
    """Delete all but the ``keep`` highest ids of ``table`` (an append-only log)."""
    newest = select(func.max(table.c.id)).scalar_subquery()
    return delete(table).where(table.c.id <= newest - keep)


def _text(value: str) -> str:
    """``value`` storable in any TEXT column: PostgreSQL refuses NUL in text (SQLite keeps it),
    and a dead letter's detail or a refused request's may quote a hostile NUL."""
    return value.replace("\x00", "\ufffd")


def _status_tags(device_id: str, status: JsonObject | None) -> dict[str, str]:
    """The implicit tags and the device's own (``[device] tags``), from its stored status;
    values that are not text are left out (the status is the device's word)."""
    tags = {"device": device_id}
    status = status or {}
    hardware = status.get("hardware_id")
    if isinstance(hardware, str) and hardware:
        tags["hardware"] = hardware
    own = status.get("tags")
    if isinstance(own, dict):
        tags.update({k: v for k, v in own.items() if isinstance(v, str)})
    return tags


def _active_slot(report: JsonObject | None, model: str) -> tuple[str | None, str | None]:
    """(version, variant) of ``model``'s active slot in a stored reported state."""
    models = (report or {}).get("models")
    entry = models.get(model) if isinstance(models, dict) else None
    if not isinstance(entry, dict):
        return None, None
    slot = entry.get("active")
    if not isinstance(slot, dict):
        return None, None
    # The variant is on the active slot; agents also repeat it beside the slots.
    version, variant = slot.get("version"), slot.get("variant") or entry.get("variant")
    return (
        version if isinstance(version, str) else None,
        variant if isinstance(variant, str) else None,
    )


def _failure_reason(event: JsonObject) -> str:
    """``"ota_failed: golden_mismatch (detail)"`` from a stored OTA failure event."""
    parts = [str(event.get("event"))]
    reason, detail = event.get("reason"), event.get("detail") or event.get("error")
    if isinstance(reason, str):
        parts.append(reason)
    text = ": ".join(parts)
    if isinstance(detail, str) and detail:
        text += f" ({detail[:200]})"
    return text


def _epoch(ts: object) -> float | None:
    """Unix seconds of an ISO 8601 ``ts``; None when it does not parse."""
    if not isinstance(ts, str):
        return None
    try:
        return payloads.from_iso(ts).timestamp()
    except (ValueError, OverflowError):
        return None
