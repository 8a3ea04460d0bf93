"""The gRPC front end over real gRPC on loopback, driven by tritonclient[grpc]: the Open
Inference Protocol v2 service (``inference.GRPCInferenceService``) with the digits models.

One server for the module (a registry and the gRPC service on an event loop in a thread of
its own): ``digits`` versions 1 (fp32 ONNX) and 2 (int8 ONNX, the default). Answers are
checked against each model card's golden output. Bad calls (wrong shape, datatype, unknown
model, NaN, bytes that are no message, a message over the size limit) get their status code,
are counted by reason, and the server keeps serving. Hot swap under load through gRPC fails
no call. TensorFlow Serving's gRPC API is tested from TensorFlow's own client in
tests/integration/test_grpc_tf_serving.py (a separate environment: `make test`).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from agent.inference.backends import BackendOptions
from agent.inference.cardfile import load_card
from agent.inference.grpc_server import GrpcServer, start_grpc
from agent.inference.metrics import GrpcMetrics
from agent.inference.monitoring import ModelMonitor
from agent.inference.registry import ModelRegistry
from edge_contract.card import card_path_for
from tests.integration.harness import wait_until
from tests.integration.test_registry import FP32, INT8, eval_split
from tests.integration.test_rest_api import write_slow_model

pytestmark = pytest.mark.integration

V2 = "inference.GRPCInferenceService"
MAX_MESSAGE = 1024 * 1024
Setup = Callable[[ModelRegistry], Awaitable[None]]


class GrpcThread:
    """A registry and the gRPC service on an event loop in a thread of its own."""

    def __init__(
        self, setup: Setup, registry_options: dict[str, Any] | None = None, **grpc_options: Any
    ) -> None:
        self._setup = setup
        self._registry_options = registry_options or {}
        self._grpc_options = grpc_options
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.registry: ModelRegistry | None = None
        self.server: GrpcServer | None = None
        self.metrics = GrpcMetrics()
        self.error: BaseException | None = None

    @property
    def address(self) -> str:
        assert self.server is not None
        return self.server.address

    def __enter__(self) -> GrpcThread:
        self._thread.start()
        if not self._ready.wait(30) or self.error is not None:
            raise AssertionError(f"the gRPC server did not start: {self.error!r}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self.loop is not None and self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        assert not self._thread.is_alive()

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coroutine`` on the server's loop; its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)

    async def _main(self) -> None:
        self.loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self.registry = ModelRegistry(
            BackendOptions(), observer=ModelMonitor(), **self._registry_options
        )
        try:
            await self._setup(self.registry)
            self.server = await start_grpc(
                self.registry,
                port=0,
                max_message_bytes=MAX_MESSAGE,
                metrics=self.metrics,
                **self._grpc_options,
            )
        except BaseException as exc:
            self.error = exc
            self._ready.set()
            raise
        self._ready.set()
        await self._stop.wait()
        await self.server.close()
        await self.registry.close()


@pytest.fixture(scope="module")
def server() -> Iterator[GrpcThread]:
    async def setup(registry: ModelRegistry) -> None:
        await registry.load(FP32)
        await registry.load(INT8, keep_others=True)

    with GrpcThread(setup) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: GrpcThread) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(server.address) as connected:
        yield connected


def golden(path: Any) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], float]:
    """The card's golden input, output and tolerance."""
    card = load_card(card_path_for(path))
    assert card.golden is not None
    pixels = np.asarray(card.golden.inputs["pixels"], dtype=np.float32)
    expected = np.asarray(card.golden.outputs["probabilities"], dtype=np.float32)
    return pixels, expected, card.golden.atol


def infer_input(array: np.ndarray[Any, Any], datatype: str = "FP32") -> triton.InferInput:
    tensor = triton.InferInput("pixels", list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def refusal(call: Callable[[], object]) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def test_health_and_metadata_as_triton_reports_them(
    client: triton.InferenceServerClient,
) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("digits")
    assert client.is_model_ready("digits", "1")
    assert not client.is_model_ready("digits", "7")
    assert not client.is_model_ready("nope")
    assert client.get_server_metadata().name == "edge-agent"
    metadata = client.get_model_metadata("digits", as_json=True)
    assert sorted(metadata["versions"]) == ["1", "2"]
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": ["-1", "64"]}]
    assert metadata["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": ["-1", "10"]}
    ]


