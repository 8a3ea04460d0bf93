"""The CLI's side of the controller RPC: one MQTT v5 request, one correlated reply.

Each call opens a short, non-persistent session with its own inbox topic, publishes the
request with a response topic and random correlation data, and waits for the matching reply
(replies with other correlation data are ignored, so a late answer to an earlier call cannot
be mistaken for this one).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from typing import Any

from agent.errors import MqttError, PayloadError
from agent.mqtt import payloads
from agent.mqtt.base import InboundMessage, PublishOptions
from agent.mqtt.link import MqttLink
from agent.mqtt.topics import controller_rpc, reply_inbox
from fleet.config import FleetConfig
from fleet.errors import ControllerUnavailableError, FleetError, UnknownDeviceError
from fleet.service import link_settings_for


async def call(config: FleetConfig, method: str, request: dict[str, Any]) -> dict[str, Any]:
    """Ask the controller; returns the reply body.

    Raises:
        ControllerUnavailableError: no broker or no controller answer within the timeout.
        UnknownDeviceError: the controller does not know the device asked about.
        FleetError: the controller answered with an error.
    """
    client_id = f"fleet-cli-{secrets.token_hex(6)}"
    link = MqttLink(link_settings_for(config, client_id=client_id, persistent=False))
    correlation = secrets.token_bytes(16)
    inbox = reply_inbox(client_id)
    answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    def on_message(message: InboundMessage) -> None:
        if message.correlation_data != correlation or answer.done():
            return
        try:
            answer.set_result(payloads.decode_object(message.payload))
        except PayloadError as exc:
            answer.set_exception(FleetError(f"malformed reply from the controller: {exc}"))

    link.set_message_handler(on_message)
    link.add_subscription(inbox, qos=1)
    runner = asyncio.create_task(link.run())
    try:
        async with asyncio.timeout(config.rpc_timeout_s):
            await link.wait_connected()
            # The SUBACK must be in before the request goes out, or the reply can be lost.
            await link.wait_subscribed()
            link.publish(
                controller_rpc(method),
                payloads.encode(request),
                options=PublishOptions(response_topic=inbox, correlation_data=correlation),
            )
            reply = await answer
    except (TimeoutError, MqttError):
        raise ControllerUnavailableError(config.broker, config.rpc_timeout_s) from None
    finally:
        with contextlib.suppress(Exception):
            await link.close(timeout=1.0)
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    if not reply.get("ok"):
        if reply.get("kind") == "UnknownDeviceError":
            raise UnknownDeviceError(str(request.get("device_id")))
        raise FleetError(f"controller error: {reply.get('error')}")
    return reply
