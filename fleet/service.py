"""``fleet serve``: the controller that records every device's presence, telemetry and events.

It holds a persistent MQTT session (clean start false), so messages published while it is
restarting are queued by the broker and stored when it is back. Inbound messages are
validated on the loop thread into typed models (``edge_contract.messages``: size, depth, types,
ranges, timestamps, the device id against the topic's) and written in batches by a worker
thread. Every message is acknowledged exactly once: a valid one after its commit, any other
at once. A refused one, or one whose handler or store write raised, is counted by reason,
kept as a dead letter and never retried; a batch that fails is retried one message at a
time, so one poison row cannot hold back the rest. Nothing a message holds stops the
controller. It also answers the CLI's requests on ``fleet-controller/rpc/<method>``
(``controller-status`` reports the refusals).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from typing import Annotated, Any

import structlog
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from edge_contract import payloads
from edge_contract.errors import PayloadError, TopicError
from edge_contract.messages import decode_device_message
from edge_contract.topics import (
    CONTROLLER_ROOT,
    DEVICE_ID_PATTERN,
    Channel,
    all_devices,
    controller_rpc_filter,
    parse,
    parse_controller_rpc,
)
from edge_runtime.errors import MqttError
from edge_runtime.mqtt.base import InboundMessage, LinkSettings, PublishOptions, TlsSettings
from edge_runtime.mqtt.link import MqttLink
from edge_runtime.mqtt.rejections import DeadLetter, RejectionLedger
from fleet.config import FleetConfig, parse_broker_url
from fleet.errors import (
    DeviceNotAcceptedError,
    FleetError,
    OperatorRefusedError,
    UnknownDeviceError,
)
from fleet.operator_rpc import OperatorGate, SignedRpc
from fleet.ota import ReleaseService
from fleet.store import FleetStore, Inbound, Retention, SqliteFleetStore

log = structlog.get_logger("fleet.service")

_RECORDED = (Channel.STATUS, Channel.TELEMETRY, Channel.EVENTS, Channel.REPORTED)
_QUEUE_LIMIT = 50_000
_BATCH = 500
_PRUNE_EVERY_S = 60.0
# Dead letters waiting for the store; beyond this they are only counted (a flood of junk
# must not grow memory).
_LETTER_QUEUE_LIMIT = 1000
# A store that stays locked past its busy timeout this many times in a row gives up on a
# message (dead-lettered) rather than blocking the ones behind it.
_LOCKED_RETRIES = 3
_LOCKED_BACKOFF_S = 0.5
_RECENT_LETTERS = 10


def link_settings_for(
    config: FleetConfig, *, client_id: str, persistent: bool, session_expiry_s: int = 86400
) -> LinkSettings:
    """Link settings towards the configured broker for the controller or a CLI call."""
    address = parse_broker_url(config.broker)
    tls = None
    if address.tls or config.tls.ca_file is not None:
        if config.tls.ca_file is None:
            raise FleetError(f"{config.broker} needs --ca-file (or FLEET_TLS__CA_FILE)")
        tls = TlsSettings(config.tls.ca_file, config.tls.cert_file, config.tls.key_file)
    return LinkSettings(
        host=address.host,
        port=address.port,
        client_id=client_id,
        clean_start=not persistent,
        session_expiry_s=session_expiry_s if persistent else 0,
        tls=tls,
        reconnect_max_s=10.0,
        max_inflight=100,
        manual_ack=persistent,
    )


def validate(message: InboundMessage, received: float) -> Inbound:
    """Turn a device message into an ``Inbound`` or raise ``TopicError``/``PayloadError``.

    The body is validated into its typed model (``edge_contract.messages``): sizes, depth,
    types, ranges, timestamps and the device id against the topic's.
    """
    topic = parse(message.topic)
    if topic.channel not in _RECORDED:
        raise TopicError("not a channel the controller records", topic=message.topic)
    _model, body = decode_device_message(topic.channel, topic.device_id, message.payload)
    return Inbound(topic.device_id, topic.channel.value, body, received)


def rejection_reason(exc: BaseException) -> str:
    """The reason code a refused message is counted under."""
    if isinstance(exc, PayloadError):
        return exc.reason
    if isinstance(exc, TopicError):
        return "topic"
    return "handler_failed"


class ShowRequest(BaseModel):
    """``devices-show``: which device, and how many of its recent events."""

    model_config = ConfigDict(strict=True, extra="forbid")

    device_id: Annotated[str, StringConstraints(pattern=f"^{DEVICE_ID_PATTERN.pattern}$")]
    events: Annotated[int, Field(ge=0, le=1000)] = 20


class Controller:
    """The controller service: ingest, retention and the CLI's RPC."""

    def __init__(
        self,
        config: FleetConfig,
        store: FleetStore | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        retention = Retention(
            config.retention.max_age_s,
            config.retention.max_telemetry_rows,
            config.retention.max_event_rows,
        )
        self.store = store or SqliteFleetStore(config.db, retention)
        self.link = MqttLink(link_settings_for(config, client_id=config.client_id, persistent=True))
        self.link.set_message_handler(self._on_message)
        for channel in _RECORDED:
            self.link.add_subscription(all_devices(channel), qos=1)
        self.link.add_subscription(controller_rpc_filter(), qos=1)
        self._queue: asyncio.Queue[tuple[Inbound, InboundMessage]] = asyncio.Queue(
            maxsize=_QUEUE_LIMIT
        )
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="store")
        # Refused messages, by reason; each is acknowledged and also kept in the store.
        self.rejections = RejectionLedger(log, event="controller.rejected")
        self.rejected: Counter[str] = self.rejections.counts
        self._letters: asyncio.Queue[DeadLetter] = asyncio.Queue(maxsize=_LETTER_QUEUE_LIMIT)
        self._rpc_tasks: set[asyncio.Task[None]] = set()
        # Read-only RPCs: unsigned.
        self._rpc: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "devices-list": lambda _req: {
                "devices": [asdict(d) for d in self.store.list_devices()]
            },
            "devices-show": self._rpc_show,
            "controller-status": self._rpc_status,
            "operators-list": lambda _req: {
                "operators": [asdict(o) for o in self.store.list_operators()]
            },
        }
        # Everything that changes the fleet: signed by a trusted operator key (fleet.operators).
        # They may hand back signed desired states, published on the loop after the call.
        self.gate = OperatorGate(self.store, window_s=config.operator.request_window_s, clock=clock)
        self._signed_rpc: dict[str, SignedRpc] = self.gate.handlers()
        self.ota: ReleaseService | None = None
        if config.ota.repo is not None:
            ota = self.ota = ReleaseService(config.ota, self.link, self.store)
            self._signed_rpc["deploy"] = lambda v: ota.deploy(v.body)
            self._signed_rpc["rollback"] = lambda v: ota.rollback(v.body)

    def _call(
        self, method: str, request: dict[str, Any]
    ) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
        """Store thread: run one RPC; returns its reply and the messages to publish.

        Mutating methods pass the operator gate first (``fleet.operator_rpc``).
        """
        signed = self._signed_rpc.get(method)
        if signed is not None:
            return self.gate.run(method, request, signed)
        handler = self._rpc.get(method)
        if handler is None:
            raise FleetError(f"unknown method {method!r}")
        return handler(request), []

    def _on_message(self, message: InboundMessage) -> None:
        """Loop thread: every message is acknowledged, once, whatever it holds: here, by
        the file server, or after its commit. Nothing raises out of this (an unacknowledged
        message would hold a slot of the broker's receive window until the next connection,
        and come back then)."""
        try:
            acked_elsewhere = self._dispatch(message)
        except Exception as exc:  # a handler bug must not wedge ingest
            log.exception("controller.handler_failed", topic=message.topic[:256])
            self._reject(message, "handler_failed", repr(exc))
            acked_elsewhere = False
        if not acked_elsewhere:
            self.link.ack(message)

    def _dispatch(self, message: InboundMessage) -> bool:
        """Handle one message; True when it is acknowledged elsewhere (file server, writer)."""
        if self.ota is not None and self._fetch(message):
            return True
        if message.topic.startswith(CONTROLLER_ROOT + "/"):
            self._request(message)  # answered once, never redelivered
            return False
        if not message.payload and _clears_retained(message.topic):
            return False  # a cleared retained status or reported state
        try:
            item = validate(message, time.time())
        except (TopicError, PayloadError) as exc:
            self._reject(message, rejection_reason(exc), str(exc))
            return False
        try:
            self._queue.put_nowait((item, message))
        except asyncio.QueueFull:
            # Not acknowledged: the broker redelivers it after the controller reconnects.
            log.error("controller.overloaded", topic=message.topic, queue=_QUEUE_LIMIT)
        return True

    def _fetch(self, message: InboundMessage) -> bool:
        """A repository file request: the file server acknowledges and counts it."""
        assert self.ota is not None
        try:
            return self.ota.on_message(message)
        except Exception as exc:  # the file server acknowledged it before failing
            log.exception("controller.fetch_failed", topic=message.topic[:256])
            self._reject(message, "handler_failed", repr(exc))
            return True

    def _request(self, message: InboundMessage) -> None:
        """Count a malformed RPC request, then answer it (``ok: false`` for a malformed
        one); a request without a response topic is only counted."""
        try:
            parse_controller_rpc(message.topic)
            if message.payload:
                payloads.decode_object(message.payload)
        except (TopicError, PayloadError) as exc:
            self._reject(message, rejection_reason(exc), str(exc))
        else:
            if message.response_topic is None:
                self._reject(message, "no_response_topic", "a request without a response topic")
        if message.response_topic is None:
            return  # nowhere to send an answer
        task = asyncio.get_running_loop().create_task(self._answer(message))
        self._rpc_tasks.add(task)
        task.add_done_callback(self._rpc_tasks.discard)

    def _reject(self, message: InboundMessage, reason: str, detail: str) -> None:
        """Count and dead-letter a message that will not be stored (the caller acks it)."""
        letter = self.rejections.reject(
            message.topic, message.payload, reason, detail, retained=message.retain
        )
        self._park(letter)

    def _park(self, letter: DeadLetter) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # counted all the same
            self._letters.put_nowait(letter)

    async def _answer(self, message: InboundMessage) -> None:
        if message.response_topic is None:
            log.warning("controller.rpc_without_response_topic", topic=message.topic)
            return
        try:
            method = parse_controller_rpc(message.topic)
            request = payloads.decode_object(message.payload) if message.payload else {}
            body, messages = await self._in_store(lambda: self._call(method, request))
            if messages and self.ota is not None:
                self.ota.publish(messages)
            reply: dict[str, Any] = {"ok": True, **body}
        except (FleetError, TopicError, PayloadError) as exc:
            reply = {"ok": False, "error": str(exc), "kind": type(exc).__name__}
            if isinstance(exc, OperatorRefusedError):
                reply["reason"], reply["detail"] = exc.reason, exc.detail
                # Counted with every other refused message (the gate keeps the audit log).
                self._reject(message, "unauthorized", f"{exc.reason}: {exc.detail}")
            if isinstance(exc, UnknownDeviceError | DeviceNotAcceptedError):
                reply["device_id"] = exc.device_id  # the CLI names the device from this
        except Exception as exc:  # every request gets an answer
            log.exception("controller.rpc_failed", topic=message.topic)
            reply = {"ok": False, "error": repr(exc)[:300], "kind": "InternalError"}
        options = PublishOptions(correlation_data=message.correlation_data, message_expiry_s=30)
        try:
            self.link.publish(message.response_topic, payloads.encode(reply), options=options)
        except MqttError as exc:
            log.warning("controller.reply_failed", error=str(exc))

    def _rpc_show(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            show = ShowRequest.model_validate(request)
        except ValidationError as exc:
            raise PayloadError(
                f"devices-show: {payloads.schema_problem(exc)}",
                excerpt=repr(request)[:80],
                reason="schema",
            ) from None
        return {"device": asdict(self.store.device_detail(show.device_id, events=show.events))}

    def _rpc_status(self, _request: dict[str, Any]) -> dict[str, Any]:
        """Store thread: what was refused since the start, and the newest dead letters."""
        # dict() of a Counter copies in one step under the GIL: the loop thread may be
        # counting meanwhile.
        counts = Counter(dict(self.rejections.counts))
        if self.ota is not None:
            counts.update(dict(self.ota.files.rejections.counts))
        return {
            "rejected": {"total": counts.total(), "by_reason": dict(counts)},
            "dead_letters": [asdict(d) for d in self.store.dead_letters(_RECENT_LETTERS)],
        }

    async def _in_store(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def _writer(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < _BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._store_batch(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _store_batch(self, batch: list[tuple[Inbound, InboundMessage]]) -> None:
        """Commit a batch, then acknowledge it. If the batch fails, each message is tried on
        its own, so one that the store cannot take is dead-lettered (and acknowledged) and
        the others are stored: nothing valid is lost, and nothing stays unacknowledged."""
        # Acknowledge only what is committed: a crash before this makes the broker
        # redeliver, and the store de-duplicates telemetry by (device, stream, seq).
        try:
            await self._ingest([item for item, _ in batch])
        except Exception as exc:  # fall back to one by one
            if len(batch) == 1:
                self._store_failed(batch[0][1], exc)
                return
            log.warning("controller.batch_failed", error=repr(exc)[:300], size=len(batch))
        else:
            for _, message in batch:
                self.link.ack(message)
            return
        for item, message in batch:
            try:
                await self._ingest([item])
            except Exception as exc:  # this one only
                self._store_failed(message, exc)
            else:
                self.link.ack(message)

    async def _ingest(self, items: list[Inbound]) -> None:
        """Store ``items``; a database that stays locked is tried again a few times."""
        for attempt in range(_LOCKED_RETRIES):
            try:
                await self._in_store(functools.partial(self.store.ingest, items))
            except FleetError as exc:
                if "locked" not in str(exc) or attempt == _LOCKED_RETRIES - 1:
                    raise
                log.warning("controller.store_locked", attempt=attempt + 1)
                await asyncio.sleep(_LOCKED_BACKOFF_S)
            else:
                return

    def _store_failed(self, message: InboundMessage, exc: Exception) -> None:
        log.error("controller.store_failed", topic=message.topic, error=repr(exc)[:300])
        self._reject(message, "store_failed", repr(exc))
        self.link.ack(message)

    async def _letter_writer(self) -> None:
        """Keep dead letters in the store, in batches; a failure here only loses the copy."""
        while True:
            letters = [await self._letters.get()]
            while len(letters) < _BATCH and not self._letters.empty():
                letters.append(self._letters.get_nowait())
            try:
                await self._in_store(functools.partial(self.store.add_dead_letters, letters))
            except Exception as exc:  # the ledger still counts them
                log.error("controller.dead_letters_failed", error=repr(exc)[:300])
            finally:
                for _ in letters:
                    self._letters.task_done()

    async def _pruner(self) -> None:
        while True:
            try:
                removed = await self._in_store(self.store.prune)
            except FleetError as exc:
                log.error("controller.prune_failed", error=str(exc))
            else:
                if removed:
                    log.info("controller.pruned", rows=removed)
            await asyncio.sleep(_PRUNE_EVERY_S)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serve until SIGTERM/SIGINT (or ``stop``), then drain what was received."""
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("controller.starting", broker=self.config.broker, db=str(self.config.db))
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(self.link.run()),
                group.create_task(self._writer()),
                group.create_task(self._pruner()),
                group.create_task(self._letter_writer()),
            ]
            if self.ota is not None:
                tasks.append(group.create_task(self.ota.run()))
            await stop.wait()
            await self.link.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await self._queue.join()
                    await self._letters.join()
            for task in tasks:
                task.cancel()
        if self.ota is not None:
            self.ota.close()
        await self._in_store(self.store.close)
        self._executor.shutdown()
        log.info("controller.stopped")


def _clears_retained(topic: str) -> bool:
    """An empty message on a retained channel clears it: nothing to store, nothing wrong."""
    with contextlib.suppress(TopicError):
        return parse(topic).channel in (Channel.STATUS, Channel.REPORTED)
    return False
