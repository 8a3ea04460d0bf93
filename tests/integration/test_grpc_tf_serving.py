"""TensorFlow Serving's own gRPC client (tensorflow-serving-api) against ``edge-agent serve
--grpc-port``: PredictionService (Predict, GetModelMetadata) and ModelService
(GetModelStatus), served without TensorFlow.

Runs in its own environment (tensorflow-cpu and tensorflow-serving-api: `make test` builds
.venv-tfserving and runs this file there with --noconftest, as it does the tflite-runtime
check), so it imports neither the agent nor the project's test rigs: the server is a real
``edge-agent serve`` process of the project's environment (``EDGE_AGENT_PYTHON``, default
.venv/bin/python), serving ``digits`` versions 1 (fp32) and 2 (int8, the default). Answers
are checked against each model card's golden output.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "models" / "digits"
FP32, INT8 = DIGITS / "digits-fp32.onnx", DIGITS / "digits-int8.onnx"
PYTHON = os.environ.get("EDGE_AGENT_PYTHON", str(REPO / ".venv" / "bin" / "python"))
START_TIMEOUT_S = 60


class Served:
    """The addresses of a running ``edge-agent serve``."""

    def __init__(self, grpc_address: str, url: str) -> None:
        self.grpc_address = grpc_address
        self.url = url


def _listening(log: Path, process: subprocess.Popen[bytes]) -> dict[str, Any] | None:
    for line in log.read_text().splitlines():
        if line.startswith("{") and (entry := json.loads(line)).get("event") == "serve.listening":
            return dict(entry)
    assert process.poll() is None, log.read_text()
    return None


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    argv = [PYTHON, "-m", "agent", "serve", "--model", f"digits={FP32}"]
    argv += ["--model", f"digits={INT8}", "--port", "0", "--grpc-port", "0"]
    with log.open("wb") as out:
        process = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while (entry := _listening(log, process)) is None:
            assert time.monotonic() < deadline, f"no serve.listening line:\n{log.read_text()}"
            time.sleep(0.1)
        yield Served(entry["grpc"], entry["url"])
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, log.read_text()


@pytest.fixture(scope="module")
def channel(served: Served) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(served.grpc_address) as opened:
        yield opened


def golden(path: Path) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], float]:
    card = json.loads(Path(f"{path}.card.json").read_text())["golden"]
    pixels = np.asarray(card["inputs"]["pixels"], dtype=np.float32)
    return pixels, np.asarray(card["outputs"]["probabilities"], np.float32), card["atol"]


def predict_request(pixels: np.ndarray[Any, Any], version: int | None = None) -> Any:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits"
    request.model_spec.signature_name = "serving_default"
    if version is not None:
        request.model_spec.version.value = version
    request.inputs["pixels"].CopyFrom(tf.make_tensor_proto(pixels))
    return request


def test_predict_on_each_version_gives_the_golden_output(channel: grpc.Channel) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    for path, version in ((FP32, 1), (INT8, 2), (INT8, None)):
        pixels, expected, atol = golden(path)
        response = stub.Predict(predict_request(pixels, version), timeout=30)
        answer = tf.make_ndarray(response.outputs["probabilities"])
        np.testing.assert_allclose(answer, expected, atol=atol)
        assert response.model_spec.name == "digits"
        assert response.model_spec.version.value == (version or 2)
    # The typed form (float_val) as well as tensor_content.
    pixels, expected, atol = golden(FP32)
    request = predict_request(pixels, 1)
    tensor = request.inputs["pixels"]
    tensor.ClearField("tensor_content")
    tensor.float_val.extend(pixels.ravel().tolist())
    answer = tf.make_ndarray(stub.Predict(request, timeout=30).outputs["probabilities"])
    np.testing.assert_allclose(answer, expected, atol=atol)


def test_metadata_and_status_as_tf_serving_reports_them(channel: grpc.Channel) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "digits"
    response = stub.GetModelMetadata(request, timeout=30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    signature = signatures.signature_def["serving_default"]
    assert signature.method_name == "tensorflow/serving/predict"
    pixels = signature.inputs["pixels"]
    assert pixels.dtype == tf.float32.as_datatype_enum
    assert [dim.size for dim in pixels.tensor_shape.dim] == [-1, 64]
    assert [dim.size for dim in signature.outputs["probabilities"].tensor_shape.dim] == [-1, 10]

    status_stub = model_service_pb2_grpc.ModelServiceStub(channel)
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "digits"
    statuses = status_stub.GetModelStatus(status_request, timeout=30).model_version_status
    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert [(s.version, s.state, s.status.error_code) for s in statuses] == [
        (2, available, 0),
        (1, available, 0),
    ]


def test_bad_calls_get_their_status_code_and_the_server_keeps_serving(
    served: Served, channel: grpc.Channel
) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    pixels, expected, atol = golden(INT8)
    unknown = predict_request(pixels)
    unknown.model_spec.name = "nope"
    strings = predict_request(pixels)
    strings.inputs["pixels"].CopyFrom(tf.make_tensor_proto([b"seven"]))
    short = predict_request(pixels)
    short.inputs["pixels"].tensor_content = short.inputs["pixels"].tensor_content[:-4]
    cases = [
        (predict_request(pixels[:, :10]), grpc.StatusCode.INVALID_ARGUMENT, "shape"),
        (strings, grpc.StatusCode.INVALID_ARGUMENT, "DT_STRING"),
        (short, grpc.StatusCode.INVALID_ARGUMENT, "bytes of data"),
        (predict_request(np.full_like(pixels, np.inf)), grpc.StatusCode.INVALID_ARGUMENT, "NaN"),
        (unknown, grpc.StatusCode.NOT_FOUND, "no model 'nope'"),
        (predict_request(pixels, 9), grpc.StatusCode.NOT_FOUND, "version '9'"),
    ]
    for request, code, fragment in cases:
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(request, timeout=30)
        assert caught.value.code() == code, caught.value
        assert fragment in caught.value.details(), caught.value
    with pytest.raises(grpc.RpcError) as caught:
        stub.Classify(classification_pb2.ClassificationRequest(), timeout=30)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    raw = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
    with pytest.raises(grpc.RpcError) as caught:
        raw(b"\x0a\xff\xff\xff\xff\x0f", timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as caught:  # over serve's 16 MiB message limit
        raw(b"\x00" * (17 * 1024 * 1024), timeout=30)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    answer = tf.make_ndarray(
        stub.Predict(predict_request(pixels), timeout=30).outputs["probabilities"]
    )
    np.testing.assert_allclose(answer, expected, atol=atol)
    with urllib.request.urlopen(f"{served.url}/metrics", timeout=30) as response:
        metrics = response.read().decode()
    counted = {
        line.split("{", 1)[1].split("}", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("edge_grpc_errors_total{")
        and 'service="tensorflow.serving.PredictionService"' in line
    }
    service = 'service="tensorflow.serving.PredictionService"'
    assert counted[f'code="INVALID_ARGUMENT",reason="bad_input",{service}'] == 4
    assert counted[f'code="NOT_FOUND",reason="unknown_model",{service}'] == 2
    assert counted[f'code="INVALID_ARGUMENT",reason="bad_message",{service}'] == 1
