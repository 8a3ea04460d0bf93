"""Agent core benchmark: QoS 1 telemetry publish rate and the agent's idle footprint.

Everything runs in one process against one private mosquitto on 127.0.0.1
(``devtools.localbroker.PrivateBroker``); no traffic leaves the loopback interface, and every
loop is bounded by a message count or a deadline.

1. Publish rate at QoS 1. The payload is one real telemetry message, built by the agent's
   own ``TelemetryService`` on this machine. N copies of it are published in four ways:

   - ``raw`` (the baseline): a plain paho client (MQTT v5, ``loop_start()``) with the same
     in-flight window as the agent's link (20, mosquitto's default Receive Maximum) publishes
     the N messages and waits for every PUBACK;
   - ``link`` (diagnostic): the agent's ``MqttLink`` alone, no outbox, the same window. It
     splits the gap between raw and the agent into "MQTT link" and "store-and-forward";
   - ``drain``: the agent's store-and-forward path. An ``Outbox`` prefilled with the N
     messages (not timed: a copy of a template database) is drained by ``Forwarder``
     through an ``MqttLink`` until it is empty, i.e. every row was PUBACKed and deleted.
     This is what happens after an outage, and the agent's best case;
   - ``live``: ``DiskOutbox.append`` of each message one at a time (one fsynced SQLite commit
     each, as the telemetry loop does) while the ``Forwarder`` publishes, until all N are
     PUBACKed and deleted. One fsync per message bounds this path, by design: a queued
     message must survive a power cut. The bound itself, ``Outbox.append`` alone, is timed
     while the template is built.

   Rate = N / elapsed, from the first publish (or append) to the last PUBACK (and delete).
   Each path runs ``repeats`` times, interleaved with the others (the order rotates every
   round, so no path always runs first on a warm or a cold machine), after one untimed
   warm-up run each. Medians are reported, and the ratio of the agent's median to raw's.

   No subscriber is connected: mosquitto acknowledges QoS 1 publishes anyway. An MQTT v5
   broker then answers with reason code 0x10 "No matching subscribers", a success code. The
   benchmark records the codes the raw client saw and checks that the agent's paths counted
   every message as sent (none discarded, no rejected publish).

2. The real agent process (``python -m agent run``) at a 1 s telemetry interval, idle (broker
   up, no commands): RSS (median of 1 Hz samples, MiB) and CPU (``cpu_times`` delta over wall
   time, percent of one core, children included) over a window after a warm-up. Sampled in
   the same window, for context: a bare interpreter (``python -c "import time;
   time.sleep(...)"``), whose RSS is subtracted from the agent's, and an asyncio loop that
   does nothing but wake once a second, the CPU floor of any timer-driven Python process on
   this machine (on a virtual machine each wake-up of an idle vCPU is expensive). Voluntary
   context switches (wake-ups) per second are counted for both from ``/proc``.

Why: the agent runs on small boards next to ML workloads. Its publish path should not be
much slower than the MQTT client it wraps (target: drain rate >= 0.8 x raw paho), and idle
it should cost next to nothing (target: CPU < 1 % of one core). The machine running the
benchmark is shared and noisy, so absolute figures move between runs; the ratios against
baselines measured in the same run are the ones to compare. Nothing here asserts on timing:
the table says PASS or MISS against each target and the exit code stays 0.

Run from the repository root::

    .venv/bin/python -m bench.bench_agent [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import itertools
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import psutil
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import MqttConfig, QueueConfig
from agent.telemetry import boards
from agent.telemetry.collector import ResourceSampler
from agent.telemetry.service import BoardMonitor, TelemetryService
from agent.telemetry.subsystem_health import HealthChange, HealthMonitor
from agent.uplink.forwarder import DiskOutbox, Forwarder
from agent.uplink.outbox import Outbox
from bench import report
from devtools.localbroker import PrivateBroker
from edge_contract.topics import Channel, topic_for
from edge_runtime.log import configure_logging
from edge_runtime.mqtt.base import ConnectionInfo, LinkSettings
from edge_runtime.mqtt.link import MqttLink

HOST = "127.0.0.1"
PUBLISH_DEVICE = "bench-publisher"
AGENT_DEVICE = "bench-agent"
DRAIN_RATIO_TARGET = 0.8
IDLE_CPU_TARGET_PERCENT = 1.0
CONNECT_TIMEOUT_S = 10.0
POLL_S = 0.002
MIB = 1024 * 1024
PATHS = ("raw", "link", "drain", "live")

# The agent's own defaults: the forwarder's batch, the queue cap and the in-flight window.
QUEUE = QueueConfig()
WINDOW = MqttConfig().max_inflight

# PUBACK reason codes (MQTT v5, 3.4.2.1) below 0x80 are successes.
PUBACK_REASONS = {0x00: "Success", 0x10: "No matching subscribers"}

BARE_CODE = "import time; time.sleep({seconds})"
TIMER_CODE = """\
import asyncio

