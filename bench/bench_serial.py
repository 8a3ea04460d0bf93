"""Serial link benchmark: throughput and round trips of the agent's serial path on the emulator.

The firmware (``make -C firmware``) runs on the emulated ATmega328P (``devtools.emulated_board``),
whose UART is a pseudo-terminal. The host side is the agent's own code path: the real pyserial
``SerialTransport`` opened at 115200 baud under a ``PeripheralSession`` (handshake, framing,
decoding, acks). A thin tap between the two copies the bytes the session reads, so that frame
sequence numbers and wire bytes can be counted after each window, off the timed path.

1. Payload throughput, device to host. The firmware is configured to stream as fast as it
   allows: all 6 ADC channels at the shortest period it accepts (asked for 1 ms; it raises
   anything under 7 ms to 7 ms, and the ``hello`` read back after the ``configure`` says
   which period it applied). Over ``windows`` windows of ``window_s`` seconds the payload
   bytes of every valid frame the session decodes are counted (each window starts after a
   0.3 s pause, so bytes that piled up while the previous one was analysed are not counted);
   the median rate is compared with:

   - the line's payload capacity after framing (the target, >= 0.9): 11,520 B/s (115200 baud
     8N1) x payload bytes / wire bytes of one ``sensor`` frame, both from a real encoded frame
     (7 of 13: seq, type, payload and CRC after COBS, plus the 0x00 delimiter);
   - the load the firmware offers at that setting (channels x 1000 / period x 7 B). At the
     firmware's 7 ms minimum it is 6,000 B/s, 0.97 of the line's payload capacity, so the
     target is reachable; the table shows both ratios;
   - the payload capacity of the emulated line as measured in the same run (3. below).

   Losses are counted two ways. Seq gaps: the firmware numbers every frame it actually sends
   (u8, wrapping), so a gap is a frame that left the board but was not decoded by the host.
   Readings dropped by the firmware: when its 128-byte TX ring has no room, a ``sensor``
   frame is dropped before it gets a seq number, so seq gaps cannot show it; instead the
   sample ticks are recovered from the readings' ``uptime_ms`` (all channels of one tick
   carry the same value) and every tick should bring one reading per channel.

2. Round trips: ``heartbeat`` -> ``heartbeat`` reply and ``actuate`` -> ``ack`` (p50, p99 of
   ``samples`` each), one at a time, timed from the call into the session to the reply's
   dispatch (heartbeat) or the return of ``session.send`` (actuate), on an idle line (the
   sensor stream stopped) and, for context, under the full sensor stream. Each heartbeat
   also waits for the ``stats`` frame that follows the reply, so no ping queues behind the
   previous one's tail. Compared with the line's minimum: the wire time of the request and
   reply frames at 11,520 B/s.

3. The emulated line itself, for context: the host keeps 4 heartbeats in flight on top of the
   sensor stream, so the firmware always has a reply to send and the line is saturated; the
   wire bytes per second the host receives are the emulated UART's real byte rate, compared
   with the nominal 11,520 B/s.

4. Firmware flash and static RAM from the ``flash:`` and ``ram:`` lines ``make -C firmware``
   prints, against the budgets the Makefile enforces (50 % and 60 %).

Nothing here asserts on timing: each figure that has a target shows PASS or MISS and the exit
code stays 0 unless a step could not finish (build, emulator, handshake, a nack or a timeout).

Run from the repository root::

    .venv/bin/python -m bench.bench_serial [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import itertools
import json
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from agent.errors import SerialLinkError
from agent.serial import messages_gen as msg
from agent.serial.framing import Frame, FrameDecoder, encode_frame
from agent.serial.session import LinkStats, PeripheralSession
from agent.serial.transport import SerialTransport
from bench import report
from devtools.emulated_board import FIRMWARE_DIR, BuildError, EmulatedBoard, run_make
from edge_runtime.log import configure_logging

BAUD = 115200
LINE_BYTES_PER_S = BAUD / 10  # 8N1: a start bit, 8 data bits, a stop bit per byte
THROUGHPUT_TARGET = 0.9
ALL_CHANNELS = (1 << msg.SENSORS) - 1
REQUESTED_PERIOD_MS = 1  # the firmware raises it to its minimum
FAILSAFE_MS = 60_000  # nothing trips while the stream runs without heartbeats
ACTUATOR = 5  # PB5, the Uno's LED
PROBE_OUTSTANDING = 4
REPLY_TIMEOUT_S = 1.0
SETTLE_S = 0.3
WARMUP_S = 1.0


class BenchError(Exception):
    """A benchmark step failed (build, emulator, handshake, nack, timeout)."""


@dataclass(frozen=True)
class Profile:
    """How much work one benchmark run does."""

    windows: int
    window_s: float
    samples: int
    loaded_samples: int
    probe_windows: int
    probe_s: float


FULL = Profile(
    windows=5, window_s=5.0, samples=200, loaded_samples=100, probe_windows=3, probe_s=3.0
)
QUICK = Profile(
    windows=3, window_s=5.0, samples=100, loaded_samples=50, probe_windows=2, probe_s=2.0
)


# -- frame geometry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """Payload and wire bytes of the frames involved, from real encoded frames."""

    sensor_payload: int
    sensor_wire: int
    heartbeat_wire: int
    actuate_wire: int
    ack_wire: int

    @property
    def sensor_efficiency(self) -> float:
        return self.sensor_payload / self.sensor_wire

    @property
    def line_payload_capacity(self) -> float:
        """Sensor payload bytes per second a saturated 115200-baud 8N1 line could carry."""
        return LINE_BYTES_PER_S * self.sensor_efficiency

    def heartbeat_min_ms(self, line_bytes_per_s: float = LINE_BYTES_PER_S) -> float:
        return 1000.0 * 2 * self.heartbeat_wire / line_bytes_per_s

    def actuate_min_ms(self, line_bytes_per_s: float = LINE_BYTES_PER_S) -> float:
        return 1000.0 * (self.actuate_wire + self.ack_wire) / line_bytes_per_s


def frame_geometry() -> Geometry:
    def wire(message: msg.Message) -> int:
        return len(encode_frame(0x5A, message.TYPE, message.encode()))

    sensor = msg.Sensor(channel=3, value=512, uptime_ms=123_456)
    return Geometry(
        sensor_payload=len(sensor.encode()),
        sensor_wire=wire(sensor),
        heartbeat_wire=wire(msg.Heartbeat(uptime_ms=123_456, flags=0)),
        actuate_wire=wire(msg.Actuate(actuator=ACTUATOR, value=1)),
        ack_wire=wire(msg.Ack(seq=0x5A)),
    )


# -- firmware size ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SizeFigure:
    """One line of the Makefile's size report."""

    used: int
    total: int
    budget: int
    budget_pct: int

    @property
    def fraction(self) -> float:
        return self.used / self.total


