"""Composition root of the agent: builds every part from the config and runs them together.

One asyncio loop, one ``TaskGroup``: the MQTT link, the outbox forwarder, the telemetry
loop, the command dispatcher, board readers and the systemd watchdog. SIGTERM or SIGINT
starts a graceful stop: a retained ``offline`` status, a clean MQTT disconnect (so the
broker discards the will), the models unloaded, every event emitted until then written to
the outbox, and only then the outbox closed. Anything queued but unsent stays on disk.

Every inbound message is routed by ``_on_message``; whatever a receiver refuses is recorded
in one ``InboundRejections`` ledger, whose counts are in telemetry (``rejected``) and in the
``health`` command's reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from agent.config import AgentConfig, PipelineConfig, SerialConfig
from agent.control.commands import CaptureRequest, CommandDispatcher, NoArguments
from agent.control.events import EventEmitter
from agent.control.inbound import InboundRejections
from agent.control.presence import Presence
from agent.control.remote import RemoteOps
from agent.daemon.sdnotify import SystemdNotifier
from agent.daemon.watchdog import Watchdog, agent_loops, stall_for_test
from agent.errors import CommandError, InferenceError
from agent.loop.background import BackgroundTasks
from agent.pipelines.pipeline import (
    Classify,
    PipelineSpec,
    ResultBody,
    SensorPipeline,
    ThresholdModel,
    parse_input,
)
from agent.telemetry import boards
from agent.telemetry.collector import ResourceSampler
from agent.telemetry.service import (
    BoardMonitor,
    LinkSnapshot,
    TelemetryExtras,
    TelemetryService,
)
from agent.telemetry.subsystem_health import HealthChange, HealthMonitor, Status
from agent.uplink.forwarder import DiskOutbox, Forwarder
from agent.uplink.outbox import Outbox
from edge_contract import payloads
from edge_contract.errors import PayloadError, TopicError
from edge_contract.replies import (
    CapturedInput,
    CommandReply,
    HealthReply,
    HealthSnapshot,
    LinkState,
    PingReply,
    QueueCounts,
    RejectedCounts,
)
from edge_contract.topics import Channel, device_commands, device_inputs, parse, topic_for
from edge_runtime.mqtt.base import ConnectionInfo, InboundMessage, LinkSettings, TlsSettings
from edge_runtime.mqtt.link import MqttLink

if TYPE_CHECKING:
    from agent.inference.service import InferenceService
    from agent.ota.report import Reporter
    from agent.ota.updater import OtaUpdater
    from agent.serial.relay import SerialRelay
    from agent.serial.session import Transport
    from agent.telemetry.metrics_http import MetricsServer
    from agent.telemetry.prometheus import AgentMetrics

log = structlog.get_logger("agent.daemon.app")
# Between a restart command's reply and the graceful stop: the reply is on its way first.
RESTART_GRACE_S = 0.3


class LinkWatcher:
    """Turns link transitions into health conditions and events with outage lengths."""

    def __init__(self, health: HealthMonitor, events: EventEmitter, outbox: DiskOutbox) -> None:
        self._health = health
        self._events = events
        self._outbox = outbox
        self._dropped_at_down = 0
        self._down_since: float | None = time.monotonic()
        self._first = True
        self.outages = 0
        self.last_outage_s: float | None = None
        self._tasks = BackgroundTasks()

    def state(self) -> LinkSnapshot:
        return {
            "connected": self._down_since is None,
            "outages": self.outages,
            "last_outage_s": self.last_outage_s,
        }

    def link_up(self, info: ConnectionInfo) -> None:
        outage = None if self._down_since is None else time.monotonic() - self._down_since
        self._down_since = None
        self._health.update("mqtt", Status.OK)
        if self._first:
            self._first = False
            self._tasks.spawn(
                self._events.emit("agent_started", session_present=info.session_present)
            )
            return
        self.last_outage_s = round(outage or 0.0, 3)
        self._tasks.spawn(self._announce_up(self.last_outage_s))

    async def _announce_up(self, outage_s: float) -> None:
        # Events queued during a long outage may themselves be dropped by the cap, so the
        # link_up event (queued last, sent first among the newest) carries the outage's drops.
        stats = self._outbox.last_stats
        await self._events.emit(
            "link_up",
            outage_s=outage_s,
            dropped_during_outage=stats.dropped_total - self._dropped_at_down,
            backlog=stats.depth,
        )

    def link_down(self, reason: str) -> None:
        self._down_since = time.monotonic()
        self.outages += 1
        self._health.update("mqtt", Status.DEGRADED, f"disconnected: {reason}")
        self._tasks.spawn(self._announce_down(reason))

    async def _announce_down(self, reason: str) -> None:
        self._dropped_at_down = self._outbox.last_stats.dropped_total
        await self._events.emit("link_down", reason=reason)


def _has_extras(config: AgentConfig) -> bool:
    """Whether telemetry carries sections owned by the event loop (``_telemetry_extras``)."""
    return bool(config.serial.enabled or config.pipelines or config.models or config.ota.enabled)


def link_settings(config: AgentConfig, presence: Presence) -> LinkSettings:
    mqtt = config.mqtt
    tls = None
    if mqtt.tls.ca_file is not None:
        tls = TlsSettings(
            ca_file=mqtt.tls.ca_file,
            cert_file=mqtt.tls.cert_file,
            key_file=mqtt.tls.key_file,
        )
    return LinkSettings(
        host=mqtt.host,
        port=mqtt.port,
        client_id=config.client_id,
        keepalive_s=mqtt.keepalive_s,
        session_expiry_s=mqtt.session_expiry_s,
        clean_start=False,
        will=presence.will(mqtt.will_delay_s),
        tls=tls,
        username=mqtt.username,
        password=mqtt.password.get_secret_value() if mqtt.password else None,
        reconnect_min_s=mqtt.reconnect_min_s,
        reconnect_max_s=mqtt.reconnect_max_s,
        connect_timeout_s=mqtt.connect_timeout_s,
        max_inflight=mqtt.max_inflight,
    )


class Agent:
    """All parts of a running agent, wired together."""

    def __init__(self, config: AgentConfig, config_path: Path | None = None) -> None:
        self.config = config
        # Set by `restart` and `config-set`: the CLI re-executes the process after run().
        self.restart_requested: str | None = None
        self._stop = asyncio.Event()
        state_dir = config.state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self.health = HealthMonitor()
        self.outbox = DiskOutbox(
            Outbox(state_dir / "outbox.sqlite3", max_bytes=config.queue.max_bytes)
        )
        self.events = EventEmitter(config.device_id, self.outbox)
        self.presence = Presence(config.device_id, config.device.hardware_id, config.device.tags)
        self.link = MqttLink(link_settings(config, self.presence))
        self.rejections = InboundRejections()
        self.commands = CommandDispatcher(config.device_id, self.link, self.rejections)
        self.link.set_message_handler(self._on_message)
        self.link.add_subscription(device_commands(config.device_id), qos=1)
        if any(p.source == "mqtt" for p in config.pipelines):
            self.link.add_subscription(device_inputs(config.device_id), qos=1)
        self.presence.attach(self.link)
        self.forwarder = Forwarder(self.link, self.outbox, batch=config.queue.batch)
        self.link_watcher = LinkWatcher(self.health, self.events, self.outbox)
        self.link.add_listener(self.link_watcher)
        self.board = BoardMonitor(
            boards.detect_board(), tegrastats_interval_ms=config.telemetry.tegrastats_interval_ms
        )
        self.telemetry = TelemetryService(
            device_id=config.device_id,
            interval_s=config.telemetry.interval_s,
            outbox=self.outbox,
            sampler=ResourceSampler(state_dir, thermal_root=config.telemetry.thermal_root),
            board=self.board,
            health=self.health,
            link_state=self.link_watcher.state,
            on_health_change=self._health_changed,
            rejected=self.rejections.snapshot,
            # Only a tick with something to read on the loop makes the round trip there.
            extras=self._telemetry_extras if _has_extras(config) else None,
        )
        self.relay: SerialRelay | None = None
        if config.serial.enabled:
            self.relay = self._build_relay(config.serial)
        self.inference: InferenceService | None = None
        if config.models or config.ota.enabled:
            # Imported here: an agent without models never loads numpy or a runtime.
            from agent.inference.serve import unmap_large_blocks  # noqa: PLC0415
            from agent.inference.service import InferenceService  # noqa: PLC0415

            # The REST API takes bodies of megabytes: as in `edge-agent serve`, freed large
            # blocks go back to the system instead of growing the heap.
            unmap_large_blocks()
            self.inference = InferenceService(config, self.events.emit)
        self.ota: OtaUpdater | None = None
        self.ota_reporter: Reporter | None = None
        if config.ota.enabled and self.inference is not None:
            self.ota = self._build_ota(self.inference)
        # /metrics: beside the models' on the inference port, and on [metrics] port if set.
        self.metrics: AgentMetrics | None = None
        self.metrics_server: MetricsServer | None = None
        if self.inference is not None or config.metrics.port is not None:
            self.metrics = self._build_metrics()
            if self.inference is not None:
                self.inference.extra_metrics = self.metrics.render
        self.pipelines: list[SensorPipeline] = []  # built in run(), once models are loaded
        self.notifier = SystemdNotifier()
        self.commands.register("ping", self._ping, NoArguments)
        self.commands.register("health", self._health_report, NoArguments)
        self.commands.register("capture", self._capture, CaptureRequest)
        self.commands.register("health-check", self._health_report, NoArguments)
        self.remote = RemoteOps(config, config_path, self.request_restart)
        self.remote.register(self.commands)

    def request_restart(self, why: str) -> None:
        """Stop gracefully soon (the command's reply goes out first), then start again."""
        if self.restart_requested is None:
            self.restart_requested = why
            log.info("agent.restart_requested", why=why)
            asyncio.get_running_loop().call_later(RESTART_GRACE_S, self._stop.set)

    def _stopping_message(self) -> str:
        """What systemd is told as the loop winds down. A restart re-executes in place
        (agent/cli.py): RELOADING=1 keeps the unit active until the new image's READY=1,
        where STOPPING=1 would have systemd wait for an exit that never comes, then kill it."""
        if self.restart_requested is None:
            return "STOPPING=1"
        # MONOTONIC_USEC: systemd >= 253 ties the reload to this moment (CLOCK_MONOTONIC).
        now_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return f"RELOADING=1\nMONOTONIC_USEC={now_us}\nSTATUS=restarting: {self.restart_requested}"

    def _build_ota(self, inference: InferenceService) -> OtaUpdater:
        # Imported here: an agent without OTA never loads the TUF client.
        from agent import __version__  # noqa: PLC0415
        from agent.inference.backends import onnx_providers, tflite_available  # noqa: PLC0415
        from agent.ota.report import Reported, Reporter  # noqa: PLC0415
        from agent.ota.updater import OtaUpdater  # noqa: PLC0415
        from agent.ota.variants import Capabilities  # noqa: PLC0415
        from agent.ota.watch import RequestWatch  # noqa: PLC0415

        watch = RequestWatch()
        inference.observers.add(watch)
        reported_topic = topic_for(self.config.device_id, Channel.REPORTED)

        async def publish_reported(reported: Reported) -> None:
            body = {"device_id": self.config.device_id, **reported}
            await self.outbox.append(reported_topic, payloads.encode(body), retain=True)
            serving = inference.registry.serving()
            if serving != self.presence.models:
                # The fleet view shows what serves from the retained status: keep it true.
                self.presence.models = serving
                if self.link.connected:
                    await self.presence.publish("online")

        reporter = Reporter(self.events.emit, publish_reported, __version__)
        self.ota_reporter = reporter
        updater = OtaUpdater(
            self.config.ota,
            device_id=self.config.device_id,
            state_dir=self.config.state_dir,
            link=self.link,
            registry=inference.registry,
            watch=watch,
            reporter=reporter,
            rejections=self.rejections,
            capabilities=Capabilities(
                hardware_id=self.config.device.hardware_id,
                accepted_ids=self.config.ota.hardware_ids,
                onnx_providers=onnx_providers(),
                litert=tflite_available(self.config.inference.tflite_runtime),
            ),
        )
        for topic_filter in updater.subscriptions():
            self.link.add_subscription(topic_filter, qos=1)
        return updater

    def _build_metrics(self) -> AgentMetrics:
        # Imported here: prometheus_client is in the inference extra (a missing one is the
        # CLI's one-line exit 78).
        from agent import __version__  # noqa: PLC0415
        from agent.telemetry.prometheus import AgentMetrics, AgentSources  # noqa: PLC0415

        telemetry, relay, reporter = self.telemetry, self.relay, self.ota_reporter
        return AgentMetrics(
            AgentSources(
                info={
                    "device_id": self.config.device_id,
                    "agent_version": __version__,
                    "board": self.board.kind,
                    "hardware_id": self.config.device.hardware_id or "none",
                },
                sample=lambda: telemetry.last_sample,
                link=self.link_watcher.state,
                inflight=lambda: self.forwarder.inflight,
                sent=lambda: self.forwarder.sent,
                outbox=lambda: self.outbox.last_stats,
                rejected=self.rejections.snapshot,
                serial=relay.snapshot if relay is not None else None,
                ota=reporter.models if reporter is not None else None,
            )
        )

    async def _start_metrics(self) -> None:
        """Serve /metrics on ``[metrics] port``; a port in use is a degraded condition."""
        options = self.config.metrics
        if options.port is None or self.metrics is None:
            return
        from agent.telemetry.metrics_http import start_metrics_server  # noqa: PLC0415

        try:
            self.metrics_server = await start_metrics_server(
                self._metrics_text, host=options.host, port=options.port
            )
        except OSError as exc:
            reason = (
                f"cannot serve /metrics on {options.host}:{options.port}: {exc.strerror or exc}"
            )
            log.error("metrics.failed", error=reason)
            change = self.health.update("metrics", Status.DEGRADED, reason)
            if change is not None:
                await self._health_changed(change)
            return
        log.info("metrics.listening", url=self.metrics_server.url)

    async def _metrics_text(self) -> bytes:
        assert self.metrics is not None
        text = self.metrics.render()
        if self.inference is not None:
            # In a thread: the monitor computes quantiles and drift for every model.
            text += await asyncio.to_thread(self.inference.monitor.render_prometheus)
        return text

    def _build_relay(self, cfg: SerialConfig) -> SerialRelay:
        # Imported here: an agent without a peripheral never loads the serial stack.
        from agent.serial import messages_gen  # noqa: PLC0415
        from agent.serial.relay import SerialRelay  # noqa: PLC0415

        async def open_transport() -> Transport:
            from agent.serial.transport import SerialTransport, find_port  # noqa: PLC0415

            path = cfg.port if cfg.port is not None else find_port(str(cfg.usb_id))
            return await SerialTransport.open(path, cfg.baudrate)

        return SerialRelay(
            open_transport,
            on_sensor=self._on_sensor,
            emit=self._serial_event,
            heartbeat_s=cfg.heartbeat_s,
            reset_wait_s=cfg.reset_wait_s,
            handshake_timeout_s=cfg.handshake_timeout_s,
            ack_timeout_s=cfg.ack_timeout_s,
            max_retries=cfg.max_retries,
            reconnect_min_s=cfg.reconnect_min_s,
            reconnect_max_s=cfg.reconnect_max_s,
            configure=messages_gen.Configure(
                cfg.sensor_period_ms, cfg.failsafe_ms, cfg.sensor_mask
            ),
            port_label=cfg.port or f"usb:{cfg.usb_id}",
        )

    async def _start_inference(self) -> None:
        if self.inference is not None:
            await self.inference.start()
            if self.ota is not None:
                await self.ota.restore()  # installed models serve before pipelines start
            # Presence carries what serves, so the fleet view shows it with the online status.
            self.presence.models = self.inference.registry.serving()
            failed = self.inference.load_failures
            reason = "; ".join(failed.values())
            conditions = [("models", Status.DEGRADED if failed else Status.OK, reason)]
            api_errors = [
                error
                for error in (self.inference.rest_error, self.inference.grpc_error)
                if error is not None
            ]
            if api_errors:
                conditions.append(("inference_api", Status.DEGRADED, "; ".join(api_errors)))
            for subsystem, status, why in conditions:
                change = self.health.update(subsystem, status, why)
                if change is not None:
                    await self._health_changed(change)
        built = [self._build_pipeline(p) for p in self.config.pipelines]
        self.pipelines = [p for p in built if p is not None]

    def _build_pipeline(self, p: PipelineConfig) -> SensorPipeline | None:
        classify: Classify
        if p.model == "threshold":
            classify = ThresholdModel(p.threshold, p.hysteresis)
        else:
            try:
                if self.inference is None:
                    raise InferenceError(f"model {p.model!r} is not configured under [[models]]")
                classify = self.inference.classifier(p.model, top_k=p.top_k)
            except InferenceError as exc:
                # The pipeline stays off; the agent and the other pipelines keep running.
                log.error("pipeline.disabled", pipeline=p.name, error=str(exc))
                self.health.update("pipelines", Status.DEGRADED, f"{p.name}: {exc}")
                return None
        spec = PipelineSpec(
            p.name,
            p.channel,
            p.scale,
            p.actuator,
            on_label=p.on_label,
            window=p.window,
            min_score=p.min_score,
            top_k=p.top_k,
            publish_results=p.publish_results,
            queue=p.queue,
        )
        actuate = self.relay.actuate if self.relay is not None else None
        return SensorPipeline(spec, classify, actuate, self.events.emit, self._publish_result)

    async def _publish_result(self, result: ResultBody) -> None:
        body = {"device_id": self.config.device_id, "ts": payloads.utc_now(), **result}
        await self.outbox.append(
            topic_for(self.config.device_id, Channel.RESULTS), payloads.encode(body)
        )

    def _on_message(self, message: InboundMessage) -> None:
        """Link callback: pipeline inputs go to their pipeline, the rest to the commands.

        Nothing a message holds may escape: an unexpected error is a rejection like any other.
        """
        try:
            self._route(message)
        except Exception as exc:  # a message never ends the link's callback or the agent
            log.exception("agent.route_failed", topic=message.topic[:256])
            self.rejections.reject(message, "handler_failed", f"{type(exc).__name__}: {exc}")

    def _route(self, message: InboundMessage) -> None:
        if self.ota is not None and self.ota.on_message(message):
            return
        try:
            topic = parse(message.topic)
        except TopicError:
            topic = None
        if topic is None or topic.channel is not Channel.INPUT:
            self.commands.on_message(message)
            return
        pipeline = next((p for p in self.pipelines if p.spec.name == topic.name), None)
        if pipeline is None or pipeline.spec.channel is not None:
            self.rejections.reject(message, "no_pipeline", "no pipeline takes MQTT inputs here")
            return
        try:
            pipeline.submit(parse_input(message.payload))
        except PayloadError as exc:
            self.rejections.reject(message, exc.reason, str(exc))
            pipeline.reject(str(exc))

    async def _capture(self, request: CaptureRequest) -> CommandReply:
        if self.inference is None:
            raise CommandError("no models are configured")
        topic = topic_for(self.config.device_id, Channel.CAPTURE)

        async def publish(captured: CapturedInput) -> None:
            await self.outbox.append(topic, payloads.encode(captured.model_dump(mode="json")))

        return await self.inference.capture_command(request.action, publish)

    async def _on_sensor(self, channel: int, value: int) -> None:
        for pipeline in self.pipelines:
            pipeline.on_sensor(channel, value)

    async def _serial_event(self, event: str, **fields: Any) -> None:
        condition = {
            "serial_connected": (Status.OK, ""),
            "serial_disconnected": (Status.DEGRADED, "peripheral disconnected"),
            "serial_refused": (Status.FAILED, str(fields.get("reason", ""))),
        }.get(event)
        if event == "serial_connected":
            for pipeline in self.pipelines:
                pipeline.reset()  # the board may have rebooted into its safe state
        await self.events.emit(event, **fields)
        if condition is not None:
            change = self.health.update("serial", *condition)
            if change is not None:
                await self._health_changed(change)

    def _telemetry_extras(self) -> TelemetryExtras:
        extras: TelemetryExtras = {}
        if self.relay is not None:
            extras["serial"] = self.relay.snapshot()
        if self.pipelines:
            extras["pipelines"] = {p.spec.name: p.snapshot() for p in self.pipelines}
        if self.inference is not None:
            extras["inference"] = self.inference.snapshot()
        return extras

    async def _health_changed(self, change: HealthChange) -> None:
        if change.before is None and change.after.status is Status.OK:
            return  # the first "ok" of a subsystem is not news
        await self.events.emit(
            "health_changed",
            subsystem=change.subsystem,
            before=change.before.status.value if change.before else None,
            after=change.after.status.value,
            reason=change.after.reason,
        )

    async def _ping(self, _request: NoArguments) -> PingReply:
        return PingReply(pong=True)

    async def _health_report(self, _request: NoArguments) -> HealthReply:
        stats = await self.outbox.stats()
        return HealthReply(
            health=HealthSnapshot.model_validate(self.health.snapshot()),
            queue=QueueCounts(
                depth=stats.depth, bytes=stats.bytes, dropped_total=stats.dropped_total
            ),
            link=LinkState.model_validate(self.link_watcher.state()),
            rejected=RejectedCounts.model_validate(self.rejections.snapshot()),
        )

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT, then stop gracefully."""
        stop = self._stop
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info(
            "agent.starting",
            device_id=self.config.device_id,
            broker=f"{self.config.mqtt.host}:{self.config.mqtt.port}",
            state_dir=str(self.config.state_dir),
            board=self.board.kind,
        )
        try:
            await self._start_inference()
            await self._start_metrics()
            async with asyncio.TaskGroup() as group:
                workers = [
                    group.create_task(self.link.run(), name="mqtt-link"),
                    group.create_task(self.forwarder.run(), name="forwarder"),
                    group.create_task(self.telemetry.run(), name="telemetry"),
                    group.create_task(self.commands.run(), name="commands"),
                    group.create_task(self.board.run(), name="board"),
                    group.create_task(self._watchdog(), name="watchdog"),
                    group.create_task(
                        self.remote.confirm_pending(self.link, self.config.mqtt.confirm_config_s),
                        name="config-confirm",
                    ),
                ]
                if self.relay is not None:
                    workers.append(group.create_task(self.relay.run(), name="serial"))
                if self.ota is not None:
                    workers.append(group.create_task(self.ota.run(), name="ota"))
                for pipeline in self.pipelines:
                    name = f"pipeline-{pipeline.spec.name}"
                    workers.append(group.create_task(pipeline.run(), name=name))
                self.notifier.notify("READY=1")
                await stop.wait()
                log.info("agent.stopping")
                self.notifier.notify(self._stopping_message())
                await self._shutdown()
                for task in workers:
                    task.cancel()
        finally:
            # Order matters: unloading the models emits model_unloaded; every event emitted
            # until now must reach the outbox before it closes, and none may come after.
            if self.metrics_server is not None:
                await self.metrics_server.close()
            if self.inference is not None:
                await self.inference.close()
            await self.events.close()
            await self.outbox.close()
        log.info("agent.stopped")

    async def _shutdown(self) -> None:
        if self.link.connected:
            await self.presence.publish("offline", reason="shutdown", timeout=2.0)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    while self.forwarder.inflight:  # noqa: ASYNC110 - a counter, no event to wait on
                        await asyncio.sleep(0.02)
            await self.forwarder.flush_acks()
        await self.link.close()

    async def _watchdog(self) -> None:
        """Ping systemd's watchdog only while every loop makes progress (agent.daemon.watchdog)."""
        interval = self.notifier.watchdog_interval_s
        if interval is None:
            return
        loops = agent_loops(
            telemetry=self.telemetry,
            telemetry_interval_s=self.config.telemetry.interval_s,
            link=self.link,
            outbox=self.outbox,
            inference=self.inference,
            relay=self.relay,
        )
        stall = stall_for_test(
            link=self.link, outbox=self.outbox, inference=self.inference, relay=self.relay
        )
        if stall is not None:
            asyncio.get_running_loop().call_later(2 * interval, stall)
        await Watchdog(self.notifier, interval, loops).run()