async def tick():
    while True:
        await asyncio.sleep(1.0)

asyncio.run(tick())
"""


class BenchError(Exception):
    """A benchmark step failed (broker, agent, or a run that did not finish in time)."""


@dataclass(frozen=True)
class Profile:
    """How much work one benchmark run does."""

    messages: int
    repeats: int
    warmup_s: float
    idle_s: float
    interval_s: float = 1.0


FULL = Profile(messages=5000, repeats=5, warmup_s=5.0, idle_s=30.0)
QUICK = Profile(messages=2000, repeats=3, warmup_s=5.0, idle_s=15.0)


@dataclass
class RateRun:
    """One timed publish run."""

    path: str
    round: int
    messages: int
    elapsed_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.messages / self.elapsed_s


@dataclass
class IdleProcess:
    """One process sampled over the idle window."""

    name: str
    rss_mib: float
    rss_min_mib: float
    rss_max_mib: float
    cpu_percent: float
    cpu_thirds_percent: list[float]
    wakeups_per_s: float | None
    uss_mib: float | None
    threads: int
    children: int


@dataclass
class Footprint:
    """The agent and its two reference processes, sampled over the same idle window."""

    window_s: float
    samples: int
    agent: IdleProcess
    bare: IdleProcess
    timer: IdleProcess
    telemetry_in_window: int
    telemetry_payload_bytes: int
    host_cpu_percent: float
    agent_exit_code: int | None = None


# -- helpers --------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _rm_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _copy_db(source: Path, target: Path) -> None:
    _rm_db(target)
    shutil.copyfile(source, target)
    wal = Path(f"{source}-wal")
    if wal.exists():
        shutil.copyfile(wal, Path(f"{target}-wal"))


def _mosquitto_version() -> str:
    binary = shutil.which("mosquitto") or shutil.which(
        "mosquitto", path="/usr/sbin:/usr/local/sbin"
    )
    if binary is None:
        return "unknown"
    try:
        result = subprocess.run(
            [binary, "-h"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    match = re.search(r"mosquitto version (\S+)", result.stdout + result.stderr)
    return match.group(1) if match else "unknown"


def _stop_process(process: subprocess.Popen[bytes], sig: int, timeout_s: float = 10.0) -> int:
    """Signal a child we started and reap it; SIGKILL if it does not exit in time."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def _run_timeout_s(count: int) -> float:
    # Generous: a run that takes this long is broken, not slow.
    return max(60.0, count / 50)


# -- the payload and the prefilled outbox ---------------------------------------------------


async def build_telemetry_payload(state_dir: Path) -> bytes:
    """One telemetry message as the agent builds it on this machine.

    The second one of a fresh ``TelemetryService``, so its CPU figures cover a real interval.
    """
    disk = DiskOutbox(Outbox(state_dir / "payload.sqlite3", max_bytes=QUEUE.max_bytes))

    async def ignore(_change: HealthChange) -> None:
        return None

    try:
        service = TelemetryService(
            device_id=PUBLISH_DEVICE,
            interval_s=1.0,
            outbox=disk,
            sampler=ResourceSampler(state_dir),
            board=BoardMonitor(boards.detect_board()),
            health=HealthMonitor(),
            link_state=lambda: {"connected": True, "outages": 0, "last_outage_s": None},
            on_health_change=ignore,
        )
        await service.publish_once()
        await asyncio.sleep(0.5)
        await service.publish_once()
        rows = await disk.fetch(after_id=0, limit=10)
    finally:
        await disk.close()
    return rows[-1].payload


def make_template(path: Path, topic: str, payload: bytes, count: int) -> float:
    """An outbox database holding ``count`` copies of the message, made with the public
    ``Outbox.append`` (one fsynced commit each); returns the appends' rate, msgs/s."""
    _rm_db(path)
    outbox = Outbox(path, max_bytes=QUEUE.max_bytes)
    try:
        start = time.perf_counter()
        for _ in range(count):
            outbox.append(topic, payload)
        elapsed = time.perf_counter() - start
    finally:
        outbox.close()
    return count / elapsed


# -- baseline: raw paho ---------------------------------------------------------------------


