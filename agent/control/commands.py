"""Commands from the controller on ``fleet/<device_id>/cmd/<name>`` (MQTT v5 request/response).

Inbound messages arrive on the loop thread and go into a bounded queue; when it is full the
command is refused with a ``busy`` reply instead of growing memory. Each command has a typed
request model (``extra="forbid"``): the body is decoded within the payload limits and
validated before the handler sees it. Replies go to the request's response topic (or
``fleet/<device_id>/reply``) with its correlation data and a message expiry, so a late
answer does not linger in the broker.

Nothing a message carries can stop the dispatch loop: a refused request (bad topic, body,
unknown command) and a handler that raises anything but ``CancelledError`` are answered
``ok: false`` with the reason, recorded in the agent's ``InboundRejections`` (counted by
reason, dead-lettered) and the loop goes on; so does a reply that cannot be sent (a response
topic with wildcards, a packet over the broker's limit).

A request may carry a deadline (``expires_at``, Unix seconds: ``edge_contract.commands``):
one that arrives after it (queued in the session while the device was offline, or retained)
is not run; it is answered ``ok: false`` with reason ``expired`` and counted as a rejection.
A command that changes the device is not run from a retained message either (``retained``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import structlog
from pydantic import BaseModel, ConfigDict, ValidationError

from agent.control.inbound import InboundRejections
from agent.errors import AgentError, CommandError
from edge_contract import payloads
from edge_contract.commands import is_expired, split_deadline
from edge_contract.errors import PayloadError, TopicError
from edge_contract.replies import CommandReply
from edge_contract.topics import Channel, parse, topic_for
from edge_runtime.mqtt.base import InboundMessage, PublishOptions
from edge_runtime.mqtt.link import MqttLink

log = structlog.get_logger("agent.control.commands")

RequestT = TypeVar("RequestT", bound=BaseModel)
REPLY_EXPIRY_S = 60
# A command body is a few fields; the general payload cap is for telemetry-sized messages.
MAX_COMMAND_BYTES = 16 * 1024
# Replies echo the correlation data; a peer's oversized one is not echoed (or published).
MAX_CORRELATION_BYTES = 64
EXCERPT_BYTES = 80  # as edge_contract.payloads


class NoArguments(BaseModel):
    """The request of a command that takes none: an empty body or ``{}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class CaptureRequest(BaseModel):
    """``capture``: what to do with the low-confidence capture buffer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: Literal["list", "clear", "upload"] = "list"


@dataclass(frozen=True)
class _Route:
    request: type[BaseModel]
    handler: Callable[[Any], Awaitable[CommandReply]]
    mutating: bool = False


class _Refused(AgentError):
    """A request the dispatcher will not run: its reason code and the reply's error text."""

    def __init__(self, reason: str, error: str) -> None:
        super().__init__(error)
        self.reason = reason


