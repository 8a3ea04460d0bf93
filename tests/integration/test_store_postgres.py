"""The controller's store on a real PostgreSQL server: the same code as on SQLite.

A private server per module (initdb into a temporary directory, a free loopback port, its
socket in that directory), run as the unprivileged ``postgres`` user when the tests run as
root (initdb refuses root); each test gets its own database. The migrations run from empty,
every kind of row the SQLite tests write goes in through ``SqlFleetStore`` and comes back
through its typed rows, and Alembic's ``compare_metadata`` finds no drift between the
migrated database and ``fleet.db.tables`` on PostgreSQL either.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from edge_runtime.mqtt.rejections import DeadLetter
from fleet.db import migrate
from fleet.db.engine import open_engine
from fleet.db.tables import metadata
from fleet.errors import StoreError
from fleet.operators import generate_key, key_id, public_key_text
from fleet.records import DesiredRow, Inbound, Retention
from fleet.store import SqlFleetStore

pytestmark = pytest.mark.slow

STOP_TIMEOUT_S = 30


def _server_binary(name: str) -> Path | None:
    found = shutil.which(name)
    if found:
        return Path(found)
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return versions[-1] if versions else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PrivatePostgres:
    """A PostgreSQL server of this test module only; ``url(db)`` for a database on it."""

    directory: Path
    port: int
    run_as: list[str]

    def admin(self, statement: str) -> None:
        engine = create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(text(statement))
        engine.dispose()

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://fleet@127.0.0.1:{self.port}/{database}"

    def pg_ctl(self, *args: str) -> None:
        binary = _server_binary("pg_ctl")
        assert binary is not None
        command = [*self.run_as, str(binary), "-D", str(self.directory / "data"), *args]
        subprocess.run(command, check=True, capture_output=True, timeout=STOP_TIMEOUT_S + 30)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PrivatePostgres]:
    initdb = _server_binary("initdb")
    if initdb is None or _server_binary("pg_ctl") is None:
        pytest.fail("PostgreSQL is not installed: run `make test`, which installs it")
    if importlib.util.find_spec("psycopg") is None:
        pytest.fail("psycopg is not installed: run `make test` (the dev extra brings it)")
    directory = Path(tempfile.mkdtemp(prefix="fleet-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: the server runs as postgres
        user = pwd.getpwnam("postgres")
        os.chown(directory, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    server = PrivatePostgres(directory, _free_port(), run_as)
    flags = ["-U", "fleet", "--auth=trust", "--encoding=UTF8", "--no-sync", "--no-instructions"]
    subprocess.run(
        [*run_as, str(initdb), "-D", str(directory / "data"), *flags],
        check=True,
        capture_output=True,
        timeout=120,
    )
    options = f"-p {server.port} -k {directory} -c listen_addresses=127.0.0.1 -F"
    log = str(directory / "server.log")
    try:
        server.pg_ctl("-l", log, "-o", options, "-w", "-t", "60", "start")
        yield server
    finally:
        try:
            server.pg_ctl("-m", "fast", "-w", "-t", str(STOP_TIMEOUT_S), "stop")
        finally:
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def database(postgres: PrivatePostgres, request: pytest.FixtureRequest) -> str:
    """A new, empty database on the private server; its URL."""
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name).lower()[:50]
    postgres.admin(f'DROP DATABASE IF EXISTS "{name}"')
    postgres.admin(f'CREATE DATABASE "{name}"')
    return postgres.url(name)


@pytest.mark.parametrize("fresh_from_tables", [True, False])
def test_migrated_from_empty_the_schema_is_the_tables(
    database: str, fresh_from_tables: bool
) -> None:
    """Created from the tables and stamped, or by running 0001..0003: the same schema,
    types included, with 64-bit ids and 64-bit id sequences."""
    engine = open_engine(database)
    migrate.upgrade(engine, fresh_from_tables=fresh_from_tables)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []
        assert migrate.current(connection) == migrate.HEAD
        for table in ("events", "dead_letters", "operator_log"):
            [column] = [c for c in inspect(connection).get_columns(table) if c["name"] == "id"]
            assert str(column["type"]) == "BIGINT", table
        sequences = connection.execute(text("SELECT sequencename, data_type FROM pg_sequences"))
        assert {row[1] for row in sequences} == {"bigint"}
    engine.dispose()


def _telemetry(device: str, seq: int, second: int, received: float) -> Inbound:
    body = {
        "device_id": device,
        "stream": "s1",
        "seq": seq,
        "ts": f"2026-01-01T00:00:{second:02d}.000Z",
        "cpu": {"percent": 12.5},
        "memory": {"used_percent": 40.0},
        "temperatures_c": {"cpu": 51.0},
    }
    return Inbound(device, "telemetry", body, received)


def _ingest_every_kind(store: SqlFleetStore) -> None:
    store.ingest(
        [
            Inbound("pi-1", "status", {"state": "online", "agent_version": "9.9"}, 100.0),
            _telemetry("pi-1", 1, 1, 101.0),
            _telemetry("pi-1", 2**62, 2, 102.0),  # seq is 64-bit
            _telemetry("pi-1", 2**62, 2, 103.0),  # a resend: a duplicate, not a row
            _telemetry("pi-1", 3, 0, 104.0),  # an older ts arriving later is not the newest
            Inbound("pi-1", "events", {"event": "started", "ts": "t1"}, 105.0),
            Inbound("pi-1", "reported", {"models": {"digits": {"version": "2"}}}, 106.0),
            Inbound("pi-2", "status", {"state": "offline"}, 107.0),
        ]
    )


def test_every_kind_of_row_goes_in_and_comes_back(database: str) -> None:
    store = SqlFleetStore(database, Retention(max_age_s=10**9))
    try:
        _ingest_every_kind(store)
        [one, two] = store.list_devices(now=110.0)
        assert (one.device_id, one.online, one.agent_version) == ("pi-1", True, "9.9")
        assert (one.last_seq, one.duplicates, one.cpu_percent) == (2**62, 1, 12.5)
        assert (two.device_id, two.online, two.admission) == ("pi-2", False, "pending")
        assert store.telemetry_seqs("pi-1") == [1, 2**62, 3]
        detail = store.device_detail("pi-1")
        assert detail.events == [{"event": "started", "ts": "t1"}]
        assert detail.reported == {"models": {"digits": {"version": "2"}}}
        assert store.ota_devices() == {"pi-1"}

        assert store.next_desired("pi-1", model="digits", version="2", action="deploy", now=1) == 1
        assert store.next_desired("pi-1", model="words", version="1", action="deploy", now=2) == 2
        assert store.next_desired("pi-1", model="digits", version="3", action="deploy", now=3) == 3
        assert store.desired_states("pi-1") == [
            DesiredRow(counter=3, model="digits", version="3", action="deploy"),
            DesiredRow(counter=2, model="words", version="1", action="deploy"),
        ]

        letter = DeadLetter("devices/x/telemetry", "schema", "seq", b"\xff\x00{", True, 108.0)
        store.add_dead_letters([letter])
        [stored] = store.dead_letters()
        assert (stored.topic, stored.reason, stored.retained) == (letter.topic, "schema", True)
        assert stored.excerpt == b"\xff\x00{".decode("utf-8", errors="replace")

        public = public_key_text(generate_key().public_key())
        assert store.add_operator("alice", public, now=5.0) == key_id(public)
        assert [o.name for o in store.list_operators()] == ["alice"]
        assert set(store.trusted_keys()) == {key_id(public)}
        assert store.remember_nonce("n1", expires=200.0, now=100.0) is True
        assert store.remember_nonce("n1", expires=200.0, now=100.0) is False
        assert store.nonce_used("n1")
        store.log_request(operator="alice", method="deploy", outcome="ok", detail="d", now=6.0)
        [entry] = store.operator_log()
        assert (entry.operator, entry.method, entry.outcome) == ("alice", "deploy", "ok")
        assert store.accept_device("pi-1", operator="alice", now=7.0) is True
        assert store.accept_device("pi-1", operator="alice", now=8.0) is False
        assert store.admission("pi-1") == "accepted"
        assert store.admissions() == {"pi-1": "accepted"}
        store.remove_operator("alice")
        assert store.list_operators() == []
    finally:
        store.close()


def test_ids_beyond_32_bits_and_retention(database: str, postgres: PrivatePostgres) -> None:
    """An event id past 2^31 (PostgreSQL's INTEGER) is stored and read; prune keeps the
    newest rows per device by id and received, as on SQLite."""
    store = SqlFleetStore(database, Retention(max_age_s=1000.0, max_event_rows=2))
    store.close()
    engine = create_engine(database)
    with engine.begin() as connection:
        connection.execute(text("ALTER SEQUENCE events_id_seq RESTART WITH 5000000000"))
    engine.dispose()
    store = SqlFleetStore(database, Retention(max_age_s=1000.0, max_event_rows=2))
    try:
        events = [Inbound("pi-1", "events", {"event": f"e{n}"}, 900.0 + n) for n in range(4)]
        store.ingest([*events, _telemetry("pi-1", 1, 1, 10.0)])
        assert store.prune(now=1500.0) == 3  # the old telemetry row, two oldest events
        detail = store.device_detail("pi-1")
        assert [e["event"] for e in detail.events] == ["e3", "e2"]
        assert store.telemetry_seqs("pi-1") == []
    finally:
        store.close()


def test_opening_again_changes_nothing_and_a_bad_url_is_named(database: str) -> None:
    store = SqlFleetStore(database)
    _ingest_every_kind(store)
    store.close()
    store = SqlFleetStore(database)
    try:
        assert [d.device_id for d in store.list_devices()] == ["pi-1", "pi-2"]
    finally:
        store.close()
    with pytest.raises(StoreError, match="dialect 'mysql'"):
        SqlFleetStore("mysql://fleet:secret@127.0.0.1/fleet")
    with pytest.raises(StoreError, match="cannot open") as refused:
        SqlFleetStore(database.replace("fleet@", "fleet:secret@").rsplit("/", 1)[0] + "/nope")
    assert "secret" not in str(refused.value)


def test_a_nul_quoted_in_a_refusal_is_stored(database: str) -> None:
    """PostgreSQL refuses NUL in TEXT (SQLite keeps it): a dead letter's detail or a refused
    request's log line quoting a hostile value is stored with U+FFFD in its place."""
    store = SqlFleetStore(database)
    try:
        detail = "event: 'a\x00b' does not match"
        store.add_dead_letters(
            [DeadLetter("fleet/pi-1/events", "schema", detail, b"\x00", False, 1)]
        )
        store.log_request(operator=None, method="dep\x00loy", outcome="refused", detail="x", now=2)
        [stored] = store.dead_letters()
        assert stored.detail == "event: 'a\ufffdb' does not match"
        assert [e.method for e in store.operator_log()] == ["dep\ufffdloy"]
    finally:
        store.close()
