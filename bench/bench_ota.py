"""OTA benchmark: model transfer goodput over MQTT, and the time to verify a model file.

Everything runs in one process against one private mosquitto on 127.0.0.1
(``fleet.localbroker.PrivateBroker``); no traffic leaves the loopback interface, and every
loop is bounded by a byte count or a deadline.

The model is a generated file of random bytes (8 MiB; 2 MiB with ``--quick``), not a real
model: only its bytes matter here. It is published into a temporary repository directory
the way ``fleet model publish`` lays it out (``targets/models/<name>/<version>/<sha256>.<file>``)
and cut into 256 KiB chunks (``agent.ota.release.DEFAULT_CHUNK_SIZE``) with per-chunk sha256.

1. Goodput. Two paths move the same bytes through the same broker in the same run:

   - ``ota``: the controller's ``FileService`` (on its own ``MqttLink``, in a thread with its
     own asyncio loop, as in ``fleet serve``) serves the repository directory; the device's
     ``RepositoryClient.fetch_chunks`` (its default window of requests in flight) fetches
     every chunk, checks each against its sha256, writes it at its offset in the output file,
     then fsyncs the file and checks its length and sha256 (``TargetFile``). Timed from the
     first request to the verified file on disk. The links are connected and subscribed
     before the clock starts;
   - ``raw`` (the baseline): a plain paho publisher sends the same bytes in messages of the
     same chunk size at QoS 1, and a plain paho subscriber (QoS 1) receives them. Timed from
     the first publish until the subscriber has every byte.

   The broker runs with ``set_tcp_nodelay true``: without it every request/response
   exchange waits for a delayed TCP ACK (Nagle's algorithm), which the streaming baseline
   never does. Goodput = file bytes / elapsed. Each path runs ``repeats`` times,
   interleaved (the order alternates every round), after one untimed warm-up each; medians
   are reported and the ratio ota / raw (target >= 0.5).

2. Verification time: ``TargetFile.verify_length_and_hashes`` on the open file, as the agent
   checks a downloaded model (open included), against ``openssl dgst -sha256 FILE`` run as a
   subprocess (wall time, process start included) on the same file, interleaved, medians
   (target: ratio <= 1.1).

The machine running the benchmark is shared and noisy, so the ratios against baselines
measured in the same run are the figures to compare. Nothing here asserts on timing: the
table says PASS or MISS against each target and the exit code stays 0.

Run from the repository root::

    .venv/bin/python -m bench.bench_ota [--quick] [--json PATH]
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
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from tuf.api.metadata import TargetFile

from agent.inference.card import load_card
from agent.log import configure_logging
from agent.mqtt.base import LinkSettings
from agent.mqtt.link import MqttLink
from agent.ota.release import DEFAULT_CHUNK_SIZE, ModelRelease, chunk_hashes, target_path
from agent.ota.staging import ChunkStaging
from agent.ota.transport import ChunkRange, RepositoryClient
from bench.bench_agent import _mosquitto_version
from fleet.localbroker import PrivateBroker
from fleet.release.fileserver import FileService, RepositoryFiles

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


FULL = Profile(file_bytes=8 * MIB, repeats=5, verify_repeats=9)
QUICK = Profile(file_bytes=2 * MIB, repeats=3, verify_repeats=5)


@dataclass(frozen=True)
class Model:
    """The generated model file as published: where it lies and what the release signs."""

    source: Path
    served_path: str  # the request path, "targets/models/.../<sha256>.<file>"
    target: TargetFile
    chunks: tuple[str, ...]
    chunk_size: int
    release: ModelRelease

    def ranges(self) -> list[ChunkRange]:
        length = self.target.length
        return [
            ChunkRange(index, offset, min(self.chunk_size, length - offset))
            for index, offset in enumerate(range(0, length, self.chunk_size))
        ]


@dataclass
class Run:
    path: str
    round: int
    bytes: int
    elapsed_s: float

    @property
    def mib_per_s(self) -> float:
        return self.bytes / self.elapsed_s / MIB


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def publish_model(repo: Path, size: int) -> Model:
    """Write ``size`` random bytes into ``repo`` as model ``bench@1``, hash-prefixed."""
    data = os.urandom(size)
    path = target_path("bench", "1", "bench.onnx")
    target = TargetFile.from_data(path, data, ["sha256"])
    directory, _, name = path.rpartition("/")
    served = f"targets/{directory}/{target.hashes['sha256']}.{name}"
    (repo / "metadata").mkdir(parents=True)
    source = repo / served
    source.parent.mkdir(parents=True)
    source.write_bytes(data)
    blocks = (data[i : i + DEFAULT_CHUNK_SIZE] for i in range(0, size, DEFAULT_CHUNK_SIZE))
    chunks = tuple(chunk_hashes(blocks))
    card = load_card(CARD).model_copy(update={"name": "bench", "version": "1"})
    release = ModelRelease(
        name="bench",
        version="1",
        release=1,
        hardware=("generic",),
        min_agent_version="0.1",
        file_name="bench.onnx",
        length=size,
        chunk_size=DEFAULT_CHUNK_SIZE,
        chunks=chunks,
        card=card,
    )
    return Model(source, served, target, chunks, DEFAULT_CHUNK_SIZE, release)


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
    """``FileService`` on its own link and asyncio loop, in a background thread."""

    def __init__(self, port: int, repo: Path) -> None:
        self._port = port
        self._repo = repo
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="bench-controller", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(CONNECT_TIMEOUT_S) or self._failed is not None:
            raise BenchError(f"controller did not start: {self._failed!r}")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(CONNECT_TIMEOUT_S)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by start(); the thread must not die silently
            self._failed = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        link = MqttLink(_link_settings(self._port, "bench-controller"))
        service = FileService(link, RepositoryFiles(self._repo))
        link.set_message_handler(service.on_message)
        link.add_subscription(service.subscription())
        try:
            async with _link_up(link):
                await link.wait_subscribed(CONNECT_TIMEOUT_S)
                self._ready.set()
                await self._stop.wait()
        finally:
            service.close()


async def ota_run(port: int, model: Model, workdir: Path, round_no: int) -> Run:
    """The agent's own download path, timed from the first request to the verified file.

    The same steps as ``agent.ota.updater.OtaUpdater._download``: chunks fetched by
    ``RepositoryClient.fetch_chunks``, each checked against its signed sha256 and kept by
    ``ChunkStaging.store`` (durably, as the agent does), then ``ChunkStaging.assemble`` and the
    whole-file length and sha256 check by python-tuf (``TargetFile``).
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

        async def on_chunk(index: int, data: bytes) -> None:
            await asyncio.to_thread(staging.store, index, data)

        start = time.perf_counter()
        async with asyncio.timeout(RUN_TIMEOUT_S):
            await client.fetch_chunks(model.served_path, model.ranges(), on_chunk)
        await asyncio.to_thread(staging.assemble, assembled)
        await asyncio.to_thread(_verify, model.target, assembled)
        elapsed = time.perf_counter() - start
    shutil.rmtree(staging_root, ignore_errors=True)
    assembled.unlink(missing_ok=True)
    return Run("ota", round_no, model.target.length, elapsed)