def raw_paho_run(
    port: int,
    topic: str,
    payload: bytes,
    count: int,
    *,
    client_id: str,
    round_no: int,
    reasons: Counter[int],
) -> RateRun:
    """Publish ``count`` QoS 1 messages with a plain paho client; time until the last PUBACK."""
    connected = threading.Event()
    done = threading.Event()
    acked = 0
    failed = 0

    def on_connect(
        _client: paho.Client,
        _userdata: Any,
        _flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if not reason_code.is_failure:
            connected.set()

    def on_publish(
        _client: paho.Client,
        _userdata: Any,
        _mid: int,
        reason_code: ReasonCode,
        _properties: Properties,
    ) -> None:
        nonlocal acked, failed
        reasons[reason_code.value] += 1
        failed += reason_code.is_failure
        acked += 1
        if acked >= count:
            done.set()

    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv5,
    )
    client.max_inflight_messages_set(WINDOW)
    client.max_queued_messages_set(0)  # paho holds what does not fit in the window
    client.on_connect = on_connect
    client.on_publish = on_publish
    client.connect(HOST, port, keepalive=30, clean_start=True)
    client.loop_start()
    try:
        if not connected.wait(CONNECT_TIMEOUT_S):
            raise BenchError(f"raw paho client did not connect to {HOST}:{port}")
        start = time.perf_counter()
        for _ in range(count):
            info = client.publish(topic, payload, qos=1)
            if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_QUEUE_SIZE):
                raise BenchError(f"raw publish failed: {paho.error_string(info.rc)}")
        if not done.wait(_run_timeout_s(count)):
            raise BenchError(f"raw paho: {acked}/{count} PUBACKs before the deadline")
        elapsed = time.perf_counter() - start
    finally:
        client.disconnect()
        client.loop_stop()
    if failed:
        raise BenchError(f"raw paho: the broker refused {failed}/{count} publishes")
    return RateRun("raw", round_no, count, elapsed)


# -- the agent's paths ----------------------------------------------------------------------


def _link_settings(port: int, client_id: str) -> LinkSettings:
    # A clean, non-persistent session per run keeps the broker's state from growing; the
    # publish path itself is the agent's, with its default in-flight window.
    return LinkSettings(
        host=HOST,
        port=port,
        client_id=client_id,
        clean_start=True,
        session_expiry_s=0,
        max_inflight=WINDOW,
    )


