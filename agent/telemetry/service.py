"""The telemetry loop: measure every ``interval_s``, number the message, queue it.

Each message carries ``seq`` (allocated atomically with the queued row, growing across
restarts) and ``ts`` (when measured, not when sent), the readings, board-specific readings,
queue state with drops since the previous message, link state and the health block.

The ticks run on the outbox's worker thread, on its own clock (``DiskOutbox.every``):
measuring, the health update and queuing happen there in one go, and the event loop wakes
once per message, to hand the new row to the forwarder and report health changes. An idle
agent's CPU is mostly wake-ups, so this is where it is saved (see
``agent.uplink.outbox_thread``). What the loop owns (serial link, pipelines and inference
statistics: the ``extras``) is read on the loop, in a round trip the tick makes only when
there are extras. The cadence is fixed from a monotonic clock; when a tick falls behind, the
next ones are skipped, never burst.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Required, TypedDict

import structlog

from agent.control.inbound import RejectedSnapshot
from agent.errors import BoardParseError, BoardReadError
from agent.telemetry import boards
from agent.telemetry.collector import DiskSample, Readings, ResourceSampler
from agent.telemetry.subsystem_health import (
    HealthChange,
    HealthMonitor,
    HealthSnapshotDict,
    Status,
)
from agent.uplink.forwarder import DiskOutbox
from agent.uplink.outbox import DropReport, Outbox, OutboxRow, OutboxStats
from edge_contract import payloads
from edge_contract.topics import Channel, topic_for

log = structlog.get_logger("agent.telemetry")

DISK_DEGRADED_PERCENT = 90.0
DISK_FAILED_PERCENT = 98.0
QUEUE_DEGRADED_FRACTION = 0.8
# How long a tick waits for the event loop's extras before sending without them.
EXTRAS_TIMEOUT_S = 2.0


class LinkSnapshot(TypedDict):
    """``link``: the MQTT link (``edge_contract.replies.LinkState`` on the wire)."""

    connected: bool
    outages: int
    last_outage_s: float | None


class BoardReading(TypedDict, total=False):
    """``board`` without its ``kind``: Raspberry Pi flags or Jetson tegrastats."""

    throttled: dict[str, object]
    tegrastats: dict[str, object]


class TelemetryExtras(TypedDict, total=False):
    """The sections the event loop owns, each its owner's JSON-ready snapshot."""

    serial: Mapping[str, object]
    pipelines: Mapping[str, Mapping[str, object]]
    inference: Mapping[str, object]


class QueueBlock(TypedDict):
    depth: int
    bytes: int
    max_bytes: int
    dropped: int  # since the previous message was built
    dropped_total: int


class BoardBlock(BoardReading, total=False):
    kind: Required[str]


class _Closing(TypedDict, total=False):
    """The sections after the extras, each only when it applies."""

    rejected: RejectedSnapshot
    board: BoardBlock
    errors: dict[str, str]


class TelemetryBody(Readings, TelemetryExtras, _Closing, total=False):
    """A telemetry message as built (``TelemetryMessage`` is what the controller reads of it);
    docs/mqtt-api.md, "Telemetry", describes every section."""

    device_id: Required[str]
    stream: Required[str]
    seq: Required[int]
    ts: Required[str]
    queue: Required[QueueBlock]
    link: Required[LinkSnapshot]
    health: Required[HealthSnapshotDict]


class BoardMonitor:
    """Raspberry Pi throttling flags per sample; Jetson tegrastats from a long-lived process."""

    def __init__(self, kind: boards.BoardKind, *, tegrastats_interval_ms: int = 1000) -> None:
        self.kind = kind
        self._interval_ms = tegrastats_interval_ms
        self._latest: boards.TegraStats | None = None
        self._error: str | None = None

    def read(self) -> tuple[BoardReading | None, str | None]:
        """Blocking; returns (reading, error). Generic boards have neither."""
        if self.kind == "raspberry_pi":
            try:
                return {"throttled": boards.read_pi_throttled().as_dict()}, None
            except (BoardReadError, BoardParseError) as exc:
                return None, str(exc)
        if self.kind == "jetson":
            if self._latest is None:
                return None, self._error
            return {"tegrastats": self._latest.as_dict()}, self._error
        return None, None

    async def run(self) -> None:
        """Follow ``tegrastats`` on Jetson boards (restarting it if it exits); else return."""
        if self.kind != "jetson":
            return
        while True:
            await self._follow_tegrastats()
            await asyncio.sleep(5.0)

    async def _follow_tegrastats(self) -> None:
        command = boards.tegrastats_command(self._interval_ms)
        try:
            process = await asyncio.create_subprocess_exec(
                *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
            )
        except OSError as exc:
            self._error = f"cannot start {command[0]}: {exc}"
            return
        assert process.stdout is not None
        try:
            async for raw in process.stdout:
                self._consume(raw.decode(errors="replace"))
        finally:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        self._error = f"{command[0]} exited with {process.returncode}"

    def _consume(self, line: str) -> None:
        try:
            self._latest = boards.parse_tegrastats(line)
            self._error = None
        except BoardParseError as exc:
            self._error = str(exc)


