"""The controller's ingest path without a broker: typed device messages, the store's
upgrade and defensive reads, dead letters, the one-by-one fallback of a failing batch, the
RPC request model and the file server's rate limit."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from edge_contract import payloads
from edge_contract.controller import StatusRequest
from edge_contract.errors import PayloadError
from edge_contract.messages import (
    EventMessage,
    ReportedMessage,
    StatusMessage,
    TelemetryMessage,
    decode_device_message,
)
from edge_contract.topics import Channel
from edge_runtime.mqtt.base import InboundMessage
from edge_runtime.mqtt.rejections import DeadLetter
from fleet.config import FleetConfig
from fleet.errors import StoreError
from fleet.ingest import validate
from fleet.release.fileserver import RateLimiter
from fleet.service import Controller
from fleet.store import DEAD_LETTERS_KEPT, Inbound, SqliteFleetStore

NOW = payloads.utc_now()

# What the agent sends (agent/control/presence.py, agent/telemetry/service.py,
# agent/control/events.py, agent/ota/report.py), field for field.
STATUS = {
    "device_id": "pi-01",
    "state": "online",
    "agent_version": "0.1.0",
    "models": {"digits": "2"},
    "boot_time": "1970-01-01T00:00:12.000Z",  # a board without a real-time clock
    "started_at": NOW,
    "ts": NOW,
}
TELEMETRY: dict[str, Any] = {
    "device_id": "pi-01",
    "stream": "0123456789abcdef",
    "seq": 7,
    "ts": NOW,
    "cpu": {"percent": 12.5, "per_core": [10.0, 15.0], "count": 2, "load": [0.1, 0.2, 0.3]},
    "memory": {"total_bytes": 8 << 30, "available_bytes": 4 << 30, "used_percent": 50},
    "disk": {"path": "/var/lib/edge-agent", "total_bytes": 1 << 34, "free_bytes": 1 << 33},
    "network": {"bytes_sent": 1, "bytes_recv": 2, "errin": 0, "errout": 0},
    "temperatures_c": {"cpu_thermal/0": 51.2, "thermal/gpu": 48},
    "agent": {"rss_bytes": 1 << 26, "cpu_percent": 130.0, "threads": 9, "uptime_s": 3.0},
    "uptime_s": 1234.5,
    "queue": {"depth": 0, "bytes": 0, "max_bytes": 1 << 26, "dropped": 0, "dropped_total": 0},
    "link": {"connected": True, "outages": 0, "last_outage_s": None},
    "health": {"status": "ok", "subsystems": {"mqtt": {"status": "ok", "reason": None}}},
    "errors": {"board": "no vcgencmd"},
}
EVENT = {"device_id": "pi-01", "event": "link_up", "ts": NOW, "outage_s": 3.2, "backlog": 1}
REPORTED = {
    "agent_version": "0.1.0",
    "desired_counter": 7,
    "ts": "2026-11-29T14:28:51Z",
    "models": {
        "digits": {
            "active": {"slot": "b", "version": "2", "release": 2},
            "pending": None,
            "previous": {"slot": "a", "version": "1", "release": 1},
            "step": "committed",
            "progress": None,
            "last_result": {"outcome": "committed", "version": "2", "reason": None},
        }
    },
}


def _raw(body: object) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


def _message(topic: str, body: object) -> InboundMessage:
    return InboundMessage(topic=topic, payload=_raw(body), qos=1, retain=False, mid=1)


class TestDeviceMessages:
    @pytest.mark.parametrize(
        ("channel", "body", "model"),
        [
            (Channel.STATUS, STATUS, StatusMessage),
            (Channel.STATUS, {**STATUS, "state": "offline", "reason": "connection lost"}, None),
            (Channel.TELEMETRY, TELEMETRY, TelemetryMessage),
            (Channel.EVENTS, EVENT, EventMessage),
            (Channel.REPORTED, REPORTED, ReportedMessage),
        ],
    )
    def test_what_the_agent_sends_is_accepted(
        self, channel: Channel, body: dict[str, Any], model: type | None
    ) -> None:
        """Every field the agent writes passes, and the stored body keeps them all."""
        parsed, stored = decode_device_message(channel, "pi-01", _raw(body))
        assert model is None or isinstance(parsed, model)
        assert stored == {**body, "device_id": "pi-01"}  # nothing dropped, nothing rewritten

    @pytest.mark.parametrize(
        ("channel", "body", "reason", "field"),
        [
            (Channel.TELEMETRY, b'{"seq": 9223372036854775808, "ts": "x"}', "number_range", ""),
            (Channel.TELEMETRY, {**TELEMETRY, "seq": -1}, "schema", "seq"),
            (Channel.TELEMETRY, {**TELEMETRY, "seq": "7"}, "schema", "seq"),
            (Channel.TELEMETRY, {**TELEMETRY, "seq": True}, "schema", "seq"),
            (Channel.TELEMETRY, {**TELEMETRY, "ts": "bad"}, "schema", "ts"),
            (Channel.TELEMETRY, {**TELEMETRY, "ts": 1700000000}, "schema", "ts"),
            (Channel.TELEMETRY, {**TELEMETRY, "ts": "2026-01-01T00:00:00"}, "schema", "ts"),
            (Channel.TELEMETRY, {**TELEMETRY, "ts": "2999-01-01T00:00:00Z"}, "schema", "ts"),
            (Channel.TELEMETRY, {**TELEMETRY, "ts": "1999-12-31T23:59:59Z"}, "schema", "ts"),
            (Channel.TELEMETRY, {**TELEMETRY, "cpu": "x"}, "schema", "cpu"),
            (Channel.TELEMETRY, {**TELEMETRY, "cpu": {"percent": "x"}}, "schema", "cpu"),
            (Channel.TELEMETRY, {**TELEMETRY, "cpu": {"percent": 1e9}}, "schema", "cpu"),
            (Channel.TELEMETRY, {**TELEMETRY, "temperatures_c": {"a": "hot"}}, "schema", "temp"),
            (Channel.TELEMETRY, {**TELEMETRY, "temperatures_c": [1]}, "schema", "temp"),
            (Channel.TELEMETRY, {**TELEMETRY, "queue": {"depth": -3}}, "schema", "queue"),
            (Channel.TELEMETRY, {**TELEMETRY, "stream": "s" * 65}, "schema", "stream"),
            (Channel.TELEMETRY, {**TELEMETRY, "device_id": "pi-02"}, "device_mismatch", ""),
            (Channel.TELEMETRY, [TELEMETRY], "not_object", ""),
            (Channel.TELEMETRY, b"[" * 40 + b"]" * 40, "too_deep", ""),
            (Channel.TELEMETRY, b"\xff\xfe", "not_utf8", ""),
            (Channel.STATUS, {**STATUS, "state": "sleeping"}, "schema", "state"),
            (Channel.STATUS, {**STATUS, "extra": 1}, "schema", "extra"),
            (Channel.STATUS, {**STATUS, "agent_version": "v" * 300}, "schema", "agent_version"),
            (Channel.STATUS, {**STATUS, "boot_time": "yesterday"}, "schema", "boot_time"),
            (Channel.EVENTS, {**EVENT, "event": "Bad Event"}, "schema", "event"),
            (Channel.EVENTS, {"event": "x"}, "schema", "ts"),
            (Channel.REPORTED, {**REPORTED, "desired_counter": -1}, "schema", "desired"),
            (Channel.REPORTED, {**REPORTED, "models": {"d": {"previous": {}}}}, "schema", "models"),
        ],
    )
    def test_refusals_carry_reasons(
        self, channel: Channel, body: object, reason: str, field: str
    ) -> None:
        """Wrong types, ranges, timestamps and shapes are refused with the reason code."""
        with pytest.raises(PayloadError) as caught:
            decode_device_message(channel, "pi-01", _raw(body))
        assert caught.value.reason == reason
        assert field in str(caught.value)

    def test_validate_keeps_the_body(self) -> None:
        item = validate(_message("fleet/pi-01/telemetry", TELEMETRY), 5.0)
        assert (item.device_id, item.kind, item.body["seq"]) == ("pi-01", "telemetry", 7)


def _telemetry(seq: int, ts: str, received: float = 1.0, **fields: Any) -> Inbound:
    body = {"device_id": "pi-1", "stream": "s", "seq": seq, "ts": ts, **fields}
    return Inbound("pi-1", "telemetry", body, received)


# The schema of the controller's database before this change, verbatim.
_OLD_SCHEMA = """
CREATE TABLE devices (device_id TEXT PRIMARY KEY, state TEXT, status_json TEXT,
    status_received REAL, telemetry_json TEXT, telemetry_seq INTEGER,
    telemetry_received REAL, first_seen REAL NOT NULL, last_seen REAL NOT NULL,
    duplicates INTEGER NOT NULL DEFAULT 0);
