"""The serving benchmark's parts: bare sessions, the servers it starts, its clients, and the
alternation that times them (``bench.bench_serving`` puts them together)."""

from __future__ import annotations

import http.client
import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench import report
from bench.bench_models import MINILM_FP32, load_inputs, paragraph_inputs
from devtools.localbroker import free_port, port_is_open
from edge_contract.card import ModelCard

REPO = Path(__file__).resolve().parents[1]
MODEL = "minilm"
Feeds = Mapping[str, np.ndarray]
Timer = Callable[[Feeds], float]
# Before each timed block: a pause longer than ONNX Runtime's spin after a run (2**20 spin
# iterations: tens of milliseconds), then untimed calls (see ``alternate``).
SETTLE_S = 0.06
BLOCK_WARMUP = 2


@dataclass(frozen=True)
class AgentSettings:
    """An ``edge-agent serve`` configuration: its flags and a label for the tables."""

    label: str
    flags: tuple[str, ...] = ()


class BenchError(Exception):
    """The benchmark could not run (a server did not start)."""


def bare_session(threads: int = 0, spinning: bool | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if spinning is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning", str(int(spinning)))
    return ort.InferenceSession(str(MINILM_FP32), options, providers=["CPUExecutionProvider"])


BARE_CONFIGS: dict[str, Callable[[], ort.InferenceSession]] = {
    "ORT defaults": bare_session,
    "spinning off": lambda: bare_session(spinning=False),
    "1 thread": lambda: bare_session(threads=1),
    "1 thread, spinning off": lambda: bare_session(threads=1, spinning=False),
}


def session_timer(session: ort.InferenceSession) -> Timer:
    def call(feeds: Feeds) -> float:
        start = time.perf_counter()
        session.run(None, dict(feeds))
        return time.perf_counter() - start

    return call


@dataclass(frozen=True)
class Ports:
    http: int
    grpc: int


@contextmanager
def agent_server(settings: AgentSettings, log_dir: Path) -> Iterator[Ports]:
    """A real ``edge-agent serve`` of MiniLM fp32 on free loopback ports (HTTP and gRPC)."""
    port, grpc_port = free_port(), free_port()
    argv = [sys.executable, "-m", "agent", "serve", "--model", f"{MODEL}={MINILM_FP32}"]
    argv += ["--port", str(port), "--grpc-port", str(grpc_port), *settings.flags]
    with report.child_server(
        argv,
        log_dir / f"serve-{port}.log",
        lambda: port_is_open(port) and port_is_open(grpc_port),
        BenchError,
        cwd=REPO,
    ):
        yield Ports(port, grpc_port)


@contextmanager
def least_server(config: str, log_dir: Path) -> Iterator[int]:
    """``bench.serving_floor`` with the bare configuration ``config``, on a free port."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.serving_floor", "--port", str(port), "--config", config]
    with report.child_server(
        argv, log_dir / f"least-{port}.log", lambda: port_is_open(port), BenchError, cwd=REPO
    ):
        yield port


def rest_json_timer(port: int) -> Timer:
    """TF Serving's ``:predict`` (columnar ``inputs``) on one keep-alive connection, with the
    standard ``json`` module on both ends of the client: encode, send, read, decode."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    path = f"/v1/models/{MODEL}:predict"
    headers = {"Content-Type": "application/json"}

    def call(feeds: Feeds) -> float:
        start = time.perf_counter()
        body = json.dumps({"inputs": {k: v.tolist() for k, v in feeds.items()}})
        connection.request("POST", path, body, headers)
        response = connection.getresponse()
        payload = response.read()
        if response.status != 200:
            raise BenchError(f"REST predict answered {response.status}: {payload[:200]!r}")
        np.asarray(json.loads(payload)["outputs"], dtype=np.float32)
        return time.perf_counter() - start

    return call


def floor_timer(port: int) -> Timer:
    """``GET /v2/health/live`` on one keep-alive connection: the HTTP round trip with nothing
    to compute, the transport's floor on this machine (the feeds are ignored)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(_feeds: Feeds) -> float:
        start = time.perf_counter()
        connection.request("GET", "/v2/health/live")
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise BenchError(f"/v2/health/live answered {response.status}")
        return time.perf_counter() - start

    return call


def v2_http_timer(port: int, *, binary: bool) -> Timer:
    """Open Inference Protocol v2 over HTTP with ``tritonclient.http`` (one connection)."""
    import tritonclient.http as triton

    client = triton.InferenceServerClient(f"127.0.0.1:{port}", concurrency=1)
    outputs = [triton.InferRequestedOutput("sentence_embedding", binary_data=binary)]

    def call(feeds: Feeds) -> float:
        start = time.perf_counter()
        inputs = []
        for name, array in feeds.items():
            tensor = triton.InferInput(name, list(array.shape), "INT64")
            tensor.set_data_from_numpy(array, binary_data=binary)
            inputs.append(tensor)
        result = client.infer(MODEL, inputs, outputs=outputs)
        result.as_numpy("sentence_embedding")
        return time.perf_counter() - start

    return call


def v2_grpc_timer(port: int) -> Timer:
    """Open Inference Protocol v2 over gRPC with ``tritonclient.grpc`` (one channel)."""
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    outputs = [triton.InferRequestedOutput("sentence_embedding")]

    def call(feeds: Feeds) -> float:
        start = time.perf_counter()
        inputs = []
        for name, array in feeds.items():
            tensor = triton.InferInput(name, list(array.shape), "INT64")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        client.infer(MODEL, inputs, outputs=outputs).as_numpy("sentence_embedding")
        return time.perf_counter() - start

    return call


def alternate(
    paths: Mapping[str, Timer], inputs: Sequence[Feeds], runs: int, block: int
) -> dict[str, list[float]]:
    """Each path's latencies (s) in alternating blocks, after one untimed warm-up block.

    Each block starts after ``SETTLE_S`` of quiet and ``BLOCK_WARMUP`` untimed calls: a
    process whose ONNX Runtime workers spin (the default) keeps one of them busy for tens
    of milliseconds after its last run, and without the pause the first calls of the next
    path, in another process, would pay for it. A client calling one server does not."""
    names = list(paths)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for index in range(runs // block + 1):
        for name in names if index % 2 == 0 else names[::-1]:
            time.sleep(SETTLE_S)
            for i in range(-BLOCK_WARMUP, block):
                elapsed = paths[name](inputs[(index * block + i) % len(inputs)])
                if index > 0 and i >= 0:
                    samples[name].append(elapsed)
    return samples


def input_sets(card: ModelCard) -> dict[int, list[dict[str, np.ndarray]]]:
    sentence = load_inputs(card)
    return {int(sentence[0]["input_ids"].shape[1]): sentence, 128: paragraph_inputs()}