class CommandDispatcher:
    """Routes command messages to handlers and publishes their replies."""

    def __init__(
        self,
        device_id: str,
        link: MqttLink,
        rejections: InboundRejections,
        *,
        queue_size: int = 32,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._device_id = device_id
        self._link = link
        self._rejections = rejections
        self._routes: dict[str, _Route] = {}
        self._queue: asyncio.Queue[InboundMessage] = asyncio.Queue(maxsize=queue_size)

    def register(
        self,
        name: str,
        handler: Callable[[RequestT], Awaitable[CommandReply]],
        request: type[RequestT],
        *,
        mutating: bool = False,
    ) -> None:
        """``handler`` runs with the body validated into ``request`` and returns its reply
        (``ok``, ``command``, ``device_id`` and ``ts`` are filled in here). A ``mutating``
        command (restart, config-set) is never run from a retained message: one left on the
        broker would run again at every start."""
        self._routes[name] = _Route(request, handler, mutating)

    def on_message(self, message: InboundMessage) -> None:
        """Link callback (loop thread): queue, or refuse when the queue is full."""
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            self._rejections.reject(message, "busy", "too many pending commands")
            self._reply(message, CommandReply(ok=False, error="busy: too many pending commands"))

    async def run(self) -> None:
        while True:
            message = await self._queue.get()
            await self.dispatch(message)

    async def dispatch(self, message: InboundMessage) -> None:
        """Handle one message and reply; never raises (but lets cancellation through)."""
        try:
            body = await self._handle(message)
        except Exception as exc:  # a message must never end the loop
            # _handle catches handler failures itself: this is a bug in the dispatcher.
            log.exception("commands.dispatch_failed", topic=message.topic)
            self._rejections.reject(message, "handler_failed", f"{type(exc).__name__}: {exc}")
            body = CommandReply(ok=False, error=f"internal error: {type(exc).__name__}")
        self._reply(message, body)

    async def _handle(self, message: InboundMessage) -> CommandReply:
        try:
            name, route, request = self._decode(message)
        except _Refused as exc:
            self._rejections.reject(message, exc.reason, str(exc))
            return CommandReply(ok=False, error=str(exc))
        try:
            result = await route.handler(request)
        except CommandError as exc:
            return CommandReply(ok=False, command=name, error=str(exc))
        except Exception as exc:  # any handler bug is answered, not fatal
            log.exception("commands.handler_failed", command=name)
            self._rejections.reject(message, "handler_failed", f"{type(exc).__name__}: {exc}")
            error = f"internal error: {exc!r}"[:300]
            return CommandReply(ok=False, command=name, error=error)
        return result.model_copy(update={"ok": True, "command": name})

    def _decode(self, message: InboundMessage) -> tuple[str, _Route, BaseModel]:
        """The command's name, route and validated request, or ``_Refused`` with a reason."""
        try:
            topic = parse(message.topic)
        except TopicError as exc:
            raise _Refused("bad_topic", str(exc)) from None
        if topic.channel is not Channel.CMD or topic.device_id != self._device_id:
            raise _Refused("bad_topic", f"not a command for this device: {message.topic!r}")
        name = topic.name or ""
        route = self._routes.get(name)
        if route is None:
            raise _Refused("unknown_command", f"unknown command {name[:64]!r}")
        payload = message.payload if message.payload else b"{}"
        try:
            body = payloads.decode_object(payload, max_bytes=MAX_COMMAND_BYTES)
            deadline, arguments = split_deadline(body)
        except PayloadError as exc:
            raise _Refused(exc.reason, str(exc)) from None
        if is_expired(deadline, self._clock()):
            raise _Refused("expired", f"expired: {name} was due by {deadline}, not run")
        if route.mutating and message.retain:
            raise _Refused("retained", f"retained: {name} is not run from a retained message")
        try:
            request = route.request.model_validate(arguments)
        except ValidationError as exc:
            # Worded as decode_model's refusal: the field, then the start of the body.
            excerpt = payload[:EXCERPT_BYTES].decode("utf-8", errors="replace")
            raise _Refused("schema", f"{payloads.schema_problem(exc)}: {excerpt!r}") from None
        return name, route, request

    def _reply(self, message: InboundMessage, reply: CommandReply) -> None:
        body = reply.stamped(self._device_id, payloads.utc_now()).body()
        target = message.response_topic or topic_for(self._device_id, Channel.REPLY)
        correlation = message.correlation_data
        if correlation is not None and len(correlation) > MAX_CORRELATION_BYTES:
            correlation = None
        options = PublishOptions(correlation_data=correlation, message_expiry_s=REPLY_EXPIRY_S)
        # A reply that cannot be sent now is not queued: the requester has a timeout and
        # a stale answer is worse than none. The response topic is the sender's claim and may
        # be anything (wildcards, too long): paho's ValueError is as much a refusal as ours.
        try:
            sent = self._link.publish(target, payloads.encode(body), qos=1, options=options)
        except Exception as exc:  # see above
            log.warning("commands.reply_failed", topic=target[:256], error=str(exc)[:200])
            return
        sent.add_done_callback(_ignore_outcome)


def _ignore_outcome(future: asyncio.Future[None]) -> None:
    """A reply's PUBACK (or its refusal) changes nothing: retrieve it quietly."""
    if not future.cancelled():
        future.exception()
