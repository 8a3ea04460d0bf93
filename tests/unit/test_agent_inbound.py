"""The agent's inbound edges without a broker: commands, pipeline inputs, desired state,
repository replies, the rejection ledger's snapshot, and events at shutdown.

Poison kinds follow issue 21: deep nesting, huge and negative numbers, wrong types,
unparseable and far-future timestamps, invalid UTF-8, empty, oversized, valid JSON of the
wrong shape. Each must end in a typed refusal that is counted, never in an exception that
escapes a loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from securesystemslib.signer import CryptoSigner

from agent.config import OtaConfig
from agent.control.commands import CaptureRequest, CommandDispatcher, NoArguments
from agent.control.events import EventEmitter
from agent.control.inbound import InboundRejections
from agent.inference.registry import ModelRegistry
from agent.ota.report import Reporter
from agent.ota.transport import RepositoryClient
from agent.ota.trust import OnlineKeys
from agent.ota.updater import OtaUpdater, RefreshLimiter
from agent.ota.watch import RequestWatch
from agent.pipelines.pipeline import Classification, PipelineSpec, SensorPipeline, parse_input
from agent.uplink.forwarder import DiskOutbox
from edge_contract.desired import DesiredModel, DesiredState, parse_desired
from edge_contract.errors import PayloadError, UpdateError
from edge_contract.reasons import Reason
from edge_contract.replies import CommandReply, PingReply
from edge_runtime.mqtt.base import InboundMessage
from edge_runtime.mqtt.link import MqttLink
from fleet.release.repo import sign_desired

DEVICE = "pi-01"
DEEP = b"[" * 6000 + b"]" * 6000  # the 6 KB array of issue 21
POISON: dict[str, bytes] = {
    "deep": DEEP,
    "deep_object": b'{"a":' * 1500 + b"1" + b"}" * 1500,
    "huge_number": b'{"inputs": [1' + b"0" * 400 + b"]}",
    "negative_huge": b'{"inputs": [-1' + b"0" * 30 + b"]}",
    "float_overflow": b'{"inputs": [1e400]}',
    "nan": b'{"inputs": [NaN]}',
    "wrong_types": b'{"inputs": "x", "action": 7, "signed": 1}',
    "bad_timestamp": b'{"ts": "bad", "expires": "yesterday"}',
    "far_future": b'{"ts": "9999-12-31T23:59:59Z"}',
    "not_utf8": b"\xff\xfe{\x80}",
    "empty": b"",
    "oversized": b'{"a": "' + b"x" * (5 * 1024 * 1024) + b'"}',
    "wrong_shape": b'[{"a": 1}, 2, "three"]',
}


class FakeLink:
    """Records publishes; refuses a topic with wildcards as paho does (``ValueError``)."""

    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []

    def publish(self, topic: str, payload: bytes, **_: Any) -> asyncio.Future[None]:
        if "#" in topic or "+" in topic:
            raise ValueError("Publish topic cannot contain wildcards.")
        self.published.append((topic, json.loads(payload)))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def _cmd(name: str, payload: bytes, *, response: str | None = "test/replies") -> InboundMessage:
    return InboundMessage(
        topic=f"fleet/{DEVICE}/cmd/{name}",
        payload=payload,
        qos=1,
        retain=False,
        response_topic=response,
        correlation_data=b"c",
    )


class _ActionReply(CommandReply):
    """A test handler's reply: echoes the validated request."""

    action: str


def _dispatcher() -> tuple[CommandDispatcher, FakeLink, InboundRejections]:
    link = FakeLink()
    rejections = InboundRejections()
    dispatcher = CommandDispatcher(DEVICE, cast(MqttLink, link), rejections)

    async def ping(_: NoArguments) -> PingReply:
        return PingReply(pong=True)

    async def capture(request: CaptureRequest) -> CommandReply:
        return _ActionReply(action=request.action)

    async def broken(_: NoArguments) -> CommandReply:
        raise RecursionError("maximum recursion depth exceeded")

    dispatcher.register("ping", ping, NoArguments)
    dispatcher.register("capture", capture, CaptureRequest)
    dispatcher.register("broken", broken, NoArguments)
    return dispatcher, link, rejections


