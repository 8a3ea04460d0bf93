"""OTA benchmark: model transfer goodput over MQTT, and the time to verify a model file.

One private mosquitto on 127.0.0.1 (``devtools.localbroker.PrivateBroker``); no traffic leaves
the loopback interface, and every loop is bounded by a byte count or a deadline.

The model is a generated file of random bytes (8 MiB; 2 MiB with ``--quick``), or with
``--model FILE`` a copy of a real file (the MiniLM files of ``make bench-models``): only its
bytes matter here. It is published with the release code
(``fleet.release``: a real TUF repository, 256 KiB chunks with per-chunk sha256).

1. Goodput. Two paths move the same bytes through the same broker in the same run:

   - ``ota``: the real controller, ``fleet serve --repo`` in its own process (as on a
     server), answers the device's requests; the device side is the agent's own download
     path (``RepositoryClient.fetch_chunks`` with its default window, adjacent chunks asked
     for together up to ``DEFAULT_REQUEST_BYTES``; each chunk checked against its signed
     sha256 and kept by ``ChunkStaging``, one worker-thread trip per reply, which syncs to
     disk every second; then ``assemble_download``, as the agent does: the signed length
     checked, the file moved into place). Timed from the
     first request to the verified file on disk; the link is connected and subscribed before
     the clock starts;
   - ``raw`` (the baseline): a plain paho publisher sends the same bytes in messages as
     large as the OTA replies (``DEFAULT_REQUEST_BYTES``) at QoS 1, and a plain paho
     subscriber (QoS 1) in the same process receives them. Timed from the first publish
     until the subscriber has every byte.

   For both paths the CPU time of this process, the controller and the broker during the
   timed part is read from ``/proc/<pid>/task/*/schedstat`` and reported per MiB moved (a
   note under the table): on two shared cores, the ratio is mostly a matter of CPU.

   The broker runs with ``set_tcp_nodelay true`` (as ``PrivateBroker`` always does): without
   it every request/response exchange waits for a delayed TCP ACK (Nagle's algorithm),
   which the streaming baseline never does. Goodput = file bytes / elapsed. Each path runs
   ``repeats`` times, interleaved (the order alternates every round), after one untimed
   warm-up each; medians are reported and the ratio ota / raw (target >= 0.5).

2. Verification time: ``agent.ota.trust.verify_file`` (python-tuf's length and hash check),
   as the agent checks a downloaded model (open included), against ``openssl dgst -sha256
   FILE`` run as a subprocess (wall time, process start included) on the same file,
   interleaved, medians (target: ratio <= 1.1).

The machine running the benchmark is shared and noisy, so the ratios against baselines
measured in the same run are the figures to compare. Nothing here asserts on timing: the
table says PASS or MISS against each target and the exit code stays 0.

Run from the repository root::

    .venv/bin/python -m bench.bench_ota [--quick] [--json PATH] [--model FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from agent.inference.cardfile import load_card
from agent.ota.staging import ChunkStaging
from agent.ota.transport import (
    DEFAULT_REQUEST_BYTES,
    DEFAULT_WINDOW,
    ChunkRange,
    RepositoryClient,
)
from agent.ota.trust import verify_file
from agent.ota.updater import assemble_download, repository_path
from bench import report
from bench.bench_agent import _mosquitto_version
from devtools.localbroker import PrivateBroker
from edge_contract.card import card_path_for
from edge_contract.release import DEFAULT_CHUNK_SIZE, ModelRelease, Target
from edge_runtime.log import configure_logging
from edge_runtime.mqtt.base import LinkSettings
from edge_runtime.mqtt.link import MqttLink
from fleet.release.publish import publish_model as release_publish
from fleet.release.repo import Repository

HOST = "127.0.0.1"
DEVICE = "bench-ota"
GOODPUT_RATIO_TARGET = 0.5
VERIFY_RATIO_TARGET = 1.1
CONNECT_TIMEOUT_S = 10.0
RUN_TIMEOUT_S = 120.0  # a run that takes this long is broken, not slow
MIB = 1024 * 1024
PATHS = ("ota", "raw")
BROKER_NODELAY = "set_tcp_nodelay true"
# Any real card will do: the release needs one, the benchmark never loads the model.
CARD = Path(__file__).resolve().parent.parent / "models" / "digits" / "digits-fp32.onnx.card.json"


class BenchError(Exception):
    """A benchmark step failed (broker, a link, or a run that did not finish in time)."""


@dataclass(frozen=True)
class Profile:
    file_bytes: int
    repeats: int
    verify_repeats: int
    model_file: Path | None = None  # a real file to transfer instead of random bytes


FULL = Profile(file_bytes=8 * MIB, repeats=5, verify_repeats=9)
QUICK = Profile(file_bytes=2 * MIB, repeats=3, verify_repeats=5)


@dataclass(frozen=True)
class Model:
    """The generated model file as published: where it lies and what the release signs."""

    source: Path
    served_path: str  # the request path, "targets/models/.../<sha256>.<file>"
    target: Target
    chunks: tuple[str, ...]
    chunk_size: int
    release: ModelRelease

    def ranges(self) -> list[ChunkRange]:
        length = self.target.length
        return [
            ChunkRange(index, offset, min(self.chunk_size, length - offset))
            for index, offset in enumerate(range(0, length, self.chunk_size))
        ]


# Whose CPU time is counted during each timed run (``CpuProbe``), in this order.
CPU_OWNERS = ("this process", "controller", "broker")


class CpuProbe:
    """CPU time used so far by this process, the controller and the broker (every thread, in
    seconds): this process's CPU clock, and the scheduler's nanosecond counters in
    ``/proc/<pid>/task/*/schedstat`` for the other two.

    This process is the device on the ``ota`` path and the paho publisher and subscriber on
    the ``raw`` path; the controller idles during ``raw`` runs.
    """

    def __init__(self, controller_pid: int, broker_pid: int) -> None:
        self._pids = (os.getpid(), controller_pid, broker_pid)

    def sample(self) -> tuple[float, ...]:
        # This process from its own clock, which keeps the time of threads that have ended
        # meanwhile; the others' threads live on.
        return (time.process_time(), *(_cpu_s(pid) for pid in self._pids[1:]))


def _cpu_s(pid: int) -> float:
    # Not psutil's cpu_times, as the other benchmarks use: it counts in 10 ms clock ticks,
    # too coarse for runs of 20-60 ms.
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat", encoding="ascii") as stat:
                total += int(stat.read().split()[0])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total / 1e9


@dataclass
class Run:
    path: str
    round: int
    bytes: int
    elapsed_s: float
    cpu_s: tuple[float, ...] = ()  # CPU_OWNERS' CPU time during the timed part

    @property
    def mib_per_s(self) -> float:
        return self.bytes / self.elapsed_s / MIB


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def publish_model(repo_dir: Path, size: int, model_file: Path | None = None) -> Model:
    """``size`` random bytes, or a copy of ``model_file``, published as ``bench@1`` with
    ``fleet.release`` (real TUF)."""
    work = repo_dir.parent / "model"
    work.mkdir()
    source = work / "bench.onnx"
    if model_file is None:
        source.write_bytes(os.urandom(size))
    else:
        shutil.copyfile(model_file, source)
    card = load_card(CARD).model_copy(update={"name": "bench", "version": "1"})
    card_path_for(source).write_text(card.model_dump_json())
    repo = Repository.init(repo_dir)
    release = release_publish(repo, source, name="bench", version="1", hardware=["generic"])
    target = repo.targets()[release.target_path]
    served = repository_path(target.path, target.hashes["sha256"])
    stored = repo.target_file_path(target)
    return Model(stored, served, target, release.chunks, release.chunk_size, release)


def _link_settings(port: int, client_id: str) -> LinkSettings:
    return LinkSettings(
        host=HOST, port=port, client_id=client_id, clean_start=True, session_expiry_s=0
    )


@contextlib.asynccontextmanager
async def _link_up(link: MqttLink) -> AsyncIterator[None]:
    task = asyncio.create_task(link.run())
    try:
        await link.wait_connected(CONNECT_TIMEOUT_S)
        yield
    finally:
        await link.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class Controller:
    """The real controller, ``fleet serve --repo``, in its own process (as on a server)."""

    def __init__(self, port: int, repo: Path, workdir: Path) -> None:
        self._command = [
            sys.executable,
            "-m",
            "fleet",
            "serve",
            "--broker",
            f"mqtt://{HOST}:{port}",
            "--db",
            str(workdir / "fleet.sqlite3"),
            "--repo",
            str(repo),
            "--log-format",
            "json",
        ]
        self._log = workdir / "controller.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, port: int) -> None:
        with self._log.open("wb") as log:
            env = {**os.environ, "FLEET_HTTP__LISTEN": "127.0.0.1:0"}  # HTTP on any free port
            self._process = subprocess.Popen(
                self._command, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        deadline = time.monotonic() + CONNECT_TIMEOUT_S * 3
        while b"mqtt.connected" not in self._log.read_bytes():
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"controller did not start: {self._log.read_text()[-2000:]}")
            time.sleep(0.1)
        time.sleep(0.5)  # let its subscriptions settle

    @property
    def pid(self) -> int:
        if self._process is None:
            raise BenchError("the controller is not running")
        return self._process.pid

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(CONNECT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


async def ota_run(port: int, model: Model, workdir: Path, round_no: int, cpu: CpuProbe) -> Run:
    """The agent's own download path, timed from the first request to the verified file.

    The same steps as ``agent.ota.updater.OtaUpdater._download``: chunks fetched by
    ``RepositoryClient.fetch_chunks``, each checked against its signed sha256 and kept by
    ``ChunkStaging.store_all`` (as the agent does), then ``assemble_download``.
    """
    staging_root = workdir / f"staging-{round_no}"
    staging = ChunkStaging(staging_root, model.release, model.target.hashes["sha256"])
    assembled = workdir / f"assembled-{round_no}"
    link = MqttLink(_link_settings(port, DEVICE))
    client = RepositoryClient(link, DEVICE)
    link.set_message_handler(client.on_message)
    link.add_subscription(client.subscription())
    async with _link_up(link):
        await link.wait_subscribed(CONNECT_TIMEOUT_S)

        async def on_chunks(pieces: list[tuple[int, memoryview]]) -> None:
            refused = await asyncio.to_thread(staging.store_all, pieces)
            if refused:
                raise BenchError(f"chunks refused: {[index for index, _ in refused]}")

        cpu_before = cpu.sample()
        start = time.perf_counter()
        async with asyncio.timeout(RUN_TIMEOUT_S):
            await client.fetch_chunks(model.served_path, model.ranges(), on_chunks)
        await asyncio.to_thread(assemble_download, staging, model.target, assembled)
        elapsed = time.perf_counter() - start
        cpu_used = _minus(cpu.sample(), cpu_before)
    shutil.rmtree(staging_root, ignore_errors=True)
    assembled.unlink(missing_ok=True)
    return Run("ota", round_no, model.target.length, elapsed, cpu_used)


def _minus(after: tuple[float, ...], before: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(b - a for a, b in zip(before, after, strict=True))


def raw_paho_run(port: int, model: Model, round_no: int, cpu: CpuProbe) -> Run:
    """The same bytes, in messages as large as the OTA replies (``DEFAULT_REQUEST_BYTES``),
    QoS 1, from a paho publisher to a paho subscriber."""
    data = model.source.read_bytes()
    size = DEFAULT_REQUEST_BYTES
    blocks = [data[i : i + size] for i in range(0, len(data), size)]
    topic = f"bench/raw/{round_no}"
    subscribed, done = threading.Event(), threading.Event()
    received = 0

    def on_message(_client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        nonlocal received
        received += len(msg.payload)
        if received >= len(data):
            done.set()

    subscriber = _paho_client(port, f"bench-raw-sub-{round_no}")
    subscriber.on_message = on_message
    subscriber.on_subscribe = lambda *_: subscribed.set()
    subscriber.subscribe(topic, qos=1)
    publisher = _paho_client(port, f"bench-raw-pub-{round_no}")
    try:
        if not subscribed.wait(CONNECT_TIMEOUT_S):
            raise BenchError("raw subscriber did not subscribe")
        cpu_before = cpu.sample()
        start = time.perf_counter()
        for block in blocks:
            info = publisher.publish(topic, block, qos=1)
            if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_QUEUE_SIZE):
                raise BenchError(f"raw publish failed: {paho.error_string(info.rc)}")
        if not done.wait(RUN_TIMEOUT_S):
            raise BenchError(f"raw paho: {received}/{len(data)} bytes before the deadline")
        elapsed = time.perf_counter() - start
        cpu_used = _minus(cpu.sample(), cpu_before)
    finally:
        for client in (publisher, subscriber):
            client.disconnect()
            client.loop_stop()
    return Run("raw", round_no, len(data), elapsed, cpu_used)


def _paho_client(port: int, client_id: str) -> paho.Client:
    connected = threading.Event()
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5
    )
    client.on_connect = lambda *_: connected.set()
    client.connect(HOST, port, keepalive=30, clean_start=True)
    client.loop_start()
    if not connected.wait(CONNECT_TIMEOUT_S):
        raise BenchError(f"raw paho client {client_id} did not connect to {HOST}:{port}")
    return client


def verify_time_s(model: Model) -> float:
    start = time.perf_counter()
    verify_file(model.target, model.source)  # python-tuf's check, as the agent makes it
    return time.perf_counter() - start


def openssl_time_s(model: Model, openssl: str) -> float:
    start = time.perf_counter()
    result = subprocess.run(
        [openssl, "dgst", "-sha256", str(model.source)], capture_output=True, check=False
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0 or model.target.hashes["sha256"].encode() not in result.stdout:
        raise BenchError(f"openssl dgst failed: {result.stderr.decode(errors='replace')}")
    return elapsed


@dataclass
class Results:
    meta: dict[str, Any]
    runs: list[Run]
    verify_s: list[float]
    openssl_s: list[float]

    def goodput(self, path: str) -> list[float]:
        return [run.mib_per_s for run in self.runs if run.path == path]

    def cpu_ms_per_mib(self, path: str) -> dict[str, float]:
        """Median CPU time per MiB moved, by owner (``CPU_OWNERS``) and in total."""
        runs = [run for run in self.runs if run.path == path and run.cpu_s]
        if not runs:
            return {}
        per_run = [[cpu * 1000 / (run.bytes / MIB) for cpu in run.cpu_s] for run in runs]
        figures = {
            owner: median([row[index] for row in per_run]) for index, owner in enumerate(CPU_OWNERS)
        }
        figures["total"] = median([sum(row) for row in per_run])
        return figures

    def summary(self) -> dict[str, Any]:
        ota, raw = median(self.goodput("ota")), median(self.goodput("raw"))
        verify, openssl = median(self.verify_s), median(self.openssl_s)
        return {
            "ota_mib_per_s": ota,
            "raw_mib_per_s": raw,
            "goodput_ratio": ota / raw,
            "goodput_pass": ota / raw >= GOODPUT_RATIO_TARGET,
            "verify_ms": verify * 1000,
            "openssl_ms": openssl * 1000,
            "verify_ratio": verify / openssl,
            "verify_pass": verify / openssl <= VERIFY_RATIO_TARGET,
            "cpu_ms_per_mib": {path: self.cpu_ms_per_mib(path) for path in PATHS},
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "summary": self.summary(),
            "runs": [{**asdict(run), "mib_per_s": run.mib_per_s} for run in self.runs],
            "verify_s": self.verify_s,
            "openssl_s": self.openssl_s,
        }


def run_goodput_rounds(
    port: int, model: Model, workdir: Path, repeats: int, cpu: CpuProbe
) -> list[Run]:
    def one(path: str, round_no: int) -> Run:
        if path == "ota":
            return asyncio.run(ota_run(port, model, workdir, round_no, cpu))
        return raw_paho_run(port, model, round_no, cpu)

    print("warm-up: one run per path (not reported)", flush=True)
    for path in PATHS:
        one(path, 0)
    runs: list[Run] = []
    for round_no in range(1, repeats + 1):
        order = PATHS if round_no % 2 else PATHS[::-1]
        figures = []
        for path in order:
            run = one(path, round_no)
            runs.append(run)
            figures.append(f"{path} {run.mib_per_s:.1f}")
        print(f"round {round_no}/{repeats}: " + ", ".join(figures) + " MiB/s", flush=True)
    return runs


def run_verify_rounds(model: Model, repeats: int) -> tuple[list[float], list[float]]:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise BenchError("openssl is not installed")
    verify_time_s(model)
    openssl_time_s(model, openssl)  # warm the page cache and the binary
    verify, baseline = [], []
    for round_no in range(repeats):
        if round_no % 2:
            baseline.append(openssl_time_s(model, openssl))
            verify.append(verify_time_s(model))
        else:
            verify.append(verify_time_s(model))
            baseline.append(openssl_time_s(model, openssl))
    return verify, baseline


def run_benchmark(profile: Profile, *, quick: bool) -> Results:
    """Start the broker and the controller, measure, stop and clean up whatever happens."""
    workdir = Path(tempfile.mkdtemp(prefix="edge-bench-ota-"))
    # Request/response needs Nagle off on the broker's sockets: a PUBACK followed by a small
    # publish otherwise waits for the peer's delayed ACK (~40 ms on Linux) on every exchange.
    broker = PrivateBroker(workdir / "broker", extra_config=[BROKER_NODELAY])
    controller: Controller | None = None
    try:
        model = publish_model(workdir / "repo", profile.file_bytes, profile.model_file)
        print(
            f"model: {_describe(profile.model_file, model.target.length)}, "
            f"{len(model.chunks)} chunks of {model.chunk_size // 1024} KiB",
            flush=True,
        )
        broker.start()
        print(f"broker: private mosquitto on {HOST}:{broker.port}", flush=True)
        controller = Controller(broker.port, workdir / "repo", workdir)
        controller.start(broker.port)
        if broker.pid is None:
            raise BenchError("the broker is not running")
        cpu = CpuProbe(controller.pid, broker.pid)
        runs = run_goodput_rounds(broker.port, model, workdir, profile.repeats, cpu)
        verify, openssl = run_verify_rounds(model, profile.verify_repeats)
    finally:
        if controller is not None:
            controller.stop()
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "profile": "quick" if quick else "full",
        "file_bytes": model.target.length,
        "model_file": None if profile.model_file is None else str(profile.model_file),
        "chunk_bytes": DEFAULT_CHUNK_SIZE,
        "request_bytes": DEFAULT_REQUEST_BYTES,
        "repeats": profile.repeats,
        "verify_repeats": profile.verify_repeats,
        "window": DEFAULT_WINDOW,
        "python": platform.python_version(),
        "paho_mqtt": importlib.metadata.version("paho-mqtt"),
        "tuf": importlib.metadata.version("tuf"),
        "mosquitto": _mosquitto_version(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }
    return Results(meta=meta, runs=runs, verify_s=verify, openssl_s=openssl)


def table_rows(results: Results) -> list[tuple[str, ...]]:
    s = results.summary()
    ota, raw = results.goodput("ota"), results.goodput("raw")
    return [
        (
            "raw paho pub/sub, QoS 1 (MiB/s)",
            f"{s['raw_mib_per_s']:.1f}",
            f"{min(raw):.1f}-{max(raw):.1f}",
            "(the baseline)",
            "1.00",
            "-",
            "-",
        ),
        (
            "OTA fetch + verify to disk (MiB/s)",
            f"{s['ota_mib_per_s']:.1f}",
            f"{min(ota):.1f}-{max(ota):.1f}",
            f"{s['raw_mib_per_s']:.1f} raw paho",
            f"{s['goodput_ratio']:.2f}",
            f">= {GOODPUT_RATIO_TARGET:.2f}",
            "PASS" if s["goodput_pass"] else "MISS",
        ),
        (
            "sha256 verify, TargetFile (ms)",
            f"{s['verify_ms']:.1f}",
            f"{min(results.verify_s) * 1000:.1f}-{max(results.verify_s) * 1000:.1f}",
            f"{s['openssl_ms']:.1f} openssl dgst",
            f"{s['verify_ratio']:.2f}",
            f"<= {VERIFY_RATIO_TARGET:.2f}",
            "PASS" if s["verify_pass"] else "MISS",
        ),
    ]


def render_table(results: Results) -> str:
    return report.render_table(table_rows(results))


def render_notes(results: Results) -> str:
    m = results.meta
    return "\n".join(
        [
            f"- model: {_describe(m['model_file'], m['file_bytes'])}, "
            f"{m['chunk_bytes'] // 1024} KiB chunks; medians of {m['repeats']} "
            "interleaved runs per path after one warm-up each",
            f"- OTA path: RepositoryClient window {m['window']}, requests of up to "
            f"{m['request_bytes'] // 1024} KiB; the controller is `fleet serve --repo` in its own "
            "process; the agent's staging (per-chunk sha256, synced at most once a second), "
            "assembly and the signed-length check included; the whole-file sha256 is checked "
            "at install (not timed here), its cost is the verification line",
            f"- raw path: paho publisher -> mosquitto -> paho subscriber, QoS 1, messages of "
            f"{m['request_bytes'] // 1024} KiB",
            f"- broker config for both paths: '{BROKER_NODELAY}' (see the module docstring)",
            f"- verification: medians of {m['verify_repeats']} interleaved runs; openssl timed "
            "as a subprocess (wall time, process start included), file in the page cache",
            *_cpu_notes(results),
        ]
    )


def _cpu_notes(results: Results) -> list[str]:
    ota, raw = results.cpu_ms_per_mib("ota"), results.cpu_ms_per_mib("raw")
    if not ota or not raw:
        return []
    return [
        "- CPU per MiB moved during the timed part, medians (all threads; this process "
        "from its CPU clock, the others from /proc schedstat): "
        f"ota: device {ota['this process']:.2f} ms, controller {ota['controller']:.2f}, "
        f"broker {ota['broker']:.2f}, total {ota['total']:.2f}; "
        f"raw: publisher and subscriber {raw['this process']:.2f} ms, "
        f"broker {raw['broker']:.2f}, total {raw['total']:.2f}"
    ]


def _describe(model_file: Path | str | None, length: int) -> str:
    if model_file is None:
        return f"{length / MIB:g} MiB of generated random bytes (not a real model)"
    return f"{Path(model_file).name} ({length / MIB:.1f} MiB)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_ota", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="a smaller file and fewer runs")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    parser.add_argument(
        "--model",
        type=Path,
        metavar="FILE",
        help="transfer this file (e.g. models/build/minilm/minilm-int8.onnx) instead of "
        "generated random bytes",
    )
    args = parser.parse_args(argv)
    profile = QUICK if args.quick else FULL
    if args.model is not None:
        if not args.model.is_file():
            parser.error(f"--model {args.model}: no such file")
        profile = replace(profile, model_file=args.model)
    configure_logging("warning", "console")  # the links' info lines would clutter the table
    results = report.run_or_exit(
        lambda: run_benchmark(profile, quick=args.quick),
        BenchError,
        "broker, controller and temp dir cleaned up",
    )
    m = results.meta
    print()
    print(
        f"OTA benchmark, {m['date']}: Python {m['python']}, paho-mqtt {m['paho_mqtt']}, "
        f"tuf {m['tuf']}, mosquitto {m['mosquitto']}, {m['cpu_count']} cores, loopback only"
    )
    print()
    print(render_table(results))
    print()
    print(render_notes(results))
    options = (" --quick" if args.quick else "") + (f" --model {args.model}" if args.model else "")
    print(f"\ncommand: .venv/bin/python -m bench.bench_ota{options}")
    if args.json is not None:
        args.json.write_text(json.dumps(results.to_json(), indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
