"""The Open Inference Protocol (KServe v2, Triton) over HTTP: its messages and its framing.

Pure: numpy and pydantic, no IO. ``agent.inference.oip_http`` serves it on the REST app.

A request body is the ``$inference_request`` JSON object, or, with Triton's binary tensor data
extension, that object (``Inference-Header-Content-Length`` bytes) followed by the raw
little-endian tensors of the inputs that carry ``parameters.binary_data_size``, in input
order. Everything is checked before an array is built: the header length lies within the
body, each input's shape, datatype and element count agree (``data`` holds the product of
the shape; ``binary_data_size`` is that count times the element size), the binary sizes add
up to exactly the bytes after the header, and the datatype is the one the model takes. The
arrays then go through the same input contract as TensorFlow Serving's REST API
(``conform_feeds``: names, shapes, float32 range and finiteness), so every front end refuses
the same inputs. A refusal is an ``InvalidInputError`` whose ``reason`` (``bad_json``,
``bad_input``, ``bad_framing``) is what the REST edge counts.

Spec: github.com/kserve/open-inference-protocol (specification/protocol/inference_rest.md)
and Triton's docs/protocol/extension_binary_data.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, TypedDict

import numpy as np
import numpy.typing as npt
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

from agent.errors import InvalidInputError
from agent.inference import jsonwire
from agent.inference.backends import caller_dtype, conform_caller_feeds
from agent.inference.jsonwire import MalformedJsonError, loads_object
from edge_contract.card import ModelCard, TensorSpec
from edge_contract.payloads import nesting_depth, schema_problem

Array = npt.NDArray[Any]

HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ("binary_tensor_data",)
# Limits of the JSON object (the tensors' bytes are bounded by the body cap).
MAX_DEPTH = 32  # a tensor nests one level per axis; the object itself three
MAX_TENSORS = 64
MAX_RANK = 16
MAX_NAME = 256
MAX_PARAMETERS = 32
MAX_DIM = 2**63 - 1  # "representable as an unsigned 64-bit integer", and as a numpy int64

# The protocol's datatypes this server can hold, as little-endian numpy dtypes. BYTES (length
# prefixed strings) and BF16 have no model here that takes them.
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_V2_NAMES = {dtype.newbyteorder("="): name for name, dtype in NUMPY_DTYPES.items()}
PLATFORMS = {"onnx": "onnxruntime_onnx", "tflite": "tflite"}


# -- refusals --------------------------------------------------------------------------------


# The JSON object is not JSON, too deep, or uses NaN/Infinity literals (the REST API's class).
MalformedRequestError = MalformedJsonError


class FramingError(InvalidInputError):
    """The binary tensor framing does not add up (header length, binary_data_size)."""

    reason: ClassVar[str] = "bad_framing"


# -- the request and response objects --------------------------------------------------------

Name = Annotated[StrictStr, Field(min_length=1, max_length=MAX_NAME)]
Parameter = StrictBool | StrictInt | StrictFloat | Annotated[StrictStr, Field(max_length=1024)]
Parameters = Annotated[dict[Name, Parameter], Field(max_length=MAX_PARAMETERS)]
Dim = Annotated[StrictInt, Field(ge=0, le=MAX_DIM)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RequestInput(_Strict):
    """``$request_input``: one input tensor (JSON ``data``, or binary after the header)."""

    name: Name
    shape: Annotated[list[Dim], Field(max_length=MAX_RANK)]
    datatype: Annotated[StrictStr, Field(max_length=16)]
    parameters: Parameters | None = None
    # Nested or flat numbers, row-major; checked against shape and datatype when the array is
    # built (validating a million numbers one by one here would cost more than the model).
    data: object = None


class RequestOutput(_Strict):
    """``$request_output``: an output to return, as JSON or (``binary_data``) binary."""

    name: Name
    parameters: Parameters | None = None


class InferRequest(_Strict):
    """``$inference_request``. ``model_name``/``model_version`` in the body (Triton's binary
    example sends them) are allowed and ignored: the path names the model."""

    id: Annotated[StrictStr, Field(max_length=MAX_NAME)] | None = None
    parameters: Parameters | None = None
    inputs: Annotated[list[RequestInput], Field(min_length=1, max_length=MAX_TENSORS)]
    outputs: Annotated[list[RequestOutput], Field(max_length=MAX_TENSORS)] | None = None
    model_name: Name | None = None
    model_version: Name | None = None


@dataclass(frozen=True)
class DecodedRequest:
    """A request whose inputs passed the model's input contract, and what it asked back."""

    id: str
    # ``CheckedFeeds``: the registry takes them without checking them again.
    feeds: Mapping[str, Array]
    outputs: tuple[str, ...] | None  # None: every output
    binary: Mapping[str, bool]  # an output's own ``binary_data``, where it says
    binary_default: bool  # ``binary_data_output``: the others

    def is_binary(self, output: str) -> bool:
        return self.binary.get(output, self.binary_default)