async def _run_all(dispatcher: CommandDispatcher, messages: list[InboundMessage]) -> None:
    """Feed ``messages`` through the real dispatch loop, then check the loop still runs."""
    loop_task = asyncio.create_task(dispatcher.run())
    for message in messages:
        dispatcher.on_message(message)
    for _ in range(len(messages) * 5 + 10):
        await asyncio.sleep(0)
    assert not loop_task.done(), loop_task.exception() if loop_task.done() else None
    loop_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loop_task


class TestCommands:
    def test_every_poison_body_is_refused_counted_and_the_loop_goes_on(self) -> None:
        dispatcher, link, rejections = _dispatcher()
        kinds = [k for k in POISON if k != "empty"]  # an empty body is a valid ping
        messages = [_cmd("ping", POISON[k]) for k in kinds] + [_cmd("ping", b"{}")]
        asyncio.run(_run_all(dispatcher, messages))
        replies = [body for _, body in link.published]
        assert len(replies) == len(kinds) + 1
        assert [r["ok"] for r in replies] == [False] * len(kinds) + [True]
        assert replies[-1]["pong"] is True
        counts = rejections.snapshot()
        assert counts["total"] == len(kinds)
        assert counts["by_reason"]["too_deep"] == 2
        assert counts["by_reason"]["too_large"] == 1
        assert counts["by_reason"]["not_utf8"] == 1
        assert counts["by_reason"]["not_object"] == 1
        assert counts["by_reason"]["schema"] == 3  # wrong types, timestamps: unknown fields
        assert "nested 6000 levels" in replies[0]["error"]

    def test_typed_requests_refuse_unknown_fields_and_values(self) -> None:
        dispatcher, link, rejections = _dispatcher()
        messages = [
            _cmd("capture", b'{"action": "upload"}'),
            _cmd("capture", b'{"action": "format-disk"}'),
            _cmd("capture", b'{"action": "list", "extra": 1}'),
            _cmd("ping", b'{"unexpected": true}'),
            _cmd("nosuch", b"{}"),
        ]
        asyncio.run(_run_all(dispatcher, messages))
        replies = [body for _, body in link.published]
        assert replies[0] == {**replies[0], "ok": True, "action": "upload"}
        assert [r["ok"] for r in replies[1:]] == [False] * 4
        assert "action" in replies[1]["error"]
        assert "unknown command" in replies[4]["error"]
        assert rejections.snapshot()["by_reason"] == {"schema": 3, "unknown_command": 1}

    def test_a_handler_raising_anything_is_answered_and_dead_lettered(self) -> None:
        dispatcher, link, rejections = _dispatcher()
        asyncio.run(_run_all(dispatcher, [_cmd("broken", b""), _cmd("ping", b"")]))
        replies = [body for _, body in link.published]
        assert replies[0]["ok"] is False and "RecursionError" in replies[0]["error"]
        assert replies[1]["ok"] is True
        assert rejections.snapshot() == {"total": 1, "by_reason": {"handler_failed": 1}}
        letter = rejections.ledger.recent()[0]
        assert letter.topic == f"fleet/{DEVICE}/cmd/broken"

    def test_a_reply_that_cannot_be_published_does_not_end_the_loop(self) -> None:
        """A response topic is the sender's claim: one with wildcards makes paho raise."""
        dispatcher, link, _ = _dispatcher()
        messages = [_cmd("ping", b"{}", response="evil/#"), _cmd("ping", b"{}")]
        asyncio.run(_run_all(dispatcher, messages))
        assert [topic for topic, _ in link.published] == ["test/replies"]

    def test_cancellation_is_not_swallowed(self) -> None:
        dispatcher, _, _ = _dispatcher()

        async def stuck(_: NoArguments) -> CommandReply:
            await asyncio.sleep(3600)
            return CommandReply()

        dispatcher.register("stuck", stuck, NoArguments)

        async def main() -> None:
            task = asyncio.create_task(dispatcher.dispatch(_cmd("stuck", b"")))
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(main())


