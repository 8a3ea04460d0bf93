"""TensorFlow Serving's gRPC API as messages: ``PredictRequest`` to arrays, answers back.

Pure (the generated message classes and numpy; no gRPC, no TensorFlow, no IO): ``grpc_server``
calls these around the one request path (``ModelRegistry.predict``). A ``TensorProto`` comes
with its values either as ``tensor_content`` (little-endian bytes: what
``tf.make_tensor_proto`` sends for a numeric array) or in the typed field of its dtype (one
value fills the whole shape, as in TensorFlow); answers carry ``tensor_content``, which
``tf.make_ndarray`` reads. The input check is the REST API's (``wire_tensors.checked_feeds``).
Metadata and status are the REST API's in their message form: one ``serving_default``
signature built from the card, versions as integers (a version name that is not an integer
travels as ``version_label`` in a ``ModelSpec``, and as 0 in a status).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from agent.errors import InvalidInputError
from agent.inference.backends import CheckedFeeds, caller_dtype
from agent.inference.protos import tf_error_codes_pb2 as error_pb
from agent.inference.protos import tf_framework_pb2 as tf_pb
from agent.inference.protos import tf_serving_pb2 as pb
from agent.inference.registry import Prediction, VersionState, VersionStatus
from agent.inference.wire_tensors import (
    Array,
    array_from_bytes,
    array_from_values,
    check_output_names,
    checked_feeds,
    pick_outputs,
)
from edge_contract.card import ModelCard, TensorSpec

SIGNATURE_NAME = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
SIGNATURE_DEF_FIELD = "signature_def"
_INT64_DIGITS = 18  # any 18-digit number fits an int64
# dtype enum -> (numpy dtype, the TensorProto field of its typed values)
_DTYPES: dict[tf_pb.DataType, tuple[np.dtype[Any], str]] = {
    tf_pb.DT_FLOAT: (np.dtype(np.float32), "float_val"),
    tf_pb.DT_DOUBLE: (np.dtype(np.float64), "double_val"),
    tf_pb.DT_HALF: (np.dtype(np.float16), "half_val"),
    tf_pb.DT_INT8: (np.dtype(np.int8), "int_val"),
    tf_pb.DT_INT16: (np.dtype(np.int16), "int_val"),
    tf_pb.DT_INT32: (np.dtype(np.int32), "int_val"),
    tf_pb.DT_INT64: (np.dtype(np.int64), "int64_val"),
    tf_pb.DT_UINT8: (np.dtype(np.uint8), "int_val"),
    tf_pb.DT_UINT16: (np.dtype(np.uint16), "int_val"),
    tf_pb.DT_UINT32: (np.dtype(np.uint32), "uint32_val"),
    tf_pb.DT_UINT64: (np.dtype(np.uint64), "uint64_val"),
    tf_pb.DT_BOOL: (np.dtype(np.bool_), "bool_val"),
}
_ENUMS = {dtype: enum for enum, (dtype, _) in _DTYPES.items()}
# The registry's states as TensorFlow Serving reports them (a failed load: END, with an error).
_STATES = {
    VersionState.LOADING: pb.ModelVersionStatus.LOADING,
    VersionState.AVAILABLE: pb.ModelVersionStatus.AVAILABLE,
    VersionState.UNLOADING: pb.ModelVersionStatus.UNLOADING,
    VersionState.END: pb.ModelVersionStatus.END,
    VersionState.ERROR: pb.ModelVersionStatus.END,
}


def requested(spec: pb.ModelSpec) -> tuple[str, str | None]:
    """The model name and version (None: the default) a ``ModelSpec`` asks for."""
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return spec.name, str(spec.version.value)
    if choice == "version_label":
        return spec.name, spec.version_label
    return spec.name, None


def decode_predict(
    request: pb.PredictRequest, card: ModelCard
) -> tuple[CheckedFeeds, tuple[str, ...]]:
    """The request's inputs, checked as every front end checks them, and the outputs named."""
    _check_signature(request.model_spec.signature_name, card)
    arrays = {
        name: tensor_to_array(tensor, model=card.name, name=name)
        for name, tensor in request.inputs.items()
    }
    wanted = tuple(request.output_filter)
    check_output_names(wanted, card)
    return checked_feeds(card, arrays), wanted


def _check_signature(signature: str, card: ModelCard) -> None:
    if signature not in ("", SIGNATURE_NAME):
        raise InvalidInputError(
            f"signature_name {signature!r} not found: the only signature is {SIGNATURE_NAME!r}",
            model=card.name,
        )