def test_raw_infer_on_each_version_gives_the_golden_output(
    client: triton.InferenceServerClient,
) -> None:
    for path, version in ((FP32, "1"), (INT8, "2")):
        pixels, expected, atol = golden(path)
        result = client.infer(
            "digits",
            [infer_input(pixels)],
            model_version=version,
            outputs=[triton.InferRequestedOutput("probabilities")],
            request_id="golden",
        )
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=atol)
        response = result.get_response()
        assert (response.model_version, response.id) == (version, "golden")
    # No version: the default, the latest loaded.
    pixels, expected, atol = golden(INT8)
    answer = client.infer("digits", [infer_input(pixels)]).as_numpy("probabilities")
    np.testing.assert_allclose(answer, expected, atol=atol)


def test_typed_contents_give_the_same_answer_as_raw(server: GrpcThread) -> None:
    """tritonclient sends raw contents; its generated stub sends the typed form."""
    rows, _ = eval_split()
    batch = rows[:16]
    pixels, expected, atol = golden(FP32)
    with grpc.insecure_channel(server.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="digits", model_version="1")
        tensor = request.inputs.add(name="pixels", datatype="FP32", shape=list(pixels.shape))
        tensor.contents.fp32_contents.extend(pixels.ravel().tolist())
        response = stub.ModelInfer(request, timeout=30)
    (output,) = response.outputs
    typed = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(list(output.shape))
    np.testing.assert_allclose(typed, expected, atol=atol)
    with triton.InferenceServerClient(server.address) as client:
        raw = client.infer("digits", [infer_input(batch)], model_version="1")
        with grpc.insecure_channel(server.address) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            request = service_pb2.ModelInferRequest(model_name="digits", model_version="1")
            tensor = request.inputs.add(name="pixels", datatype="FP64", shape=list(batch.shape))
            tensor.contents.fp64_contents.extend(batch.astype(np.float64).ravel().tolist())
            response = stub.ModelInfer(request, timeout=30)
    typed = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(16, 10)
    np.testing.assert_array_equal(typed, raw.as_numpy("probabilities"))
    assert len(response.parameters["prediction_ids"].string_param.split(",")) == 16