class TestPipelineInput:
    @pytest.mark.parametrize(
        ("kind", "reason"),
        [
            ("deep", "too_deep"),
            ("deep_object", "too_deep"),
            ("huge_number", "number_range"),
            ("negative_huge", "number_range"),
            ("float_overflow", "number_range"),
            ("nan", "number_range"),
            ("wrong_types", "schema"),
            ("bad_timestamp", "schema"),
            ("far_future", "schema"),
            ("not_utf8", "not_utf8"),
            ("empty", "not_json"),
            ("oversized", "too_large"),
            ("wrong_shape", "schema"),
        ],
    )
    def test_poison_is_a_payload_error_with_its_reason(self, kind: str, reason: str) -> None:
        with pytest.raises(PayloadError) as caught:
            parse_input(POISON[kind])
        assert caught.value.reason == reason

    def test_good_inputs_still_parse(self) -> None:
        assert parse_input(b'{"inputs": [[1, 2], [3.5]]}') == [1.0, 2.0, 3.5]
        assert parse_input(b"[-9223372036854775808]") == [float(-(2**63))]
        with pytest.raises(PayloadError) as caught:
            parse_input(b"[]")
        assert caught.value.reason == "empty"


# -- desired state --------------------------------------------------------------------------

ONLINE = CryptoSigner.generate_ed25519()
ATTACKER = CryptoSigner.generate_ed25519()


def _state(**changes: Any) -> DesiredState:
    fields: dict[str, Any] = {
        "device_id": DEVICE,
        "counter": 5,
        "expires": datetime.now(UTC) + timedelta(hours=1),
        "action": "deploy",
        "model": DesiredModel(name="digits", version="2", target="models/digits/2/d.onnx"),
    }
    return DesiredState(**{**fields, **changes})


class FakeTrust:
    """The trusted repository without a network: counts what would fetch."""

    def __init__(self) -> None:
        self.refreshes = 0
        self.keys = OnlineKeys({ONLINE.public_key.keyid: ONLINE.public_key}, 1)

    def refresh(self) -> None:
        self.refreshes += 1

    def online_keys(self) -> OnlineKeys:
        return self.keys


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _updater(tmp_path: Path) -> tuple[OtaUpdater, FakeTrust, list[tuple[str, dict[str, Any]]]]:
    events: list[tuple[str, dict[str, Any]]] = []

    async def emit(event: str, **fields: Any) -> None:
        events.append((event, fields))

    async def publish_reported(_: dict[str, Any]) -> None:
        return None

    config = OtaConfig(enabled=True, trusted_root=tmp_path / "root.json")
    updater = OtaUpdater(
        config,
        device_id=DEVICE,
        state_dir=tmp_path,
        link=cast(MqttLink, FakeLink()),
        registry=cast(ModelRegistry, None),
        watch=RequestWatch(),
        reporter=Reporter(emit, publish_reported, "0.0.0"),
        rejections=InboundRejections(),
    )
    trust = FakeTrust()
    updater._trust = trust  # type: ignore[assignment]  # the seam: no TUF client, no network
    return updater, trust, events


def _junk_desired() -> list[bytes]:
    good = json.loads(sign_desired(_state(), ONLINE))
    shapes: list[dict[str, Any]] = [
        {"signed": "x", "signatures": []},
        {"signed": {**good["signed"], "counter": 2**64}, "signatures": good["signatures"]},
        {"signed": {**good["signed"], "counter": -3}, "signatures": good["signatures"]},
        {"signed": {**good["signed"], "expires": "bad"}, "signatures": good["signatures"]},
        {"signed": {**good["signed"], "extra": 1}, "signatures": good["signatures"]},
        {"signed": {**good["signed"], "device_id": "pi-02"}, "signatures": good["signatures"]},
        {"signed": {**good["signed"], "counter": 1}, "signatures": good["signatures"]},
        {
            "signed": {**good["signed"], "expires": "2001-01-01T00:00:00Z"},
            "signatures": good["signatures"],
        },
    ]
    raw = [json.dumps(s).encode() for s in shapes]
    raw += [POISON[k] for k in ("deep", "deep_object", "not_utf8", "wrong_shape", "oversized")]
    raw += [b"\x00" * 100, b"null", b"{}", b'{"signed": {}, "signatures": {}}']
    raw += [b'{"signed": {}, "signatures": [' + b"{}," * 20 + b"{}]}"]
    raw += [POISON["huge_number"], POISON["nan"]]
    return raw