@contextlib.asynccontextmanager
async def _background(coro: Coroutine[Any, Any, None]) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``coro`` as a task for the duration of the block; cancel and reap it after."""
    task = asyncio.create_task(coro)
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@contextlib.asynccontextmanager
async def _link_up(link: MqttLink) -> AsyncIterator[ConnectionInfo]:
    """Keep ``link`` connected for the duration of the block; close it cleanly after."""
    async with _background(link.run()):
        try:
            yield await link.wait_connected(CONNECT_TIMEOUT_S)
        finally:
            await link.close()


def _link_extra(link: MqttLink, info: ConnectionInfo) -> dict[str, Any]:
    return {"window": link.window, "receive_maximum": info.receive_maximum}


async def agent_link_run(
    port: int, topic: str, payload: bytes, count: int, *, client_id: str, round_no: int
) -> RateRun:
    """``MqttLink.publish`` alone, at most ``link.window`` awaiting PUBACK; no outbox."""
    link = MqttLink(_link_settings(port, client_id))
    async with _link_up(link) as info:
        extra = _link_extra(link, info)
        slots = asyncio.Semaphore(link.window)
        futures: list[asyncio.Future[None]] = []
        start = time.perf_counter()
        for _ in range(count):
            await slots.acquire()
            future = link.publish(topic, payload, qos=1)
            future.add_done_callback(lambda _f: slots.release())
            futures.append(future)
        # A rejected publish (reason code >= 0x80) raises here and fails the benchmark.
        async with asyncio.timeout(_run_timeout_s(count)):
            await asyncio.gather(*futures)
        elapsed = time.perf_counter() - start
    return RateRun("link", round_no, count, elapsed, extra)


async def _wait_drained(
    forwarder: Forwarder, disk: DiskOutbox, count: int, task: asyncio.Task[None]
) -> None:
    """Until ``count`` messages are acknowledged and the outbox is empty."""
    deadline = time.monotonic() + _run_timeout_s(count)
    while True:
        if task.done():
            task.result()
            raise BenchError("the forwarder stopped")
        # Only ask the outbox (a trip to its worker thread) once every PUBACK is in: polling
        # it meanwhile would queue work behind the forwarder's own reads and deletes. Then
        # delete what is left at once instead of waiting out the forwarder's batching delay,
        # so the clock stops when every message is acknowledged and deleted.
        if forwarder.sent + forwarder.discarded >= count:
            await forwarder.flush_acks()
            if (await disk.stats()).depth == 0:
                return
        if time.monotonic() > deadline:
            raise BenchError(f"forwarder: {forwarder.sent}/{count} acknowledged by the deadline")
        await asyncio.sleep(POLL_S)


async def agent_drain_run(
    port: int, template: Path, db: Path, count: int, *, client_id: str, round_no: int
) -> RateRun:
    """Drain a prefilled outbox through the forwarder and the link; time until it is empty."""
    _copy_db(template, db)
    disk = DiskOutbox(Outbox(db, max_bytes=QUEUE.max_bytes))
    try:
        depth = (await disk.stats()).depth
        if depth != count:
            raise BenchError(f"prefilled outbox holds {depth} rows, expected {count}")
        link = MqttLink(_link_settings(port, client_id))
        forwarder = Forwarder(link, disk, batch=QUEUE.batch)  # registered before link-up
        async with _link_up(link) as info:
            extra = _link_extra(link, info)
            start = time.perf_counter()
            async with _background(forwarder.run()) as task:
                await _wait_drained(forwarder, disk, count, task)
                elapsed = time.perf_counter() - start
    finally:
        await disk.close()
        _rm_db(db)
    extra |= {"sent": forwarder.sent, "discarded": forwarder.discarded}
    return RateRun("drain", round_no, count, elapsed, extra)


async def agent_live_run(
    port: int, topic: str, payload: bytes, db: Path, count: int, *, client_id: str, round_no: int
) -> RateRun:
    """Append messages one by one while the forwarder publishes; time until all are acked."""
    _rm_db(db)
    disk = DiskOutbox(Outbox(db, max_bytes=QUEUE.max_bytes))
    try:
        link = MqttLink(_link_settings(port, client_id))
        forwarder = Forwarder(link, disk, batch=QUEUE.batch)
        async with _link_up(link) as info, _background(forwarder.run()) as task:
            extra = _link_extra(link, info)
            await asyncio.sleep(0.1)  # let the forwarder's first (empty) step pass
            start = time.perf_counter()
            for _ in range(count):
                await disk.append(topic, payload)
            appended_s = time.perf_counter() - start
            await _wait_drained(forwarder, disk, count, task)
            elapsed = time.perf_counter() - start
    finally:
        await disk.close()
        _rm_db(db)
    extra |= {
        "sent": forwarder.sent,
        "discarded": forwarder.discarded,
        "append_rate": count / appended_s,
    }
    return RateRun("live", round_no, count, elapsed, extra)


# -- the agent process at idle --------------------------------------------------------------


class TelemetryWatch:
    """Counts the agent's telemetry messages as the broker delivers them (a paho subscriber)."""

    def __init__(self, port: int, topic: str) -> None:
        self._port = port
        self._topic = topic
        self.arrivals: list[tuple[float, int]] = []
        self.first = threading.Event()
        self._subscribed = threading.Event()
        self._client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id="bench-telemetry-watch",
            protocol=paho.MQTTv5,
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def start(self) -> None:
        self._client.connect(HOST, self._port, keepalive=30, clean_start=True)
        self._client.loop_start()
        if not self._subscribed.wait(CONNECT_TIMEOUT_S):
            raise BenchError("telemetry watcher did not subscribe")

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def count_between(self, start: float, end: float) -> int:
        return sum(1 for at, _size in list(self.arrivals) if start <= at <= end)

    def _on_connect(
        self,
        client: paho.Client,
        _userdata: Any,
        _flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if not reason_code.is_failure:
            client.subscribe(self._topic, qos=1)

    def _on_subscribe(self, *_args: Any) -> None:
        self._subscribed.set()

    def _on_message(self, _client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        self.arrivals.append((time.monotonic(), len(msg.payload)))
        self.first.set()


def _tree(process: psutil.Process) -> list[psutil.Process]:
    try:
        return [process, *process.children(recursive=True)]
    except psutil.Error:
        return [process]


def _tree_cpu_s(process: psutil.Process) -> float:
    """CPU seconds of a process, its live descendants and its reaped children."""
    total = 0.0
    for proc in _tree(process):
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
    return total


def _tree_rss(process: psutil.Process) -> int:
    total = 0
    for proc in _tree(process):
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


def _tree_wakeups(process: psutil.Process) -> int | None:
    """Voluntary context switches of every thread of the process tree (Linux /proc only)."""
    total = 0
    try:
        for proc in _tree(process):
            for status in Path(f"/proc/{proc.pid}/task").glob("*/status"):
                with contextlib.suppress(OSError):  # a thread that just exited
                    for line in status.read_text().splitlines():
                        if line.startswith("voluntary_ctxt_switches:"):
                            total += int(line.split()[1])
    except OSError:
        return None
    return total


def _uss_mib(process: psutil.Process) -> float | None:
    try:
        return float(process.memory_full_info().uss) / MIB
    except (psutil.Error, AttributeError):
        return None


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _spawn_agent(port: int, workdir: Path, interval_s: float) -> subprocess.Popen[bytes]:
    """``python -m agent run`` with a private state dir and an empty config file."""
    state_dir = workdir / "agent-state"
    state_dir.mkdir(parents=True)
    config = workdir / "agent.toml"
    config.write_text("# empty: defaults plus the EDGE_AGENT_* environment\n")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("EDGE_AGENT_")}
    env |= {
        "EDGE_AGENT_DEVICE_ID": AGENT_DEVICE,
        "EDGE_AGENT_MQTT__HOST": HOST,
        "EDGE_AGENT_MQTT__PORT": str(port),
        "EDGE_AGENT_STATE_DIR": str(state_dir),
        "EDGE_AGENT_TELEMETRY__INTERVAL_S": f"{interval_s:g}",
    }
    with (workdir / "agent.log").open("wb") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(config)],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


