"""The REST service over real HTTP on loopback: TensorFlow Serving's API with the digits models.

One server (in a thread with its own event loop) serves, for the whole module: ``digits``
versions 1 (fp32 ONNX) and 2 (int8 ONNX, the default), ``digits-lite`` (fp32 TFLite: both
runtimes behind one API) and ``sqrt`` (a model that answers NaN for negative inputs). Clients
are urllib and aiohttp's client, as a user's would be.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from prometheus_client.parser import text_string_to_metric_families

from agent.inference.backends import BackendOptions
from agent.inference.cardfile import load_card
from agent.inference.monitoring import ModelMonitor
from agent.inference.registry import ModelRegistry
from agent.inference.rest import start_rest
from edge_contract.card import ModelCard, TensorSpec, card_path_for
from tests.integration.test_registry import (
    DIGITS,
    FP32,
    INT8,
    direct_outputs,
    eval_split,
    write_sqrt_model,
)

pytestmark = pytest.mark.integration

TFLITE = DIGITS / "digits-fp32.tflite"
MAX_BODY = 4 * 1024 * 1024
Setup = Callable[[ModelRegistry], Awaitable[None]]


class ServerThread:
    """A registry, a monitor and the REST service on an event loop in a thread of its own."""

    def __init__(
        self, setup: Setup, registry_options: dict[str, Any] | None = None, **rest_options: Any
    ) -> None:
        self._setup = setup
        self._registry_options = registry_options or {}
        self._rest_options = rest_options
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.url = ""
        self.error: BaseException | None = None

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(30) or self.error is not None:
            raise AssertionError(f"the REST server did not start: {self.error!r}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        assert not self._thread.is_alive()

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        monitor = ModelMonitor()
        registry = ModelRegistry(BackendOptions(), observer=monitor, **self._registry_options)
        try:
            await self._setup(registry)
            server = await start_rest(
                registry, monitor, port=0, max_body_bytes=MAX_BODY, **self._rest_options
            )
        except BaseException as exc:
            self.error = exc
            self._ready.set()
            raise
        self.url = server.url
        self._ready.set()
        await self._stop.wait()
        await server.close()
        await registry.close()


def call(url: str, body: object = None, *, raw: bytes | None = None) -> tuple[int, Any]:
    """One HTTP request with urllib: GET without a body, POST with JSON (or raw bytes)."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, text = response.status, response.read()
            content_type = response.headers["Content-Type"]
    except urllib.error.HTTPError as error:
        status, text, content_type = error.code, error.read(), error.headers["Content-Type"]
    assert content_type.startswith("application/json"), (status, content_type, text[:200])
    return status, json.loads(text)


def assert_error(result: tuple[int, Any], status: int, *fragments: str) -> None:
    """A TensorFlow Serving error: the status, and ``{"error": message}`` naming the problem."""
    got_status, body = result
    assert got_status == status, body
    assert list(body) == ["error"]
    for fragment in fragments:
        assert fragment in body["error"]