class TestDesiredState:
    @pytest.mark.parametrize("kind", list(POISON))
    def test_poison_is_malformed_desired(self, kind: str) -> None:
        with pytest.raises(UpdateError) as caught:
            parse_desired(POISON[kind])
        assert caught.value.reason == Reason.MALFORMED_DESIRED

    def test_twenty_junk_messages_cost_no_fetch(self, tmp_path: Path) -> None:
        """Issue 21: each junk desired state used to refresh the TUF metadata first."""
        updater, trust, events = _updater(tmp_path)
        (tmp_path / "ota").mkdir()
        (tmp_path / "ota" / "device.json").write_text(json.dumps({"counter": 4, "done": True}))
        junk = _junk_desired()
        assert len(junk) == 20

        async def main() -> None:
            for payload in junk:
                assert await updater._handle(payload) is False  # refused, never retried

        asyncio.run(main())
        assert trust.refreshes == 0
        counts = updater._rejections.snapshot()
        assert counts["total"] == 20
        assert set(counts["by_reason"]) == {
            Reason.MALFORMED_DESIRED,
            Reason.DESIRED_OTHER_DEVICE,
            Reason.DESIRED_REPLAYED,
            Reason.DESIRED_EXPIRED,
        }
        assert all(name == "ota_rejected" for name, _ in events)

    def test_a_burst_of_junk_is_refused_on_arrival_each_counted(self, tmp_path: Path) -> None:
        """Only one desired state waits (the newest wins), so junk is refused before that."""
        updater, trust, events = _updater(tmp_path)
        junk = [p for p in _junk_desired() if len(p) <= 16 * 1024 and b'"signed": {"' not in p]
        topic = f"fleet/{DEVICE}/desired"

        async def main() -> None:
            for payload in junk:
                assert updater.on_message(InboundMessage(topic, payload, qos=1, retain=True))
            for _ in range(20):
                await asyncio.sleep(0)

        asyncio.run(main())
        assert updater._inbox.empty()
        assert updater._rejections.snapshot() == {
            "total": len(junk),
            "by_reason": {Reason.MALFORMED_DESIRED: len(junk)},
        }
        assert len(events) == len(junk) and trust.refreshes == 0

    def test_forged_signatures_refresh_at_most_once_per_interval(self, tmp_path: Path) -> None:
        updater, trust, _ = _updater(tmp_path)
        clock = FakeClock()
        updater.rekey = RefreshLimiter(60.0, clock=clock)

        async def handle_forged(count: int) -> None:
            for n in range(count):
                forged = sign_desired(_state(counter=10 + n), ATTACKER)
                await updater._handle(forged)

        asyncio.run(handle_forged(20))
        assert trust.refreshes == 1  # a rotated key would have been learnt by this one
        assert (updater.rekey.admitted, updater.rekey.refused) == (1, 19)
        clock.now += 61
        asyncio.run(handle_forged(5))
        assert trust.refreshes == 2
        counts = updater._rejections.snapshot()
        assert counts == {"total": 25, "by_reason": {Reason.DESIRED_UNSIGNED: 25}}

    def test_a_valid_message_refreshes_once_and_is_accepted(self, tmp_path: Path) -> None:
        updater, trust, _ = _updater(tmp_path)
        payload = sign_desired(_state(), ONLINE)
        parsed = parse_desired(payload)

        async def main() -> DesiredState:
            return await updater._accept(parsed, payload, {}, resuming=False)

        assert asyncio.run(main()) == _state().model_copy(update={"expires": parsed.state.expires})
        assert trust.refreshes == 1
        assert updater.rekey.admitted == 0

    def test_a_key_revoked_by_the_refresh_is_refused(self, tmp_path: Path) -> None:
        updater, trust, _ = _updater(tmp_path)
        payload = sign_desired(_state(), ONLINE)

        def rotate() -> None:
            trust.refreshes += 1
            trust.keys = OnlineKeys({ATTACKER.public_key.keyid: ATTACKER.public_key}, 1)

        trust.refresh = rotate  # type: ignore[method-assign]
        with pytest.raises(UpdateError) as caught:
            asyncio.run(updater._accept(parse_desired(payload), payload, {}, resuming=False))
        assert caught.value.reason == Reason.DESIRED_UNSIGNED