@dataclass
class _IdleWindow:
    start: float
    end: float
    samples: int
    figures: dict[str, IdleProcess]
    host_cpu_percent: float


def _sample_idle(processes: Mapping[str, psutil.Process], window_s: float) -> _IdleWindow:
    """Once a second over ``window_s``: RSS and CPU time of every process; wake-ups at the
    ends. The CPU figure is the whole window's; thirds of it are kept to show the noise."""
    ticks = max(3, round(window_s))
    psutil.cpu_percent(None)
    wake0 = {name: _tree_wakeups(proc) for name, proc in processes.items()}
    marks: list[float] = []
    cpu: dict[str, list[float]] = {name: [] for name in processes}
    rss: dict[str, list[int]] = {name: [] for name in processes}
    children = dict.fromkeys(processes, 0)
    start = time.monotonic()
    for tick in range(ticks + 1):
        time.sleep(max(0.0, start + tick - time.monotonic()))
        marks.append(time.monotonic())
        for name, proc in processes.items():
            cpu[name].append(_tree_cpu_s(proc))
            rss[name].append(_tree_rss(proc))
            children[name] = max(children[name], len(_tree(proc)) - 1)
    wake1 = {name: _tree_wakeups(proc) for name, proc in processes.items()}
    host_cpu = psutil.cpu_percent(None)
    wall = marks[-1] - marks[0]
    bounds = [round(ticks * part / 3) for part in range(4)]

    def percent(series: list[float], first: int, last: int) -> float:
        return 100.0 * (series[last] - series[first]) / (marks[last] - marks[first])

    figures: dict[str, IdleProcess] = {}
    for name, proc in processes.items():
        before, after = wake0[name], wake1[name]
        figures[name] = IdleProcess(
            name=name,
            rss_mib=median(rss[name]) / MIB,
            rss_min_mib=min(rss[name]) / MIB,
            rss_max_mib=max(rss[name]) / MIB,
            cpu_percent=percent(cpu[name], 0, ticks),
            cpu_thirds_percent=[percent(cpu[name], a, b) for a, b in itertools.pairwise(bounds)],
            wakeups_per_s=(
                (after - before) / wall if before is not None and after is not None else None
            ),
            uss_mib=_uss_mib(proc),
            threads=proc.num_threads(),
            children=children[name],
        )
    return _IdleWindow(marks[0], marks[-1], ticks + 1, figures, host_cpu)


def measure_footprint(port: int, workdir: Path, profile: Profile) -> Footprint:
    """Start the real agent and the reference processes, warm up, sample, stop them all."""
    agent_log = workdir / "agent.log"
    watch = TelemetryWatch(port, topic_for(AGENT_DEVICE, Channel.TELEMETRY))
    watch.start()
    agent_proc: subprocess.Popen[bytes] | None = None
    references: list[subprocess.Popen[bytes]] = []
    try:
        agent_proc = _spawn_agent(port, workdir, profile.interval_s)
        sleep_s = int(profile.warmup_s + profile.idle_s + 30)  # outlives the window
        for code in (BARE_CODE.format(seconds=sleep_s), TIMER_CODE):
            references.append(
                subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL)
            )
        started = time.monotonic()
        processes = {
            "agent": psutil.Process(agent_proc.pid),
            "bare": psutil.Process(references[0].pid),
            "timer": psutil.Process(references[1].pid),
        }
        if not watch.first.wait(20.0):
            raise BenchError(f"the agent sent no telemetry in 20 s; log:\n{_log_tail(agent_log)}")
        time.sleep(max(0.0, profile.warmup_s - (time.monotonic() - started)))
        if agent_proc.poll() is not None:
            raise BenchError(f"the agent exited early; log:\n{_log_tail(agent_log)}")

        idle = _sample_idle(processes, profile.idle_s)

        if any(p.poll() is not None for p in (agent_proc, *references)):
            raise BenchError(f"a sampled process exited early; log:\n{_log_tail(agent_log)}")
        sizes = [size for _at, size in list(watch.arrivals)]
        footprint = Footprint(
            window_s=idle.end - idle.start,
            samples=idle.samples,
            agent=idle.figures["agent"],
            bare=idle.figures["bare"],
            timer=idle.figures["timer"],
            telemetry_in_window=watch.count_between(idle.start, idle.end),
            telemetry_payload_bytes=int(median(sizes)),
            host_cpu_percent=idle.host_cpu_percent,
        )
        footprint.agent_exit_code = _stop_process(agent_proc, signal.SIGTERM)
        return footprint
    finally:
        if agent_proc is not None:
            _stop_process(agent_proc, signal.SIGTERM)
        for process in references:
            _stop_process(process, signal.SIGTERM)
        watch.stop()