# -- decoding ----------------------------------------------------------------------------------


def header_length(value: str | None, body_size: int, *, model: str) -> int | None:
    """``Inference-Header-Content-Length`` as a number of bytes within the body (None: the
    body is all JSON)."""
    if value is None:
        return None
    text = value.strip()
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        raise FramingError(f"{HEADER_LENGTH} must be a byte count, got {value[:40]!r}", model=model)
    length = int(text)
    if not 0 < length <= body_size:
        raise FramingError(
            f"{HEADER_LENGTH} is {length}, outside the body of {body_size} bytes", model=model
        )
    return length


def decode_request(body: bytes, length: int | None, card: ModelCard) -> DecodedRequest:
    """A request body (``length``: its JSON header's size, see ``header_length``) to checked
    input arrays for ``card``'s model. ``InvalidInputError`` names what is wrong."""
    header = body if length is None else memoryview(body)[:length]
    request = parse_request(bytes(header), model=card.name)
    binary = memoryview(body)[length:] if length is not None else memoryview(b"")
    arrays = input_arrays(request.inputs, binary, card)
    feeds = conform_caller_feeds(card.name, card.inputs, arrays)
    return DecodedRequest(
        id=request.id or "",
        feeds=feeds,
        outputs=_requested_outputs(request, card),
        binary={
            out.name: flag
            for out in request.outputs or ()
            if (flag := _flag(out.parameters, "binary_data", card.name)) is not None
        },
        binary_default=_flag(request.parameters, "binary_data_output", card.name) or False,
    )


def parse_request(header: bytes, *, model: str) -> InferRequest:
    """The JSON object, bounded: depth scanned before parsing (no recursion on hostile
    nesting), NaN/Infinity refused; then the schema (``extra`` fields refused)."""
    depth = nesting_depth(header)
    if depth > MAX_DEPTH:
        raise MalformedRequestError(f"request nests {depth} levels, limit {MAX_DEPTH}", model=model)
    # The number checks are left to the arrays: a parse_float hook would cost a Python call
    # per element of a large tensor.
    doc = loads_object(header, model=model, what="request")
    try:
        return InferRequest.model_validate(doc)
    except ValidationError as exc:
        raise InvalidInputError(
            f"bad inference request: {schema_problem(exc)}", model=model
        ) from None


def input_arrays(
    inputs: Sequence[RequestInput], binary: memoryview, card: ModelCard
) -> dict[str, Array]:
    """Each input's array, its datatype checked against the model's and its element count
    against its shape before the array is built; binary inputs take consecutive slices of
    ``binary``, which they must use up exactly."""
    specs = {spec.name: spec for spec in card.inputs}
    arrays: dict[str, Array] = {}
    offset = 0
    for tensor in inputs:
        if tensor.name in arrays:
            raise InvalidInputError(f"input {tensor.name!r} is given twice", model=card.name)
        dtype = _input_dtype(tensor, specs.get(tensor.name), card)
        size = _binary_size(tensor, card.name)
        if size is None:
            arrays[tensor.name] = _json_array(tensor, dtype, card.name)
            continue
        chunk = _binary_chunk(tensor, size, dtype, binary, offset, card.name)
        arrays[tensor.name] = _binary_array(chunk, tensor, dtype, card.name)
        offset += size
    if offset != len(binary):
        raise FramingError(
            f"{len(binary) - offset} bytes after the header belong to no input "
            f"(binary_data_size adds up to {offset} of {len(binary)})",
            model=card.name,
        )
    return arrays