class TelemetryService:
    """Produces one telemetry message per interval; see the module docstring.

    ``link_state`` and ``rejected`` (the refused-message counts, ``rejected`` in the body)
    are called on the worker thread and must be safe there (plain attribute reads);
    ``extras`` is called on the event loop.
    """

    def __init__(
        self,
        *,
        device_id: str,
        interval_s: float,
        outbox: DiskOutbox,
        sampler: ResourceSampler,
        board: BoardMonitor,
        health: HealthMonitor,
        link_state: Callable[[], LinkSnapshot],
        on_health_change: Callable[[HealthChange], Awaitable[None]],
        extras: Callable[[], TelemetryExtras] | None = None,
        rejected: Callable[[], RejectedSnapshot] | None = None,
    ) -> None:
        self._device_id = device_id
        self._topic = topic_for(device_id, Channel.TELEMETRY)
        self._interval_s = interval_s
        self._outbox = outbox
        self._sampler = sampler
        self._board = board
        self._health = health
        self._link_state = link_state
        self._on_health_change = on_health_change
        self._extras = extras
        # Called on the worker thread like link_state: must be safe there.
        self._rejected = rejected
        self._dropped_seen: int | None = None
        self._changes: deque[HealthChange] = deque()
        self._failure: BaseException | None = None
        self._ticked = asyncio.Event()
        self.last_tick = time.monotonic()
        self.last_seq: int | None = None
        # The newest body built and when (Unix seconds): /metrics shows its host figures.
        # Set on the worker thread, read on the loop: one reference, swapped whole.
        self.last_sample: tuple[TelemetryBody, float] | None = None

    async def run(self) -> None:
        """Publish one message per interval until cancelled; a tick's error ends it."""
        loop = asyncio.get_running_loop()
        self._outbox.every(
            self._interval_s,
            lambda outbox: self._produce(outbox, *self._context_from_worker(loop)),
            self._tick_done,
            self._tick_failed,
        )
        try:
            while True:
                await self._ticked.wait()
                self._ticked.clear()
                if self._failure is not None:
                    raise self._failure
                while self._changes:
                    await self._on_health_change(self._changes.popleft())
        finally:
            self._outbox.cancel_every()

    def _tick_done(self, seq: int, changes: list[HealthChange]) -> None:
        self.last_tick = time.monotonic()
        self.last_seq = seq
        # At most one change per subsystem per tick, consumed every loop pass: bounded.
        self._changes.extend(changes)
        if changes:
            self._ticked.set()

    def _tick_failed(self, exc: BaseException) -> None:
        self._failure = exc
        self._ticked.set()

    def _context_from_worker(
        self, loop: asyncio.AbstractEventLoop
    ) -> tuple[LinkSnapshot, TelemetryExtras, str | None]:
        """(link state, extras, error) for a tick on the worker thread."""
        link = self._link_state()
        if self._extras is None:
            return link, {}, None
        answer: concurrent.futures.Future[TelemetryExtras] = concurrent.futures.Future()
        extras = self._extras

        def on_loop() -> None:
            if answer.set_running_or_notify_cancel():
                try:
                    answer.set_result(extras())
                except Exception as exc:  # reported in the message, never fatal
                    answer.set_exception(exc)

        try:
            loop.call_soon_threadsafe(on_loop)
            return link, answer.result(timeout=EXTRAS_TIMEOUT_S), None
        except TimeoutError:
            answer.cancel()
            return link, {}, f"event loop did not answer in {EXTRAS_TIMEOUT_S:g} s"
        except Exception as exc:
            return link, {}, f"{type(exc).__name__}: {exc}"

    async def publish_once(self) -> int:
        """Measure now and queue the message, outside the periodic ticks; returns its seq."""
        link = self._link_state()
        extras: TelemetryExtras = self._extras() if self._extras is not None else {}
        seq, changes = await self._outbox.run(
            lambda outbox: self._produce(outbox, link, extras, None)
        )
        for change in changes:
            await self._on_health_change(change)
        return seq

    def _produce(
        self,
        outbox: Outbox,
        link: LinkSnapshot,
        extras: TelemetryExtras,
        extras_error: str | None,
    ) -> tuple[tuple[int, OutboxRow | None], list[HealthChange]]:
        """Measure, update health and queue one message (on the worker thread)."""
        measured_at = payloads.utc_now()
        readings, errors, board_reading = self._measure()
        if extras_error is not None:
            errors["extras"] = extras_error
        stats = outbox.stats()
        changes = self._update_health(readings, errors, stats, board_reading)
        health = self._health.snapshot()

        def build(seq: int, drops: DropReport) -> bytes:
            closing: _Closing = {}
            if self._rejected is not None:
                closing["rejected"] = self._rejected()
            if board_reading is not None:
                closing["board"] = {"kind": self._board.kind, **board_reading}
            if errors:
                closing["errors"] = errors
            body: TelemetryBody = {
                "device_id": self._device_id,
                "stream": self._outbox.stream,
                "seq": seq,
                "ts": measured_at,
                **readings,
                "queue": {
                    "depth": stats.depth,
                    "bytes": stats.bytes,
                    "max_bytes": stats.max_bytes,
                    "dropped": drops.since_last,
                    "dropped_total": drops.total,
                },
                "link": link,
                "health": health,
                **extras,
                **closing,
            }
            self.last_sample = (body, time.time())
            return payloads.encode(body)

        return outbox.append_sequenced_row(self._topic, build), changes

    def _measure(self) -> tuple[Readings, dict[str, str], BoardReading | None]:
        readings, errors = self._sampler.sample()
        board_reading, board_error = self._board.read()
        if board_error:
            errors["board"] = board_error
        return readings, errors, board_reading

    def _update_health(
        self,
        readings: Readings,
        errors: dict[str, str],
        stats: OutboxStats,
        board_reading: BoardReading | None,
    ) -> list[HealthChange]:
        changes = [
            self._health.update("telemetry", *_telemetry_condition(errors)),
            self._health.update("disk", *_disk_condition(readings.get("disk"))),
            self._health.update("queue", *self._queue_condition(stats)),
        ]
        if self._board.kind != "generic":
            changes.append(self._health.update("board", *_board_condition(board_reading, errors)))
        return [change for change in changes if change is not None]

    def _queue_condition(self, stats: OutboxStats) -> tuple[Status, str]:
        previous, self._dropped_seen = self._dropped_seen, stats.dropped_total
        if previous is not None and stats.dropped_total > previous:
            return Status.DEGRADED, f"dropped {stats.dropped_total - previous} oldest messages"
        if stats.bytes > QUEUE_DEGRADED_FRACTION * stats.max_bytes:
            return Status.DEGRADED, f"queue {stats.bytes}/{stats.max_bytes} bytes"
        return Status.OK, ""