def json_rows_stream(total_bytes: int) -> Iterator[bytes]:
    """The start of a predict body that goes on for ``total_bytes`` (1 MiB chunks)."""
    row = ("[" + ",".join(["0.5"] * 64) + "],").encode()
    chunk = row * (1024 * 1024 // len(row))
    yield b'{"instances": ['
    for _ in range(total_bytes // len(chunk)):
        yield chunk


async def post_chunked(url: str, chunks: Iterator[bytes]) -> tuple[int, Any]:
    """POST with ``Transfer-Encoding: chunked`` (no Content-Length for the server to check
    up front), written to the end whatever the server answers, then the response.

    A plain asyncio stream rather than aiohttp's client: that client stops writing when the
    answer comes early and leaves its socket closing after the loop ends (a ResourceWarning).
    """
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(
            f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        for chunk in chunks:
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        status = int((await reader.readline()).split()[1])
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers["content-length"]))
        assert headers["content-type"].startswith("application/json")
        return status, json.loads(body)
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    sqrt_path = write_sqrt_model(tmp_path_factory.mktemp("sqrt"))

    async def setup(registry: ModelRegistry) -> None:
        await registry.load(FP32)
        await registry.load(INT8, keep_others=True)
        lite = load_card(card_path_for(TFLITE)).model_copy(update={"name": "digits-lite"})
        await registry.load(TFLITE, card=lite)
        await registry.load(sqrt_path)

    with ServerThread(setup) as running:
        yield running


def test_status_lists_versions_like_tf_serving(server: ServerThread) -> None:
    status, body = call(f"{server.url}/v1/models/digits")
    assert status == 200
    ok = {"error_code": "OK", "error_message": ""}
    assert body == {
        "model_version_status": [
            {"version": "2", "state": "AVAILABLE", "status": ok},
            {"version": "1", "state": "AVAILABLE", "status": ok},
        ]
    }
    status, body = call(f"{server.url}/v1/models/digits/versions/1")
    assert (status, body) == (200, {"model_version_status": [body["model_version_status"][0]]})
    assert body["model_version_status"][0]["version"] == "1"
    assert_error(call(f"{server.url}/v1/models/digits/versions/9"), 404, "'9'")
    assert_error(call(f"{server.url}/v1/models/letters"), 404, "'letters'")


def test_metadata_is_a_signature_def_built_from_the_card(server: ServerThread) -> None:
    status, body = call(f"{server.url}/v1/models/digits/versions/1/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": "digits", "signature_name": "", "version": "1"}
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    assert signature["inputs"] == {
        "pixels": {
            "dtype": "DT_FLOAT",
            "tensor_shape": {
                "dim": [{"size": "-1", "name": ""}, {"size": "64", "name": ""}],
                "unknown_rank": False,
            },
            "name": "pixels",
        }
    }
    assert list(signature["outputs"]) == ["probabilities"]
    assert signature["outputs"]["probabilities"]["tensor_shape"]["dim"][1]["size"] == "10"
    _, default = call(f"{server.url}/v1/models/digits/metadata")
    assert default["model_spec"]["version"] == "2"


def test_row_and_columnar_predict_give_the_backends_answer(server: ServerThread) -> None:
    rows, labels = eval_split()
    batch = rows[:120]
    expected = direct_outputs(INT8, batch)  # version 2 is the default
    status, by_row = call(f"{server.url}/v1/models/digits:predict", {"instances": batch.tolist()})
    assert status == 200
    status, by_column = call(
        f"{server.url}/v1/models/digits:predict",
        {"signature_name": "serving_default", "inputs": {"pixels": batch.tolist()}},
    )
    assert status == 200
    np.testing.assert_allclose(by_row["predictions"], expected, atol=1e-6)
    np.testing.assert_allclose(by_column["outputs"], expected, atol=1e-6)
    accuracy = np.mean(np.argmax(by_row["predictions"], axis=1) == labels[:120])
    assert accuracy > 0.9
    ids = by_row["prediction_ids"] + by_column["prediction_ids"]
    assert len(ids) == len(set(ids)) == 240
    assert by_row["model_spec"] == {
        "name": "digits",
        "version": "2",
        "signature_name": "serving_default",
    }


def test_versioned_predict_reaches_each_loaded_version(server: ServerThread) -> None:
    rows, _ = eval_split()
    batch = rows[:30]
    answers = {}
    for version, path in (("1", FP32), ("2", INT8)):
        url = f"{server.url}/v1/models/digits/versions/{version}:predict"
        status, body = call(url, {"instances": batch.tolist()})
        assert status == 200
        assert body["model_spec"]["version"] == version
        np.testing.assert_allclose(body["predictions"], direct_outputs(path, batch), atol=1e-6)
        answers[version] = np.asarray(body["predictions"])
    assert not np.allclose(answers["1"], answers["2"])


def test_a_tflite_model_is_served_behind_the_same_api(server: ServerThread) -> None:
    rows, labels = eval_split()
    status, body = call(f"{server.url}/v1/models/digits-lite:predict", {"instances": rows.tolist()})
    assert status == 200
    np.testing.assert_allclose(body["predictions"], direct_outputs(TFLITE, rows), atol=1e-6)
    assert np.mean(np.argmax(body["predictions"], axis=1) == labels) > 0.9
    _, metadata = call(f"{server.url}/v1/models/digits-lite/metadata")
    assert metadata["model_spec"]["name"] == "digits-lite"


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ({"instances": [[0.5] * 63]}, ("shape [1, 63]", "[-1, 64]")),
        ({"instances": [["a"] * 64]}, ("'pixels'", "dtype")),
        ({"instances": [[0.5] * 64, [0.5] * 10]}, ("'pixels'", "rectangular")),
        ({"inputs": {"image": [[0.5] * 64]}}, ("'image'",)),
        ({"instances": [[0.5] * 64], "inputs": [[0.5] * 64]}, ("instances", "inputs")),
        ({"signature_name": "classify", "instances": [[0.5] * 64]}, ("'classify'",)),
        ({"instances": [[float("nan")] * 64]}, ("NaN",)),
        ({"instances": [[0.5] * 63 + [1e39]]}, ("'pixels'", "1e+39", "float32", "[0, 63]")),
        ({"instances": [[1e308] + [0.5] * 63]}, ("'pixels'", "1e+308", "float32", "[0, 0]")),
        ({"inputs": {"pixels": [[0.5] * 64, [-1e39] * 64]}}, ("'pixels'", "-1e+39", "[1, 0]")),
        ({"instances": [[float("-inf")] + [0.5] * 63]}, ("-Infinity", "not a JSON number")),
        ({"instances": []}, ("non-empty",)),
        ([[0.5] * 64], ("JSON object",)),
    ],
)
def test_bad_input_is_a_400_naming_the_problem(
    server: ServerThread, body: object, fragments: tuple[str, ...]
) -> None:
    assert_error(call(f"{server.url}/v1/models/digits:predict", body), 400, *fragments)