class TestLoopsSurviveBugs:
    def test_the_ota_loop_survives_any_exception_of_one_desired_state(self, tmp_path: Path) -> None:
        updater, _, _ = _updater(tmp_path)
        handled: list[bytes] = []

        async def handle(payload: bytes, *, retained: bool = False) -> bool:
            handled.append(payload)
            if payload == b"first":
                raise RecursionError("a bug deep in the update")
            return False

        updater._handle = handle  # type: ignore[method-assign]
        updater._activator.resume = _no_resume  # type: ignore[method-assign]
        updater._reporter.publish = _nothing  # type: ignore[method-assign]

        async def main() -> None:
            task = asyncio.create_task(updater.run())
            updater._offer(b"first", retained=True)
            await _until(lambda: len(handled) == 1)  # run() first looks at the disk
            updater._offer(b"second")
            await _until(lambda: len(handled) == 2)
            assert not task.done()
            task.cancel()

        asyncio.run(main())
        assert handled == [b"first", b"second"]
        assert updater._rejections.snapshot()["by_reason"] == {"handler_failed": 1}

    def test_a_pipeline_survives_any_exception_of_one_input(self) -> None:
        async def classify(features: list[float]) -> Classification:
            if features[0] < 0:
                raise MemoryError("a bug, not an InferenceError")
            return Classification("high", features[0])

        async def emit(*_: Any, **__: Any) -> None:
            return None

        pipeline = SensorPipeline(PipelineSpec("p", None, 1.0, None), classify, None, emit)

        async def main() -> None:
            task = asyncio.create_task(pipeline.run())
            pipeline.submit([-1.0])
            pipeline.submit([0.7])
            for _ in range(10):
                await asyncio.sleep(0)
            assert not task.done()
            task.cancel()

        asyncio.run(main())
        assert pipeline.counters.results == 1
        assert pipeline.counters.errors_by_kind == {"MemoryError": 1}


async def _until(condition: Callable[[], bool]) -> None:
    """Let the loop (and its worker threads) run until ``condition`` holds, 5 s at most."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def _no_resume(_store: Any) -> None:
    return None


async def _nothing() -> None:
    return None


class TestRepositoryReplies:
    def test_junk_replies_are_counted(self) -> None:
        rejections = InboundRejections()
        client = RepositoryClient(cast(MqttLink, FakeLink()), DEVICE, rejections=rejections)
        topic = client.subscription()
        header = b'{"status":200,"offset":0,"size":99999999999999999999999}'
        for payload in [
            *POISON.values(),
            len(header).to_bytes(2, "big") + header,
            b"\x00\x02[]",
            b"\x00\x10" + b"[" * 16,
            b'\x00\x0c{"status":1}',  # well formed, but no request waits for it
        ]:
            client.on_message(InboundMessage(topic, payload, qos=1, retain=True))
        counts = rejections.snapshot()
        assert counts["total"] == len(POISON) + 4
        assert counts["by_reason"] == {"bad_reply": len(POISON) + 3, "unmatched_reply": 1}


class TestRejectionSnapshot:
    def test_snapshot_is_a_copy(self) -> None:
        rejections = InboundRejections()
        first = rejections.snapshot()
        rejections.reject(InboundMessage("t", b"x", 1, False), "too_deep", "d")
        assert first == {"total": 0, "by_reason": {}}
        snap = rejections.snapshot()
        snap["by_reason"]["too_deep"] = 99
        assert rejections.snapshot() == {"total": 1, "by_reason": {"too_deep": 1}}


class RecordingOutbox:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.closed = False

    async def append(self, _topic: str, payload: bytes, **_: Any) -> None:
        await asyncio.sleep(0)  # a trip to the worker thread
        if self.closed:
            raise RuntimeError("Cannot operate on a closed database.")
        self.rows.append(json.loads(payload))


class TestEventsAtShutdown:
    def test_an_event_spawned_before_close_reaches_the_outbox(self) -> None:
        """As the registry does at unload: a sync callback spawns the emit, not awaited."""
        outbox = RecordingOutbox()
        emitter = EventEmitter(DEVICE, cast(DiskOutbox, outbox))

        async def main() -> None:
            held = {asyncio.get_running_loop().create_task(emitter.emit("model_unloaded"))}
            await emitter.close()
            outbox.closed = True
            await asyncio.gather(*held)

        asyncio.run(main())
        assert [row["event"] for row in outbox.rows] == ["model_unloaded"]

    def test_nothing_is_scheduled_after_close(self) -> None:
        outbox = RecordingOutbox()
        emitter = EventEmitter(DEVICE, cast(DiskOutbox, outbox))

        async def main() -> None:
            await emitter.close()
            outbox.closed = True
            await emitter.emit("link_down", reason="late")
            assert len(asyncio.all_tasks()) == 1  # only main: no append was scheduled

        asyncio.run(main())
        assert outbox.rows == []
        assert emitter.refused_after_close == 1
