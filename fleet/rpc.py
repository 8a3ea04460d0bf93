"""The CLI's side of the controller RPC: one MQTT v5 request, one correlated reply.

Each call opens a short, non-persistent session with its own inbox topic, publishes the
request with a response topic and random correlation data, and waits for the matching reply
(replies with other correlation data are ignored, so a late answer to an earlier call cannot
be mistaken for this one). Requests that change anything are signed with the operator's key
(``fleet.operators``). The answer is decoded within the payload limits into the method's
reply model (``edge_contract.controller``): a garbled one is an error naming the bad field.
When nothing answers, the error says whether the broker could not be reached at all or the
broker is up and no controller answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from dataclasses import dataclass
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel

from edge_contract import payloads
from edge_contract.controller import JsonObject, Refusal, decode_reply
from edge_contract.errors import PayloadError
from edge_contract.topics import controller_rpc, reply_inbox
from edge_runtime.errors import MqttError
from edge_runtime.mqtt.base import InboundMessage, PublishOptions
from edge_runtime.mqtt.link import MqttLink
from fleet.broker import close_link, link_settings_for
from fleet.config import FleetConfig, parse_broker_url
from fleet.errors import (
    BrokerUnreachableError,
    ControllerUnavailableError,
    DeviceNotAcceptedError,
    FleetError,
    OperatorRefusedError,
    RolloutError,
    UnknownDeviceError,
)
from fleet.operators import sign_request

_PROBE_TIMEOUT_S = 2.0
ReplyT = TypeVar("ReplyT", bound=BaseModel)


@dataclass(frozen=True)
class OperatorSigner:
    """The operator key a mutating request is signed with."""

    key: Ed25519PrivateKey
    name: str | None = None

    def sign(self, method: str, body: JsonObject) -> JsonObject:
        return sign_request(self.key, method, body, now=time.time(), operator=self.name)


async def call(
    config: FleetConfig,
    method: str,
    request: BaseModel | JsonObject,
    reply: type[ReplyT],
    *,
    signer: OperatorSigner | None = None,
) -> ReplyT:
    """Ask the controller (signed with ``signer`` when given); returns its ``reply``.

    ``request`` is the method's request model, or a JSON object as it is (the tests of the
    controller's refusals send ones no model would build).

    Raises:
        BrokerUnreachableError: no MQTT connection to the broker within the timeout.
        ControllerUnavailableError: the broker is up but no controller answered in time.
        UnknownDeviceError: the controller does not know the device asked about.
        DeviceNotAcceptedError: the device is pending (deploy, rollback).
        OperatorRefusedError: the controller refused the request's signature.
        FleetError: the controller answered with another error, or a malformed reply (the
            message names the bad field).
    """
    body = request.model_dump(exclude_none=True) if isinstance(request, BaseModel) else request
    payload = signer.sign(method, body) if signer is not None else body
    answer = await _exchange(config, method, payload)
    decoded = read_reply(method, reply, answer)
    if isinstance(decoded, Refusal):
        raise _reply_error(decoded)
    return decoded


def read_reply(method: str, reply: type[ReplyT], payload: bytes) -> ReplyT | Refusal:
    """The controller's answer as ``reply`` or a ``Refusal``.

    Raises:
        FleetError: the answer is not a valid reply; the message names the bad field.
    """
    try:
        return decode_reply(method, reply, payload)
    except PayloadError as exc:
        raise FleetError(f"malformed reply from the controller: {exc}") from None


async def _exchange(config: FleetConfig, method: str, payload: JsonObject) -> bytes:
    client_id = f"fleet-cli-{secrets.token_hex(6)}"
    link = MqttLink(link_settings_for(config, client_id=client_id, persistent=False))
    correlation = secrets.token_bytes(16)
    inbox = reply_inbox(client_id)
    answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    connected = False

    def on_message(message: InboundMessage) -> None:
        if message.correlation_data != correlation or answer.done():
            return
        answer.set_result(bytes(message.payload))  # decoded (bounded) by read_reply

    link.set_message_handler(on_message)
    link.add_subscription(inbox, qos=1)
    runner = asyncio.create_task(link.run())
    try:
        async with asyncio.timeout(config.rpc_timeout_s):
            await link.wait_connected()
            connected = True
            # The SUBACK must be in before the request goes out, or the reply can be lost.
            await link.wait_subscribed()
            link.publish(
                controller_rpc(method),
                payloads.encode(payload),
                options=PublishOptions(response_topic=inbox, correlation_data=correlation),
            )
            return await answer
    except (TimeoutError, MqttError):
        if not connected:
            raise BrokerUnreachableError(config.broker, await _why_unreachable(config)) from None
        raise ControllerUnavailableError(config.broker, config.rpc_timeout_s) from None
    finally:
        await close_link(link, runner)


async def _why_unreachable(config: FleetConfig) -> str:
    """One plain TCP connect to the broker's address, for the reason the MQTT link failed."""
    address = parse_broker_url(config.broker)
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT_S):
            _reader, writer = await asyncio.open_connection(address.host, address.port)
    except TimeoutError:
        return f"no answer from {address.host}:{address.port}"
    except OSError as exc:
        # asyncio's own text ("Connect call failed ...") hides the reason; errno has it.
        return os.strerror(exc.errno) if exc.errno else str(exc)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return f"TCP connects but no MQTT session within {config.rpc_timeout_s:g}s"


def _reply_error(refusal: Refusal) -> FleetError:
    """The typed error for an ``ok: false`` reply."""
    kind, device = refusal.kind, refusal.device_id
    if kind == "UnknownDeviceError" and device is not None:
        return UnknownDeviceError(device)
    if kind == "DeviceNotAcceptedError" and device is not None:
        return DeviceNotAcceptedError(device)
    if kind == "OperatorRefusedError":
        return OperatorRefusedError(str(refusal.reason), str(refusal.detail))
    if kind in ("RolloutError", "SelectorError"):
        # The controller's message names the rollout, the entry or the clause: shown as is.
        return RolloutError(refusal.error, value=refusal.error)
    return FleetError(f"controller error: {refusal.error}")