def test_bad_json_is_a_400_and_unknown_routes_a_404(server: ServerThread) -> None:
    url = f"{server.url}/v1/models/digits:predict"
    assert_error(call(url, raw=b'{"instances": [[0.1, '), 400, "not valid JSON")
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        body = b'{"instances": [[%s' % literal + b", 0.5" * 63 + b"]]}"
        assert_error(call(url, raw=body), 400, "not valid JSON", literal.decode())
    # A number beyond float64 parses as Infinity: refused as such, for TFLite too.
    lite = f"{server.url}/v1/models/digits-lite:predict"
    assert_error(call(lite, raw=b'{"instances": [[1e400' + b", 0" * 63 + b"]]}"), 400, "NaN")
    assert_error(call(f"{server.url}/v1/models/letters:predict", {"instances": [[0]]}), 404)
    url = f"{server.url}/v1/models/digits/versions/3:predict"
    assert_error(call(url, {"instances": [[0.5] * 64]}), 404, "'3'")
    assert_error(call(f"{server.url}/v2/whatever"), 404, "Malformed request: GET /v2/whatever")


def test_nan_output_is_a_500_and_the_service_keeps_serving(server: ServerThread) -> None:
    url = f"{server.url}/v1/models/sqrt:predict"
    assert_error(call(url, {"instances": [[1, -4, 9, -16]]}), 500, "NaN/Inf")
    status, body = call(url, {"instances": [[1, 4, 9, 16]]})
    assert (status, body["predictions"]) == (200, [[1.0, 2.0, 3.0, 4.0]])


def test_oversized_bodies_get_413_and_the_server_keeps_serving(server: ServerThread) -> None:
    url = f"{server.url}/v1/models/digits:predict"
    assert_error(call(url, raw=b" " * (MAX_BODY + 1)), 413, str(MAX_BODY))

    status, error = asyncio.run(post_chunked(url, json_rows_stream(100 * 1024 * 1024)))
    assert status == 413
    assert str(MAX_BODY) in error["error"]
    status, body = call(url, {"instances": [[0.5] * 64]})
    assert status == 200
    assert len(body["predictions"]) == 1


