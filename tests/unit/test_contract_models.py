"""Every payload model of the wire contract, through the decoder each side really uses: a
valid message survives a round trip unchanged, and a bad value in any field is refused with
that field named (its dotted path, as in ``queue.dropped: ...``), under the reason the
rejection counters are keyed by. Pure: no broker, no keys, no files.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from edge_contract import fetchcodec, payloads
from edge_contract.card import ModelCard, parse_card
from edge_contract.controller import (
    RPC_REPLIES,
    DeployReply,
    DevicesReply,
    Refusal,
    decode_reply,
    reply_body,
)
from edge_contract.desired import DesiredState, envelope, parse_desired
from edge_contract.errors import CardError, PayloadError, UpdateError
from edge_contract.messages import (
    MODELS,
    InferenceReport,
    ModelStats,
    TelemetryMessage,
    decode_device_message,
)
from edge_contract.release import CUSTOM_KEY, ModelRelease, chunk_hashes, release_from_custom
from edge_contract.replies import (
    COMMAND_REPLIES,
    CapturedInput,
    CaptureListReply,
    CommandReply,
    HealthReply,
    PingReply,
)
from edge_contract.topics import Channel

TS = "2026-12-07T04:00:00.000Z"
CARD: dict[str, Any] = {
    "name": "digits",
    "version": "1",
    "runtime": "onnx",
    "inputs": [
        {
            "name": "x",
            "dtype": "int8",
            "shape": [1, 64],
            "quantization": {"scale": 0.5, "zero_point": -3},
        }
    ],
    "outputs": [{"name": "y", "dtype": "float32", "shape": [1, 10]}],
    "labels": [str(n) for n in range(10)],
    "golden": {"inputs": {"x": [[0.0] * 64]}, "outputs": {"y": [[0.1] * 10]}, "atol": 0.01},
    "reference": {
        "samples": 100,
        "confidence_edges": [0.0, 0.5, 1.0],
        "confidence_fractions": [0.2, 0.8],
    },
}
RELEASE: dict[str, Any] = {
    "name": "digits",
    "version": "1",
    "release": 3,
    "hardware": ["rpi4"],
    "min_agent_version": "0.1",
    "file_name": "digits.onnx",
    "length": 2048,
    "chunk_size": 1024,
    "chunks": chunk_hashes([b"a" * 1024, b"b" * 1024]),
    "card": CARD,
}


@dataclass(frozen=True)
class Case:
    """One payload model: a valid body, how each side decodes and encodes it, what is refused."""

    valid: dict[str, Any]
    decode: Callable[[bytes], BaseModel]
    encode: Callable[[Any], bytes]
    error: type[Exception]
    # (dotted path in the body, bad value, the field path the error must name)
    bad: list[tuple[str, object, str]] = field(default_factory=list)
    reason: str | None = None


def _device(channel: Channel) -> Callable[[bytes], BaseModel]:
    return lambda payload: decode_device_message(channel, "pi-01", payload)[0]


def _device_encode(model: BaseModel) -> bytes:
    return json.dumps(model.model_dump(mode="json", exclude_unset=True)).encode()


def _reply(model: type[BaseModel]) -> Callable[[bytes], BaseModel]:
    """A command reply (or another agent-built message) as a client validates it."""
    return lambda payload: payloads.decode_model(model, payload)


def _reply_encode(reply: CommandReply) -> bytes:
    return payloads.encode(reply.body())


def _fetch_encode(request: fetchcodec.FetchRequest) -> bytes:
    return fetchcodec.encode_request(request.path, request.offset, request.length)


STAMP = {"device_id": "pi-01", "ts": TS}
HEALTH = {
    "status": "degraded",
    "subsystems": {
        "mqtt": {"status": "ok", "reason": ""},
        "disk": {"status": "degraded", "reason": "state dir disk 91.0% full"},
    },
}
CAPTURE_STATS = {
    "count": 3,
    "bytes": 4096,
    "max_bytes": 1048576,
    "dropped_queue_full": 0,
    "evicted": 1,
    "write_errors": 0,
}

# ``inference`` as the agent's model monitor writes it (agent/inference/metrics.py view_json).
INFERENCE: dict[str, Any] = {
    "models": [
        {
            "model": "digits",
            "version": "1",
            "loaded": True,
            "runtime": "onnx",
            "task": "classification",
            "requests": 1200,
            "batches": 300,
            "errors": {"InvalidInputError": 2, "NonFiniteOutputError": 1},
            "nonfinite_outputs": 1,
            "latency_quantile_seconds": {"0.5": 0.00021, "0.95": 0.0009, "0.99": 0.0031},
            "throughput_rows_per_second": 19.5,
            "output_window_samples": 1000,
            "confidence_mean": 0.93,
            "confidence_std": 0.08,
            "drift_psi": {"class": 0.031, "confidence": 0.27},
            "drift_level": "significant",
            "low_confidence": 4,
            "feedback": 30,
            "accuracy": 0.9,
            "precision": 0.88,
            "recall": 0.87,
            "top_classes": {"7": 130, "1": 120},
        },
        {"model": "digits", "version": "0", "loaded": False, "requests": 0, "batches": 0},
    ],
    "internal_errors": 0,
    "load_failures": {"/models/broken.onnx": "golden output differs"},
    "capture": CAPTURE_STATS,
}


def _release_decode(payload: bytes) -> ModelRelease:
    return release_from_custom(json.loads(payload), target="models/digits/1/digits.onnx")


CASES: dict[str, Case] = {
    "status": Case(
        valid={
            "device_id": "pi-01",
            "state": "offline",
            "agent_version": "0.1.0",
            "models": {"digits": "1"},
            "boot_time": TS,
            "started_at": TS,
            "ts": TS,
            "reason": "shutdown",
        },
        decode=_device(Channel.STATUS),
        encode=_device_encode,
        error=PayloadError,
        reason="schema",
        bad=[
            ("state", "dozing", "state"),
            ("ts", "yesterday", "ts"),
            ("models.digits", 1, "models.digits"),
            ("device_id", "Pi 01!", "device_id"),
            ("boot_time", 5, "boot_time"),
            ("surprise", 1, "surprise"),
        ],
    ),
    "telemetry": Case(
        valid={
            "device_id": "pi-01",
            "stream": "0123456789abcdef",
            "seq": 7,
            "ts": TS,
            "cpu": {"percent": 12.5},
            "memory": {"used_percent": 40.0},
            "temperatures_c": {"thermal/cpu": 51.0},
            "health": {"status": "ok"},
            "queue": {"depth": 0, "dropped": 0, "dropped_total": 2},
        },
        decode=_device(Channel.TELEMETRY),
        encode=_device_encode,
        error=PayloadError,
        reason="schema",
        bad=[
            ("seq", -1, "seq"),
            ("seq", "7", "seq"),
            ("ts", "1999-01-01T00:00:00Z", "ts"),
            ("cpu.percent", 101.0, "cpu.percent"),
            ("memory.used_percent", "full", "memory.used_percent"),
            ("temperatures_c.thermal/cpu", -300.0, "temperatures_c.thermal/cpu"),
            ("health.status", 3, "health.status"),
            ("queue.dropped", "x", "queue.dropped"),
            ("stream", "s" * 65, "stream"),
        ],
    ),
    "telemetry_inference": Case(
        valid={**STAMP, "seq": 8, "inference": INFERENCE},
        decode=_device(Channel.TELEMETRY),
        encode=_device_encode,
        error=PayloadError,
        reason="schema",
        bad=[
            ("inference.models.0.requests", -1, "inference.models.0.requests"),
            ("inference.models.0.requests", 2.5, "inference.models.0.requests"),
            ("inference.models.0.model", "", "inference.models.0.model"),
            ("inference.models.0.version", "v" * 129, "inference.models.0.version"),
            (
                "inference.models.0.errors.InvalidInputError",
                -2,
                "inference.models.0.errors.InvalidInputError",
            ),
            ("inference.models.0.nonfinite_outputs", "1", "inference.models.0.nonfinite_outputs"),
            ("inference.models.0.drift_psi.class", -0.1, "inference.models.0.drift_psi.class"),
            ("inference.models.0.drift_psi.class", 1e7, "inference.models.0.drift_psi.class"),
            ("inference.models.0.drift_level", "awful", "inference.models.0.drift_level"),
            ("inference.models.0.accuracy", 1.5, "inference.models.0.accuracy"),
            ("inference.models.0.feedback", 1.5, "inference.models.0.feedback"),
            ("inference.models", {"digits": 1}, "inference.models"),
            ("inference.models.0", "digits@1", "inference.models.0"),
            ("inference.internal_errors", -1, "inference.internal_errors"),
        ],
    ),
    "event": Case(
        valid={"device_id": "pi-01", "event": "link_up", "ts": TS, "outage_s": 30.4},
        decode=_device(Channel.EVENTS),
        encode=_device_encode,
        error=PayloadError,
        reason="schema",
        bad=[("event", "Link Up", "event"), ("ts", 17, "ts")],
    ),
    "reported": Case(
        valid={
            "device_id": "pi-01",
            "agent_version": "0.1.0",
            "desired_counter": 7,
            "ts": TS,
            "models": {
                "digits": {
                    "active": {"slot": "b", "version": "2"},
                    "pending": None,
                    "previous": {"slot": "a", "version": "1"},
                    "step": "committed",
                }
            },
        },
        decode=_device(Channel.REPORTED),
        encode=_device_encode,
        error=PayloadError,
        reason="schema",
        bad=[
            ("desired_counter", -1, "desired_counter"),
            ("models.digits.active.version", 2, "models.digits.active.version"),
            ("models.digits.step", ["x"], "models.digits.step"),
            ("agent_version", 1, "agent_version"),
        ],
    ),
    "desired": Case(
        valid={
            "signed": {
                "device_id": "pi-01",
                "counter": 7,
                "expires": "2026-12-08T00:00:00Z",
                "action": "deploy",
                "model": {
                    "name": "digits",
                    "version": "2",
                    "target": "models/digits/2/digits.onnx",
                },
            },
            "signatures": [],
        },
        decode=lambda payload: parse_desired(payload).state,
        encode=lambda state: envelope(state, []),
        error=UpdateError,
        reason="malformed_desired",
        bad=[
            ("signed.counter", 0, "counter"),
            ("signed.counter", 7.5, "counter"),
            ("signed.expires", "soon", "expires"),
            ("signed.action", "explode", "action"),
            ("signed.model.name", "Digits!", "model.name"),
            ("signed.model.version", "", "model.version"),
            ("signed.model.target", "", "model.target"),
            ("signed.extra", 1, "extra"),
        ],
    ),
    "release": Case(
        valid={CUSTOM_KEY: RELEASE},
        decode=_release_decode,
        encode=lambda release: json.dumps(release.custom()).encode(),
        error=UpdateError,
        reason="malformed_release",
        bad=[
            (f"{CUSTOM_KEY}.release", 0, "release"),
            (f"{CUSTOM_KEY}.hardware", [], "hardware"),
            (f"{CUSTOM_KEY}.min_agent_version", "new", "min_agent_version"),
            (f"{CUSTOM_KEY}.chunk_size", 10, "chunk_size"),
            (f"{CUSTOM_KEY}.length", 0, "length"),
            (f"{CUSTOM_KEY}.card.runtime", "caffe", "card.runtime"),
        ],
    ),
    "card": Case(
        valid=CARD,
        decode=lambda payload: parse_card(payload, source="digits.onnx.card.json"),
        encode=lambda card: card.model_dump_json().encode(),
        error=CardError,
        bad=[
            ("runtime", "caffe", "runtime"),
            ("inputs.0.dtype", "float64", "inputs.0.dtype"),
            ("inputs.0.quantization.scale", 0, "inputs.0.quantization.scale"),
            ("golden.atol", -1, "golden.atol"),
            ("reference.samples", 0, "reference.samples"),
            ("outputs", [], "outputs"),
            ("name", "Digits!", "name"),
        ],
    ),
    "reply_ping": Case(
        valid={"ok": True, "command": "ping", "pong": True, **STAMP},
        decode=_reply(PingReply),
        encode=_reply_encode,
        error=PayloadError,
        reason="schema",
        bad=[
            ("pong", "yes", "pong"),
            ("ok", 1, "ok"),
            ("command", "", "command"),
            ("ts", "yesterday", "ts"),
            ("device_id", "Pi 01!", "device_id"),
            ("surprise", 1, "surprise"),
        ],
    ),
    "reply_health": Case(
        valid={
            "ok": True,
            "command": "health",
            "health": HEALTH,
            "queue": {"depth": 2, "bytes": 900, "dropped_total": 0},
            "link": {"connected": True, "outages": 1, "last_outage_s": 30.5},
            "rejected": {"total": 3, "by_reason": {"schema": 2, "too_deep": 1}},
            **STAMP,
        },
        decode=_reply(HealthReply),
        encode=_reply_encode,
        error=PayloadError,
        reason="schema",
        bad=[
            ("health.status", "sick", "health.status"),
            ("health.subsystems.disk.status", "full", "health.subsystems.disk.status"),
            ("health.subsystems.disk.reason", None, "health.subsystems.disk.reason"),
            ("queue.depth", -1, "queue.depth"),
            ("queue.max_bytes", 1, "queue.max_bytes"),
            ("link.connected", "yes", "link.connected"),
            ("link.last_outage_s", -1.0, "link.last_outage_s"),
            ("rejected.total", 1.5, "rejected.total"),
            ("rejected.by_reason.schema", -2, "rejected.by_reason.schema"),
        ],
    ),
    "reply_capture_list": Case(
        valid={"ok": True, "command": "capture", "count": 3, "stats": CAPTURE_STATS, **STAMP},
        decode=_reply(CaptureListReply),
        encode=_reply_encode,
        error=PayloadError,
        reason="schema",
        bad=[
            ("count", "3", "count"),
            ("stats.evicted", -1, "stats.evicted"),
            ("stats.surprise", 1, "stats.surprise"),
        ],
    ),
    "reply_capture_clear": Case(
        valid={"ok": True, "command": "capture", "cleared": 2, **STAMP},
        decode=_reply(COMMAND_REPLIES["capture"][1]),
        encode=_reply_encode,
        error=PayloadError,
        reason="schema",
        bad=[("cleared", -1, "cleared"), ("cleared", True, "cleared")],
    ),
    "reply_capture_upload": Case(
        valid={"ok": True, "command": "capture", "uploaded": 50, **STAMP},
        decode=_reply(COMMAND_REPLIES["capture"][2]),
        encode=_reply_encode,
        error=PayloadError,
        reason="schema",
        bad=[("uploaded", 1.5, "uploaded"), ("uploaded", None, "uploaded")],
    ),
    "reply_config_get": Case(
        valid={
            "ok": True,
            "command": "config-get",
            "config": {"device_id": "pi-01", "mqtt": {"password": "**********"}},
            "path": "/etc/edge-agent/agent.toml",
            "pending": False,
            **STAMP,
        },
        decode=_reply(COMMAND_REPLIES["config-get"][0]),
        encode=_reply_encode,
        error=PayloadError,
        reason="schema",
        bad=[("pending", "no", "pending"), ("config", [], "config")],
    ),
    "reply_config_set": Case(
        valid={
            "ok": True,
            "command": "config-set",
            "path": "/etc/edge-agent/agent.toml",
            "previous": "/etc/edge-agent/agent.toml.previous",
            "restarting": True,
            **STAMP,
        },
        decode=_reply(COMMAND_REPLIES["config-set"][0]),
        encode=_reply_encode,
        error=PayloadError,
        reason="schema",
        bad=[("restarting", 1, "restarting"), ("previous", None, "previous")],
    ),
    "reply_logs": Case(
        valid={"ok": True, "command": "logs", "lines": ["one", "two"], **STAMP},
        decode=_reply(COMMAND_REPLIES["logs"][0]),
        encode=_reply_encode,
        error=PayloadError,
        reason="schema",
        bad=[("lines", "one", "lines"), ("lines.0", 1, "lines.0")],
    ),
    "reply_restart": Case(
        valid={"ok": True, "command": "restart", "restarting": True, **STAMP},
        decode=_reply(COMMAND_REPLIES["restart"][0]),
        encode=_reply_encode,
        error=PayloadError,
        reason="schema",
        bad=[("restarting", "yes", "restarting")],
    ),
    "reply_refused": Case(
        valid={"ok": False, "error": "unknown command 'x'", **STAMP},
        decode=_reply(CommandReply),
        encode=_reply_encode,
        error=PayloadError,
        reason="schema",
        bad=[("error", 5, "error"), ("ok", "false", "ok"), ("pong", True, "pong")],
    ),
    "captured_input": Case(
        valid={
            "model": "digits",
            "version": "1",
            "prediction_id": "p-1",
            "label": "7",
            "confidence": 0.31,
            "ts": 1796616000.5,
            "inputs_npz_b64": "UEsDBBQAAAAIAA==",
        },
        decode=_reply(CapturedInput),
        encode=lambda captured: payloads.encode(captured.model_dump(mode="json")),
        error=PayloadError,
        reason="schema",
        bad=[
            ("confidence", 1.5, "confidence"),
            ("inputs_npz_b64", "not base64!", "inputs_npz_b64"),
            ("ts", "now", "ts"),
            ("model", "", "model"),
        ],
    ),
    "fetch_request": Case(
        valid={"path": "metadata/2.root.json", "offset": 0, "length": 262144},
        decode=fetchcodec.decode_request,
        encode=_fetch_encode,
        error=PayloadError,
        reason="schema",
        bad=[
            ("offset", -1, "offset"),
            ("offset", "0", "offset"),
            ("length", 0, "length"),
            ("length", fetchcodec.MAX_RANGE_LENGTH + 1, "length"),
            ("path", "", "path"),
            ("surprise", 1, "surprise"),
        ],
    ),
}


def _with(body: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    """``body`` with the value at dotted ``path`` replaced (list indexes as numbers)."""
    changed = copy.deepcopy(body)
    *parents, last = path.split(".")
    node: Any = changed
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return changed


def _payload(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def test_every_device_message_model_has_a_case() -> None:
    decoded = {type(CASES[name].decode(_payload(CASES[name].valid))) for name in CASES}
    assert set(MODELS.values()) <= decoded
    assert {DesiredState, ModelRelease, ModelCard} <= decoded
    replies = {model for models in COMMAND_REPLIES.values() for model in models}
    assert replies | {CommandReply, CapturedInput, fetchcodec.FetchRequest} <= decoded


def test_a_reply_is_written_as_the_agent_always_wrote_it() -> None:
    """Envelope after the command's fields; ``command`` and ``error`` absent, not null."""
    answered = PingReply(pong=True).model_copy(update={"ok": True, "command": "ping"})
    refused = CommandReply(ok=False, error="busy: too many pending commands")

    assert payloads.encode(answered.stamped("pi-01", TS).body()) == (
        b'{"ok":true,"command":"ping","pong":true,"device_id":"pi-01","ts":"%s"}' % TS.encode()
    )
    assert payloads.encode(refused.stamped("pi-01", TS).body()) == (
        b'{"ok":false,"error":"busy: too many pending commands","device_id":"pi-01","ts":"%s"}'
        % TS.encode()
    )