def _input_dtype(tensor: RequestInput, spec: TensorSpec | None, card: ModelCard) -> np.dtype[Any]:
    if spec is None:
        raise InvalidInputError(
            f"unknown input {tensor.name!r}; the model takes {[s.name for s in card.inputs]}",
            model=card.name,
            detail=tensor.name,
        )
    expected = v2_datatype(np.dtype(caller_dtype(spec)))
    if tensor.datatype != expected:
        raise InvalidInputError(
            f"input {tensor.name!r} has datatype {tensor.datatype[:16]!r}, the model takes "
            f"{expected}",
            model=card.name,
            detail=tensor.name,
        )
    return NUMPY_DTYPES[expected]


def _binary_size(tensor: RequestInput, model: str) -> int | None:
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is None:
        return None
    if type(size) is not int or size < 0:
        raise FramingError(
            f"input {tensor.name!r}: binary_data_size must be a byte count, got {size!r}",
            model=model,
        )
    if tensor.data is not None:
        raise FramingError(
            f"input {tensor.name!r} has both 'data' and binary_data_size", model=model
        )
    return size


def _json_array(tensor: RequestInput, dtype: np.dtype[Any], model: str) -> Array:
    data, count = tensor.data, math.prod(tensor.shape)
    if not isinstance(data, list):
        raise InvalidInputError(
            f"input {tensor.name!r} needs 'data' (a list) or binary_data_size", model=model
        )
    # A flat list is counted before it becomes an array; a nested one is counted after.
    if (not data or not isinstance(data[0], list)) and len(data) != count:
        raise _count_mismatch(tensor, len(data), count, model)
    try:
        # Its natural dtype (float64, int64, bool): conform_feeds then casts it to the model's
        # with the range and finiteness checks of every front end.
        array = np.asarray(data)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise InvalidInputError(
            f"input {tensor.name!r} data is not a rectangular array of numbers ({exc})",
            model=model,
            detail=tensor.name,
        ) from exc
    if array.dtype.kind not in "biuf" or (array.dtype.kind == "b") != (dtype.kind == "b"):
        raise InvalidInputError(
            f"input {tensor.name!r} data holds {array.dtype} values, not {tensor.datatype}",
            model=model,
            detail=tensor.name,
        )
    if array.size != count:
        raise _count_mismatch(tensor, array.size, count, model)
    return _reshaped(array, tensor, model)


def _binary_chunk(
    tensor: RequestInput,
    size: int,
    dtype: np.dtype[Any],
    binary: memoryview,
    offset: int,
    model: str,
) -> memoryview:
    expected = math.prod(tensor.shape) * dtype.itemsize
    if size != expected:
        raise FramingError(
            f"input {tensor.name!r}: binary_data_size is {size}, shape {tensor.shape} of "
            f"{tensor.datatype} takes {expected} bytes",
            model=model,
        )
    if offset + size > len(binary):
        raise FramingError(
            f"input {tensor.name!r}: binary_data_size {size} at byte {offset} runs past the "
            f"{len(binary)} bytes after the header",
            model=model,
        )
    return binary[offset : offset + size]


def _binary_array(
    chunk: memoryview, tensor: RequestInput, dtype: np.dtype[Any], model: str
) -> Array:
    if dtype.kind == "b":  # one byte per element; any non-zero byte is true
        return _reshaped(np.frombuffer(chunk, dtype=np.uint8).astype(bool), tensor, model)
    array = _reshaped(np.frombuffer(chunk, dtype=dtype), tensor, model)
    # A copy in the machine's byte order, aligned: the runtime never reads the body's bytes
    # (and a big-endian board gets the values it expects).
    return array.astype(dtype.newbyteorder("="), copy=True)


