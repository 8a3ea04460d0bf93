"""Property test of the controller's ingest path: whatever a device topic carries, it is
either validated and stored without error, or refused with ``PayloadError``; the device list
and detail answer afterwards."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_contract import payloads
from edge_contract.errors import PayloadError
from edge_runtime.mqtt.base import InboundMessage
from fleet.ingest import validate
from fleet.store import SqliteFleetStore

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_TS = st.one_of(
    st.just(payloads.utc_now()),
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.text(max_size=30),
    st.integers(),
)
_SECTION_KEYS = ["cpu", "memory", "temperatures_c", "health", "queue", "models", "state", "event"]


@st.composite
def _bodies(draw: st.DrawFn) -> bytes:
    """Mostly near-valid device messages with odd values, sometimes arbitrary JSON or bytes."""
    kind = draw(st.sampled_from(["near", "json", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "json":
        return json.dumps(draw(_JSON)).encode()
    body: dict[str, Any] = {
        "device_id": draw(st.sampled_from(["d-1", "d-2", "D", 5])),
        "seq": draw(st.integers(min_value=-5, max_value=2**63 - 1) | _SCALARS),
        "ts": draw(_TS),
        "state": draw(st.sampled_from(["online", "offline", "x"])),
        "event": draw(st.sampled_from(["link_up", "Bad", ""])),
        "models": draw(st.dictionaries(st.text(max_size=5), _JSON, max_size=3)),
    }
    for key in draw(st.lists(st.sampled_from(_SECTION_KEYS), max_size=4)):
        body[key] = draw(_JSON)
    return json.dumps(body).encode()


_REASONS = {
    "schema",
    "not_json",
    "not_utf8",
    "not_object",
    "number_range",
    "too_deep",
    "too_large",
    "device_mismatch",
}
_TOPICS = st.sampled_from(
    [
        f"fleet/{d}/{c}"
        for d in ("d-1", "d-2")
        for c in ("status", "telemetry", "events", "reported")
    ]
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=st.lists(st.tuples(_TOPICS, _bodies()), min_size=1, max_size=8))
def test_generated_messages_are_stored_or_refused(messages: list[tuple[str, bytes]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteFleetStore(Path(tmp) / "f.db")
        refused: list[str] = []
        for n, (topic, payload) in enumerate(messages):
            message = InboundMessage(topic, payload, 1, False, mid=n)
            try:
                item = validate(message, float(n))
            except PayloadError as exc:
                refused.append(exc.reason)
                continue
            store.ingest([item])
        for device in store.list_devices():
            store.device_detail(device.device_id, events=5)
        store.close()
    assert set(refused) <= _REASONS


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=300) | _JSON.map(lambda v: json.dumps(v).encode()))
def test_decoders_refuse_with_a_reason_or_return_an_object(payload: bytes) -> None:
    try:
        body: object = payloads.decode_object(payload)
    except PayloadError as exc:
        body = exc.reason
    assert isinstance(body, dict) or body in _REASONS
