"""The Open Inference Protocol (v2) over real HTTP, with Triton's own client.

One REST service for the module (the TF Serving tests' ``ServerThread``) serves ``digits``
versions 1 (fp32 ONNX) and 2 (int8 ONNX, the default). The happy path goes through
``tritonclient.http`` (JSON tensors and binary tensors both ways); the hostile requests are
hand-written bytes, each followed by a good request to show the service lives.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from agent.inference.cardfile import load_card
from agent.inference.registry import ModelRegistry
from edge_contract.card import card_path_for
from tests.integration.test_registry import FP32, INT8, direct_outputs, eval_split
from tests.integration.test_rest_api import MAX_BODY, ServerThread, call

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    async def setup(registry: ModelRegistry) -> None:
        await registry.load(FP32)
        await registry.load(INT8, keep_others=True)

    with ServerThread(setup) as running:
        yield running


@pytest.fixture
def client(server: ServerThread) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    yield client
    client.close()


def infer(
    client: triton.InferenceServerClient,
    rows: np.ndarray[Any, Any],
    *,
    binary: bool,
    version: str = "",
) -> triton.InferResult:
    pixels = triton.InferInput("pixels", list(rows.shape), "FP32")
    pixels.set_data_from_numpy(rows, binary_data=binary)
    wanted = triton.InferRequestedOutput("probabilities", binary_data=binary)
    return client.infer(
        "digits", [pixels], model_version=version, outputs=[wanted], request_id="req-7"
    )


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_health_and_metadata_through_the_triton_client(
    client: triton.InferenceServerClient,
) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    assert client.is_model_ready("digits")
    assert client.is_model_ready("digits", "1")
    assert not client.is_model_ready("digits", "9")
    assert not client.is_model_ready("letters")
    metadata = client.get_model_metadata("digits", "1")
    assert metadata == {
        "name": "digits",
        "versions": ["2", "1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
    }
    with pytest.raises(InferenceServerException, match="no model 'letters'") as raised:
        client.get_model_metadata("letters")
    assert raised.value.status() == "404"


def test_json_and_binary_tensors_give_the_golden_output(
    server: ServerThread, client: triton.InferenceServerClient
) -> None:
    card = load_card(card_path_for(FP32))
    golden = np.asarray(card.golden.inputs["pixels"], dtype=np.float32)
    expected = np.asarray(card.golden.outputs["probabilities"], dtype=np.float32)
    for binary in (False, True):
        result = infer(client, golden, binary=binary, version="1")
        np.testing.assert_allclose(
            result.as_numpy("probabilities"), expected, atol=card.golden.atol
        )
        response = result.get_response()
        assert (response["model_name"], response["model_version"]) == ("digits", "1")
        assert response["id"] == "req-7"
        output = response["outputs"][0]
        assert output["datatype"] == "FP32"
        assert ("parameters" in output) == binary  # binary_data_size, or JSON data
    # The default version (2, int8), with more rows: the backend's own answer.
    rows, _ = eval_split()
    result = infer(client, rows[:50], binary=True)
    assert result.get_response()["model_version"] == "2"
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), direct_outputs(INT8, rows[:50]), atol=1e-6
    )
    # The monitor saw them: their ids take feedback on the TF Serving route.
    ids = result.get_response()["parameters"]["prediction_ids"].split(",")
    assert len(ids) == 50
    feedback = json.dumps({"prediction_id": ids[0], "label": 3}).encode()
    assert post(f"{server.url}/v1/models/digits:feedback", feedback)[0] == 200


def test_bad_requests_get_the_protocols_error_and_the_service_lives(
    server: ServerThread, client: triton.InferenceServerClient
) -> None:
    rows = eval_split()[0][:2]
    bad_shape = triton.InferInput("pixels", [2, 63], "FP32")
    bad_shape.set_data_from_numpy(rows[:, :63], binary_data=True)
    bad_dtype = triton.InferInput("pixels", [2, 64], "INT64")
    bad_dtype.set_data_from_numpy(rows.astype(np.int64), binary_data=False)
    for tensor, fragment in ((bad_shape, "shape [2, 63]"), (bad_dtype, "datatype 'INT64'")):
        with pytest.raises(InferenceServerException, match=re.escape(fragment)) as raised:
            client.infer("digits", [tensor])
        assert raised.value.status() == "400"
    url = f"{server.url}/v2/models/digits/infer"
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "pixels",
                    "shape": [2, 64],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 512},
                }
            ]
        }
    ).encode()
    short = header + rows.tobytes()[:500]  # 12 bytes short of what the header promises
    hostile: list[tuple[str, bytes, dict[str, str], int, str]] = [
        ("garbage", b"\x00\xff{garbage", {}, 400, "not valid JSON"),
        ("sizes", short, {"Inference-Header-Content-Length": str(len(header))}, 400, "runs past"),
        ("header", header, {"Inference-Header-Content-Length": "99999"}, 400, "outside the body"),
        ("oversized", b"{" + b" " * MAX_BODY, {}, 413, "over the limit"),
    ]
    for what, body, headers, status, fragment in hostile:
        code, answer = post(url, body, headers)
        assert (code, list(answer)) == (status, ["error"]), what
        assert fragment in answer["error"], (what, answer)
    unknown = post(f"{server.url}/v2/models/letters/infer", b"{}")
    assert unknown[0] == 404
    assert "no model 'letters'" in unknown[1]["error"]
    # Still serving, and each refusal counted by its reason.
    assert infer(client, rows, binary=True).as_numpy("probabilities").shape == (2, 10)
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=30) as response:
        families = text_string_to_metric_families(response.read().decode())
        errors = {
            (sample.labels["reason"], sample.labels["code"]): sample.value
            for family in families
            if family.name == "edge_rest_errors"
            for sample in family.samples
        }
    assert errors[("bad_input", "400")] >= 2
    assert errors[("bad_json", "400")] >= 1
    assert errors[("bad_framing", "400")] >= 2
    assert errors[("too_large", "413")] >= 1
    assert errors[("unknown_model", "404")] >= 1


def test_ready_is_false_until_a_model_serves() -> None:
    """The protocol's server-ready answer: a 4xx while no model serves, 200 once one does."""
    held: dict[str, Any] = {}

    async def setup(registry: ModelRegistry) -> None:
        held["registry"], held["loop"] = registry, asyncio.get_running_loop()

    with ServerThread(setup) as running:
        ready = f"{running.url}/v2/health/ready"
        client = triton.InferenceServerClient(url=running.url.removeprefix("http://"))
        try:
            assert call(ready) == (400, {"ready": False})
            assert call(f"{running.url}/v2/health/live") == (200, {"live": True})
            assert not client.is_server_ready()
            load = held["registry"].load(FP32)
            asyncio.run_coroutine_threadsafe(load, held["loop"]).result(60)
            assert call(ready) == (200, {"ready": True})
            assert client.is_server_ready()
        finally:
            client.close()
