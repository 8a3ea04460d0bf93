"""``fleet serve``: the controller that records every device's presence, telemetry and events.

It holds a persistent MQTT session (clean start false), so messages published while it is
restarting are queued by the broker and stored when it is back. Inbound messages are
validated on the loop thread (topic, size, JSON, device id in the body matching the topic)
and written in batches by a worker thread. A bad message is logged with the device and the
reason and counted; it never stops the controller or affects other devices. The controller
also answers the CLI's requests on ``fleet-controller/rpc/<method>``.
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
from typing import Any

import structlog

from agent.errors import MqttError, PayloadError, TopicError
from agent.mqtt import payloads
from agent.mqtt.base import InboundMessage, LinkSettings, PublishOptions, TlsSettings
from agent.mqtt.link import MqttLink
from agent.mqtt.topics import (
    CONTROLLER_ROOT,
    Channel,
    all_devices,
    controller_rpc_filter,
    parse,
    parse_controller_rpc,
)
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
    """Turn a device message into an ``Inbound`` or raise ``TopicError``/``PayloadError``."""
    topic = parse(message.topic)
    if topic.channel not in _RECORDED:
        raise TopicError("not a channel the controller records", topic=message.topic)
    body = payloads.decode_object(message.payload)
    claimed = body.get("device_id", topic.device_id)
    if claimed != topic.device_id:
        raise PayloadError(
            f"device_id {claimed!r} does not match the topic's {topic.device_id!r}",
            excerpt=message.payload[:80].decode(errors="replace"),
        )
    if topic.channel is Channel.TELEMETRY:
        _require(body, message, seq=int, ts=str)
    elif topic.channel is Channel.STATUS:
        _require(body, message, state=str)
    elif topic.channel is Channel.EVENTS:
        _require(body, message, event=str)
    return Inbound(topic.device_id, topic.channel.value, body, received)


def _require(body: dict[str, Any], message: InboundMessage, **fields: type) -> None:
    for name, kind in fields.items():
        value = body.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise PayloadError(
                f"field {name!r} must be a {kind.__name__}",
                excerpt=message.payload[:80].decode(errors="replace"),
            )


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
        self.rejected: Counter[str] = Counter()
        self._rpc_tasks: set[asyncio.Task[None]] = set()
        # Read-only RPCs: unsigned.
        self._rpc: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "devices-list": lambda _req: {"devices": self.store.list_devices()},
            "devices-show": self._rpc_show,
            "operators-list": lambda _req: {"operators": self.store.list_operators()},
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
        if self.ota is not None and self.ota.on_message(message):
            return
        if message.topic.startswith(CONTROLLER_ROOT + "/") or not message.payload:
            # Requests and cleared retained messages are not stored: nothing to lose.
            self.link.ack(message)
        if message.topic.startswith(CONTROLLER_ROOT + "/"):
            task = asyncio.get_running_loop().create_task(self._answer(message))
            self._rpc_tasks.add(task)
            task.add_done_callback(self._rpc_tasks.discard)
            return
        if not message.payload:
            return  # a cleared retained message
        try:
            item = validate(message, time.time())
        except (TopicError, PayloadError) as exc:
            self.rejected[type(exc).__name__] += 1
            log.warning("controller.rejected", topic=message.topic, error=str(exc))
            self.link.ack(message)
            return
        try:
            self._queue.put_nowait((item, message))
        except asyncio.QueueFull:
            # Not acknowledged: the broker redelivers it after the controller reconnects.
            self.rejected["QueueFull"] += 1
            log.error("controller.overloaded", topic=message.topic, queue=_QUEUE_LIMIT)

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
            if isinstance(exc, UnknownDeviceError | DeviceNotAcceptedError):
                reply["device_id"] = exc.device_id  # the CLI names the device from this
        options = PublishOptions(correlation_data=message.correlation_data, message_expiry_s=30)
        try:
            self.link.publish(message.response_topic, payloads.encode(reply), options=options)
        except MqttError as exc:
            log.warning("controller.reply_failed", error=str(exc))

    def _rpc_show(self, request: dict[str, Any]) -> dict[str, Any]:
        device_id = request.get("device_id")
        if not isinstance(device_id, str):
            raise FleetError("devices-show needs a device_id string")
        return {
            "device": self.store.device_detail(device_id, events=int(request.get("events", 20)))
        }

    async def _in_store(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def _writer(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < _BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._in_store(functools.partial(self.store.ingest, [i for i, _ in batch]))
            except FleetError as exc:
                # Unacknowledged, so the broker redelivers them on the next connection.
                log.error("controller.store_failed", error=str(exc), pending=len(batch))
            else:
                # Acknowledge only what is committed: a crash before this makes the broker
                # redeliver, and the store de-duplicates telemetry by (device, stream, seq).
                for _, message in batch:
                    self.link.ack(message)
            finally:
                for _ in batch:
                    self._queue.task_done()

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
            ]
            if self.ota is not None:
                tasks.append(group.create_task(self.ota.run()))
            await stop.wait()
            await self.link.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await self._queue.join()
            for task in tasks:
                task.cancel()
        if self.ota is not None:
            self.ota.close()
        await self._in_store(self.store.close)
        self._executor.shutdown()
        log.info("controller.stopped")