def test_bad_calls_get_their_status_code_are_counted_and_the_server_keeps_serving(
    server: GrpcThread, client: triton.InferenceServerClient
) -> None:
    pixels, expected, atol = golden(INT8)
    before = dict(server.metrics.errors)
    cases: list[tuple[Callable[[], object], str, str]] = [
        (
            lambda: client.infer("digits", [infer_input(pixels[:, :10])]),
            "INVALID_ARGUMENT",
            "shape",
        ),
        (
            lambda: client.infer("digits", [infer_input(pixels > 0.5, "BOOL")]),
            "INVALID_ARGUMENT",
            "dtype bool",
        ),
        (lambda: client.infer("nope", [infer_input(pixels)]), "NOT_FOUND", "no model 'nope'"),
        (
            lambda: client.infer("digits", [infer_input(pixels)], model_version="7"),
            "NOT_FOUND",
            "version '7'",
        ),
        (
            lambda: client.infer("digits", [infer_input(np.full_like(pixels, np.nan))]),
            "INVALID_ARGUMENT",
            "NaN",
        ),
        (lambda: client.get_model_metadata("nope"), "NOT_FOUND", "nope"),
    ]
    for call, code, fragment in cases:
        error = refusal(call)
        assert error.status() == f"StatusCode.{code}", error
        assert fragment in error.message(), error
    with grpc.insecure_channel(server.address) as channel:
        garbage = channel.unary_unary(f"/{V2}/ModelInfer")
        with pytest.raises(grpc.RpcError) as caught:
            garbage(b"\xff\xff\xff\xff not a message", timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        oversized = channel.unary_unary(f"/{V2}/ModelInfer")
        with pytest.raises(grpc.RpcError) as caught:
            oversized(b"\x0a" + b"\x00" * (MAX_MESSAGE + 1), timeout=30)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    answer = client.infer("digits", [infer_input(pixels)]).as_numpy("probabilities")
    np.testing.assert_allclose(answer, expected, atol=atol)
    counted = {
        (reason, code): server.metrics.errors[(V2, reason, code)]
        - before.get((V2, reason, code), 0)
        for reason, code in (
            ("bad_input", "INVALID_ARGUMENT"),
            ("unknown_model", "NOT_FOUND"),
            ("bad_message", "INVALID_ARGUMENT"),
        )
    }
    assert counted == {
        ("bad_input", "INVALID_ARGUMENT"): 3,
        ("unknown_model", "NOT_FOUND"): 3,
        ("bad_message", "INVALID_ARGUMENT"): 1,
    }
    assert b'edge_grpc_errors_total{code="NOT_FOUND"' in server.metrics.render()


def test_a_message_nested_past_protobufs_limit_is_a_counted_bad_message(
    server: GrpcThread, client: triton.InferenceServerClient
) -> None:
    # Unknown field 99 as groups nested 200 deep: protobuf's parser stops at its recursion
    # limit (100) with a DecodeError instead of recursing on.
    start, end = (
        bytes([((99 << 3) | wire) & 0x7F | 0x80, ((99 << 3) | wire) >> 7]) for wire in (3, 4)
    )
    before = server.metrics.errors[(V2, "bad_message", "INVALID_ARGUMENT")]
    with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(f"/{V2}/ModelInfer")(start * 200 + end * 200, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert server.metrics.errors[(V2, "bad_message", "INVALID_ARGUMENT")] == before + 1
    pixels, expected, atol = golden(INT8)
    answer = client.infer("digits", [infer_input(pixels)]).as_numpy("probabilities")
    np.testing.assert_allclose(answer, expected, atol=atol)


def test_hot_swap_under_grpc_load_fails_no_call() -> None:
    rows, _ = eval_split()
    batch = rows[:32]

    async def setup(registry: ModelRegistry) -> None:
        await registry.load(FP32)

    with GrpcThread(setup) as running:
        assert running.registry is not None
        registry = running.registry
        swapped = threading.Event()
        deadline = time.monotonic() + 60
        # The swap waits until every client has had an answer (from v1): on a loaded
        # machine the clients may otherwise only start once v2 serves.
        answered = threading.Semaphore(0)

        def hammer() -> tuple[list[str], list[BaseException]]:
            versions: list[str] = []
            failures: list[BaseException] = []
            with triton.InferenceServerClient(running.address) as client:
                # Until the swap is done and a few calls more, bounded in time.
                after = 0
                while after < 5 and time.monotonic() < deadline:
                    try:
                        result = client.infer("digits", [infer_input(batch)])
                        versions.append(result.get_response().model_version)
                    except InferenceServerException as exc:
                        failures.append(exc)
                    if len(versions) + len(failures) == 1:
                        answered.release()
                    after += swapped.is_set()
            return versions, failures

        with ThreadPoolExecutor(4) as pool:
            clients = [pool.submit(hammer) for _ in range(4)]
            for _ in clients:
                assert answered.acquire(timeout=30), "a client got no answer before the swap"
            running.run(registry.load(INT8))
            swapped.set()
            results = [future.result(90) for future in clients]
    versions = [version for got, _ in results for version in got]
    assert [failure for _, failed in results for failure in failed] == []
    assert set(versions) == {"1", "2"}
    # Each client's last calls started after the swap: the new version answered them.
    assert all(got[-4:] == ["2"] * 4 for got, _ in results)


def test_a_full_queue_is_unavailable_and_the_service_recovers(tmp_path: Path) -> None:
    """With room for one request, concurrent calls are refused at once with UNAVAILABLE."""
    slow = write_slow_model(tmp_path)
    batch = np.random.default_rng(1).random((1024, 64), dtype=np.float32)

    async def setup(registry: ModelRegistry) -> None:
        await registry.load(slow)

    # The 8 clients call at once (each set up first), so the calls overlap however slowly
    # the threads start on a loaded machine.
    together = threading.Barrier(8)

    def call(rows: np.ndarray[Any, Any], barrier: threading.Barrier | None = None) -> str:
        with triton.InferenceServerClient(running.address) as client:
            tensor = triton.InferInput("x", list(rows.shape), "FP32")
            tensor.set_data_from_numpy(rows)
            if barrier is not None:
                barrier.wait(timeout=30)
            try:
                client.infer("slow", [tensor])
            except InferenceServerException as exc:
                return f"{exc.status()}: {'queued' in exc.message()}"
            return "OK"

    with GrpcThread(setup, {"workers": 1, "max_queue": 1}) as running:
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: call(batch, together), range(8)))
        after = call(batch[:1])
        busy = running.metrics.errors[(V2, "busy", "UNAVAILABLE")]
    assert set(codes) == {"OK", "StatusCode.UNAVAILABLE: True"}, codes
    assert busy == codes.count("StatusCode.UNAVAILABLE: True")
    assert after == "OK"