_SIZE_LINE = re.compile(
    r"^(flash|ram): (\d+) / (\d+) bytes \([\d.]+%\), budget (\d+) \((\d+)%\)$", re.MULTILINE
)


def firmware_size() -> tuple[dict[str, SizeFigure], str]:
    """Build with ``make -C firmware`` and parse its flash and RAM lines."""
    try:
        output = run_make()
    except BuildError as exc:
        raise BenchError(str(exc)) from None
    sizes = {
        kind: SizeFigure(int(used), int(total), int(budget), int(pct))
        for kind, used, total, budget, pct in _SIZE_LINE.findall(output)
    }
    if set(sizes) != {"flash", "ram"}:
        raise BenchError(f"make printed no flash/ram lines:\n{output}")
    lines = [line for line in output.splitlines() if line.startswith(("flash:", "ram:"))]
    return sizes, "\n".join(lines)


# -- the host side: the agent's transport and session, tapped ---------------------------------


class TapTransport:
    """The agent's ``SerialTransport``, passed through unchanged; keeps a copy of what it reads
    while ``recording`` (one bytearray append per chunk; decoded after the window)."""

    def __init__(self, inner: SerialTransport) -> None:
        self._inner = inner
        self.recording = False
        self.wire_bytes = 0
        self.chunks = 0
        self.recorded = bytearray()

    async def read(self) -> bytes:
        data = await self._inner.read()
        self.wire_bytes += len(data)
        self.chunks += 1
        if self.recording:
            self.recorded += data
        return data

    async def write(self, data: bytes) -> None:
        await self._inner.write(data)

    async def close(self) -> None:
        await self._inner.close()


class Inbox:
    """The session's ``on_message``: counts what it delivers and hands replies to waiters."""

    def __init__(self) -> None:
        self.messages = 0
        self.payload_bytes = 0
        self.by_type: Counter[str] = Counter()
        self.last_stats: msg.Stats | None = None
        self.on_heartbeat: Callable[[], None] | None = None  # set while the line probe runs
        self._waiters: dict[type[msg.Message], asyncio.Future[float]] = {}

    def __call__(self, message: msg.Message) -> None:
        now = time.monotonic()
        self.messages += 1
        self.payload_bytes += len(message.encode())
        self.by_type[message.NAME] += 1
        if isinstance(message, msg.Stats):
            self.last_stats = message
        if isinstance(message, msg.Heartbeat) and self.on_heartbeat is not None:
            self.on_heartbeat()
        waiter = self._waiters.pop(type(message), None)
        if waiter is not None and not waiter.done():
            waiter.set_result(now)

    def expect(self, kind: type[msg.Message]) -> asyncio.Future[float]:
        """A future for the arrival time of the next message of ``kind``."""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiters[kind] = future
        return future

    def reset(self) -> None:
        self.messages = 0
        self.payload_bytes = 0
        self.by_type.clear()


