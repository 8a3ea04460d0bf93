"""Commands to devices (``fleet devices cmd``): one request per device, replies in parallel.

One short, non-persistent MQTT session with its own inbox sends ``fleet/<id>/cmd/<name>`` to
every device at once, each with a response topic and its own correlation data, a deadline in
the body (``expires_at``) and the same time as the MQTT v5 Message Expiry Interval: a device
that is offline now does not run the command when it comes back after the wait is over.
Replies are decoded within the payload limits into the command's reply model
(``edge_contract.replies.COMMAND_REPLIES``); a device that does not answer in time is listed
as such, and a garbled reply is reported for that device, not fatal for the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
import time
from dataclasses import dataclass

from pydantic import ValidationError

from edge_contract import payloads
from edge_contract.commands import DEADLINE_FIELD, deadline_in
from edge_contract.controller import JsonObject
from edge_contract.errors import PayloadError
from edge_contract.replies import COMMAND_REPLIES, CommandReply
from edge_contract.topics import Channel, reply_inbox, topic_for
from edge_runtime.errors import MqttError
from edge_runtime.mqtt.base import InboundMessage, PublishOptions
from edge_runtime.mqtt.link import MqttLink
from fleet.broker import close_link, link_settings_for
from fleet.config import FleetConfig
from fleet.errors import BrokerUnreachableError, FleetError

# Fields of every reply that the summary leaves out: the table has its own columns for them.
_ENVELOPE = {"ok", "command", "device_id", "ts", "error"}
_SUMMARY_CHARS = 120


@dataclass(frozen=True)
class Outcome:
    """One device's answer: its reply (None when it did not answer in time)."""

    device_id: str
    reply: CommandReply | None
    problem: str | None = None  # a reply that could not be decoded

    @property
    def answered(self) -> bool:
        return self.reply is not None or self.problem is not None

    @property
    def ok(self) -> bool:
        return self.reply is not None and self.reply.ok

    def summary(self) -> str:
        if self.problem is not None:
            return self.problem
        if self.reply is None:
            return "no answer in time"
        if not self.reply.ok:
            return self.reply.error or "refused"
        fields = {k: v for k, v in self.reply.body().items() if k not in _ENVELOPE}
        text = json.dumps(fields, separators=(",", ":"))
        return text if len(text) <= _SUMMARY_CHARS else text[: _SUMMARY_CHARS - 3] + "..."


def parse_arguments(pairs: list[str]) -> JsonObject:
    """``k=v`` pairs as a command body; a value that is JSON is taken as JSON, else a string.

    Raises:
        FleetError: a pair without ``=`` or key.
    """
    body: JsonObject = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise FleetError(f"an argument is key=value, not {pair!r}")
        try:
            body[key] = json.loads(value)
        except ValueError:
            body[key] = value
    return body


def decode(name: str, device_id: str, payload: bytes) -> Outcome:
    """A device's reply as its command's model (a refusal as the plain envelope)."""
    try:
        body = payloads.decode_object(payload, max_bytes=payloads.MAX_PAYLOAD_BYTES)
    except PayloadError as exc:
        return Outcome(device_id, None, f"malformed reply: {exc}"[:300])
    models: tuple[type[CommandReply], ...] = (
        COMMAND_REPLIES.get(name, ()) if body.get("ok") is True else ()
    )
    problem: str | None = None  # the first model's complaint is the telling one
    candidates: tuple[type[CommandReply], ...] = (*models, CommandReply)
    for model in candidates:
        try:
            return Outcome(device_id, model.model_validate(body))
        except ValidationError as exc:
            problem = problem or f"malformed reply: {payloads.schema_problem(exc)}"
    return Outcome(device_id, None, (problem or "malformed reply")[:300])


async def send(
    config: FleetConfig, device_ids: list[str], name: str, arguments: JsonObject
) -> list[Outcome]:
    """Send ``name`` to every device and wait up to ``config.rpc_timeout_s`` for the replies.

    Raises:
        BrokerUnreachableError: no MQTT connection to the broker within the timeout.
    """
    timeout = config.rpc_timeout_s
    client_id = f"fleet-cmd-{secrets.token_hex(6)}"
    inbox = reply_inbox(client_id)
    link = MqttLink(link_settings_for(config, client_id=client_id, persistent=False))
    tokens = {secrets.token_bytes(12): device for device in device_ids}
    got: dict[str, bytes] = {}
    done = asyncio.Event()

    def on_message(message: InboundMessage) -> None:
        device = tokens.get(message.correlation_data or b"")
        if device is None or device in got:
            return  # not ours, or a duplicate (QoS 1): the first answer stands
        got[device] = bytes(message.payload)
        if len(got) == len(tokens):
            done.set()

    link.set_message_handler(on_message)
    link.add_subscription(inbox, qos=1)
    runner = asyncio.create_task(link.run())
    try:
        await _connect(config, link, timeout)
        body = {**arguments, DEADLINE_FIELD: deadline_in(timeout, time.time())}
        for token, device in tokens.items():
            options = PublishOptions(
                response_topic=inbox,
                correlation_data=token,
                message_expiry_s=max(1, math.ceil(timeout)),
            )
            topic = topic_for(device, Channel.CMD, name)
            sent = link.publish(topic, payloads.encode(body), qos=1, options=options)
            sent.add_done_callback(_ignore_outcome)  # a lost request is a silent device
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await done.wait()
    finally:
        await close_link(link, runner)
    return [decode(name, d, got[d]) if d in got else Outcome(d, None) for d in device_ids]


def _ignore_outcome(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


async def _connect(config: FleetConfig, link: MqttLink, timeout: float) -> None:
    try:
        async with asyncio.timeout(timeout):
            await link.wait_connected()
            # The SUBACK must be in before a request goes out, or its reply can be lost.
            await link.wait_subscribed()
    except (TimeoutError, MqttError):
        raise BrokerUnreachableError(config.broker, "no MQTT session in time") from None
