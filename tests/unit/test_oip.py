"""The Open Inference Protocol's messages and binary framing (agent.inference.oip), no sockets.

Requests are bytes as a client sends them; responses are read back with Triton's own parser
(``InferResult.from_response_body``), so the framing is checked against the client's view.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tritonclient.http import InferResult

from agent.errors import InvalidInputError
from agent.inference.cardfile import load_card
from agent.inference.oip import (
    DecodedRequest,
    FramingError,
    MalformedRequestError,
    decode_request,
    encode_response,
    header_length,
    model_metadata,
)
from edge_contract.card import ModelCard, TensorSpec, card_path_for

DIGITS = Path(__file__).resolve().parents[2] / "models" / "digits"
# The int8 model: its callers still speak FP32 (the backend quantizes).
CARD = load_card(card_path_for(DIGITS / "digits-int8.onnx"))
TOKENS = CARD.model_copy(
    update={"inputs": (TensorSpec(name="ids", dtype="int64", shape=(-1, -1)),)}
)
ROWS = np.linspace(0, 1, 128, dtype=np.float32).reshape(2, 64)


def tensor(data: object = None, **fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": "pixels", "shape": [2, 64], "datatype": "FP32"}
    doc.update(fields)
    if data is not None:
        doc["data"] = data
    return doc


def json_body(*inputs: dict[str, Any], **fields: Any) -> bytes:
    return json.dumps({"inputs": list(inputs), **fields}).encode()


def binary_body(header: dict[str, Any], *blobs: bytes) -> tuple[bytes, int]:
    text = json.dumps(header).encode()
    return b"".join([text, *blobs]), len(text)


def decode(body: bytes, length: int | None = None, card: ModelCard = CARD) -> DecodedRequest:
    return decode_request(body, length, card)


def refusal(body: bytes, length: int | None = None, card: ModelCard = CARD) -> InvalidInputError:
    with pytest.raises(InvalidInputError) as raised:
        decode(body, length, card)
    return raised.value


class TestJsonTensors:
    def test_flat_and_nested_data_become_the_models_arrays(self) -> None:
        for data in (ROWS.reshape(-1).tolist(), ROWS.tolist()):
            decoded = decode(json_body(tensor(data), id="a-1"))
            np.testing.assert_array_equal(decoded.feeds["pixels"], ROWS)
            assert decoded.feeds["pixels"].dtype == np.float32
            assert (decoded.id, decoded.outputs, decoded.is_binary("probabilities")) == (
                "a-1",
                None,
                False,
            )

    def test_element_count_must_match_the_shape(self) -> None:
        flat = refusal(json_body(tensor(ROWS.reshape(-1).tolist()[:-1])))
        assert "127 data elements, shape [2, 64] takes 128" in str(flat)
        nested = refusal(json_body(tensor(ROWS.tolist(), shape=[2, 65])))
        assert "128 data elements, shape [2, 65] takes 130" in str(nested)

    def test_shape_and_datatype_are_the_models(self) -> None:
        shape = refusal(json_body(tensor([0.5] * 63, shape=[1, 63])))
        assert "shape [1, 63], expected [-1, 64]" in str(shape)
        dtype = refusal(json_body(tensor([1] * 128, datatype="INT64")))
        assert "datatype 'INT64', the model takes FP32" in str(dtype)
        unsupported = refusal(json_body(tensor(["a"] * 128, datatype="BYTES")))
        assert "datatype 'BYTES'" in str(unsupported)
        strings = refusal(json_body(tensor(["a"] * 128)))
        assert "not FP32" in str(strings)
        assert {shape.reason, dtype.reason, strings.reason} == {"bad_input"}

    def test_values_beyond_float32_and_integers_beyond_64_bits_are_refused(self) -> None:
        big = refusal(json_body(tensor([1e39] + [0.0] * 127)))
        assert "outside the range of float32" in str(big)
        huge = refusal(json_body(tensor([2**70] * 128)))
        assert "holds object values" in str(huge)
        int_range = refusal(
            json_body(tensor([2**63] * 2, name="ids", shape=[1, 2], datatype="INT64")), card=TOKENS
        )
        assert int_range.reason == "bad_input"

    def test_integer_inputs_keep_their_values(self) -> None:
        body = json_body(tensor([1, 2, 3], name="ids", shape=[1, 3], datatype="INT64"))
        feeds = decode(body, card=TOKENS).feeds
        np.testing.assert_array_equal(feeds["ids"], [[1, 2, 3]])
        assert feeds["ids"].dtype == np.int64

    def test_malformed_json_is_bad_json_and_never_recursion(self) -> None:
        for body in (b"\x00\xff{", b"[1]", b'{"inputs": [NaN]}', b"[" * 100_000):
            error = refusal(body)
            assert isinstance(error, MalformedRequestError)
            assert error.reason == "bad_json"
        # Nested deeper than any tensor, yet shallow enough for the parser: refused unparsed.
        deep = refusal(
            json_body(tensor([[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[0.5]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]))
        )
        assert "nests 35 levels, limit 32" in str(deep)

    def test_the_schema_is_strict(self) -> None:
        cases = {
            json_body(tensor(ROWS.tolist()), colour="red"): "colour",
            json.dumps({"inputs": []}).encode(): "inputs",
            json_body(tensor(ROWS.tolist(), shape=[2, -64])): "shape",
            json_body(tensor(ROWS.tolist(), shape=[2, "64"])): "shape",
            json_body(tensor(None)): "needs 'data'",
            json_body(tensor(ROWS.tolist()), tensor(ROWS.tolist())): "given twice",
            json_body(tensor(ROWS.tolist()), outputs=[{"name": "logits"}]): "unknown output",
            json_body(tensor(ROWS.tolist()), parameters={"binary_data_output": 1}): "true or",
        }
        for body, fragment in cases.items():
            error = refusal(body)
            assert fragment in str(error)
            assert error.reason == "bad_input"


class TestBinaryTensors:
    def test_binary_inputs_are_copied_out_of_the_body(self) -> None:
        header = {"inputs": [tensor(parameters={"binary_data_size": ROWS.nbytes})]}
        body, length = binary_body(header, ROWS.astype("<f4").tobytes())
        assert header_length(str(length), len(body), model="digits") == length
        pixels = decode(body, length).feeds["pixels"]
        np.testing.assert_array_equal(pixels, ROWS)
        assert pixels.flags.writeable and pixels.flags.aligned and pixels.base is None

    def test_sizes_that_do_not_add_up_are_refused_before_any_array(self) -> None:
        size = {"binary_data_size": ROWS.nbytes}
        cases = [
            # binary_data_size is not the shape's bytes
            ({"inputs": [tensor(parameters={"binary_data_size": 500})]}, b"x" * 500, "takes 512"),
            # fewer bytes than promised
            ({"inputs": [tensor(parameters=size)]}, b"x" * 500, "runs past"),
            # bytes that belong to no input
            ({"inputs": [tensor(parameters=size)]}, b"x" * 520, "8 bytes after the header"),
            # data and binary both
            ({"inputs": [tensor([0.0] * 128, parameters=size)]}, b"x" * 512, "both"),
            ({"inputs": [tensor(parameters={"binary_data_size": -1})]}, b"", "byte count"),
        ]
        for header, blob, fragment in cases:
            body, length = binary_body(header, blob)
            error = refusal(body, length)
            assert isinstance(error, FramingError), fragment
            assert fragment in str(error)
            assert error.reason == "bad_framing"

    def test_an_empty_tensor_of_absurd_sizes_is_refused_as_json_and_binary(self) -> None:
        """[0, 2**40, 2**40] has no element to send, but numpy cannot hold its shape."""
        shape = [0, 2**40, 2**40]
        as_json = refusal(json_body(tensor([], shape=shape)))
        header = {"inputs": [tensor(shape=shape, parameters={"binary_data_size": 0})]}
        as_binary = refusal(*binary_body(header))
        for error in (as_json, as_binary):
            assert "shape [0, 1099511627776, 1099511627776], which numpy cannot hold" in str(error)

    def test_a_nan_in_binary_float32_is_refused(self) -> None:
        rows = ROWS.copy()
        rows[1, 3] = np.nan
        header = {"inputs": [tensor(parameters={"binary_data_size": rows.nbytes})]}
        error = refusal(*binary_body(header, rows.tobytes()))
        assert "NaN or Infinity" in str(error)

    # "\u00b2" (superscript two) and "\u0661\u0662" (Arabic-Indic 12) pass str.isdigit().
    @pytest.mark.parametrize(
        "value", ["abc", "-1", "0", "1e3", "99999", "9" * 40, " ", "\u00b2", "\u0661\u0662"]
    )
    def test_the_header_length_must_lie_within_the_body(self, value: str) -> None:
        with pytest.raises(FramingError):
            header_length(value, 1000, model="digits")


OUTPUTS = {"probabilities": np.arange(20, dtype=np.float32).reshape(2, 10) / 20}


class TestResponses:
    def request(self, **fields: Any) -> DecodedRequest:
        defaults: dict[str, Any] = {
            "id": "r",
            "feeds": {},
            "outputs": None,
            "binary": {},
            "binary_default": False,
        }
        return DecodedRequest(**{**defaults, **fields})

    def parse(self, body: bytes, length: int | None) -> InferResult:
        return InferResult.from_response_body(body, header_length=length)

    def test_json_outputs_read_back_with_the_triton_client(self) -> None:
        body, length = encode_response(
            "digits", "2", self.request(), OUTPUTS, {"prediction_ids": "a,b"}
        )
        assert length is None
        result = self.parse(body, length)
        np.testing.assert_array_equal(result.as_numpy("probabilities"), OUTPUTS["probabilities"])
        response = result.get_response()
        assert {key: response[key] for key in ("model_name", "model_version", "id")} == {
            "model_name": "digits",
            "model_version": "2",
            "id": "r",
        }
        assert response["parameters"] == {"prediction_ids": "a,b"}
        assert response["outputs"][0]["datatype"] == "FP32"

    def test_binary_outputs_carry_their_size_and_the_header_length(self) -> None:
        for request in (
            self.request(binary_default=True),
            self.request(outputs=("probabilities",), binary={"probabilities": True}),
        ):
            body, length = encode_response("digits", "2", request, OUTPUTS)
            assert length is not None and len(body) == length + 80
            header = json.loads(body[:length])
            assert header["outputs"][0]["parameters"] == {"binary_data_size": 80}
            np.testing.assert_array_equal(
                self.parse(body, length).as_numpy("probabilities"),
                OUTPUTS["probabilities"],
            )

    def test_an_outputs_own_binary_data_overrides_binary_data_output(self) -> None:
        request = decode(
            json_body(
                tensor(ROWS.tolist()),
                outputs=[{"name": "probabilities", "parameters": {"binary_data": False}}],
                parameters={"binary_data_output": True},
            )
        )
        assert encode_response("digits", "2", request, OUTPUTS)[1] is None

    def test_model_metadata_speaks_the_callers_datatypes(self) -> None:
        assert model_metadata(CARD, ["2", "1"]) == {
            "name": "digits",
            "versions": ["2", "1"],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}],
            "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
        }
