"""Property tests of the agent's inbound decoders: whatever the bytes, only typed errors.

Pipeline inputs (``parse_input``), desired-state envelopes (``parse_desired`` and the full
``verify_desired``), repository replies (``decode_reply``) and command requests (the
dispatcher, end to end with its reply) get random bytes, random JSON and pathological
nesting; each may refuse with its own error type and must never raise anything else.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st
from securesystemslib.signer import CryptoSigner

from agent.control.commands import CaptureRequest, CommandDispatcher, NoArguments
from agent.control.inbound import InboundRejections
from agent.ota.trust import verify_desired
from agent.pipelines.pipeline import parse_input
from edge_contract.desired import parse_desired
from edge_contract.errors import PayloadError, UpdateError
from edge_contract.fetchcodec import decode_reply
from edge_contract.replies import CommandReply
from edge_runtime.mqtt.base import InboundMessage
from edge_runtime.mqtt.link import MqttLink
from tests.unit.test_agent_inbound import FakeLink

KEY = CryptoSigner.generate_ed25519().public_key

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.sampled_from(["signed", "signatures", "inputs", "action", "counter", "keyid", "sig"])
            | st.text(max_size=8),
            children,
            max_size=5,
        )
    ),
    max_leaves=30,
)


def _dump(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


deep = st.tuples(st.integers(0, 4000), st.sampled_from([b"[", b'{"a":', b'["'])).map(
    lambda t: t[1] * t[0]
)
payloads = st.binary(max_size=300) | json_values.map(_dump) | deep


@settings(max_examples=300, deadline=None)
@given(payloads)
def test_parse_input_raises_only_payload_errors(payload: bytes) -> None:
    try:
        values = parse_input(payload)
    except PayloadError:
        return
    assert values and all(isinstance(v, float) for v in values)


@settings(max_examples=300, deadline=None)
@given(payloads | json_values.map(lambda v: _dump({"signed": v, "signatures": [v]})))
def test_desired_state_decoding_raises_only_update_errors(payload: bytes) -> None:
    try:
        parse_desired(payload)
    except UpdateError:
        pass
    try:
        verify_desired(
            payload,
            keys={KEY.keyid: KEY},
            threshold=1,
            device_id="pi-01",
            last_counter=0,
            now=datetime.now(UTC),
        )
    except UpdateError:
        return
    raise AssertionError("an unsigned envelope was accepted")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | json_values.map(lambda v: b"\x00\x40" + _dump(v)))
def test_repository_replies_raise_only_value_errors(payload: bytes) -> None:
    try:
        decode_reply(payload)
    except ValueError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["ping", "capture", "nosuch", ""]), payloads)
def test_any_command_gets_one_reply_and_nothing_escapes(name: str, payload: bytes) -> None:
    link = FakeLink()
    dispatcher = CommandDispatcher("pi-01", cast(MqttLink, link), InboundRejections())

    async def answer(_: Any) -> CommandReply:
        return CommandReply()

    dispatcher.register("ping", answer, NoArguments)
    dispatcher.register("capture", answer, CaptureRequest)
    message = InboundMessage(f"fleet/pi-01/cmd/{name}", payload, qos=1, retain=False)
    asyncio.run(dispatcher.dispatch(message))
    assert len(link.published) == 1