def _verify(target: TargetFile, path: Path) -> None:
    with path.open("rb") as handle:
        target.verify_length_and_hashes(handle)


def raw_paho_run(port: int, model: Model, round_no: int) -> Run:
    """The same bytes, same chunk size, QoS 1, from a paho publisher to a paho subscriber."""
    data = model.source.read_bytes()
    blocks = [data[i : i + model.chunk_size] for i in range(0, len(data), model.chunk_size)]
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
        start = time.perf_counter()
        for block in blocks:
            info = publisher.publish(topic, block, qos=1)
            if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_QUEUE_SIZE):
                raise BenchError(f"raw publish failed: {paho.error_string(info.rc)}")
        if not done.wait(RUN_TIMEOUT_S):
            raise BenchError(f"raw paho: {received}/{len(data)} bytes before the deadline")
        elapsed = time.perf_counter() - start
    finally:
        for client in (publisher, subscriber):
            client.disconnect()
            client.loop_stop()
    return Run("raw", round_no, len(data), elapsed)


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
    with model.source.open("rb") as file:
        model.target.verify_length_and_hashes(file)
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
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "summary": self.summary(),
            "runs": [{**asdict(run), "mib_per_s": run.mib_per_s} for run in self.runs],
            "verify_s": self.verify_s,
            "openssl_s": self.openssl_s,
        }


def run_goodput_rounds(port: int, model: Model, workdir: Path, repeats: int) -> list[Run]:
    def one(path: str, round_no: int) -> Run:
        if path == "ota":
            return asyncio.run(ota_run(port, model, workdir, round_no))
        return raw_paho_run(port, model, round_no)

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
        model = publish_model(workdir / "repo", profile.file_bytes)
        print(
            f"model: {profile.file_bytes / MIB:g} MiB of random bytes, "
            f"{len(model.chunks)} chunks of {model.chunk_size // 1024} KiB",
            flush=True,
        )
        broker.start()
        print(f"broker: private mosquitto on {HOST}:{broker.port}", flush=True)
        controller = Controller(broker.port, workdir / "repo")
        controller.start()
        runs = run_goodput_rounds(broker.port, model, workdir, profile.repeats)
        verify, openssl = run_verify_rounds(model, profile.verify_repeats)
    finally:
        if controller is not None:
            controller.stop()
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "profile": "quick" if quick else "full",
        "file_bytes": profile.file_bytes,
        "chunk_bytes": DEFAULT_CHUNK_SIZE,
        "repeats": profile.repeats,
        "verify_repeats": profile.verify_repeats,
        "window": RepositoryClient.__init__.__kwdefaults__["window"],
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
    header = ("figure", "median", "range", "baseline", "ratio", "target", "result")
    rows = table_rows(results)
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    return "\n".join([line(header), "-" * len(line(header)), *(line(row) for row in rows)])


def render_notes(results: Results) -> str:
    m = results.meta
    return "\n".join(
        [
            f"- model: {m['file_bytes'] / MIB:g} MiB of generated random bytes (not a real "
            f"model), {m['chunk_bytes'] // 1024} KiB chunks; medians of {m['repeats']} "
            "interleaved runs per path after one warm-up each",
            f"- OTA path: RepositoryClient window {m['window']}, FileService in a thread of the "
            "same process; the agent's staging (per-chunk sha256, kept durably), assembly and "
            "whole-file length+sha256 included",
            "- raw path: paho publisher -> mosquitto -> paho subscriber, QoS 1, same chunk size",
            f"- broker config for both paths: '{BROKER_NODELAY}' (see the module docstring)",
            f"- verification: medians of {m['verify_repeats']} interleaved runs; openssl timed "
            "as a subprocess (wall time, process start included), file in the page cache",
        ]
    )


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_ota", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="a smaller file and fewer runs")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    args = parser.parse_args(argv)
    profile = QUICK if args.quick else FULL
    configure_logging("warning", "console")  # the links' info lines would clutter the table
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        results = run_benchmark(profile, quick=args.quick)
    except KeyboardInterrupt:
        print("\ninterrupted; broker, controller and temp dir cleaned up", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
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
    print(f"\ncommand: .venv/bin/python -m bench.bench_ota{' --quick' if args.quick else ''}")
    if args.json is not None:
        args.json.write_text(json.dumps(results.to_json(), indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