def counted(metrics: GrpcMetrics) -> dict[tuple[str, str, str], float]:
    """``edge_grpc_errors_total`` as ``/metrics`` shows it, by (service, reason, code)."""
    return {
        (sample.labels["service"], sample.labels["reason"], sample.labels["code"]): sample.value
        for family in text_string_to_metric_families(metrics.render().decode())
        if family.name == "edge_grpc_errors"
        for sample in family.samples
        if sample.name == "edge_grpc_errors_total"
    }


def test_unknown_methods_and_oversized_messages_are_refused_and_counted(
    server: GrpcThread, client: triton.InferenceServerClient
) -> None:
    """What gRPC would refuse on its own is refused by the server first, and counted."""
    before = counted(server.metrics)
    unread = server.metrics.unread[V2]
    with grpc.insecure_channel(server.address) as channel:
        for method in (f"/{V2}/NoSuchMethod", "/no.such.Service/Call"):
            with pytest.raises(grpc.RpcError) as caught:
                channel.unary_unary(method)(b"", timeout=30)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED, method
        infer = channel.unary_unary(f"/{V2}/ModelInfer")
        with pytest.raises(grpc.RpcError) as caught:
            infer(b"\x0a" + b"\x00" * MAX_MESSAGE, timeout=30)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "over the limit" in str(caught.value.details())
        # Beyond gRPC's own (hard) limit its C core refuses the message unread by Python: the
        # call shows only as one that ended before its message reached a handler.
        with pytest.raises(grpc.RpcError) as caught:
            infer(b"\x0a" + b"\x00" * (2 * MAX_MESSAGE), timeout=30)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        wait_until(lambda: server.metrics.unread[V2] == unread + 1, 30, "the unread call")
    pixels, expected, atol = golden(INT8)
    answer = client.infer("digits", [infer_input(pixels)]).as_numpy("probabilities")
    np.testing.assert_allclose(answer, expected, atol=atol)
    after = counted(server.metrics)
    rose = {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key)}
    assert rose == {
        (V2, "unknown_method", "UNIMPLEMENTED"): 1,
        ("other", "unknown_method", "UNIMPLEMENTED"): 1,
        (V2, "too_large", "RESOURCE_EXHAUSTED"): 1,
    }


def test_calls_over_the_concurrency_limit_are_refused_and_counted() -> None:
    """With room for one call in progress, a second is refused at once and counted; the one
    in progress finishes, and the server serves the next."""

    async def nothing(_: ModelRegistry) -> None:
        return None

    live = f"/{V2}/ServerLive"
    with GrpcThread(nothing, max_concurrent_rpcs=1) as running:
        assert running.server is not None
        gate = running.server.gate
        with grpc.insecure_channel(running.address) as channel:
            # A call in progress for as long as the test wants: its message is held back.
            held: queue.Queue[bytes | None] = queue.Queue()
            pending = channel.stream_unary(live).future(iter(held.get, None), timeout=30)
            wait_until(lambda: gate.in_progress == 1, 30, "the held call is in progress")
            with pytest.raises(grpc.RpcError) as caught:
                channel.unary_unary(live)(b"", timeout=30)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "in progress" in str(caught.value.details())
            held.put(b"")  # an empty ServerLiveRequest
            held.put(None)
            assert service_pb2.ServerLiveResponse.FromString(pending.result(30)).live
            wait_until(lambda: gate.in_progress == 0, 30, "the held call ended")
            answer = channel.unary_unary(live)(b"", timeout=30)
            assert service_pb2.ServerLiveResponse.FromString(answer).live
        assert counted(running.metrics)[(V2, "too_many_calls", "RESOURCE_EXHAUSTED")] == 1
        assert running.metrics.unread[V2] == 0  # the held call's message did arrive