def _reshaped(array: Array, tensor: RequestInput, model: str) -> Array:
    """``array`` (its element count already the shape's) in ``tensor``'s shape."""
    try:
        return array.reshape(tensor.shape)
    except ValueError as exc:  # an empty tensor of absurd sizes, [0, 2**40, 2**40]
        raise InvalidInputError(
            f"input {tensor.name!r} has shape {tensor.shape}, which numpy cannot hold ({exc})",
            model=model,
            detail=tensor.name,
        ) from exc


def _count_mismatch(tensor: RequestInput, got: int, want: int, model: str) -> InvalidInputError:
    return InvalidInputError(
        f"input {tensor.name!r} has {got} data elements, shape {tensor.shape} takes {want}",
        model=model,
        detail=tensor.name,
    )


def _requested_outputs(request: InferRequest, card: ModelCard) -> tuple[str, ...] | None:
    if request.outputs is None:
        return None
    known = [spec.name for spec in card.outputs]
    names = tuple(out.name for out in request.outputs)
    for name in names:
        if name not in known:
            raise InvalidInputError(
                f"unknown output {name!r}; the model returns {known}", model=card.name
            )
    return names


def _flag(parameters: Mapping[str, object] | None, key: str, model: str) -> bool | None:
    """A boolean parameter; None when absent (a non-boolean value is refused)."""
    value = (parameters or {}).get(key)
    if value is None or isinstance(value, bool):
        return value
    raise InvalidInputError(f"parameter {key!r} must be true or false, got {value!r}", model=model)


# -- encoding ----------------------------------------------------------------------------------


def v2_datatype(dtype: np.dtype[Any]) -> str:
    """The protocol's name of a numpy dtype (FP32 for float32)."""
    return _V2_NAMES[dtype.newbyteorder("=")]


def encode_response(
    model: str,
    version: str,
    request: DecodedRequest,
    outputs: Mapping[str, Array],
    parameters: Mapping[str, Parameter] | None = None,
) -> tuple[bytes, int | None]:
    """``$inference_response``: the body, and its JSON header's length when binary outputs
    follow it (the ``Inference-Header-Content-Length`` to send; None: all JSON)."""
    names = request.outputs if request.outputs is not None else tuple(outputs)
    described: list[dict[str, object]] = []  # only serialised
    blobs: list[bytes] = []
    for name in names:
        array = outputs[name]
        tensor: dict[str, object] = {
            "name": name,
            "datatype": v2_datatype(array.dtype),
            "shape": list(array.shape),
        }
        if request.is_binary(name):
            blob = _to_bytes(array)
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = array.reshape(-1)
        described.append(tensor)
    doc: dict[str, object] = {"model_name": model, "model_version": version, "id": request.id}
    if parameters:
        doc["parameters"] = dict(parameters)
    doc["outputs"] = described
    header = jsonwire.dumps(doc)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def _to_bytes(array: Array) -> bytes:
    if array.dtype.kind == "b":
        return array.astype(np.uint8).tobytes()
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


class TensorMetadata(TypedDict):
    """``$metadata_tensor``."""

    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(TypedDict):
    """``$metadata_model_response``."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(TypedDict):
    """``$metadata_server_response``."""

    name: str
    version: str
    extensions: list[str]


def server_metadata(name: str, version: str) -> ServerMetadata:
    return {"name": name, "version": version, "extensions": list(EXTENSIONS)}


def model_metadata(card: ModelCard, versions: Sequence[str]) -> ModelMetadata:
    """``$metadata_model_response`` from the card: callers' datatypes (FP32 for a quantized
    tensor, which the backend converts), -1 for a dimension of any size."""
    return {
        "name": card.name,
        "versions": list(versions),
        "platform": PLATFORMS.get(card.runtime, card.runtime),
        "inputs": [_tensor_metadata(spec) for spec in card.inputs],
        "outputs": [_tensor_metadata(spec) for spec in card.outputs],
    }


def _tensor_metadata(spec: TensorSpec) -> TensorMetadata:
    return {
        "name": spec.name,
        "datatype": v2_datatype(np.dtype(caller_dtype(spec))),
        "shape": list(spec.shape),
    }