def test_the_fetch_request_is_written_as_before() -> None:
    assert fetchcodec.encode_request("targets/m.onnx", 8, 16) == (
        b'{"path": "targets/m.onnx", "offset": 8, "length": 16}'
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_valid_message_survives_a_round_trip(name: str) -> None:
    case = CASES[name]
    model = case.decode(_payload(case.valid))

    again = case.decode(case.encode(model))

    assert again == model
    assert case.encode(again) == case.encode(model)


@pytest.mark.parametrize(
    ("name", "path", "value", "named"),
    [(name, *bad) for name, case in sorted(CASES.items()) for bad in case.bad],
)
def test_a_bad_value_is_refused_naming_its_field(
    name: str, path: str, value: object, named: str
) -> None:
    case = CASES[name]

    with pytest.raises(case.error) as refused:
        case.decode(_payload(_with(case.valid, path, value)))

    assert f"{named}: " in str(refused.value)
    if case.reason is not None:
        assert refused.value.reason == case.reason  # type: ignore[attr-defined]


def test_the_fetch_exchange_round_trips() -> None:
    request = json.loads(fetchcodec.encode_request("targets/models/d.onnx", 1024, 4096))
    reply = fetchcodec.decode_reply(
        fetchcodec.encode_reply(200, b"bytes", 8192, 1024, correlation=b"\x01\x02")
    )

    assert request == {"path": "targets/models/d.onnx", "offset": 1024, "length": 4096}
    assert reply.fields == {"status": 200, "offset": 1024, "size": 8192}
    assert (reply.correlation, bytes(reply.data)) == (b"\x01\x02", b"bytes")


@pytest.mark.parametrize(
    ("header", "named"),
    [
        ({"status": -1, "offset": 0}, "status"),
        ({"status": 200, "offset": "0"}, "offset"),
        ({"status": 200, "size": True}, "size"),
        ({"status": 200, "correlation": "ab" * 65}, "correlation"),
        ({"status": 200, "correlation": 7}, "correlation"),
    ],
)
def test_a_bad_reply_header_is_refused_naming_its_field(header: dict[str, Any], named: str) -> None:
    raw = json.dumps(header).encode()

    with pytest.raises(ValueError, match=named):
        fetchcodec.decode_reply(len(raw).to_bytes(2, "big") + raw + b"data")


# -- the controller's replies (edge_contract.controller) --------------------------------------

SUMMARY: dict[str, Any] = {
    "device_id": "pi-1",
    "online": True,
    "state": "online",
    "agent_version": "0.1.0",
    "last_telemetry_age_s": 1.5,
    "last_seq": 19,
    "cpu_percent": 42.0,
    "memory_percent": 4,
    "temperature_c": None,
    "health": "ok",
    "queue_depth": 0,
    "models": {"digits": "3"},
    "duplicates": 0,
    "admission": "accepted",
    "tags": {"site": "lab"},
}
DETAIL: dict[str, Any] = {
    "summary": SUMMARY,
    "reported": {"models": {"digits": {"step": "committed", "progress": None}}},
    "desired": {"counter": 1, "model": "digits", "version": "3", "action": "deploy"},
    "status": {"state": "online", "models": {"digits": "3"}},
    "telemetry": {"seq": 19, "cpu": {"percent": 42.0, "load": [0.9, 0.4]}},
    "events": [{"event": "boot", "ts": TS}, None],
}
LETTER = {
    "topic": "fleet/x/telemetry",
    "reason": "schema",
    "detail": "seq: too big",
    "excerpt": "{",
    "retained": False,
    "received": 1.0,
}
OPERATOR = {"name": "alice", "key_id": "ab" * 16, "public_key": "k", "added": 1.0}
ROLLOUT_SUMMARY: dict[str, Any] = {
    "rollout_id": "r-0123abcd",
    "name": "night",
    "model": "digits",
    "version": "3",
    "select": "site=lab",
    "phase": "watching",
    "stage": 1,
    "stages": 3,
    "members": 4,
    "reason": "stage 2/3: 3 device(s)",
    "created_at": 1.0,
    "updated_at": 2.0,
}
GATE: dict[str, Any] = {
    "outcome": "fail",
    "verdicts": [
        {
            "metric": "p95_regression",
            "candidate": 0.012,
            "baseline": 0.009,
            "value": 0.33,
            "threshold": 0.2,
            "verdict": "fail",
            "detail": "p95 regression +33% > +20%",
        }
    ],
    "candidate_devices": 1,
    "candidate_requests": 80,
    "baseline_devices": 5,
    "baseline_requests": None,
}
ROLLOUT: dict[str, Any] = {
    "summary": ROLLOUT_SUMMARY,
    "thresholds": {
        "max_install_failures": 0.05,
        "max_p95_regression": 0.2,
        "max_error_rate": 0.01,
        "max_drift": 0.2,
        "max_accuracy_drop": 0.02,
        "min_requests": 20,
        "min_batches": 40,
        "min_feedback": 20,
    },
    "health_window_s": 600.0,
    "offline_timeout_s": 1800.0,
    "require_approval": False,
    "window_started_at": None,
    "stages": [
        {
            "index": 0,
            "size": "1",
            "members": 1,
            "committed": 1,
            "failed": 0,
            "pending": 0,
            "not_reached": 0,
            "reverted": 0,
        }
    ],
    "members": [
        {
            "device_id": "pi-1",
            "stage": 0,
            "previous_version": "2",
            "outcome": "committed",
            "variant": None,
            "reason": None,
        }
    ],
    "gate": GATE,
}

# The method, its reply on the wire (``ok`` first), and (path, bad value, field named).
REPLY_CASES: dict[str, tuple[dict[str, Any], list[tuple[str, object, str]]]] = {
    "devices-list": (
        {"devices": [SUMMARY], "select": "site=lab"},
        [
            ("devices.0.online", "yes", "devices.0.online"),
            ("devices.0.cpu_percent", "42", "devices.0.cpu_percent"),
            ("devices.0.last_seq", 1.5, "devices.0.last_seq"),
            ("devices.0.models", [], "devices.0.models"),
            ("devices", {}, "devices"),
            ("devices.0.tags.site", 1, "devices.0.tags.site"),
            ("select", 1, "select"),
        ],
    ),
    "devices-show": (
        {"device": DETAIL},
        [
            ("device.summary.device_id", 7, "device.summary.device_id"),
            ("device.desired.counter", "1", "device.desired.counter"),
            ("device.telemetry", [], "device.telemetry"),
            ("device.events.0", 3, "device.events.0"),
            ("device.extra", 1, "device.extra"),
        ],
    ),
    "controller-status": (
        {"rejected": {"total": 2, "by_reason": {"schema": 2}}, "dead_letters": [LETTER]},
        [
            ("rejected.total", "2", "rejected.total"),
            ("rejected.by_reason.schema", 1.5, "rejected.by_reason.schema"),
            ("dead_letters.0.retained", 0, "dead_letters.0.retained"),
            ("dead_letters.0.received", "now", "dead_letters.0.received"),
        ],
    ),
    "operators-list": (
        {"operators": [OPERATOR]},
        [
            ("operators.0.key_id", 5, "operators.0.key_id"),
            ("operators.0.added", None, "operators.0.added"),
        ],
    ),
    "deploy": (
        {
            "model": "digits",
            "version": "3",
            "target": "models/digits/3/digits.onnx",
            "devices": ["pi-1"],
            "skipped": [{"device_id": "pi-2", "reason": "pending"}],
            "operator": "alice",
        },
        [
            ("devices.0", 1, "devices.0"),
            ("skipped.0.reason", None, "skipped.0.reason"),
            ("operator", 5, "operator"),
            ("target", ["x"], "target"),
        ],
    ),
    "rollback": (
        {"device_id": "pi-1", "model": "digits", "version": "2", "operator": "alice"},
        [("version", 2, "version"), ("device_id", None, "device_id")],
    ),
    "devices-accept": (
        {"device_id": "pi-1", "admission": "accepted", "changed": True, "operator": "alice"},
        [("changed", "true", "changed"), ("admission", 1, "admission")],
    ),
    "operators-add": (
        {"name": "bob", "key_id": "cd" * 16, "operator": "alice"},
        [("key_id", None, "key_id"), ("name", ["bob"], "name")],
    ),
    "operators-remove": (
        {"name": "bob", "removed": True, "operator": "alice"},
        [("removed", 1, "removed")],
    ),
    "devices-tag": (
        {"device_id": "pi-1", "tags": {"site": "lab"}, "removed": [], "operator": "alice"},
        [("tags.site", None, "tags.site"), ("removed", "x", "removed")],
    ),
    "devices-untag": (
        {"device_id": "pi-1", "tags": {}, "removed": ["site"], "operator": "alice"},
        [("removed.0", 1, "removed.0")],
    ),
    "rollout-start": (
        {"rollout": ROLLOUT, "operator": "alice"},
        [
            ("rollout.summary.phase", None, "rollout.summary.phase"),
            ("rollout.stages.0.committed", "1", "rollout.stages.0.committed"),
            ("rollout.gate.verdicts.0.value", "x", "rollout.gate.verdicts.0.value"),
            ("rollout.thresholds.min_requests", 1.5, "rollout.thresholds.min_requests"),
        ],
    ),
    "rollout-status": (
        {"rollout": ROLLOUT, "operator": None},
        [("rollout.members.0.outcome", 3, "rollout.members.0.outcome")],
    ),
    "rollout-pause": ({"rollout": ROLLOUT, "operator": "alice"}, [("operator", 1, "operator")]),
    "rollout-resume": ({"rollout": ROLLOUT, "operator": "alice"}, [("rollout", [], "rollout")]),
    "rollout-approve": (
        {"rollout": ROLLOUT, "operator": "alice"},
        [("rollout.window_started_at", "now", "rollout.window_started_at")],
    ),
    "rollout-abort": (
        {"rollout": ROLLOUT, "operator": "alice"},
        [("rollout.require_approval", "no", "rollout.require_approval")],
    ),
    "rollout-list": (
        {"rollouts": [ROLLOUT_SUMMARY]},
        [("rollouts.0.stage", "1", "rollouts.0.stage")],
    ),
    "rollout-history": (
        {
            "rollout_id": "r-0123abcd",
            "transitions": [
                {
                    "at": 1.0,
                    "from_phase": None,
                    "to_phase": "installing",
                    "stage": 0,
                    "reason": "stage 1/3: 1 device(s)",
                    "gate": None,
                },
                {
                    "at": 9.0,
                    "from_phase": "watching",
                    "to_phase": "halted",
                    "stage": 0,
                    "reason": "p95 regression +33% > +20%",
                    "gate": GATE,
                },
            ],
        },
        [
            ("transitions.0.at", "1", "transitions.0.at"),
            ("transitions.1.gate.outcome", 1, "transitions.1.gate.outcome"),
        ],
    ),
}


def _answer(method: str, body: dict[str, Any]) -> BaseModel | Refusal:
    return decode_reply(method, RPC_REPLIES[method], _payload({"ok": True, **body}))


def test_every_controller_method_has_a_reply_case() -> None:
    assert set(REPLY_CASES) == set(RPC_REPLIES)


@pytest.mark.parametrize("method", sorted(REPLY_CASES))
def test_a_controller_reply_survives_a_round_trip(method: str) -> None:
    body, _bad = REPLY_CASES[method]
    reply = _answer(method, body)

    assert isinstance(reply, RPC_REPLIES[method])
    # The controller sends {"ok": true, **reply_body(reply)}: the same JSON, key for key.
    assert json.dumps(reply_body(reply)) == json.dumps(body)
    assert _answer(method, reply_body(reply)) == reply


@pytest.mark.parametrize(
    ("method", "path", "value", "named"),
    [(method, *bad) for method, (_body, bads) in sorted(REPLY_CASES.items()) for bad in bads],
)
def test_a_bad_controller_reply_is_refused_naming_its_field(
    method: str, path: str, value: object, named: str
) -> None:
    body, _bad = REPLY_CASES[method]

    with pytest.raises(PayloadError) as refused:
        _answer(method, _with(body, path, value))

    # The field's dotted path (a union's member may follow it: ``cpu_percent.int: ...``).
    assert re.match(rf"{re.escape(method)}: {re.escape(named)}[.:]", str(refused.value))
    assert refused.value.reason == "schema"


def test_a_refusal_round_trips_and_a_bad_one_is_refused_naming_its_field() -> None:
    wire = {
        "ok": False,
        "error": "no",
        "kind": "OperatorRefusedError",
        "reason": "replayed",
        "detail": "nonce",
    }
    refusal = decode_reply("deploy", DeployReply, _payload(wire))

    assert refusal == Refusal(
        error="no", kind="OperatorRefusedError", reason="replayed", detail="nonce"
    )
    assert refusal.model_dump(exclude_none=True) == wire
    with pytest.raises(PayloadError, match="deploy: kind: "):
        decode_reply("deploy", DeployReply, _payload(wire | {"kind": 3}))
    with pytest.raises(PayloadError, match="deploy: device_id: "):
        decode_reply("deploy", DeployReply, _payload(wire | {"device_id": ["pi-1"]}))


def test_a_reply_beyond_the_payload_limits_is_refused_before_parsing() -> None:
    deep = b'{"ok": true, "devices": ' + b"[" * 100 + b"]" * 100 + b"}"
    with pytest.raises(PayloadError) as refused:
        decode_reply("devices-list", DevicesReply, deep)
    assert refused.value.reason == "too_deep"


def _telemetry(inference: dict[str, Any]) -> bytes:
    return _payload({**STAMP, "seq": 1, "inference": inference})


def test_the_inference_block_is_typed_and_keeps_the_monitors_other_readings() -> None:
    message, stored = decode_device_message(Channel.TELEMETRY, "pi-01", _telemetry(INFERENCE))

    assert isinstance(message, TelemetryMessage) and message.inference is not None
    first = message.inference.models[0]
    assert (first.model, first.version, first.requests) == ("digits", "1", 1200)
    assert first.quantile("0.95") == pytest.approx(0.0009)
    assert first.drift == pytest.approx(0.27)
    assert message.inference.block("digits", "0") is message.inference.models[1]
    assert message.inference.block("digits", "9") is None
    assert stored["inference"] == INFERENCE  # what is stored is what the agent sent


@pytest.mark.parametrize(
    ("inference", "named"),
    [
        ({"models": [{"model": "m", "version": str(n)} for n in range(65)]}, "inference.models"),
        (
            {"models": [{"model": "m", "version": "1", "errors": {"E" * 65: 1}}]},
            "inference.models.0.errors",
        ),
        (
            {
                "models": [
                    {"model": "m", "version": "1", "drift_psi": {f"s{n}": 0.1 for n in range(65)}}
                ]
            },
            "inference.models.0.drift_psi",
        ),
        (
            {"models": [{"model": "m", "version": "1", "latency_quantile_seconds": {"0.95": -1}}]},
            "inference.models.0.latency_quantile_seconds.0.95",
        ),
        ({"models": [{"version": "1"}]}, "inference.models.0.model"),
    ],
    ids=["too_many_blocks", "error_kind_too_long", "too_many_signals", "negative_p95", "no_model"],
)
def test_an_inference_block_beyond_its_bounds_is_refused(
    inference: dict[str, Any], named: str
) -> None:
    with pytest.raises(PayloadError) as refused:
        decode_device_message(Channel.TELEMETRY, "pi-01", _telemetry(inference))

    assert refused.value.reason == "schema"
    assert f"{named}" in str(refused.value)


def test_a_nonfinite_inference_reading_is_refused() -> None:
    """The decoder refuses NaN on the wire; a model built in Python refuses it too."""
    with pytest.raises(ValidationError):
        ModelStats.model_validate({"model": "m", "version": "1", "accuracy": float("nan")})
    with pytest.raises(ValidationError):
        InferenceReport.model_validate(
            {"models": [{"model": "m", "version": "1", "drift_psi": {"class": float("inf")}}]}
        )