def test_feedback_makes_accuracy_visible_in_metrics(server: ServerThread) -> None:
    rows, labels = eval_split()
    batch, truth = rows[200:300], labels[200:300]
    url = f"{server.url}/v1/models/digits/versions/1:predict"
    status, body = call(url, {"instances": batch.tolist()})
    assert status == 200
    predicted = np.argmax(body["predictions"], axis=1)
    for prediction_id, label in zip(body["prediction_ids"], truth, strict=True):
        feedback = {"prediction_id": prediction_id, "label": int(label)}
        assert call(f"{server.url}/v1/models/digits:feedback", feedback)[0] == 200
    feedback_url = f"{server.url}/v1/models/digits:feedback"
    again = {"prediction_id": body["prediction_ids"][0], "label": 1}
    assert_error(call(feedback_url, again), 404, body["prediction_ids"][0])  # counted once
    assert_error(call(feedback_url, {"prediction_id": "nope", "label": 1}), 404, "'nope'")
    assert_error(call(feedback_url, {"prediction_id": "x", "label": 1.5}), 400, "'label'")
    assert_error(call(feedback_url, {"label": 1}), 400, "'prediction_id'")

    with urllib.request.urlopen(f"{server.url}/metrics", timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    samples = {
        (sample.name, sample.labels.get("version")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.labels.get("model") == "digits"
    }
    assert samples[("edge_model_feedback_total", "1")] == 100
    assert samples[("edge_model_accuracy", "1")] == pytest.approx(np.mean(predicted == truth))


def test_healthz_lists_the_default_versions(server: ServerThread) -> None:
    status, body = call(f"{server.url}/healthz")
    assert status == 200
    assert body == {
        "status": "ok",
        "models": {"digits": "2", "digits-lite": "1", "sqrt": "1"},
    }


async def _load_fp32(registry: ModelRegistry) -> None:
    await registry.load(FP32)


def test_unix_socket_mode(tmp_path: Path) -> None:
    socket_path = tmp_path / "api.sock"
    rows, _ = eval_split()

    async def over_the_socket() -> tuple[int, Any]:
        connector = aiohttp.UnixConnector(path=str(socket_path))
        async with aiohttp.ClientSession(connector=connector) as session:
            url = "http://localhost/v1/models/digits:predict"
            async with session.post(url, json={"instances": rows[:5].tolist()}) as response:
                return response.status, await response.json()

    with ServerThread(_load_fp32, unix_path=socket_path) as running:
        assert running.url.startswith("http+unix://")
        assert socket_path.is_socket()
        status, body = asyncio.run(over_the_socket())
    assert status == 200
    np.testing.assert_allclose(body["predictions"], direct_outputs(FP32, rows[:5]), atol=1e-6)
    assert not socket_path.exists()  # removed on close


def write_slow_model(directory: Path, layers: int = 4, width: int = 1024) -> Path:
    """A real ONNX model that takes tens of milliseconds for a batch of 1,024 rows: a stack of
    dense layers (random weights), so requests overlap and the queue limit is reached honestly."""
    rng = np.random.default_rng(7)
    nodes, inits, previous = [], [], "x"
    for layer in range(layers):
        rows = 64 if layer == 0 else width
        weight = (rng.standard_normal((rows, width)) / np.sqrt(rows)).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, name=f"w{layer}"))
        nodes.append(helper.make_node("MatMul", [previous, f"w{layer}"], [f"m{layer}"]))
        nodes.append(helper.make_node("Relu", [f"m{layer}"], [f"h{layer}"]))
        previous = f"h{layer}"
    # A narrow head keeps the responses small: the time is in the layers, not in JSON.
    head = (rng.standard_normal((width, 8)) / np.sqrt(width)).astype(np.float32)
    inits.append(numpy_helper.from_array(head, name="head"))
    nodes.append(helper.make_node("MatMul", [previous, "head"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = directory / "slow.onnx"
    onnx.save(model, str(path))
    card = ModelCard(
        name="slow",
        version="1",
        runtime="onnx",
        task="regression",
        inputs=(TensorSpec(name="x", dtype="float32", shape=(-1, 64)),),
        outputs=(TensorSpec(name="y", dtype="float32", shape=(-1, 8)),),
    )
    card_path_for(path).write_text(card.model_dump_json())
    return path


def test_a_full_queue_is_a_503_and_the_service_recovers(tmp_path: Path) -> None:
    """With room for one request, concurrent ones are refused at once with 503, not queued."""
    slow = write_slow_model(tmp_path)
    batch = np.random.default_rng(1).random((1024, 64)).round(3).tolist()
    url_of: dict[str, str] = {}

    async def setup(registry: ModelRegistry) -> None:
        await registry.load(slow)

    with ServerThread(setup, {"workers": 1, "max_queue": 1}) as running:
        url_of["predict"] = f"{running.url}/v1/models/slow:predict"
        with ThreadPoolExecutor(8) as pool:
            results = list(
                pool.map(lambda _: call(url_of["predict"], {"instances": batch}), range(8))
            )
        after = call(url_of["predict"], {"instances": batch[:1]})
    busy = [r for r in results if r[0] == 503]
    answered = [r for r in results if r[0] == 200]
    assert len(busy) + len(answered) == len(results), [r[0] for r in results]
    assert busy and answered, [r[0] for r in results]
    assert_error(busy[0], 503, "slow", "queued")
    assert after[0] == 200 and len(after[1]["predictions"]) == 1
