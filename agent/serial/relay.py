"""The serial relay: keeps a peripheral connected and moves data between it and the pipelines.

Opens the configured port (or finds the board by USB VID:PID), waits out the reset that an
Arduino does when its port opens, handshakes, sends heartbeats, and reconnects with backoff
and jitter after an unplug, a replug or an emulator restart, with an event each way. Sensor
readings go to the pipelines; their actuator commands come back through ``actuate``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypedDict

import structlog

from agent.errors import HandshakeError, SerialLinkError
from agent.loop.background import BackgroundTasks
from agent.serial import messages_gen as msg
from agent.serial.session import LinkStats, PeripheralSession, Transport
from edge_runtime.mqtt.base import backoff_delay

log = structlog.get_logger("agent.serial")

Opener = Callable[[], Awaitable[Transport]]
SensorSink = Callable[[int, int], Awaitable[None]]
EventSink = Callable[..., Coroutine[Any, Any, None]]


class SerialSnapshot(TypedDict):
    """``serial`` in telemetry: the link's statistics and the board's own counters."""

    connected: bool
    port: str
    firmware_version: int | None
    frames_in: int
    frames_out: int
    crc_errors: int
    framing_errors: int
    resends: int
    ack_failures: int
    rtt_ms_p50: float | None
    rtt_ms_p99: float | None
    device: dict[str, int]
    sensor_drops: int
    refused: str | None


class SerialRelay:
    """One peripheral, kept connected; see the module docstring."""

    def __init__(
        self,
        open_transport: Opener,
        *,
        on_sensor: SensorSink,
        emit: EventSink,
        heartbeat_s: float = 0.5,
        reset_wait_s: float = 2.0,
        handshake_timeout_s: float = 5.0,
        ack_timeout_s: float = 0.3,
        max_retries: int = 5,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 10.0,
        configure: msg.Configure | None = None,
        port_label: str = "",
    ) -> None:
        self._open = open_transport
        self._on_sensor = on_sensor
        self._emit = emit
        self._heartbeat_s = heartbeat_s
        self._reset_wait_s = reset_wait_s
        self._handshake_timeout_s = handshake_timeout_s
        self._ack_timeout_s = ack_timeout_s
        self._max_retries = max_retries
        self._reconnect = (reconnect_min_s, reconnect_max_s)
        self._configure = configure
        self._port_label = port_label
        self._rng = random.Random()  # noqa: S311 - jitter, not cryptography
        self._session: PeripheralSession | None = None
        self._sensor_queue: asyncio.Queue[tuple[int, int]] = asyncio.Queue(maxsize=256)
        self._started = time.monotonic()
        # When the relay's loop last went round (monotonic), for the systemd watchdog.
        self.last_progress = self._started
        self._stall: Callable[[], None] | None = None  # test-only, see stall_for_test
        self.stats = LinkStats()
        self.connected = False
        self.refused: str | None = None
        self.failsafe_reported = 0
        self.sensor_drops = 0
        self._tasks = BackgroundTasks()

    async def actuate(self, actuator: int, value: int) -> None:
        """Send an actuator command and wait for its ack; raises SerialLinkError if down."""
        session = self._session
        if session is None or not self.connected:
            raise SerialLinkError("peripheral not connected")
        await session.send(msg.Actuate(actuator, value))

    def snapshot(self) -> SerialSnapshot:
        """Link statistics for telemetry."""
        p50, p99 = self.stats.rtt_percentiles()
        hello = self._session.hello if self._session else None
        return {
            "connected": self.connected,
            "port": self._port_label,
            "firmware_version": hello.firmware_version if hello else None,
            "frames_in": self.stats.frames_in,
            "frames_out": self.stats.frames_out,
            "crc_errors": self.stats.crc_errors,
            "framing_errors": self.stats.framing_errors,
            "resends": self.stats.resends,
            "ack_failures": self.stats.ack_failures,
            "rtt_ms_p50": p50,
            "rtt_ms_p99": p99,
            "device": dict(self.stats.device),
            "sensor_drops": self.sensor_drops,
            "refused": self.refused,
        }

    async def run(self) -> None:
        """Connect and serve forever, reconnecting after every failure."""
        feeder = asyncio.create_task(self._feed_sensors())
        failures = 0
        try:
            while True:
                try:
                    await self._serve_once()
                    failures = 0
                except HandshakeError as exc:
                    if self.refused != str(exc):  # report a refusal once, not every retry
                        log.error("serial.refused", error=str(exc))
                        await self._emit("serial_refused", reason=str(exc))
                    self.refused = str(exc)
                except SerialLinkError as exc:
                    log.warning("serial.link_failed", error=str(exc))
                delay = backoff_delay(failures, *self._reconnect, self._rng)
                failures += 1
                await self._backoff(delay)
        finally:
            feeder.cancel()

    async def _backoff(self, delay: float) -> None:
        # In slices, so that waiting for a peripheral (idle by design) still shows progress.
        end = time.monotonic() + delay
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(left, 1.0))
            self.last_progress = time.monotonic()

    def progress_deadline_s(self) -> float:
        """The longest one round of the relay's loop may take without being stuck."""
        frame = self._ack_timeout_s * (self._max_retries + 1)
        opening = self._reset_wait_s + self._handshake_timeout_s + 2 * frame
        return 2 * max(opening, self._heartbeat_s + frame, 1.0)

    def stall_for_test(self, block: Callable[[], None]) -> None:
        """Test-only (``agent.daemon.watchdog``): the next port opening hangs in ``block``."""
        self._stall = block

    async def _serve_once(self) -> None:
        self.last_progress = time.monotonic()
        if self._stall is not None:
            await asyncio.to_thread(self._stall)
        transport = await self._open()
        session = PeripheralSession(
            transport,
            self.stats,
            on_message=self._on_message,
            ack_timeout_s=self._ack_timeout_s,
            max_retries=self._max_retries,
        )
        reader = asyncio.create_task(session.run())
        try:
            # An Arduino resets when its port opens; its bootloader eats the first bytes.
            await asyncio.sleep(self._reset_wait_s)
            hello = await self._race(reader, session.handshake(self._handshake_timeout_s))
            if self._configure is not None:
                await self._race(reader, session.send(self._configure))
            self._session, self.connected, self.refused = session, True, None
            log.info("serial.connected", port=self._port_label, firmware=hello.firmware_version)
            await self._emit(
                "serial_connected",
                port=self._port_label,
                firmware_version=hello.firmware_version,
                reset_cause=hello.reset_cause,
            )
            await self._heartbeats(session, reader)
        finally:
            if self.connected:
                await self._emit("serial_disconnected", port=self._port_label)
            self.connected = False
            self._session = None
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, SerialLinkError):
                await reader
            await transport.close()

    async def _race(self, reader: asyncio.Task[None], work: Awaitable[Any]) -> Any:
        """Await ``work`` unless the reader dies first (port gone), then raise its error."""
        task = asyncio.ensure_future(work)
        done, _ = await asyncio.wait({task, reader}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, SerialLinkError):
            await task
        reader.result()  # raises the reader's SerialLinkError
        raise SerialLinkError("reader stopped")

    async def _heartbeats(self, session: PeripheralSession, reader: asyncio.Task[None]) -> None:
        while True:
            self.last_progress = time.monotonic()
            uptime_ms = int((time.monotonic() - self._started) * 1000)
            await self._race(reader, session.heartbeat(uptime_ms))
            done, _ = await asyncio.wait({reader}, timeout=self._heartbeat_s)
            if done:
                reader.result()
                raise SerialLinkError("reader stopped")

    def _on_message(self, message: msg.Message) -> None:
        if isinstance(message, msg.Sensor):
            try:
                self._sensor_queue.put_nowait((message.channel, message.value))
            except asyncio.QueueFull:
                self.sensor_drops += 1
        elif isinstance(message, msg.Heartbeat) and message.flags & 0x02:
            self.failsafe_reported += 1
            self._tasks.spawn(
                self._emit(
                    "peripheral_failsafe", port=self._port_label, active=bool(message.flags & 1)
                )
            )
        elif isinstance(message, msg.Log):
            log.info("peripheral.log", level=message.level, text=message.text)

    async def _feed_sensors(self) -> None:
        while True:
            channel, value = await self._sensor_queue.get()
            try:
                await self._on_sensor(channel, value)
            except Exception:
                log.exception("serial.pipeline_failed", channel=channel)