def tensor_to_array(tensor: tf_pb.TensorProto, *, model: str, name: str) -> Array:
    """One ``TensorProto`` as an array (its sizes checked against its shape first)."""
    known = _DTYPES.get(tensor.dtype)
    if known is None:
        dtype_name = tf_pb.DataType.Name(tensor.dtype) if tensor.dtype in _DTYPE_NAMES else ""
        raise InvalidInputError(
            f"input {name!r} has dtype {dtype_name or tensor.dtype}, which is not served",
            model=model,
            detail=name,
        )
    dtype, field = known
    if tensor.tensor_shape.unknown_rank:
        raise InvalidInputError(f"input {name!r} has an unknown rank", model=model, detail=name)
    shape = [dim.size for dim in tensor.tensor_shape.dim]
    if tensor.tensor_content:
        return array_from_bytes(tensor.tensor_content, dtype, shape, model=model, name=name)
    values: Sequence[Any] = getattr(tensor, field)
    if field == "half_val":  # float16 bit patterns, one per int32
        bits = array_from_values(
            values, np.dtype(np.uint16), shape, model=model, name=name, broadcast_one=True
        )
        return bits.view(np.float16)
    return array_from_values(values, dtype, shape, model=model, name=name, broadcast_one=True)


_DTYPE_NAMES = set(tf_pb.DataType.values())
_CODE_NAMES = set(error_pb.Code.keys())


def array_to_tensor(array: Array) -> tf_pb.TensorProto:
    """An array as a ``TensorProto`` with ``tensor_content`` (little-endian)."""
    little = np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"), copy=False))
    tensor = tf_pb.TensorProto(dtype=_ENUMS[array.dtype], tensor_content=little.tobytes())
    tensor.tensor_shape.dim.extend(tf_pb.TensorShapeProto.Dim(size=size) for size in array.shape)
    return tensor


def encode_predict(
    prediction: Prediction, wanted: Sequence[str], card: ModelCard
) -> pb.PredictResponse:
    """The answer: the outputs named (or all), and the version that answered."""
    response = pb.PredictResponse()
    _fill_spec(response.model_spec, prediction.model, prediction.version, SIGNATURE_NAME)
    for name, array in pick_outputs(prediction.outputs, wanted, card).items():
        response.outputs[name].CopyFrom(array_to_tensor(array))
    return response


def _fill_spec(spec: pb.ModelSpec, name: str, version: str, signature: str) -> None:
    spec.name = name
    spec.signature_name = signature
    number = int64_version(version)
    if number is None:
        spec.version_label = version
    else:
        spec.version.value = number


def int64_version(version: str) -> int | None:
    """A version name as TensorFlow Serving's int64 version, or None if it is not one."""
    if version.isascii() and version.isdigit() and len(version) <= _INT64_DIGITS:
        return int(version)
    return None


def model_metadata(
    request: pb.GetModelMetadataRequest, card: ModelCard
) -> pb.GetModelMetadataResponse:
    """``signature_def`` (the one field TensorFlow Serving serves) from the card."""
    fields = list(request.metadata_field)
    if not fields:
        raise InvalidInputError(
            "GetModelMetadataRequest must name at least one metadata_field "
            f"({SIGNATURE_DEF_FIELD!r})",
            model=card.name,
        )
    for field in fields:
        if field != SIGNATURE_DEF_FIELD:
            raise InvalidInputError(
                f"metadata field {field!r} is not served (only {SIGNATURE_DEF_FIELD!r})",
                model=card.name,
            )
    signature = tf_pb.SignatureDef(method_name=PREDICT_METHOD)
    for spec in card.inputs:
        signature.inputs[spec.name].CopyFrom(_tensor_info(spec))
    for spec in card.outputs:
        signature.outputs[spec.name].CopyFrom(_tensor_info(spec))
    signatures = pb.SignatureDefMap()
    signatures.signature_def[SIGNATURE_NAME].CopyFrom(signature)
    response = pb.GetModelMetadataResponse()
    _fill_spec(response.model_spec, card.name, card.version, "")
    response.metadata[SIGNATURE_DEF_FIELD].Pack(signatures)
    return response


def _tensor_info(spec: TensorSpec) -> tf_pb.TensorInfo:
    # The dtype clients exchange: float for a quantized tensor (the backend converts).
    info = tf_pb.TensorInfo(name=spec.name, dtype=_ENUMS[np.dtype(caller_dtype(spec))])
    info.tensor_shape.dim.extend(tf_pb.TensorShapeProto.Dim(size=size) for size in spec.shape)
    return info


def model_status(statuses: Sequence[VersionStatus]) -> pb.GetModelStatusResponse:
    """Every version given, as TensorFlow Serving reports them."""
    response = pb.GetModelStatusResponse()
    for status in statuses:
        code = status.error_code if status.error_code in _CODE_NAMES else "UNKNOWN"
        response.model_version_status.add(
            version=int64_version(status.version) or 0,
            state=_STATES[status.state],
            status=pb.StatusProto(error_code=code, error_message=status.error_message),
        )
    return response