@dataclass
class Link:
    """An open session with the emulated board."""

    board: EmulatedBoard
    tap: TapTransport
    session: PeripheralSession
    stats: LinkStats
    inbox: Inbox
    reader: asyncio.Task[None]
    started: float = field(default_factory=time.monotonic)

    def uptime_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000) & 0xFFFFFFFF

    def check_reader(self) -> None:
        if self.reader.done():
            exc = self.reader.exception() if not self.reader.cancelled() else None
            raise BenchError(f"the session's reader stopped: {exc!r}")


async def _reply(link: Link, future: asyncio.Future[float], what: str) -> float:
    try:
        async with asyncio.timeout(REPLY_TIMEOUT_S):
            return await future
    except TimeoutError:
        link.check_reader()
        raise BenchError(f"no {what} within {REPLY_TIMEOUT_S} s") from None


async def _send_acked(link: Link, message: msg.Message) -> None:
    try:
        await link.session.send(message)
    except SerialLinkError as exc:
        raise BenchError(f"{message.NAME}: {exc}") from None


async def configure(link: Link, period_ms: int, mask: int) -> msg.Hello:
    """``configure`` (acked), then a new handshake, whose ``hello`` reports what was applied."""
    await _send_acked(link, msg.Configure(period_ms, FAILSAFE_MS, mask))
    try:
        return await link.session.handshake(5.0)
    except SerialLinkError as exc:
        raise BenchError(f"handshake after configure: {exc}") from None


# -- 1. throughput ----------------------------------------------------------------------------


@dataclass
class StreamWindow:
    """One timed window of the sensor stream (or of the line probe)."""

    kind: str  # "stream" or "probe"
    index: int
    seconds: float
    messages: int
    payload_bytes: int
    wire_bytes: int
    sensor_frames: int
    seq_gaps: int
    readings_expected: int
    readings_received: int
    avr_ms: int
    ticks: dict[int, int]
    host_cpu_s: float
    sim_cpu_s: float | None
    decode_errors: int

    @property
    def payload_rate(self) -> float:
        return self.payload_bytes / self.seconds

    @property
    def wire_rate(self) -> float:
        return self.wire_bytes / self.seconds

    @property
    def readings_dropped(self) -> int:
        return max(0, self.readings_expected - self.readings_received)


def seq_gaps(frames: Sequence[Frame]) -> int:
    """Frames missing between consecutive seq numbers (u8, wrapping)."""
    return sum(((b.seq - a.seq) & 0xFF) - 1 for a, b in itertools.pairwise(frames))