CREATE TABLE telemetry (device_id TEXT NOT NULL, stream TEXT NOT NULL, seq INTEGER NOT NULL,
    ts TEXT NOT NULL, received REAL NOT NULL, payload TEXT NOT NULL,
    PRIMARY KEY (device_id, stream, seq));
CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, device_id TEXT NOT NULL,
    event TEXT NOT NULL, ts TEXT NOT NULL, received REAL NOT NULL, payload TEXT NOT NULL);
CREATE TABLE reported (device_id TEXT PRIMARY KEY, received REAL NOT NULL,
    payload TEXT NOT NULL);
CREATE TABLE desired (device_id TEXT PRIMARY KEY, counter INTEGER NOT NULL, model TEXT NOT NULL,
    version TEXT NOT NULL, action TEXT NOT NULL, updated REAL NOT NULL);
"""


class TestStore:
    def test_newest_telemetry_by_parsed_time(self, tmp_path: Path) -> None:
        """01:00+01:00 is earlier than 00:30Z, although it sorts later as text."""
        store = SqliteFleetStore(tmp_path / "f.db")
        store.ingest([_telemetry(1, "2026-01-01T00:30:00.000Z", cpu={"percent": 1.0})])
        store.ingest([_telemetry(2, "2026-01-01T01:00:00.000+01:00", cpu={"percent": 2.0})])
        [row] = store.list_devices()
        assert (row.last_seq, row.cpu_percent) == (1, 1.0)

    def test_today_s_database_opens_and_its_bad_newest_row_is_replaced(
        self, tmp_path: Path
    ) -> None:
        """A database of the old schema, with the 'ts: bad' row stuck as newest, opens; its
        rows stay; the next good telemetry becomes the newest and the list answers."""
        path = tmp_path / "old.db"
        db = sqlite3.connect(path)
        db.executescript(_OLD_SCHEMA)
        bad = json.dumps({"device_id": "pi-1", "seq": 5, "ts": "bad", "cpu": "x"})
        db.execute(
            "INSERT INTO devices VALUES ('pi-1', 'online', '[1]', 1.0, ?, 5, 1.0, 1.0, 1.0, 0)",
            (bad,),
        )
        db.execute("INSERT INTO telemetry VALUES ('pi-1', 's', 5, 'bad', 1.0, ?)", (bad,))
        db.execute("INSERT INTO events VALUES (1, 'pi-1', 'x', 't', 1.0, 'not json')")
        db.commit()
        db.close()
        store = SqliteFleetStore(path)
        [row] = store.list_devices()  # no AttributeError on the odd row
        assert (row.cpu_percent, row.agent_version) == (None, None)
        assert store.device_detail("pi-1").events == [None]
        store.ingest([_telemetry(6, NOW, cpu={"percent": 3.0})])
        [row] = store.list_devices()
        assert (row.last_seq, row.cpu_percent) == (6, 3.0)
        assert store.telemetry_seqs("pi-1") == [5, 6]
        store.close()
        SqliteFleetStore(path).close()  # the upgrade is done once, then a no-op

    def test_summary_survives_odd_rows(self, tmp_path: Path) -> None:
        store = SqliteFleetStore(tmp_path / "f.db")
        store.ingest([_telemetry(1, NOW)])
        odd = json.dumps({"cpu": [], "memory": 3, "temperatures_c": {"a": "x", "b": None}})
        with sqlite3.connect(tmp_path / "f.db") as db:
            db.execute("UPDATE devices SET telemetry_json = ?, status_json = '\"s\"'", (odd,))
        [row] = store.list_devices()
        assert (row.cpu_percent, row.temperature_c, row.models) == (None, None, {})

    def test_seq_beyond_63_bits_is_a_store_error(self, tmp_path: Path) -> None:
        """Not an OverflowError from sqlite3 escaping as something else."""
        store = SqliteFleetStore(tmp_path / "f.db")
        with pytest.raises(StoreError):
            store.ingest([_telemetry(2**63, NOW)])

    def test_dead_letters_are_bounded(self, tmp_path: Path) -> None:
        store = SqliteFleetStore(tmp_path / "f.db")
        letters = [
            DeadLetter("fleet/x/telemetry", "schema", f"n{n}", b"\xff{", False, float(n))
            for n in range(DEAD_LETTERS_KEPT + 5)
        ]
        store.add_dead_letters(letters)
        newest = store.dead_letters(2)
        assert [d.detail for d in newest] == [
            f"n{DEAD_LETTERS_KEPT + 4}",
            f"n{DEAD_LETTERS_KEPT + 3}",
        ]
        with sqlite3.connect(tmp_path / "f.db") as db:
            assert (
                db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0] == DEAD_LETTERS_KEPT
            )


class _PoisonStore(SqliteFleetStore):
    """Raises for telemetry of one device, as a store bug or a corrupt row would."""

    def ingest(self, batch: list[Inbound]) -> None:
        if any(item.device_id == "poison" for item in batch):
            raise RuntimeError("injected store failure")
        super().ingest(batch)


def _controller(tmp_path: Path) -> tuple[Controller, list[int]]:
    store = _PoisonStore(tmp_path / "f.db")
    controller = Controller(FleetConfig(db=tmp_path / "f.db", broker="mqtt://127.0.0.1:1"), store)
    acked: list[int] = []
    controller.link.ack = lambda message: acked.append(message.mid)  # type: ignore[method-assign]
    return controller, acked


def _telemetry_message(device: str, seq: int, mid: int) -> InboundMessage:
    body = {"device_id": device, "seq": seq, "ts": payloads.utc_now()}
    return InboundMessage(f"fleet/{device}/telemetry", _raw(body), 1, False, mid=mid)


class TestControllerIngest:
    def test_a_failing_item_does_not_block_its_batch(self, tmp_path: Path) -> None:
        """25 poison items among good ones: every message is acknowledged, the good ones are
        stored, the poison ones dead-lettered and counted."""

        async def scenario(controller: Controller) -> None:
            writer = asyncio.create_task(controller.ingest._writer())
            letters = asyncio.create_task(controller.ingest._letter_writer())
            for n in range(50):
                device = "poison" if n % 2 else "good"
                controller._on_message(_telemetry_message(device, n, mid=n + 1))
            await controller.ingest._queue.join()
            await controller.ingest._letters.join()
            writer.cancel()
            letters.cancel()

        controller, acked = _controller(tmp_path)
        asyncio.run(scenario(controller))
        assert sorted(acked) == list(range(1, 51))
        assert controller.store.telemetry_seqs("good") == list(range(0, 50, 2))
        assert controller.rejected == {"store_failed": 25}
        status = controller.app.controller_status(StatusRequest())
        assert status.rejected.total == 25
        assert status.dead_letters[0].reason == "store_failed"

    def test_a_locked_database_is_tried_again(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """'database is locked' twice, then the batch commits: stored, nothing refused."""
        import fleet.ingest

        monkeypatch.setattr(fleet.ingest, "_LOCKED_BACKOFF_S", 0.0)
        controller, acked = _controller(tmp_path)
        real_ingest = controller.store.ingest
        failures = [StoreError("database error (database is locked)", path="x")] * 2

        def flaky(batch: list[Inbound]) -> None:
            if failures:
                raise failures.pop()
            real_ingest(batch)

        monkeypatch.setattr(controller.store, "ingest", flaky)

        async def scenario() -> None:
            writer = asyncio.create_task(controller.ingest._writer())
            controller._on_message(_telemetry_message("good", 1, mid=1))
            await controller.ingest._queue.join()
            writer.cancel()

        asyncio.run(scenario())
        assert acked == [1] and not controller.rejected and not failures
        assert controller.store.telemetry_seqs("good") == [1]

    def test_refused_messages_are_acknowledged_and_counted(self, tmp_path: Path) -> None:
        async def scenario(controller: Controller) -> None:
            letters = asyncio.create_task(controller.ingest._letter_writer())
            for mid, payload in enumerate([b"", b"\xff", b'{"seq": -1}', b"[1]"], start=1):
                controller._on_message(
                    InboundMessage("fleet/d/telemetry", payload, 1, False, mid=mid)
                )
            await controller.ingest._letters.join()
            letters.cancel()

        controller, acked = _controller(tmp_path)
        asyncio.run(scenario(controller))
        assert acked == [1, 2, 3, 4]
        assert controller.rejected == {"not_json": 1, "not_utf8": 1, "schema": 1, "not_object": 1}
        assert len(controller.store.dead_letters(10)) == 4

    def test_a_handler_bug_is_acknowledged(self, tmp_path: Path) -> None:
        controller, acked = _controller(tmp_path)

        def broken(_message: InboundMessage, _received: float) -> Inbound:
            raise KeyError("bug")

        import fleet.ingest

        original = fleet.ingest.validate
        fleet.ingest.validate = broken  # type: ignore[assignment]
        try:
            controller._on_message(_telemetry_message("d", 1, mid=9))
        finally:
            fleet.ingest.validate = original
        assert acked == [9] and controller.rejected == {"handler_failed": 1}

    @pytest.mark.parametrize(
        "request_body",
        [
            {"device_id": 5},
            {"device_id": "x", "events": "many"},
            {"device_id": "x", "events": 10**9},
            {"device_id": "UPPER"},
            {"device_id": "x", "more": 1},
            {},
        ],
    )
    def test_malformed_show_request_is_a_payload_error(
        self, tmp_path: Path, request_body: dict[str, Any]
    ) -> None:
        controller, _ = _controller(tmp_path)
        with pytest.raises(PayloadError) as caught:
            controller.rpc.call("devices-show", request_body)
        assert caught.value.reason == "schema"


class TestRateLimiter:
    def test_burst_then_rate(self) -> None:
        now = [0.0]
        limiter = RateLimiter(2.0, 3, clock=lambda: now[0], max_keys=2)
        assert [limiter.admit("a") for _ in range(4)] == [True, True, True, False]
        assert limiter.admit("b")
        now[0] = 0.5
        assert limiter.admit("a") and not limiter.admit("a")
        limiter.admit("c")  # forgets the least recently seen
        assert limiter.admit("b")  # b was forgotten: a fresh bucket


class _Link:
    """Stands in for the controller's link in the file server (ack, info, publish)."""

    def __init__(self, *, broken: bool = False, replies: int = 0) -> None:
        self.acked: list[int] = []
        self.published: list[str] = []
        self.broken = broken
        self.replies = replies
        self.all_replied = asyncio.Event()
        if replies == 0:
            self.all_replied.set()

    def ack(self, message: InboundMessage) -> None:
        self.acked.append(message.mid)

    @property
    def info(self) -> None:
        if self.broken:
            raise RuntimeError("link bug")

    def publish(self, topic: str, _payload: bytes, **_kw: object) -> asyncio.Future[None]:
        self.published.append(topic)
        if len(self.published) >= self.replies:
            self.all_replied.set()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class TestFileServerIngest:
    def _request(self, mid: int, *, response: str | None = "fleet/d-1/file") -> InboundMessage:
        body = b'{"path": "metadata/nosuch.json", "offset": 0, "length": 10}'
        return InboundMessage(
            "fleet/d-1/fetch", body, 1, False, response, b"c" * 16 if response else None, mid
        )

    def _serve(self, tmp_path: Path, link: _Link, messages: list[InboundMessage]) -> Any:
        from fleet.release.fileserver import FileService, RepositoryFiles

        async def scenario() -> FileService:
            service = FileService(link, RepositoryFiles(tmp_path), rate_per_s=0.001, burst=2)  # type: ignore[arg-type]
            for message in messages:
                service.on_message(message)
            async with asyncio.timeout(10):  # the worker thread reads, the reply goes out
                await link.all_replied.wait()
            service.close()
            return service

        return asyncio.run(scenario())

    def test_fetch_storm_is_rate_limited_and_poison_counted(self, tmp_path: Path) -> None:
        link = _Link(replies=2)
        messages = [self._request(n) for n in range(1, 5)]
        messages.append(self._request(5, response=None))
        messages.append(InboundMessage("fleet/d-1/fetch", b"[" * 9000, 1, True, None, None, 6))
        service = self._serve(tmp_path, link, messages)
        assert link.acked == [1, 2, 3, 4, 5, 6]
        assert link.published == ["fleet/d-1/file", "fleet/d-1/file"]
        assert service.rejections.counts == {"rate_limited": 2, "response_topic": 2}

    def test_a_failure_inside_is_counted_not_raised(self, tmp_path: Path) -> None:
        link = _Link(broken=True)
        service = self._serve(tmp_path, link, [self._request(1)])
        assert link.acked == [1]
        assert service.rejections.counts == {"handler_failed": 1}