# -- orchestration --------------------------------------------------------------------------


@dataclass
class Results:
    """Everything one benchmark run measured, for the table and ``--json``."""

    meta: dict[str, Any]
    runs: list[RateRun]
    footprint: Footprint
    puback_reasons: dict[int, int]

    def rates(self, path: str) -> list[float]:
        return [run.rate for run in self.runs if run.path == path]

    def summary(self) -> dict[str, Any]:
        raw = median(self.rates("raw"))
        out: dict[str, Any] = {"raw_msgs_per_s": raw}
        for path in ("link", "drain", "live"):
            value = median(self.rates(path))
            out[f"{path}_msgs_per_s"] = value
            out[f"{path}_ratio"] = value / raw
        appends = [run.extra["append_rate"] for run in self.runs if run.path == "live"]
        out["live_append_only_msgs_per_s"] = median(appends)
        out["outbox_append_alone_msgs_per_s"] = self.meta["outbox_append_alone_msgs_per_s"]
        fp = self.footprint
        out["idle_cpu_percent"] = fp.agent.cpu_percent
        out["idle_rss_mib"] = fp.agent.rss_mib
        out["bare_rss_mib"] = fp.bare.rss_mib
        out["idle_rss_over_bare_mib"] = fp.agent.rss_mib - fp.bare.rss_mib
        out["timer_loop_cpu_percent"] = fp.timer.cpu_percent
        out["drain_pass"] = out["drain_ratio"] >= DRAIN_RATIO_TARGET
        out["idle_cpu_pass"] = fp.agent.cpu_percent < IDLE_CPU_TARGET_PERCENT
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "summary": self.summary(),
            "puback_reasons": {f"0x{code:02x}": n for code, n in self.puback_reasons.items()},
            "footprint": asdict(self.footprint),
            "runs": [{**asdict(run), "rate": run.rate} for run in self.runs],
        }


def run_publish_rounds(
    port: int, workdir: Path, profile: Profile, topic: str, payload: bytes
) -> tuple[list[RateRun], Counter[int], float]:
    """Warm up each path once, then ``repeats`` interleaved rounds of every path.

    Returns the timed runs, the PUBACK reason codes raw paho saw in them, and the rate of
    ``Outbox.append`` alone (measured while the template database is built).
    """
    reasons: Counter[int] = Counter()
    template = workdir / "template.sqlite3"
    warm_template = workdir / "warm-template.sqlite3"
    warm = min(1000, profile.messages)
    append_rate = make_template(template, topic, payload, profile.messages)
    make_template(warm_template, topic, payload, warm)
    db = workdir / "run.sqlite3"

    def one(path: str, round_no: int, count: int, source: Path) -> RateRun:
        ids: dict[str, Any] = {"client_id": f"bench-{path}-{round_no}", "round_no": round_no}
        runners: dict[str, Callable[[], RateRun]] = {
            "raw": lambda: raw_paho_run(port, topic, payload, count, reasons=reasons, **ids),
            "link": lambda: asyncio.run(agent_link_run(port, topic, payload, count, **ids)),
            "drain": lambda: asyncio.run(agent_drain_run(port, source, db, count, **ids)),
            "live": lambda: asyncio.run(agent_live_run(port, topic, payload, db, count, **ids)),
        }
        return runners[path]()

    print(f"warm-up: {warm:,} messages per path (not reported)", flush=True)
    for path in PATHS:
        one(path, 0, warm, warm_template)
    reasons.clear()

    runs: list[RateRun] = []
    for round_no in range(1, profile.repeats + 1):
        shift = (round_no - 1) % len(PATHS)
        order = PATHS[shift:] + PATHS[:shift]
        figures = []
        for path in order:
            run = one(path, round_no, profile.messages, template)
            runs.append(run)
            figures.append(f"{path} {run.rate:,.0f}")
        print(f"round {round_no}/{profile.repeats}: " + ", ".join(figures) + " msgs/s", flush=True)
    for run in runs:
        if "sent" in run.extra and (run.extra["discarded"] or run.extra["sent"] != run.messages):
            raise BenchError(f"{run.path} round {run.round}: forwarder counts {run.extra}")
    return runs, reasons, append_rate


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def _span(values: Sequence[float]) -> str:
    return f"{min(values):,.0f}-{max(values):,.0f}"


