"""Commands from the controller on ``fleet/<device_id>/cmd/<name>`` (MQTT v5 request/response).

Inbound messages arrive on the loop thread and go into a bounded queue; when it is full the
command is refused with a ``busy`` reply instead of growing memory. Replies go to the
request's response topic (or ``fleet/<device_id>/reply``) with its correlation data and a
message expiry, so a late answer does not linger in the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from agent.errors import MqttError, PayloadError, TopicError
from agent.mqtt import payloads
from agent.mqtt.base import InboundMessage, PublishOptions
from agent.mqtt.link import MqttLink
from agent.mqtt.topics import Channel, parse, topic_for

log = structlog.get_logger("agent.commands")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
REPLY_EXPIRY_S = 60


class CommandError(Exception):
    """A handler's way of answering ``ok: false`` with a reason."""


class CommandDispatcher:
    """Routes command messages to handlers and publishes their replies."""

    def __init__(self, device_id: str, link: MqttLink, *, queue_size: int = 32) -> None:
        self._device_id = device_id
        self._link = link
        self._handlers: dict[str, Handler] = {}
        self._queue: asyncio.Queue[InboundMessage] = asyncio.Queue(maxsize=queue_size)

    def register(self, name: str, handler: Handler) -> None:
        self._handlers[name] = handler

    def on_message(self, message: InboundMessage) -> None:
        """Link callback (loop thread): queue, or refuse when the queue is full."""
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            log.warning("commands.busy", topic=message.topic)
            self._reply(message, {"ok": False, "error": "busy: too many pending commands"})

    async def run(self) -> None:
        while True:
            message = await self._queue.get()
            self._reply(message, await self._handle(message))

    async def _handle(self, message: InboundMessage) -> dict[str, Any]:
        try:
            topic = parse(message.topic)
            if topic.channel is not Channel.CMD or topic.device_id != self._device_id:
                raise TopicError("not a command for this device", topic=message.topic)
            request = payloads.decode_object(message.payload) if message.payload else {}
        except (TopicError, PayloadError) as exc:
            log.warning("commands.bad_request", topic=message.topic, error=str(exc))
            return {"ok": False, "error": str(exc)}
        handler = self._handlers.get(topic.name or "")
        if handler is None:
            return {"ok": False, "error": f"unknown command {topic.name!r}"}
        try:
            result = await handler(request)
        except CommandError as exc:
            return {"ok": False, "command": topic.name, "error": str(exc)}
        except Exception as exc:
            log.exception("commands.handler_failed", command=topic.name)
            return {"ok": False, "command": topic.name, "error": f"internal error: {exc}"}
        return {"ok": True, "command": topic.name, **result}

    def _reply(self, message: InboundMessage, body: dict[str, Any]) -> None:
        body.setdefault("device_id", self._device_id)
        body.setdefault("ts", payloads.utc_now())
        target = message.response_topic or topic_for(self._device_id, Channel.REPLY)
        options = PublishOptions(
            correlation_data=message.correlation_data, message_expiry_s=REPLY_EXPIRY_S
        )
        # A reply that cannot be sent now is not queued: the requester has a timeout and
        # a stale answer is worse than none.
        with contextlib.suppress(MqttError):
            self._link.publish(target, payloads.encode(body), qos=1, options=options)