def _board_condition(reading: BoardReading | None, errors: dict[str, str]) -> tuple[Status, str]:
    if "board" in errors:
        return Status.DEGRADED, errors["board"]
    flags = (reading or {}).get("throttled") or {}
    # Only conditions present now degrade health; "has occurred" bits stay in telemetry.
    active = [
        name
        for name in ("under_voltage_now", "throttled_now", "freq_capped_now", "soft_temp_limit_now")
        if flags.get(name)
    ]
    if active:
        return Status.DEGRADED, "raspberry pi: " + ", ".join(active)
    return Status.OK, ""


def _telemetry_condition(errors: dict[str, str]) -> tuple[Status, str]:
    if not errors:
        return Status.OK, ""
    return Status.DEGRADED, "; ".join(f"{k}: {v}" for k, v in sorted(errors.items()))


def _disk_condition(disk: DiskSample | None) -> tuple[Status, str]:
    if disk is None:
        return Status.DEGRADED, "disk usage unknown"
    used = float(disk["used_percent"])
    if used >= DISK_FAILED_PERCENT:
        return Status.FAILED, f"state dir disk {used}% full"
    if used >= DISK_DEGRADED_PERCENT:
        return Status.DEGRADED, f"state dir disk {used}% full"
    return Status.OK, ""
