"""The agent's systemd watchdog: ``WATCHDOG=1`` only while every loop makes progress.

Each interval (half of ``WatchdogSec=``) the watchdog gathers the evidence of progress of
every loop the agent runs into a ``Liveness`` registry and pings only if no loop is late;
otherwise it sends ``STATUS=late: <loops>`` and no ping, so systemd restarts the agent once
the lateness outlasts ``WatchdogSec=``. The evidence, per loop:

- ``telemetry``, ``mqtt`` (the link's network loop and reconnect loop) and ``serial`` (the
  relay's heartbeat and reconnect loop): the time the loop last went round;
- ``forwarder`` (the outbox's worker thread, the forwarder's blocking half) and
  ``inference`` (every inference worker thread): a no-op probe submitted to the thread, which
  only comes back if the thread is not stuck in a hung call.

A loop that is idle by design is not watched: no serial port configured, no models.
Test-only: ``EDGE_TEST_STALL=<loop>`` (``forwarder``, ``inference``, ``mqtt`` or
``serial``) blocks
that loop's thread for good a moment after start, so an integration test can see the pings
stop; it is read from the environment only when the agent runs under a watchdog.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from agent.daemon.liveness import Liveness
from edge_runtime.sdnotify import SystemdNotifier

if TYPE_CHECKING:
    from agent.inference.service import InferenceService
    from agent.serial.relay import SerialRelay
    from agent.telemetry.service import TelemetryService
    from agent.uplink.forwarder import DiskOutbox
    from edge_runtime.mqtt.link import MqttLink

log = structlog.get_logger("agent.daemon.watchdog")
STALL_ENV = "EDGE_TEST_STALL"
Stamp = Callable[[], float]
Probe = Callable[[], Awaitable[None]]


@dataclass
class Loops:
    """What the watchdog watches: loops that stamp their progress, threads it probes."""

    stamps: dict[str, tuple[Stamp, float]] = field(default_factory=dict)  # name: (stamp, s)
    probes: dict[str, Probe] = field(default_factory=dict)


def agent_loops(
    *,
    telemetry: TelemetryService,
    telemetry_interval_s: float,
    link: MqttLink,
    outbox: DiskOutbox,
    inference: InferenceService | None,
    relay: SerialRelay | None,
) -> Loops:
    """The agent's loops, each with a deadline of a few watchdog intervals or more."""
    loops = Loops()
    loops.stamps["telemetry"] = (lambda: telemetry.last_tick, telemetry_interval_s * 3)
    # A connect attempt may take connect_timeout_s in paho and as long again for CONNACK.
    link_s = 2 * link.settings.connect_timeout_s + 10.0
    loops.stamps["mqtt"] = (lambda: link.last_progress, link_s)
    loops.probes["forwarder"] = outbox.probe
    if inference is not None:
        registry = inference.registry

        async def probe_inference() -> None:
            await asyncio.gather(*registry.probe_workers())

        loops.probes["inference"] = probe_inference
    if relay is not None:
        loops.stamps["serial"] = (lambda: relay.last_progress, relay.progress_deadline_s())
    return loops


class Watchdog:
    """Pings systemd while no loop is late; see the module docstring."""

    def __init__(self, notifier: SystemdNotifier, interval: float, loops: Loops) -> None:
        self._notifier = notifier
        self._interval = interval
        self._loops = loops
        self.liveness = Liveness()
        self._probing: dict[str, asyncio.Task[None]] = {}
        now = time.monotonic()
        for name, (_stamp, deadline) in loops.stamps.items():
            self.liveness.register(name, max(deadline, 3 * interval), now)
        for name in loops.probes:
            self.liveness.register(name, 3 * interval, now)

    async def run(self) -> None:
        reported: list[str] = []
        try:
            while True:
                now = time.monotonic()
                self._observe(now)
                late = self.liveness.late(now)
                if late:
                    self._notifier.notify(f"STATUS=late: {', '.join(late)}")
                    if late != reported:
                        log.error("watchdog.late", loops=late)
                elif reported:
                    self._notifier.notify("STATUS=running")
                else:
                    self._notifier.notify("WATCHDOG=1")
                reported = late
                await asyncio.sleep(self._interval)
        finally:
            for task in self._probing.values():
                task.cancel()

    def _observe(self, now: float) -> None:
        for name, (stamp, _deadline) in self._loops.stamps.items():
            self.liveness.beat(name, min(stamp(), now))
        for name, probe in self._loops.probes.items():
            running = self._probing.get(name)
            if running is None or running.done():
                self._probing[name] = asyncio.create_task(self._probe(name, probe))

    async def _probe(self, name: str, probe: Probe) -> None:
        try:
            await probe()
        except Exception as exc:  # a failing probe is no progress; the next one retries
            log.warning("watchdog.probe_failed", loop=name, error=str(exc))
            return
        self.liveness.beat(name, time.monotonic())


def stall_for_test(
    *,
    link: MqttLink,
    outbox: DiskOutbox,
    inference: InferenceService | None,
    relay: SerialRelay | None,
) -> Callable[[], None] | None:
    """Test-only: the stall ``EDGE_TEST_STALL`` asks for (see the module docstring)."""
    which = os.environ.get(STALL_ENV, "")
    if not which:
        return None
    never = threading.Event()

    def block() -> None:
        never.wait()

    def stall() -> None:
        log.warning("watchdog.test_stall", loop=which)
        if which == "forwarder":
            asyncio.get_running_loop().create_task(outbox.probe(block))
        elif which == "inference" and inference is not None:
            inference.registry.probe_workers(block)
        elif which == "mqtt":
            link.stall_for_test(block)
        elif which == "serial" and relay is not None:
            relay.stall_for_test(block)

    return stall
