"""``fleet serve``: the controller that records every device's presence, telemetry and events.

It holds a persistent MQTT session (clean start false), so messages published while it is
restarting are queued by the broker and stored when it is back. ``Controller`` only wires
the parts and runs them: device messages go to ingest (``fleet.ingest``: validate, batch,
commit, acknowledge, dead letters), the CLI's requests on ``fleet-controller/rpc/<method>``
to the RPC front end (``fleet.rpc_server``) over the use cases (``fleet.app``), and the
devices' repository file requests to the release service (``fleet.ota``) when ``[ota] repo``
is set, which also starts the staged rollouts' driver (``fleet.rollouts_driver``). Every
message is acknowledged exactly once, and nothing a message holds stops the controller
(``controller-status`` reports the refusals).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter
from collections.abc import Callable

import structlog

from edge_contract.controller import RolloutSummary, ShowRequest
from edge_contract.topics import CONTROLLER_ROOT, all_devices, controller_rpc_filter
from edge_runtime.mqtt.base import InboundMessage
from edge_runtime.mqtt.link import MqttLink
from edge_runtime.sdnotify import SystemdNotifier
from fleet.app.replies import Publish
from fleet.app.usecases import FleetApp
from fleet.broker import link_settings_for
from fleet.config import FleetConfig, database
from fleet.db.engine import describe
from fleet.http.context import HttpContext
from fleet.http.live import LiveEvent, LiveHub, LiveKind
from fleet.http.server import HttpServer, load_authenticator
from fleet.ingest import RECORDED, Ingest, StoreThread, rejection_reason, validate
from fleet.operator_rpc import OperatorGate
from fleet.ota import ReleaseService
from fleet.records import Inbound
from fleet.rollouts_driver import RolloutDriver
from fleet.rpc_server import RpcServer
from fleet.store import FleetStore, Retention, SqlFleetStore

# Re-exported: the names the controller's callers knew before the split.
__all__ = ["Controller", "ShowRequest", "link_settings_for", "rejection_reason", "validate"]

log = structlog.get_logger("fleet.service")


class Controller:
    """The controller service: ingest, the CLI's RPC and OTA, on one loop and one store thread."""

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
        self.store = store or SqlFleetStore(database(config), retention)
        self.link = MqttLink(link_settings_for(config, client_id=config.client_id, persistent=True))
        self.link.set_message_handler(self._on_message)
        for channel in RECORDED:
            self.link.add_subscription(all_devices(channel), qos=1)
        self.link.add_subscription(controller_rpc_filter(), qos=1)
        self._thread = StoreThread()
        self.hub = LiveHub()
        self.ingest = Ingest(self.store, self.link, self._thread, on_committed=self._committed)
        self.rejected: Counter[str] = self.ingest.rejections.counts
        self.ota: ReleaseService | None = None
        if config.ota.repo is not None:
            self.ota = ReleaseService(config.ota, self.link, self.store)
        self.app = FleetApp(self.store, releases=self.ota, clock=clock, refusals=self._refusals)
        self.gate = OperatorGate(self.store, window_s=config.operator.request_window_s, clock=clock)
        self.rpc = RpcServer(self.app, self.gate, self.link, self._thread, self.ingest.reject)
        self.rollouts: RolloutDriver | None = None
        if self.ota is not None:
            self.rollouts = RolloutDriver(
                self.app.rollouts,
                self.ota,
                self._thread,
                config.rollouts.tick_s,
                on_change=self._rollouts_changed,
            )

        self.http: HttpServer | None = None
        if config.http.enabled:
            self.http = HttpServer(self._http_context(clock))

    def _http_context(self, clock: Callable[[], float]) -> HttpContext:
        return HttpContext(
            app=self.app,
            thread=self._thread,
            publish=self._publish_signed,
            hub=self.hub,
            auth=load_authenticator(self.config.http),
            options=self.config.http,
            clock=clock,
            mqtt_refusals=self._refusals,
            ingest=self.ingest.figures,
        )

    def _publish_signed(self, messages: list[Publish]) -> None:
        """Loop thread: the desired states an HTTP action signed (OTA is on when it has any)."""
        if messages and self.ota is not None:
            self.ota.publish(messages)

    def _committed(self, items: list[Inbound]) -> None:
        """Loop thread: each stored device message, to the live feed."""
        for item in items:
            kind: LiveKind = item.kind  # type: ignore[assignment]  # RECORDED channels
            self.hub.publish(
                LiveEvent(kind=kind, subject=item.device_id, at=item.received, data=item.body)
            )

    def _rollouts_changed(self, summaries: list[RolloutSummary]) -> None:
        """Loop thread: each changed rollout's summary, to the live feed."""
        for summary in summaries:
            data = summary.model_dump(mode="json")
            self.hub.publish(
                LiveEvent(
                    kind="rollout", subject=summary.rollout_id, at=summary.updated_at, data=data
                )
            )

    def _refusals(self) -> Counter[str]:
        """Store thread: what was refused since the start (ingest, RPC and file requests)."""
        # dict() of a Counter copies in one step under the GIL: the loop thread may be
        # counting meanwhile.
        counts = Counter(dict(self.ingest.rejections.counts))
        if self.ota is not None:
            counts.update(dict(self.ota.files.rejections.counts))
        return counts

    def _on_message(self, message: InboundMessage) -> None:
        """Loop thread: every message is acknowledged, once, whatever it holds: here, by
        the file server, or after its commit. Nothing raises out of this (an unacknowledged
        message would hold a slot of the broker's receive window until the next connection,
        and come back then)."""
        try:
            acked_elsewhere = self._dispatch(message)
        except Exception as exc:  # a handler bug must not wedge ingest
            log.exception("controller.handler_failed", topic=message.topic[:256])
            self.ingest.reject(message, "handler_failed", repr(exc))
            acked_elsewhere = False
        if not acked_elsewhere:
            self.link.ack(message)

    def _dispatch(self, message: InboundMessage) -> bool:
        """Route one message; True when it is acknowledged elsewhere (file server, writer)."""
        if self.ota is not None and self._fetch(message):
            return True
        if message.topic.startswith(CONTROLLER_ROOT + "/"):
            self.rpc.on_request(message)  # answered once, never redelivered
            return False
        return self.ingest.offer(message)

    def _fetch(self, message: InboundMessage) -> bool:
        """A repository file request: the file server acknowledges and counts it."""
        assert self.ota is not None
        try:
            return self.ota.on_message(message)
        except Exception as exc:  # the file server acknowledged it before failing
            log.exception("controller.fetch_failed", topic=message.topic[:256])
            self.ingest.reject(message, "handler_failed", repr(exc))
            return True

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serve until SIGTERM/SIGINT (or ``stop``), then drain what was received."""
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info(
            "controller.starting", broker=self.config.broker, db=describe(database(self.config))
        )
        if self.http is not None:
            self.http.bind()  # a bad address stops the controller before it connects
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(self.link.run())]
            if self.http is not None:
                tasks.append(group.create_task(self.http.run()))
            tasks += [group.create_task(coro) for coro in self.ingest.tasks()]
            if self.ota is not None:
                tasks.append(group.create_task(self.ota.run()))
            if self.rollouts is not None:
                tasks.append(group.create_task(self.rollouts.run()))
            notifier = SystemdNotifier()
            tasks.append(group.create_task(self._watchdog(notifier)))
            notifier.notify("READY=1")
            await stop.wait()
            notifier.notify("STOPPING=1")
            if self.http is not None:
                await self.http.stop()
            await self.link.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await self.ingest.drain()
            for task in tasks:
                task.cancel()
        if self.ota is not None:
            self.ota.close()
        await self._thread.run(self.store.close)
        self._thread.shutdown()
        log.info("controller.stopped")

    async def _watchdog(self, notifier: SystemdNotifier) -> None:
        """Ping systemd's watchdog (``WatchdogSec=``) while the event loop runs and the store
        thread answers: every write and read goes through that one thread, so a hung
        database call stops the pings (``STATUS=`` says so) and systemd restarts the
        controller."""
        interval = notifier.watchdog_interval_s
        if interval is None:
            return
        while True:
            started = time.monotonic()
            try:
                async with asyncio.timeout(interval):
                    await self._thread.run(_nothing)
            except TimeoutError:
                notifier.notify(f"STATUS=store thread has not answered for {interval:.0f} s")
            else:
                notifier.notify("WATCHDOG=1")
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))


def _nothing() -> None:
    """The watchdog's probe: returns as soon as the store thread gets to it."""