def tick_accounting(
    readings: Sequence[msg.Sensor], period_ms: int, channels: int
) -> tuple[int, int, int, dict[int, int]]:
    """(readings expected, received, AVR ms spanned, tick-interval histogram) for the ticks
    strictly inside the window (the first and last may be cut by its edges).

    An interval d between seen ticks stands for max(1, d // period) firmware ticks: a late
    tick (the main loop was busy) gives d a little over the period, a tick whose frames were
    all dropped gives about twice the period.
    """
    uptimes = sorted({reading.uptime_ms for reading in readings})
    if len(uptimes) < 3:
        return 0, 0, 0, {}
    intervals = [b - a for a, b in itertools.pairwise(uptimes)]
    ticks_after_first = sum(max(1, d // period_ms) for d in intervals)
    inner_ticks = ticks_after_first - 1
    inner = set(uptimes[1:-1])
    received = len({(r.uptime_ms, r.channel) for r in readings if r.uptime_ms in inner})
    return inner_ticks * channels, received, uptimes[-1] - uptimes[0], dict(Counter(intervals))


def _sim_process() -> psutil.Process | None:
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.name() == "sim":
                return child
    return None


def _cpu_s(process: psutil.Process | None) -> float | None:
    if process is None:
        return None
    try:
        times = process.cpu_times()
    except psutil.Error:
        return None
    return times.user + times.system


async def timed_window(
    link: Link, kind: str, index: int, seconds: float, period_ms: int, channels: int
) -> StreamWindow:
    """Count what the session delivers over ``seconds``; analyse the tapped bytes after."""
    # The analysis of the previous window blocks the loop for tens of ms; let the reader catch
    # up with what arrived meanwhile, or this window would count it (about +0.3 %).
    await asyncio.sleep(SETTLE_S)
    sim = _sim_process()
    link.tap.recorded.clear()
    link.inbox.reset()
    wire0 = link.tap.wire_bytes
    errors0 = link.stats.crc_errors + link.stats.framing_errors + link.stats.bad_messages
    sim0, cpu0 = _cpu_s(sim), time.process_time()
    link.tap.recording = True
    start = time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - start
    link.tap.recording = False
    messages, payload = link.inbox.messages, link.inbox.payload_bytes
    wire = link.tap.wire_bytes - wire0
    cpu1, sim1 = time.process_time(), _cpu_s(sim)
    errors = link.stats.crc_errors + link.stats.framing_errors + link.stats.bad_messages - errors0
    link.check_reader()

    frames = FrameDecoder().feed(bytes(link.tap.recorded))
    readings = [msg.Sensor.decode(f.payload) for f in frames if f.msg_type == msg.Sensor.TYPE]
    expected, received, avr_ms, ticks = tick_accounting(readings, period_ms, channels)
    return StreamWindow(
        kind=kind,
        index=index,
        seconds=elapsed,
        messages=messages,
        payload_bytes=payload,
        wire_bytes=wire,
        sensor_frames=len(readings),
        seq_gaps=seq_gaps(frames),
        readings_expected=expected,
        readings_received=received,
        avr_ms=avr_ms,
        ticks=ticks,
        host_cpu_s=cpu1 - cpu0,
        sim_cpu_s=None if sim0 is None or sim1 is None else sim1 - sim0,
        decode_errors=errors,
    )


@contextlib.asynccontextmanager
async def heartbeat_flood(link: Link, outstanding: int) -> AsyncIterator[None]:
    """Keep ``outstanding`` heartbeats in flight, so the firmware always has replies to send."""
    slots = asyncio.Semaphore(outstanding)
    link.inbox.on_heartbeat = slots.release

    async def pump() -> None:
        while True:
            with contextlib.suppress(TimeoutError):  # a reply went missing: send anyway
                async with asyncio.timeout(REPLY_TIMEOUT_S):
                    await slots.acquire()
            await link.session.send(msg.Heartbeat(link.uptime_ms(), 0))

    task = asyncio.create_task(pump())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        link.inbox.on_heartbeat = None
        await asyncio.sleep(SETTLE_S)  # let the last replies drain


# -- 2. round trips ---------------------------------------------------------------------------


@dataclass
class RttSeries:
    """Round-trip times of one kind, ms."""

    name: str
    loaded: bool
    samples_ms: list[float]
    session_samples_ms: list[float]

    def percentiles(self, values: Sequence[float] | None = None) -> tuple[float, float]:
        data = sorted(self.samples_ms if values is None else values)
        if len(data) < 2:
            return (data[0], data[0]) if data else (float("nan"), float("nan"))
        cuts = statistics.quantiles(data, n=100, method="inclusive")
        return cuts[49], cuts[98]


async def heartbeat_rtts(link: Link, count: int, loaded: bool) -> RttSeries:
    """``count`` heartbeats one at a time: session call -> heartbeat reply dispatched."""
    link.stats.rtt_ms.clear()
    samples: list[float] = []
    for _ in range(count):
        reply = link.inbox.expect(msg.Heartbeat)
        stats = link.inbox.expect(msg.Stats)
        start = time.monotonic()
        try:
            await link.session.heartbeat(link.uptime_ms())
        except SerialLinkError as exc:
            raise BenchError(f"heartbeat: {exc}") from None
        arrived = await _reply(link, reply, "heartbeat reply")
        samples.append((arrived - start) * 1000)
        await _reply(link, stats, "stats after the heartbeat reply")
    return RttSeries("heartbeat", loaded, samples, list(link.stats.rtt_ms))


async def actuate_rtts(link: Link, count: int, loaded: bool) -> RttSeries:
    """``count`` actuates of PB5 (on, off, ...) one at a time: session.send -> its ack."""
    link.stats.rtt_ms.clear()
    samples: list[float] = []
    for n in range(count):
        start = time.monotonic()
        await _send_acked(link, msg.Actuate(ACTUATOR, (n + 1) % 2))
        samples.append((time.monotonic() - start) * 1000)
    expected = count % 2
    try:
        await asyncio.to_thread(link.board.wait_for_pin, ACTUATOR, expected, 2.0)
    except TimeoutError:
        raise BenchError(f"PB{ACTUATOR} is not {expected} after {count} acked actuates") from None
    return RttSeries("actuate", loaded, samples, list(link.stats.rtt_ms))


# -- orchestration ----------------------------------------------------------------------------


@dataclass
class Results:
    """Everything one benchmark run measured, for the table and ``--json``."""

    meta: dict[str, Any]
    geometry: Geometry
    sizes: dict[str, SizeFigure]
    hello: dict[str, int]
    windows: list[StreamWindow]
    probes: list[StreamWindow]
    rtts: list[RttSeries]
    device_stats: dict[str, int]
    link_stats: dict[str, int]

    @property
    def offered_payload_rate(self) -> float:
        """Payload bytes per second the firmware tries to send at the applied setting."""
        period = self.hello["sensor_period_ms"]
        channels = bin(self.hello["sensor_mask"]).count("1")
        return channels * 1000.0 / period * self.geometry.sensor_payload if period else 0.0

    def rtt(self, name: str, loaded: bool) -> RttSeries:
        return next(s for s in self.rtts if s.name == name and s.loaded == loaded)

    def summary(self) -> dict[str, Any]:
        g = self.geometry
        rate = statistics.median(w.payload_rate for w in self.windows)
        line_wire = statistics.median(w.wire_rate for w in self.probes)
        emulated_capacity = line_wire * g.sensor_efficiency
        expected = sum(w.readings_expected for w in self.windows)
        dropped = sum(w.readings_dropped for w in self.windows)
        out: dict[str, Any] = {
            "payload_bytes_per_s": rate,
            "offered_payload_bytes_per_s": self.offered_payload_rate,
            "line_payload_capacity_bytes_per_s": g.line_payload_capacity,
            "ratio_vs_offered": rate / self.offered_payload_rate,
            "ratio_vs_line": rate / g.line_payload_capacity,
            "offered_vs_line": self.offered_payload_rate / g.line_payload_capacity,
            "throughput_pass": rate / g.line_payload_capacity >= THROUGHPUT_TARGET,
            "emulated_line_wire_bytes_per_s": line_wire,
            "emulated_line_vs_nominal": line_wire / LINE_BYTES_PER_S,
            "emulated_payload_capacity_bytes_per_s": emulated_capacity,
            "ratio_vs_emulated_line": rate / emulated_capacity,
            "seq_gaps": sum(w.seq_gaps for w in self.windows),
            "probe_seq_gaps": sum(w.seq_gaps for w in self.probes),
            "readings_expected": expected,
            "readings_dropped_by_firmware": dropped,
            "readings_dropped_fraction": dropped / expected if expected else 0.0,
            "flash_bytes": self.sizes["flash"].used,
            "ram_bytes": self.sizes["ram"].used,
            "flash_pass": self.sizes["flash"].used <= self.sizes["flash"].budget,
            "ram_pass": self.sizes["ram"].used <= self.sizes["ram"].budget,
        }
        for series in self.rtts:
            p50, p99 = series.percentiles()
            key = f"{series.name}_rtt_{'loaded' if series.loaded else 'idle'}"
            out[f"{key}_p50_ms"], out[f"{key}_p99_ms"] = p50, p99
        out["heartbeat_min_ms"] = g.heartbeat_min_ms()
        out["actuate_min_ms"] = g.actuate_min_ms()
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "summary": self.summary(),
            "geometry": asdict(self.geometry),
            "sizes": {kind: asdict(size) for kind, size in self.sizes.items()},
            "hello": self.hello,
            "windows": [asdict(w) | {"payload_rate": w.payload_rate} for w in self.windows],
            "probes": [asdict(w) | {"wire_rate": w.wire_rate} for w in self.probes],
            "rtts": [asdict(series) for series in self.rtts],
            "device_stats": self.device_stats,
            "link_stats": self.link_stats,
        }


async def open_link(board: EmulatedBoard) -> Link:
    try:
        transport = await SerialTransport.open(board.pty_path, BAUD)
    except SerialLinkError as exc:
        raise BenchError(str(exc)) from None
    tap = TapTransport(transport)
    stats = LinkStats()
    inbox = Inbox()
    session = PeripheralSession(tap, stats, on_message=inbox)
    reader = asyncio.create_task(session.run())
    link = Link(board, tap, session, stats, inbox, reader)
    try:
        await session.handshake(5.0)
    except SerialLinkError as exc:
        await close_link(link)
        raise BenchError(f"handshake: {exc}") from None
    return link


async def close_link(link: Link) -> None:
    link.reader.cancel()
    await asyncio.gather(link.reader, return_exceptions=True)
    await link.tap.close()


async def measure_link(board: EmulatedBoard, profile: Profile) -> dict[str, Any]:
    link = await open_link(board)
    try:
        hello = await configure(link, REQUESTED_PERIOD_MS, ALL_CHANNELS)
        period, mask = hello.sensor_period_ms, hello.sensor_mask
        channels = bin(mask).count("1")
        if not period or mask != ALL_CHANNELS:
            raise BenchError(f"configure was not applied: {hello}")
        print(
            f"stream: {channels} channels every {period} ms (asked for {REQUESTED_PERIOD_MS} ms); "
            f"{WARMUP_S:g} s warm-up, {profile.windows} windows of {profile.window_s:g} s",
            flush=True,
        )
        await asyncio.sleep(WARMUP_S)
        windows = []
        for n in range(1, profile.windows + 1):
            window = await timed_window(link, "stream", n, profile.window_s, period, channels)
            windows.append(window)
            print(
                f"window {n}/{profile.windows}: {window.payload_rate:,.0f} payload B/s, "
                f"{window.wire_rate:,.0f} wire B/s, seq gaps {window.seq_gaps}, "
                f"readings dropped by the firmware {window.readings_dropped}"
                f"/{window.readings_expected}",
                flush=True,
            )

        print(
            f"line probe: the stream plus {PROBE_OUTSTANDING} heartbeats in flight, "
            f"{profile.probe_windows} windows of {profile.probe_s:g} s",
            flush=True,
        )
        probes = []
        async with heartbeat_flood(link, PROBE_OUTSTANDING):
            await asyncio.sleep(SETTLE_S)
            for n in range(1, profile.probe_windows + 1):
                probe = await timed_window(link, "probe", n, profile.probe_s, period, channels)
                probes.append(probe)
                print(f"probe {n}/{profile.probe_windows}: {probe.wire_rate:,.0f} wire B/s")

        print(f"round trips under the stream: {profile.loaded_samples} of each", flush=True)
        rtts = [
            await heartbeat_rtts(link, profile.loaded_samples, loaded=True),
            await actuate_rtts(link, profile.loaded_samples, loaded=True),
        ]
        await configure(link, 0, ALL_CHANNELS)  # stop the stream
        await asyncio.sleep(SETTLE_S)
        print(f"round trips on an idle line: {profile.samples} of each", flush=True)
        rtts += [
            await heartbeat_rtts(link, profile.samples, loaded=False),
            await actuate_rtts(link, profile.samples, loaded=False),
        ]
        link.check_reader()
        stats = link.stats
        return {
            "hello": asdict(hello),
            "windows": windows,
            "probes": probes,
            "rtts": rtts,
            "device_stats": dict(stats.device),
            "link_stats": {
                "frames_in": stats.frames_in,
                "frames_out": stats.frames_out,
                "resends": stats.resends,
                "ack_failures": stats.ack_failures,
                "bad_messages": stats.bad_messages,
                "crc_errors": stats.crc_errors,
                "framing_errors": stats.framing_errors,
                "read_chunks": link.tap.chunks,
            },
        }
    finally:
        await close_link(link)


def run_benchmark(profile: Profile, *, quick: bool) -> Results:
    """Build, start the emulator, measure, stop and clean up whatever happens."""
    sizes, size_lines = firmware_size()
    print(f"make -C firmware:\n{size_lines}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="edge-bench-serial-"))
    board = EmulatedBoard(FIRMWARE_DIR / "build" / "firmware.elf", log_path=workdir / "sim.log")
    try:
        for channel in range(msg.SENSORS):
            board.set_adc(channel, 500 + 800 * channel)
        try:
            board.start()
        except RuntimeError as exc:
            raise BenchError(f"emulator: {exc}") from None
        print(f"emulator: {board.pty_path}", flush=True)
        measured = asyncio.run(measure_link(board, profile))
    finally:
        board.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "profile": "quick" if quick else "full",
        "windows": profile.windows,
        "window_s": profile.window_s,
        "samples": profile.samples,
        "loaded_samples": profile.loaded_samples,
        "probe_windows": profile.probe_windows,
        "probe_s": profile.probe_s,
        "baud": BAUD,
        "line_bytes_per_s": LINE_BYTES_PER_S,
        "python": platform.python_version(),
        "pyserial": importlib.metadata.version("pyserial"),
        "cpu_count": psutil.cpu_count(),
        "platform": platform.platform(),
    }
    return Results(
        meta=meta,
        geometry=frame_geometry(),
        sizes=sizes,
        hello=measured["hello"],
        windows=measured["windows"],
        probes=measured["probes"],
        rtts=measured["rtts"],
        device_stats=measured["device_stats"],
        link_stats=measured["link_stats"],
    )


# -- output -----------------------------------------------------------------------------------


def _num(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def _span(values: Sequence[float], digits: int = 0) -> str:
    return f"{_num(min(values), digits)}-{_num(max(values), digits)}"


def table_rows(results: Results) -> list[tuple[str, ...]]:
    """(figure, value, range, baseline, ratio, target, result) for every reported figure."""
    s = results.summary()
    g = results.geometry
    rates = [w.payload_rate for w in results.windows]
    rate, rate_span = _num(s["payload_bytes_per_s"]), _span(rates)
    wire = [w.wire_rate for w in results.probes]
    verdict = "PASS" if s["throughput_pass"] else "MISS"
    rows: list[tuple[str, ...]] = [
        (
            "payload device->host vs line capacity (B/s)",
            rate,
            rate_span,
            f"{_num(g.line_payload_capacity)} line cap",
            f"{s['ratio_vs_line']:.2f}",
            f">= {THROUGHPUT_TARGET:.2f}",
            verdict,
        ),
        (
            "payload device->host vs offered load (B/s)",
            rate,
            rate_span,
            f"{_num(s['offered_payload_bytes_per_s'])} offered",
            f"{s['ratio_vs_offered']:.2f}",
            "none",
            "info",
        ),
        (
            "payload device->host vs emulated line (B/s)",
            rate,
            rate_span,
            f"{_num(s['emulated_payload_capacity_bytes_per_s'])} emulated",
            f"{s['ratio_vs_emulated_line']:.2f}",
            "none",
            "info",
        ),
        (
            "offered load vs line capacity (B/s)",
            _num(s["offered_payload_bytes_per_s"]),
            "-",
            f"{_num(g.line_payload_capacity)} line cap",
            f"{s['offered_vs_line']:.2f}",
            "none",
            "info",
        ),
        (
            "emulated line, saturated (wire B/s)",
            _num(s["emulated_line_wire_bytes_per_s"]),
            _span(wire),
            f"{_num(LINE_BYTES_PER_S)} nominal",
            f"{s['emulated_line_vs_nominal']:.2f}",
            "none",
            "info",
        ),
        (
            "frames lost on the way to the host (seq gaps)",
            str(s["seq_gaps"]),
            _span([w.seq_gaps for w in results.windows]),
            "-",
            "-",
            "none",
            "info",
        ),
        (
            "sensor readings dropped by the firmware",
            f"{s['readings_dropped_by_firmware']:,}",
            _span([w.readings_dropped for w in results.windows]),
            f"{s['readings_expected']:,} sampled",
            f"{s['readings_dropped_fraction']:.2f}",
            "none",
            "info",
        ),
    ]
    for loaded in (False, True):
        for name, minimum in (("heartbeat", g.heartbeat_min_ms()), ("actuate", g.actuate_min_ms())):
            series = results.rtt(name, loaded)
            p50, p99 = series.percentiles()
            what = "ack" if name == "actuate" else "reply"
            where = "under stream" if loaded else "idle line"
            for label, value in (("p50", p50), ("p99", p99)):
                rows.append(
                    (
                        f"{name} -> {what} RTT {label}, {where} (ms)",
                        f"{value:.2f}",
                        _span(series.samples_ms, 2),
                        f"{minimum:.2f} wire min",
                        f"{value / minimum:.1f}",
                        "none",
                        "info",
                    )
                )
    for kind, label in (
        ("flash", "firmware flash (bytes)"),
        ("ram", "firmware static RAM (bytes)"),
    ):
        size = results.sizes[kind]
        rows.append(
            (
                label,
                f"{size.used:,}",
                "-",
                f"{size.total:,} total",
                f"{size.fraction:.3f}",
                f"<= {size.budget_pct / 100:.2f}",
                "PASS" if s[f"{kind}_pass"] else "MISS",
            )
        )
    return rows


def render_table(results: Results) -> str:
    return report.render_table(
        table_rows(results), ("figure", "value", "range", "baseline", "ratio", "target", "result")
    )


def _median_or_na(values: Sequence[float | None], fmt: str) -> str:
    known = [v for v in values if v is not None]
    return format(statistics.median(known), fmt) if known else "n/a"


def render_notes(results: Results) -> str:
    s = results.summary()
    g = results.geometry
    m = results.meta
    h = results.hello
    w = results.windows
    seconds = [x.seconds for x in w]
    avr_speed = [x.avr_ms / 1000 / x.seconds for x in w if x.avr_ms]
    ticks: Counter[int] = Counter()
    for x in w:
        ticks.update(x.ticks)
    ticks_text = ", ".join(f"{d} ms: {n:,}" for d, n in sorted(ticks.items()))
    wire_per_frame = [x.wire_bytes / x.sensor_frames for x in w if x.sensor_frames]
    line_wire = s["emulated_line_wire_bytes_per_s"]
    session_rtt = []
    for series in results.rtts:
        p50, p99 = series.percentiles(series.session_samples_ms)
        where = "stream" if series.loaded else "idle"
        session_rtt.append(f"{series.name} {where} {p50:.2f}/{p99:.2f}")
    host_cpu = [100 * x.host_cpu_s / x.seconds for x in w]
    sim_cpu = [100 * x.sim_cpu_s / x.seconds if x.sim_cpu_s is not None else None for x in w]
    errors = sum(x.decode_errors for x in (*w, *results.probes))
    dev = results.device_stats
    device = ", ".join(f"{k} {v}" for k, v in dev.items()) if dev else "n/a"
    return "\n".join(
        [
            f"- {m['windows']} windows of {statistics.median(seconds):.2f} s (median) of the "
            f"sensor stream: {bin(h['sensor_mask']).count('1')} channels every "
            f"{h['sensor_period_ms']} ms (asked for {REQUESTED_PERIOD_MS} ms); values are "
            "medians, ranges min-max over the windows",
            f"- frame geometry: sensor {g.sensor_payload} B payload in {g.sensor_wire} wire B "
            f"(efficiency {g.sensor_efficiency:.3f}; measured "
            f"{_median_or_na(wire_per_frame, '.2f')} wire B per sensor frame); line payload "
            f"capacity {LINE_BYTES_PER_S:,.0f} x "
            f"{g.sensor_payload}/{g.sensor_wire} = {g.line_payload_capacity:,.1f} B/s",
            f"- wire minimum of a round trip at {LINE_BYTES_PER_S:,.0f} B/s: heartbeat "
            f"{g.heartbeat_wire}+{g.heartbeat_wire} B = {g.heartbeat_min_ms():.3f} ms, actuate+ack "
            f"{g.actuate_wire}+{g.ack_wire} B = {g.actuate_min_ms():.3f} ms; at the emulated "
            f"line's {line_wire:,.0f} B/s: {g.heartbeat_min_ms(line_wire):.3f} ms and "
            f"{g.actuate_min_ms(line_wire):.3f} ms",
            "- the session's own RTT figures (LinkStats.rtt_ms, p50/p99 ms): "
            + ", ".join(session_rtt),
            f"- AVR time per wall second in the windows: {_median_or_na(avr_speed, '.3f')}; "
            f"intervals between sample ticks seen: {ticks_text}",
            f"- seq gaps in the line probe: {s['probe_seq_gaps']}; CRC/framing/bad-message "
            f"errors in all windows: {errors}; session totals {results.link_stats}",
            f"- device stats at the end: {device}",
            f"- CPU during the stream windows, % of one core: this process (agent transport + "
            f"session + benchmark) {_median_or_na(host_cpu, '.1f')}, emulator "
            f"{_median_or_na(sim_cpu, '.1f')}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_serial", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="fewer windows and samples")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    parser.add_argument("--windows", type=int, help="throughput windows (override)")
    parser.add_argument("--samples", type=int, help="round trips of each kind, idle (override)")
    args = parser.parse_args(argv)
    profile = QUICK if args.quick else FULL
    if args.windows is not None or args.samples is not None:
        profile = Profile(
            windows=max(1, args.windows or profile.windows),
            window_s=profile.window_s,
            samples=max(2, args.samples or profile.samples),
            loaded_samples=profile.loaded_samples,
            probe_windows=profile.probe_windows,
            probe_s=profile.probe_s,
        )
    configure_logging("warning", "console")
    results = report.run_or_exit(
        lambda: run_benchmark(profile, quick=args.quick),
        BenchError,
        "emulator stopped and temp dir removed",
    )
    m = results.meta
    print()
    print(
        f"Serial link benchmark, {m['date']}: Python {m['python']}, pyserial {m['pyserial']}, "
        f"{m['cpu_count']} cores, firmware on simavr behind a pty at {BAUD} baud"
    )
    print()
    print(render_table(results))
    print()
    print(render_notes(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results.to_json(), indent=2) + "\n")
        print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