def _thirds(process: IdleProcess, window_s: float) -> str:
    """The spread of a CPU figure over the thirds of its window, e.g. "0.81-1.20 /10 s"."""
    low, high = min(process.cpu_thirds_percent), max(process.cpu_thirds_percent)
    return f"{low:.2f}-{high:.2f} /{window_s / 3:.0f} s"


def table_rows(results: Results) -> list[tuple[str, ...]]:
    """(figure, median, range, baseline, ratio, target, result) for every reported figure."""
    s = results.summary()
    fp = results.footprint
    raw_text = f"{_rate(s['raw_msgs_per_s'])} raw paho"
    interval = results.meta["telemetry_interval_s"]

    def publish(path: str, label: str, target: str, result: str) -> tuple[str, ...]:
        ratio = f"{s[f'{path}_ratio']:.2f}"
        value = _rate(s[f"{path}_msgs_per_s"])
        return (label, value, _span(results.rates(path)), raw_text, ratio, target, result)

    return [
        (
            "QoS1 publish, raw paho (msgs/s)",
            _rate(s["raw_msgs_per_s"]),
            _span(results.rates("raw")),
            "(the baseline)",
            "1.00",
            "-",
            "-",
        ),
        publish("link", "QoS1 publish, agent MqttLink alone (msgs/s)", "none", "info"),
        publish(
            "drain",
            "QoS1 publish, agent outbox drain (msgs/s)",
            f">= {DRAIN_RATIO_TARGET:.2f}",
            "PASS" if s["drain_pass"] else "MISS",
        ),
        publish("live", "QoS1 publish, agent live append+forward (msgs/s)", "none", "info"),
        (
            f"agent idle CPU, {interval:g} s telemetry (% of 1 core)",
            f"{fp.agent.cpu_percent:.3f}",
            _thirds(fp.agent, fp.window_s),
            f"{fp.bare.cpu_percent:.3f} bare python",
            "-",
            f"< {IDLE_CPU_TARGET_PERCENT:.3f}",
            "PASS" if s["idle_cpu_pass"] else "MISS",
        ),
        (
            "asyncio loop waking 1/s, idle CPU (% of 1 core)",
            f"{fp.timer.cpu_percent:.3f}",
            _thirds(fp.timer, fp.window_s),
            "-",
            "-",
            "none",
            "info",
        ),
        (
            "agent idle RSS (MiB)",
            f"{fp.agent.rss_mib:.1f}",
            f"{fp.agent.rss_min_mib:.1f}-{fp.agent.rss_max_mib:.1f}",
            f"{fp.bare.rss_mib:.1f} bare python",
            f"{fp.agent.rss_mib / fp.bare.rss_mib:.2f}",
            "none",
            "info",
        ),
        (
            "agent idle RSS minus bare python (MiB)",
            f"{s['idle_rss_over_bare_mib']:.1f}",
            "-",
            "-",
            "-",
            "none",
            "info",
        ),
    ]


def render_table(results: Results) -> str:
    return report.render_table(table_rows(results))


def _per_wakeup_ms(process: IdleProcess) -> str:
    if not process.wakeups_per_s:
        return "n/a"
    return f"{10.0 * process.cpu_percent / process.wakeups_per_s:.2f} ms"


def _wakeups(process: IdleProcess) -> str:
    return "n/a" if process.wakeups_per_s is None else f"{process.wakeups_per_s:.1f}/s"


