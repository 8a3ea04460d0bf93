"""The Open Inference Protocol v2 over gRPC, as messages: requests to arrays, answers back.

Pure (the generated message classes and numpy; no gRPC, no IO): ``grpc_server`` calls these
around the one request path (``ModelRegistry.predict``). A request's tensors come either
typed (``InferInputTensor.contents``, the field of the tensor's datatype) or raw
(``raw_input_contents``, one little-endian entry per input, in the order of ``inputs``);
answers are raw, as Triton sends them (``raw_output_contents``), which every v2 client
reads. The input check is the REST API's (``wire_tensors.checked_feeds``). What this server
adds rides in ``parameters``, which clients ignore: the prediction ids
(``prediction_ids``, comma-separated) for feedback through the REST API.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from agent.errors import InvalidInputError
from agent.inference.backends import CheckedFeeds, caller_dtype
from agent.inference.protos import oip_v2_pb2 as pb
from agent.inference.registry import Prediction, VersionState, VersionStatus
from agent.inference.wire_tensors import (
    V2_DATATYPES,
    Array,
    array_from_bytes,
    array_from_values,
    check_output_names,
    checked_feeds,
    pick_outputs,
    v2_datatype,
)
from edge_contract.card import ModelCard, TensorSpec

SERVER_NAME = "edge-agent"
PLATFORMS = {"onnx": "onnxruntime_onnx", "tflite": "tensorflow_lite"}
# The typed contents field of each datatype (FP16 comes raw only, as the protocol says).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


def version_of(text: str) -> str | None:
    """A request's version field: empty means the default version."""
    return text or None


def decode_infer(
    request: pb.ModelInferRequest, card: ModelCard
) -> tuple[CheckedFeeds, tuple[str, ...]]:
    """The request's inputs, checked as every front end checks them, and the outputs named."""
    model = card.name
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInputError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs",
            model=model,
        )
    arrays: dict[str, Array] = {}
    for index, tensor in enumerate(request.inputs):
        if tensor.name in arrays:
            raise InvalidInputError(
                f"input {tensor.name!r} is given twice", model=model, detail=tensor.name
            )
        arrays[tensor.name] = _input_array(tensor, raw[index] if raw else None, model)
    wanted = tuple(output.name for output in request.outputs)
    check_output_names(wanted, card)
    return checked_feeds(card, arrays), wanted


def _input_array(
    tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None, model: str
) -> Array:
    name, datatype = tensor.name, tensor.datatype
    dtype = V2_DATATYPES.get(datatype)
    if dtype is None:
        raise InvalidInputError(
            f"input {name!r} has datatype {datatype!r}; served: {sorted(V2_DATATYPES)}",
            model=model,
            detail=name,
        )
    shape = list(tensor.shape)
    if raw is not None:
        if tensor.HasField("contents"):
            raise InvalidInputError(
                f"input {name!r} has contents beside raw_input_contents: use one or the other",
                model=model,
                detail=name,
            )
        return array_from_bytes(raw, dtype, shape, model=model, name=name)
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInputError(
            f"input {name!r} of datatype {datatype} must come in raw_input_contents",
            model=model,
            detail=name,
        )
    values: Sequence[Any] = getattr(tensor.contents, field)
    return array_from_values(values, dtype, shape, model=model, name=name)


def encode_infer(
    prediction: Prediction, request_id: str, wanted: Sequence[str], card: ModelCard
) -> pb.ModelInferResponse:
    """The answer, raw little-endian outputs in the order named (or the model's)."""
    response = pb.ModelInferResponse(
        model_name=prediction.model, model_version=prediction.version, id=request_id
    )
    response.parameters["prediction_ids"].string_param = ",".join(prediction.ids)
    for name, array in pick_outputs(prediction.outputs, wanted, card).items():
        response.outputs.add(name=name, datatype=v2_datatype(array.dtype), shape=array.shape)
        little = array.astype(array.dtype.newbyteorder("<"), copy=False)
        response.raw_output_contents.append(np.ascontiguousarray(little).tobytes())
    return response


def model_metadata(card: ModelCard, statuses: Sequence[VersionStatus]) -> pb.ModelMetadataResponse:
    """The model's metadata from its card; ``versions``: those serving now."""
    return pb.ModelMetadataResponse(
        name=card.name,
        versions=[status.version for status in statuses if status.state == VersionState.AVAILABLE],
        platform=PLATFORMS.get(card.runtime, card.runtime),
        inputs=[_tensor_metadata(spec) for spec in card.inputs],
        outputs=[_tensor_metadata(spec) for spec in card.outputs],
    )


def _tensor_metadata(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    # The dtype clients exchange: float for a quantized tensor (the backend converts).
    return pb.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=v2_datatype(caller_dtype(spec)), shape=list(spec.shape)
    )


def server_metadata(version: str) -> pb.ServerMetadataResponse:
    """The server's name and version; no protocol extensions over gRPC."""
    return pb.ServerMetadataResponse(name=SERVER_NAME, version=version, extensions=[])
