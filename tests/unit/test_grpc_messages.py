"""The gRPC APIs' messages to arrays and back (agent.inference.grpc_v2, grpc_tfs): pure, no
socket. What the real clients cannot send in the integration tests is checked here: sizes
that disagree with the shape (before numpy allocates), typed and raw forms together, the
forms TensorFlow allows (one value filling a shape, float16 bit patterns), and the same
finiteness check as the REST API for inputs that arrive in the input's own dtype."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.errors import InvalidInputError
from agent.inference import grpc_tfs, grpc_v2
from agent.inference.cardfile import load_card
from agent.inference.protos import oip_v2_pb2 as v2_pb
from agent.inference.protos import tf_framework_pb2 as tf_pb
from agent.inference.protos import tf_serving_pb2 as tfs_pb
from agent.inference.registry import Prediction, VersionState, VersionStatus
from edge_contract.card import ModelCard, card_path_for

DIGITS = Path(__file__).resolve().parents[2] / "models" / "digits" / "digits-fp32.onnx"


@pytest.fixture(scope="module")
def card() -> ModelCard:
    return load_card(card_path_for(DIGITS))


def infer_request(
    array: np.ndarray, datatype: str = "FP32", *, raw: bool = True
) -> v2_pb.ModelInferRequest:
    request = v2_pb.ModelInferRequest(model_name="digits")
    tensor = request.inputs.add(name="pixels", datatype=datatype, shape=list(array.shape))
    if raw:
        request.raw_input_contents.append(array.astype(array.dtype.newbyteorder("<")).tobytes())
    else:
        tensor.contents.fp32_contents.extend(array.ravel().tolist())
    return request


class TestV2:
    def test_raw_and_typed_inputs_give_the_same_float32_array(self, card: ModelCard) -> None:
        pixels = np.linspace(0, 1, 128, dtype=np.float32).reshape(2, 64)
        for raw in (True, False):
            feeds, wanted = grpc_v2.decode_infer(infer_request(pixels, raw=raw), card)
            np.testing.assert_array_equal(feeds["pixels"], pixels)
            assert feeds["pixels"].dtype == np.float32 and wanted == ()

    @pytest.mark.parametrize(
        ("change", "fragment"),
        [
            (lambda r: r.raw_input_contents.__setitem__(0, b"\x00" * 12), "12 bytes of data"),
            (lambda r: r.raw_input_contents.append(b""), "2 entries for 1 inputs"),
            (lambda r: r.inputs[0].contents.fp32_contents.append(1.0), "one or the other"),
            (lambda r: r.inputs[0].__setattr__("datatype", "BYTES"), "datatype 'BYTES'"),
            (
                lambda r: (
                    r.inputs[0].__setattr__("datatype", "BOOL"),
                    r.raw_input_contents.__setitem__(0, b"\x01" * 64),
                ),
                "has dtype bool",
            ),
            (
                lambda r: (
                    r.inputs.add().CopyFrom(r.inputs[0]),
                    r.raw_input_contents.append(r.raw_input_contents[0]),
                ),
                "given twice",
            ),
            (lambda r: r.outputs.add(name="logits"), "unknown output 'logits'"),
            # A shape claiming 2**80 elements is refused by its size, never allocated.
            (lambda r: r.inputs[0].shape.__setitem__(0, 2**40), "bytes of data"),
            (lambda r: r.inputs[0].shape.__setitem__(0, -1), "must not be negative"),
            (
                lambda r: (
                    r.inputs[0].ClearField("shape"),
                    r.inputs[0].shape.extend([0, 2**62]),
                    r.raw_input_contents.__setitem__(0, b""),
                ),
                "numpy cannot hold",
            ),
        ],
    )
    def test_inconsistent_requests_are_refused_naming_the_problem(
        self, card: ModelCard, change: object, fragment: str
    ) -> None:
        request = infer_request(np.zeros((1, 64), np.float32))
        change(request)  # type: ignore[operator]
        with pytest.raises(InvalidInputError, match=fragment):
            grpc_v2.decode_infer(request, card)

    @pytest.mark.parametrize("value", [np.nan, np.inf])
    def test_non_finite_float32_inputs_are_refused_as_by_rest(
        self, card: ModelCard, value: float
    ) -> None:
        pixels = np.zeros((1, 64), np.float32)
        pixels[0, 3] = value
        for raw in (True, False):
            with pytest.raises(InvalidInputError, match="NaN or Infinity"):
                grpc_v2.decode_infer(infer_request(pixels, raw=raw), card)

    def test_a_float64_beyond_float32s_range_is_refused(self, card: ModelCard) -> None:
        pixels = np.zeros((1, 64))
        pixels[0, 0] = 1e39
        with pytest.raises(InvalidInputError, match="outside the range of float32"):
            grpc_v2.decode_infer(infer_request(pixels, "FP64"), card)

    def test_answers_are_raw_little_endian_in_the_order_asked(self, card: ModelCard) -> None:
        probabilities = np.arange(20, dtype=np.float32).reshape(2, 10)
        prediction = Prediction("digits", "1", {"probabilities": probabilities}, ("a", "b"), 0.0)
        response = grpc_v2.encode_infer(prediction, "req-7", ("probabilities",), card)
        assert (response.model_version, response.id) == ("1", "req-7")
        (output,) = response.outputs
        assert (output.name, output.datatype, list(output.shape)) == (
            "probabilities",
            "FP32",
            [2, 10],
        )
        assert response.raw_output_contents[0] == probabilities.astype("<f4").tobytes()
        assert response.parameters["prediction_ids"].string_param == "a,b"

    def test_metadata_lists_the_serving_versions(self, card: ModelCard) -> None:
        statuses = [
            VersionStatus("2", VersionState.ERROR, "INTERNAL", "corrupt"),
            VersionStatus("1", VersionState.AVAILABLE),
        ]
        metadata = grpc_v2.model_metadata(card, statuses)
        assert list(metadata.versions) == ["1"]
        assert metadata.platform == "onnxruntime_onnx"
        assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
            ("pixels", "FP32", [-1, 64])
        ]


def tensor(array: np.ndarray) -> tf_pb.TensorProto:
    return grpc_tfs.array_to_tensor(array)


class TestTfServing:
    def test_tensor_content_and_typed_values_decode_alike(self) -> None:
        pixels = np.linspace(0, 1, 128, dtype=np.float32).reshape(2, 64)
        typed = tf_pb.TensorProto(dtype=tf_pb.DT_FLOAT, float_val=pixels.ravel().tolist())
        typed.tensor_shape.CopyFrom(tensor(pixels).tensor_shape)
        for proto in (tensor(pixels), typed):
            decoded = grpc_tfs.tensor_to_array(proto, model="digits", name="pixels")
            np.testing.assert_array_equal(decoded, pixels)

    def test_one_value_fills_the_shape_and_halves_are_bit_patterns(self) -> None:
        filled = tf_pb.TensorProto(dtype=tf_pb.DT_INT32, int_val=[7])
        filled.tensor_shape.dim.add(size=2)
        filled.tensor_shape.dim.add(size=3)
        decoded = grpc_tfs.tensor_to_array(filled, model="m", name="x")
        np.testing.assert_array_equal(decoded, np.full((2, 3), 7, np.int32))
        halves = np.array([1.5, -2.0], np.float16)
        proto = tf_pb.TensorProto(dtype=tf_pb.DT_HALF, half_val=halves.view(np.uint16).tolist())
        proto.tensor_shape.dim.add(size=2)
        np.testing.assert_array_equal(grpc_tfs.tensor_to_array(proto, model="m", name="x"), halves)

    def test_one_value_may_not_claim_gigabytes(self) -> None:
        """A few bytes asking for 2**40 floats are refused before anything is allocated."""
        proto = tf_pb.TensorProto(dtype=tf_pb.DT_FLOAT, float_val=[1.0])
        proto.tensor_shape.dim.add(size=2**20)
        proto.tensor_shape.dim.add(size=2**20)
        with pytest.raises(InvalidInputError, match="at most 16777216"):
            grpc_tfs.tensor_to_array(proto, model="m", name="x")

    @pytest.mark.parametrize(
        ("dtype", "field", "value", "sizes", "fragment"),
        [
            (tf_pb.DT_UINT8, "int_val", -1, [2, 3], "integer -1 out of bounds for uint8"),
            (tf_pb.DT_INT8, "int_val", 1000, [2, 3], "integer 1000 out of bounds for int8"),
            (tf_pb.DT_HALF, "half_val", 70000, [2], "integer 70000 out of bounds for uint16"),
            (tf_pb.DT_FLOAT, "float_val", 1.0, [1] * 70 + [2], "maximum supported dimension"),
        ],
    )
    def test_one_value_that_cannot_fill_the_shape_is_refused(
        self, dtype: int, field: str, value: float, sizes: list[int], fragment: str
    ) -> None:
        """The fill form is checked as the value-per-element form is: no numpy error escapes."""
        proto = tf_pb.TensorProto(dtype=dtype)
        getattr(proto, field).append(value)
        proto.tensor_shape.dim.extend(tf_pb.TensorShapeProto.Dim(size=size) for size in sizes)
        with pytest.raises(InvalidInputError, match=fragment):
            grpc_tfs.tensor_to_array(proto, model="m", name="x")

    @pytest.mark.parametrize(
        ("proto", "fragment"),
        [
            (tf_pb.TensorProto(dtype=tf_pb.DT_STRING, string_val=[b"x"]), "DT_STRING"),
            (tf_pb.TensorProto(dtype=99), "dtype 99"),
            (tf_pb.TensorProto(dtype=tf_pb.DT_FLOAT, float_val=[1.0, 2.0]), "2 values"),
        ],
    )
    def test_tensors_not_served_are_refused(self, proto: tf_pb.TensorProto, fragment: str) -> None:
        with pytest.raises(InvalidInputError, match=fragment):
            grpc_tfs.tensor_to_array(proto, model="m", name="x")

    def test_model_spec_versions_and_signature(self, card: ModelCard) -> None:
        spec = tfs_pb.ModelSpec(name="digits")
        assert grpc_tfs.requested(spec) == ("digits", None)
        spec.version.value = 3
        assert grpc_tfs.requested(spec) == ("digits", "3")
        spec.version_label = "canary"
        assert grpc_tfs.requested(spec) == ("digits", "canary")
        request = tfs_pb.PredictRequest(model_spec=tfs_pb.ModelSpec(signature_name="other"))
        request.inputs["pixels"].CopyFrom(tensor(np.zeros((1, 64), np.float32)))
        with pytest.raises(InvalidInputError, match="signature_name 'other' not found"):
            grpc_tfs.decode_predict(request, card)
        nan = np.zeros((1, 64), np.float32)
        nan[0, 0] = np.nan
        request = tfs_pb.PredictRequest()
        request.inputs["pixels"].CopyFrom(tensor(nan))
        with pytest.raises(InvalidInputError, match="NaN or Infinity"):
            grpc_tfs.decode_predict(request, card)

    def test_status_reports_a_failed_version_as_end_with_its_error(self) -> None:
        response = grpc_tfs.model_status(
            [
                VersionStatus("2", VersionState.ERROR, "INTERNAL", "corrupt"),
                VersionStatus("1", VersionState.AVAILABLE),
                VersionStatus("canary", VersionState.AVAILABLE, "NOT_A_CODE"),
            ]
        )
        rows = [
            (s.version, s.state, s.status.error_code, s.status.error_message)
            for s in response.model_version_status
        ]
        assert rows == [
            (2, tfs_pb.ModelVersionStatus.END, 13, "corrupt"),
            (1, tfs_pb.ModelVersionStatus.AVAILABLE, 0, ""),
            (0, tfs_pb.ModelVersionStatus.AVAILABLE, 2, ""),
        ]
        assert grpc_tfs.int64_version("9" * 19) is None

    def test_metadata_needs_the_signature_def_field(self, card: ModelCard) -> None:
        with pytest.raises(InvalidInputError, match="at least one metadata_field"):
            grpc_tfs.model_metadata(tfs_pb.GetModelMetadataRequest(), card)
        request = tfs_pb.GetModelMetadataRequest(metadata_field=["signature_def"])
        response = grpc_tfs.model_metadata(request, card)
        signatures = tfs_pb.SignatureDefMap()
        assert response.metadata["signature_def"].Unpack(signatures)
        inputs = signatures.signature_def["serving_default"].inputs
        assert [d.size for d in inputs["pixels"].tensor_shape.dim] == [-1, 64]
        assert response.model_spec.version.value == 1