def render_notes(results: Results) -> str:
    s = results.summary()
    fp = results.footprint
    m = results.meta
    reasons = ", ".join(
        f"0x{code:02x} {PUBACK_REASONS.get(code, 'other')}: {n:,}"
        for code, n in sorted(results.puback_reasons.items())
    )
    agent_runs = [run for run in results.runs if run.path != "raw"]
    windows = sorted({run.extra["window"] for run in agent_runs})
    receive = sorted({run.extra["receive_maximum"] for run in agent_runs})
    uss = (
        f"{fp.agent.uss_mib:.1f} MiB (bare python {fp.bare.uss_mib:.1f} MiB)"
        if fp.agent.uss_mib is not None and fp.bare.uss_mib is not None
        else "n/a"
    )
    return "\n".join(
        [
            f"- medians of {m['repeats']} interleaved runs of {m['messages']:,} messages per path "
            f"({m['payload_bytes']:,} B telemetry payload, topic {m['topic']})",
            f"- in-flight window: agent link {windows}, raw paho {m['window']}; broker Receive "
            f"Maximum {receive}; forwarder batch {m['forwarder_batch']}",
            f"- PUBACK reason codes seen by raw paho in the timed runs: {reasons}; agent "
            "paths: every message counted as sent, none discarded or rejected",
            "- fsync bound of the live path: Outbox.append alone "
            f"{_rate(s['outbox_append_alone_msgs_per_s'])} msgs/s; DiskOutbox.append while "
            f"forwarding {_rate(s['live_append_only_msgs_per_s'])} msgs/s",
            f"- idle window {fp.window_s:.1f} s after a {m['warmup_s']:g} s warm-up; "
            f"{fp.telemetry_in_window} telemetry messages received in it "
            f"(median {fp.telemetry_payload_bytes:,} B); agent threads {fp.agent.threads}, "
            f"child processes {fp.agent.children}; agent USS {uss}",
            f"- wake-ups (voluntary context switches): agent {_wakeups(fp.agent)}, "
            f"{_per_wakeup_ms(fp.agent)} CPU each; 1/s asyncio loop {_wakeups(fp.timer)}, "
            f"{_per_wakeup_ms(fp.timer)} CPU each",
            f"- whole-machine CPU during the idle window: {fp.host_cpu_percent:.1f} % of "
            f"{m['cpu_count']} cores; agent exit code after SIGTERM: {fp.agent_exit_code}",
        ]
    )


def run_benchmark(profile: Profile, *, quick: bool) -> Results:
    """Start the broker, run every measurement, stop and clean up whatever happens."""
    workdir = Path(tempfile.mkdtemp(prefix="edge-bench-"))
    broker = PrivateBroker(workdir / "broker")
    try:
        broker.start()
        print(f"broker: private mosquitto on {HOST}:{broker.port}", flush=True)
        topic = topic_for(PUBLISH_DEVICE, Channel.TELEMETRY)
        payload_state = workdir / "payload-state"
        payload_state.mkdir()
        payload = asyncio.run(build_telemetry_payload(payload_state))
        print(f"payload: one real telemetry message, {len(payload):,} bytes", flush=True)
        runs, reasons, append_rate = run_publish_rounds(
            broker.port, workdir, profile, topic, payload
        )
        print(
            f"idle footprint: agent at {profile.interval_s:g} s telemetry, "
            f"{profile.warmup_s:g} s warm-up + {profile.idle_s:g} s sampling",
            flush=True,
        )
        footprint = measure_footprint(broker.port, workdir, profile)
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "profile": "quick" if quick else "full",
        "messages": profile.messages,
        "repeats": profile.repeats,
        "warmup_s": profile.warmup_s,
        "idle_s": profile.idle_s,
        "telemetry_interval_s": profile.interval_s,
        "payload_bytes": len(payload),
        "topic": topic,
        "window": WINDOW,
        "forwarder_batch": QUEUE.batch,
        "outbox_append_alone_msgs_per_s": append_rate,
        "python": platform.python_version(),
        "paho_mqtt": importlib.metadata.version("paho-mqtt"),
        "mosquitto": _mosquitto_version(),
        "cpu_count": psutil.cpu_count(),
        "platform": platform.platform(),
    }
    return Results(meta=meta, runs=runs, footprint=footprint, puback_reasons=dict(reasons))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_agent", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="fewer messages, runs and seconds")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    parser.add_argument("--messages", type=int, help="messages per publish run (override)")
    parser.add_argument("--repeats", type=int, help="timed runs per publish path (override)")
    args = parser.parse_args(argv)
    profile = QUICK if args.quick else FULL
    if args.messages is not None or args.repeats is not None:
        profile = Profile(
            messages=max(1, args.messages or profile.messages),
            repeats=max(1, args.repeats or profile.repeats),
            warmup_s=profile.warmup_s,
            idle_s=profile.idle_s,
        )
    configure_logging("warning", "console")  # the link's info lines would clutter the table
    results = report.run_or_exit(
        lambda: run_benchmark(profile, quick=args.quick),
        BenchError,
        "broker, agent and temp dir cleaned up",
    )
    m = results.meta
    print()
    print(
        f"Agent core benchmark, {m['date']}: Python {m['python']}, paho-mqtt {m['paho_mqtt']}, "
        f"mosquitto {m['mosquitto']}, {m['cpu_count']} cores, loopback only"
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
