"""Property tests of the inference front ends' decoders: whatever a client sends, each one
returns inputs that fit the model or refuses with ``InvalidInputError``; nothing else escapes.

``InvalidInputError`` (with ``FramingError`` and ``MalformedJsonError``) is the family every
front end maps to its protocol's refusal (HTTP 400 in ``rest``/``oip_http``,
``INVALID_ARGUMENT`` in ``grpc_server._refusal``); a gRPC message that does not parse is
protobuf's ``DecodeError`` (``INVALID_ARGUMENT``, ``bad_message``). Anything else would be a
500 or ``INTERNAL`` and a logged traceback. Covered: the Open Inference Protocol over HTTP
(``oip.header_length`` and ``oip.decode_request``, JSON and binary tensors), TensorFlow
Serving's REST ``:predict`` (``rest._decode_predict``), the v2 gRPC ``ModelInferRequest``
(``grpc_v2.decode_infer``) and TensorFlow Serving's ``PredictRequest``
(``grpc_tfs.decode_predict``, ``tensor_to_array``): random bytes, random JSON or messages,
and structurally plausible requests with odd names, shapes (negative, zero, 2**40, 2**63),
datatypes, values and sizes.

A decode that succeeds must hand over exactly the model's inputs in their callers' dtypes,
of shapes the card accepts, finite where they are floats, and no more elements than the
message carried bytes (TensorFlow's one-value fill aside, capped at ``MAX_FILL_ELEMENTS``).
Every decode runs under ``tracemalloc``: a small message must never make the decoder
allocate far beyond its size (a shape claiming 2**40 elements is refused before numpy
allocates it).
"""

from __future__ import annotations

import json
import math
import tracemalloc
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agent.errors import InvalidInputError
from agent.inference import grpc_tfs, grpc_v2, oip
from agent.inference.backends import caller_dtype
from agent.inference.cardfile import load_card
from agent.inference.protos import oip_v2_pb2 as v2_pb
from agent.inference.protos import tf_framework_pb2 as tf_pb
from agent.inference.protos import tf_serving_pb2 as tfs_pb
from agent.inference.rest import _decode_predict
from agent.inference.wire_tensors import MAX_FILL_ELEMENTS, V2_DATATYPES
from edge_contract.card import ModelCard, TensorSpec, card_path_for

T = TypeVar("T")
DIGITS = Path(__file__).resolve().parents[2] / "models" / "digits"
FP32 = load_card(card_path_for(DIGITS / "digits-fp32.onnx"))
# Quantized: its callers still speak float32 (the backend quantizes).
INT8 = load_card(card_path_for(DIGITS / "digits-int8.tflite"))
# A MiniLM-like card (no MiniLM card is committed): two int64 inputs of any batch and length.
TOKENS = FP32.model_copy(
    update={
        "name": "tokens",
        "inputs": (
            TensorSpec(name="input_ids", dtype="int64", shape=(-1, -1)),
            TensorSpec(name="attention_mask", dtype="int64", shape=(-1, -1)),
        ),
    }
)
# The other dtypes a card may declare, for the bool, narrow-integer and float16 paths.
MIXED = FP32.model_copy(
    update={
        "name": "mixed",
        "inputs": (
            TensorSpec(name="flag", dtype="bool", shape=(-1,)),
            TensorSpec(name="small", dtype="uint8", shape=(-1, 3)),
            TensorSpec(name="half", dtype="float16", shape=(-1, 2)),
        ),
    }
)
CARDS = [FP32, INT8, TOKENS, MIXED]
cards = st.sampled_from(CARDS)
# What a small message may make the decoder hold at its peak: Python's parse of JSON takes
# several times the text, arrays a few copies; gigabytes from kilobytes would be far beyond.
ALLOCATION_FACTOR = 64
ALLOCATION_SLACK = 4 * 1024 * 1024

# -- values --------------------------------------------------------------------------------

huge_ints = st.sampled_from([2**31, 2**32, 2**40, 2**62, 2**63 - 1, 2**63, 2**64, 2**70, -(2**63)])
odd_floats = st.sampled_from([1e308, -1e308, 1e39, -0.0, 5e-324, 3.4028235e38, 65504.0, 65520.0])
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | huge_ints
    | st.floats(allow_nan=True, allow_infinity=True)
    | odd_floats
    | st.text(max_size=12)
)
_KEYS = [
    "inputs",
    "outputs",
    "instances",
    "id",
    "parameters",
    "name",
    "shape",
    "datatype",
    "data",
    "binary_data_size",
    "binary_data",
    "binary_data_output",
    "signature_name",
    "pixels",
    "input_ids",
]
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)
# Dimensions: mostly small, sometimes negative, zero or absurd.
dims = st.integers(min_value=0, max_value=3) | st.integers(min_value=-3, max_value=-1) | huge_ints
wild_shapes = st.lists(dims, max_size=6) | st.lists(st.just(1), min_size=30, max_size=70)
weird_values = st.sampled_from(
    [None, "1", "", [], [1.0], {}, True, float("nan"), float("inf"), 2**64, 2**70, 1e308, -1]
)


def _dump(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


def _bracketed(depth: int, prefix: bytes, suffix: bytes) -> bytes:
    return prefix + b"[" * depth + b"1" + b"]" * depth + suffix


# Nesting past every limit: bare brackets, and a tensor nested as deep as the parser goes.
_V2_TENSOR = b'{"inputs": [{"name": "pixels", "shape": [1], "datatype": "FP32", "data": '
deep = (
    st.tuples(st.integers(0, 3000), st.sampled_from([b"[", b'{"inputs":', b'{"a":['])).map(
        lambda t: t[1] * t[0]
    )
    | st.integers(30, 900).map(lambda n: _bracketed(n, _V2_TENSOR, b"}]}"))
    | st.integers(30, 900).map(lambda n: _bracketed(n, b'{"inputs": ', b"}"))
)
payloads = st.binary(max_size=300) | json_values.map(_dump) | deep


def _v2_name(spec: TensorSpec) -> str:
    return oip.v2_datatype(np.dtype(caller_dtype(spec)))


@st.composite
def _shape_for(draw: st.DrawFn, spec: TensorSpec, batch: int, intact: bool) -> list[int]:
    """A shape the spec accepts for ``batch``; unless intact, sometimes another batch or a
    wild shape."""
    if not intact:
        if draw(st.integers(0, 5)) == 0:
            return draw(wild_shapes)
        batch = draw(st.integers(1, 3))
    free = [draw(st.integers(1, 3)) for _ in spec.shape]
    return [
        (batch if axis == 0 else free[axis]) if size == -1 else size
        for axis, size in enumerate(spec.shape)
    ]


def _count(shape: list[int]) -> int | None:
    """The element count of a shape if it is one a test can fill (small, non-negative)."""
    if any(size < 0 for size in shape):
        return None
    count = math.prod(shape)
    return count if count <= 512 else None


def _good(dtype: np.dtype[Any]) -> st.SearchStrategy[Any]:
    """Values any input of ``dtype`` takes."""
    if dtype.kind == "b":
        return st.booleans()
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return st.integers(int(info.min), int(info.max))
    return st.floats(-1e4, 1e4, width=16 if dtype.itemsize == 2 else 32)


def _element(dtype: np.dtype[Any]) -> st.SearchStrategy[Any]:
    """Values of ``dtype``'s kind, sometimes beyond what the model's input holds."""
    if dtype.kind == "f":
        return _good(dtype) | odd_floats
    return _good(dtype)


@st.composite
def _values(draw: st.DrawFn, dtype: np.dtype[Any], count: int, intact: bool) -> list[Any]:
    """``count`` values of ``dtype``; unless intact, sometimes one is odd, one too few or
    one too many."""
    if intact:
        return draw(st.lists(_good(dtype), min_size=count, max_size=count))
    values = draw(st.lists(_element(dtype), min_size=count, max_size=count))
    damage = draw(st.integers(0, 7))
    if damage == 0 and values:
        values[draw(st.integers(0, len(values) - 1))] = draw(weird_values | json_scalars)
    elif damage == 1 and values:
        values.pop()
    elif damage == 2:
        values.append(draw(_element(dtype)))
    return values


def _blob(values: list[Any], dtype: np.dtype[Any]) -> bytes:
    """Values as little-endian bytes of ``dtype`` (1e308 as float16 is its Infinity)."""
    with np.errstate(all="ignore"):
        return np.array(values).astype(dtype.newbyteorder("<")).tobytes()


def _nested(values: list[Any], shape: list[int]) -> Any:
    """Flat values as nested lists of ``shape`` (a flat list when they do not fill it)."""
    if len(values) != math.prod(shape) or not 0 < len(shape) <= 32 or max(shape) > 512:
        return values
    flat = np.empty(len(values), dtype=object)
    for index, value in enumerate(values):  # element by element: a list stays one element
        flat[index] = value
    return flat.reshape(shape).tolist()


# -- what a decode may return --------------------------------------------------------------


@contextmanager
def allocation_bound(message_bytes: int, allowance: int = 0) -> Iterator[None]:
    """The decoder's peak allocation (numpy's included) stays within a small multiple of the
    message (and an ``allowance`` the protocol grants): a shape must not make it allocate
    what the message does not carry."""
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    limit = ALLOCATION_FACTOR * message_bytes + ALLOCATION_SLACK + allowance
    assert peak <= limit, (peak, message_bytes, allowance)


def refused_or(
    decode: Callable[[], T], message_bytes: int, allowance: int = 0, *, intact: bool = False
) -> T | None:
    """``decode()``'s result, or None when it refused with ``InvalidInputError`` (which an
    ``intact`` request, one the model takes, must not be)."""
    with allocation_bound(message_bytes, allowance):
        try:
            decoded = decode()
        except InvalidInputError as exc:
            refusal: InvalidInputError | None = exc
        else:
            refusal = None
    if refusal is None:
        event("decoded")
        return decoded
    event(f"refused: {type(refusal).__name__}")
    assert not intact, f"a request the model takes was refused: {refusal}"
    assert str(refusal)  # a refusal says what is wrong
    return None


def assert_fits(feeds: Mapping[str, Any], card: ModelCard, max_elements: int) -> None:
    """What a decoder hands the registry: the model's inputs, as the contract checks them."""
    assert sorted(feeds) == sorted(spec.name for spec in card.inputs)
    total = 0
    for spec in card.inputs:
        array = feeds[spec.name]
        assert isinstance(array, np.ndarray)
        assert array.dtype == np.dtype(caller_dtype(spec))
        assert spec.accepts_shape(tuple(array.shape)) and array.shape[0] > 0
        if array.dtype.kind == "f":
            assert np.isfinite(array).all()
        total += array.size
    assert total <= max_elements


# -- Open Inference Protocol over HTTP (oip) ----------------------------------------------


@st.composite
def _v2_input(
    draw: st.DrawFn, spec: TensorSpec, batch: int, intact: bool
) -> tuple[dict[str, Any], bytes]:
    """One ``$request_input`` for ``spec`` and its binary bytes (empty for JSON data);
    unless intact, with odd names, datatypes, shapes, values and sizes."""
    name, datatype = spec.name, _v2_name(spec)
    if not intact:
        name = draw(st.just(name) | st.sampled_from(["", "x", "pixels", "input_ids", "flag"]))
        datatype = draw(
            st.just(datatype) | st.sampled_from([*oip.NUMPY_DTYPES, "BYTES", "fp32", "", "BF16"])
        )
    shape = draw(_shape_for(spec, batch, intact))
    dtype = oip.NUMPY_DTYPES.get(datatype, np.dtype("<f4"))
    count = _count(shape)
    tensor: dict[str, Any] = {"name": name, "shape": shape, "datatype": datatype}
    if draw(st.booleans()):  # JSON data, flat or nested
        if count is None:
            tensor["data"] = draw(json_values)
        else:
            values = draw(_values(dtype, count, intact))
            tensor["data"] = _nested(values, shape) if draw(st.booleans()) else values
        return tensor, b""
    # Binary: the bytes of well-formed values, or random ones; the size right or not.
    if intact or (count is not None and draw(st.booleans())):
        blob = _blob(draw(_values(dtype, count or 0, True)), dtype)
    else:
        blob = draw(st.binary(max_size=64))
    size: object = len(blob)
    if not intact:
        size = draw(
            st.just(size)
            | st.sampled_from([-1, 0, len(blob) + 1, len(blob) - 1, 2**64, 2**63 - 1])
            | st.sampled_from(["4", 1.5, True, None])
        )
    tensor["parameters"] = {"binary_data_size": size}
    if not intact and draw(st.integers(0, 5)) == 0:
        tensor["data"] = draw(json_values)
    return tensor, blob


@st.composite
def v2_bodies(draw: st.DrawFn, card: ModelCard) -> tuple[bytes, int | None, bool]:
    """A v2 request body for ``card``, its header length (None: all JSON) and whether it is
    intact (every input once, in any order, JSON or binary) or has odd parts."""
    intact, batch = draw(st.booleans()), draw(st.integers(1, 3))
    if intact:
        specs = draw(st.permutations(card.inputs))
    else:
        specs = draw(st.lists(st.sampled_from(card.inputs), max_size=4))
    tensors = [draw(_v2_input(spec, batch, intact)) for spec in specs]
    request: dict[str, Any] = {"inputs": [tensor for tensor, _ in tensors]}
    if draw(st.booleans()):
        request["id"] = draw(st.text(max_size=8) | st.integers()) if not intact else "r-1"
    if draw(st.booleans()):
        names = st.sampled_from(["probabilities"] if intact else ["probabilities", "logits", ""])
        flags = st.booleans() if intact else st.booleans() | st.sampled_from([1, "yes", None])
        request["outputs"] = [
            {"name": name, "parameters": {"binary_data": draw(flags)}}
            for name in draw(st.lists(names, max_size=3, unique=intact))
        ]
        request["parameters"] = {"binary_data_output": draw(flags)}
    if not intact and draw(st.integers(0, 7)) == 0:
        request[draw(st.sampled_from(["model_name", "extra", "parameters"]))] = draw(json_values)
    header = _dump(request)
    blobs = b"".join(blob for _, blob in tensors)
    binary = any("parameters" in tensor for tensor, _ in tensors)
    if intact:
        return header + blobs, len(header) if binary or draw(st.booleans()) else None, True
    body = header + blobs + draw(st.sampled_from([b"", b"", b"\x00", b"\xff" * 7]))
    length = len(header) if binary or draw(st.booleans()) else None
    if length is not None and draw(st.integers(0, 7)) == 0:
        length = draw(st.integers(1, len(body)))  # a header length that lies
    return body, length, False


def _decode_v2(body: bytes, length: int | None, card: ModelCard, intact: bool = False) -> None:
    decoded = refused_or(lambda: oip.decode_request(body, length, card), len(body), intact=intact)
    if decoded is not None:
        assert_fits(decoded.feeds, card, len(body))
        for name in decoded.outputs or ():
            assert card.output(name) is not None


@settings(max_examples=300, deadline=None)
@given(
    value=st.none()
    | st.text(max_size=24)
    | st.integers(-5, 2**70).map(str)
    | st.sampled_from([" 12 ", "+5", "1_0", "0x10", "\u00b2", "\u0661\u0662", "\uff11"]),
    body_size=st.integers(0, 2**40),
)
def test_oip_header_length_is_a_byte_count_within_the_body(
    value: str | None, body_size: int
) -> None:
    try:
        length = oip.header_length(value, body_size, model="digits")
    except oip.FramingError:
        return
    assert length is None if value is None else 0 < length <= body_size


@settings(max_examples=300, deadline=None)
@given(
    card=cards,
    payload=payloads,
    header=st.none() | st.text(max_size=6),
)
def test_oip_decodes_any_bytes_or_refuses(
    card: ModelCard, payload: bytes, header: str | None
) -> None:
    try:
        length = oip.header_length(header, len(payload), model=card.name)
    except oip.FramingError:
        length = None
    _decode_v2(payload, length, card)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), card=cards)
def test_oip_decodes_plausible_requests_or_refuses(data: st.DataObject, card: ModelCard) -> None:
    body, length, intact = data.draw(v2_bodies(card))
    _decode_v2(body, length, card, intact)


# -- TensorFlow Serving REST :predict (rest) ----------------------------------------------


@st.composite
def _column(draw: st.DrawFn, spec: TensorSpec, batch: int, intact: bool) -> Any:
    """One input's values for ``batch`` instances, nested as the spec's shape (or not)."""
    shape = draw(_shape_for(spec, batch, intact))
    count = _count(shape)
    if count is None:
        return draw(json_values)
    values = draw(_values(np.dtype(caller_dtype(spec)), count, intact))
    return _nested(values, shape) if intact or draw(st.integers(0, 5)) else values


def _row(column: Any, row: int) -> Any:
    return column[row] if isinstance(column, list) and row < len(column) else column


@st.composite
def predict_bodies(draw: st.DrawFn, card: ModelCard) -> tuple[bytes, bool]:
    """A ``:predict`` body, rows (``instances``) or columns (``inputs``), and whether it is
    intact or has odd parts."""
    intact, batch = draw(st.booleans()), draw(st.integers(1, 3))
    specs = list(card.inputs)
    if not intact and draw(st.integers(0, 3)) == 0:
        specs = draw(st.lists(st.sampled_from(card.inputs), max_size=3))
    columns = {spec.name: draw(_column(spec, batch, intact)) for spec in specs}
    # A model of one input may take its values unnamed.
    named = len(card.inputs) > 1 or draw(st.booleans())
    doc: dict[str, Any] = {}
    if draw(st.booleans()):
        if named:
            doc["instances"] = [
                {name: _row(column, row) for name, column in columns.items()}
                for row in range(batch)
            ]
        else:
            doc["instances"] = next(iter(columns.values()), [])
    else:
        doc["inputs"] = columns if named else next(iter(columns.values()), [])
    if draw(st.integers(0, 5)) == 0:
        choices = ["", "serving_default"] if intact else ["", "serving_default", "other", 3]
        doc["signature_name"] = draw(st.sampled_from(choices))
    if not intact and draw(st.integers(0, 7)) == 0:
        doc[draw(st.sampled_from(["instances", "inputs", "extra"]))] = draw(json_values)
    return _dump(doc), intact


def _decode_rest(body: bytes, card: ModelCard, intact: bool = False) -> None:
    decoded = refused_or(lambda: _decode_predict(body, card), len(body), intact=intact)
    if decoded is not None:
        feeds, _ = decoded
        assert_fits(feeds, card, len(body))


@settings(max_examples=300, deadline=None)
@given(card=cards, payload=payloads)
def test_rest_predict_decodes_any_bytes_or_refuses(card: ModelCard, payload: bytes) -> None:
    _decode_rest(payload, card)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), card=cards)
def test_rest_predict_decodes_plausible_bodies_or_refuses(
    data: st.DataObject, card: ModelCard
) -> None:
    body, intact = data.draw(predict_bodies(card))
    _decode_rest(body, card, intact)


# -- Open Inference Protocol over gRPC (grpc_v2) ------------------------------------------

_INT32 = st.integers(-(2**31), 2**31 - 1)
_CONTENTS: dict[str, st.SearchStrategy[Any]] = {
    "bool_contents": st.booleans(),
    "int_contents": _INT32,
    "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats() | odd_floats,
}


def _dims(shape: list[int]) -> list[int]:
    """A shape as int64 dimensions (what the message can carry)."""
    return [min(max(size, -(2**63)), 2**63 - 1) for size in shape]


@st.composite
def _infer_input(
    draw: st.DrawFn, request: v2_pb.ModelInferRequest, spec: TensorSpec, batch: int, intact: bool
) -> bytes:
    """Adds one input for ``spec`` to ``request`` with typed contents, and returns its values
    as raw bytes (the request takes one or the other, or both when it is not intact)."""
    name, datatype = spec.name, _v2_name(spec)
    if not intact:
        name = draw(st.just(name) | st.sampled_from(["", "x", "pixels"]))
        datatype = draw(st.just(datatype) | st.sampled_from([*V2_DATATYPES, "BYTES", ""]))
    shape = draw(_shape_for(spec, batch, intact))
    tensor = request.inputs.add(name=name, datatype=datatype, shape=_dims(shape))
    dtype = V2_DATATYPES.get(datatype, np.dtype(np.float32))
    count = _count(shape)
    field = grpc_v2._CONTENTS_FIELD.get(datatype, "fp32_contents")
    if intact or (count is not None and draw(st.booleans())):
        values = draw(_values(dtype, count or 0, True))
        if datatype != "FP16":  # raw only
            getattr(tensor.contents, field).extend(values)
        return _blob(values, dtype)
    field = draw(st.just(field) | st.sampled_from(sorted(_CONTENTS)))
    size = count if count is not None else draw(st.integers(0, 8))
    size = max(size + draw(st.sampled_from([0, 0, 0, -1, 1])), 0)
    getattr(tensor.contents, field).extend(
        draw(st.lists(_CONTENTS[field], min_size=size, max_size=size))
    )
    if draw(st.integers(0, 7)) == 0:
        tensor.parameters["binary_data_size"].int64_param = draw(st.integers(-5, 100))
    return draw(st.binary(max_size=64))


@st.composite
def infer_requests(draw: st.DrawFn, card: ModelCard) -> tuple[v2_pb.ModelInferRequest, bool]:
    """A ``ModelInferRequest`` with typed contents or raw bytes, and whether it is intact
    (every input once, in any order) or has odd parts."""
    request = v2_pb.ModelInferRequest(model_name=card.name)
    intact, batch = draw(st.booleans()), draw(st.integers(1, 3))
    if intact:
        specs = draw(st.permutations(card.inputs))
    else:
        specs = draw(st.lists(st.sampled_from(card.inputs), max_size=4))
    raw = [draw(_infer_input(request, spec, batch, intact)) for spec in specs]
    if intact:
        typed = all(tensor.datatype != "FP16" for tensor in request.inputs)
        mode = draw(st.sampled_from(["typed", "raw"])) if typed else "raw"
    else:
        mode = draw(st.sampled_from(["typed", "raw", "raw", "both"]))
    if mode != "typed":
        if mode == "raw":
            for tensor in request.inputs:
                tensor.ClearField("contents")
        request.raw_input_contents.extend(raw)
        if not intact and draw(st.integers(0, 5)) == 0:
            request.raw_input_contents.append(draw(st.binary(max_size=16)))
    names = ["probabilities"] if intact else ["probabilities", "logits", ""]
    for name in draw(st.lists(st.sampled_from(names), max_size=2, unique=intact)):
        request.outputs.add(name=name)
    return request, intact


def _decode_infer(request: v2_pb.ModelInferRequest, card: ModelCard, intact: bool = False) -> None:
    size = request.ByteSize()
    decoded = refused_or(lambda: grpc_v2.decode_infer(request, card), size, intact=intact)
    if decoded is not None:
        feeds, wanted = decoded
        assert_fits(feeds, card, size)
        assert all(card.output(name) is not None for name in wanted)


def _mutated(draw: st.DrawFn, message: bytes) -> bytes:
    """``message`` with a few bytes changed, cut short or lengthened."""
    data = bytearray(message)
    for _ in range(draw(st.integers(0, 4))):
        if not data:
            break
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data) + draw(st.sampled_from([b"", b"\x08", b"\x12\x7f", b"\xff\xff"]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), card=cards)
def test_grpc_v2_decodes_plausible_requests_or_refuses(
    data: st.DataObject, card: ModelCard
) -> None:
    request, intact = data.draw(infer_requests(card))
    _decode_infer(request, card, intact)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), card=cards)
def test_grpc_v2_parses_any_bytes_or_refuses(data: st.DataObject, card: ModelCard) -> None:
    """As ``grpc_server`` does: parse (``DecodeError`` is its refusal), then decode."""
    if data.draw(st.booleans()):
        raw = data.draw(st.binary(max_size=300))
    else:
        raw = _mutated(data.draw, data.draw(infer_requests(card))[0].SerializeToString())
    try:
        request = v2_pb.ModelInferRequest.FromString(raw)
    except DecodeError:
        return
    _decode_infer(request, card)


# -- TensorFlow Serving gRPC (grpc_tfs) ---------------------------------------------------

_VALUE_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "float_val": st.floats(width=32),
    "double_val": st.floats() | odd_floats,
    "half_val": _INT32,  # float16 bit patterns, or anything else an int32 holds
    "int_val": _INT32,
    "int64_val": st.integers(-(2**63), 2**63 - 1),
    "uint32_val": st.integers(0, 2**32 - 1),
    "uint64_val": st.integers(0, 2**64 - 1),
    "bool_val": st.booleans(),
    "string_val": st.binary(max_size=4),
}
_ENUMS = sorted(tf_pb.DataType.values())
_SERVED = sorted(grpc_tfs._DTYPES)


def _typed_values(values: list[Any], dtype: np.dtype[Any]) -> list[Any]:
    """Values as their typed field holds them: float16 as its bit patterns."""
    if dtype == np.float16:
        return np.array(values, dtype=np.float16).view(np.uint16).tolist()
    return values


@st.composite
def tensor_protos(
    draw: st.DrawFn, spec: TensorSpec | None, batch: int, intact: bool
) -> tf_pb.TensorProto:
    """A ``TensorProto`` (of ``spec``'s dtype, or any served one) as tensor_content or typed
    values, one value filling the shape or one per element: intact, or with odd parts
    (unknown dtypes, wild shapes, unknown rank, sizes off, values in another field)."""
    if spec is not None:
        enum = grpc_tfs._ENUMS[np.dtype(caller_dtype(spec))]
        shape = draw(_shape_for(spec, batch, intact))
    else:
        enum = draw(st.sampled_from(_SERVED))
        shape = draw(st.lists(st.integers(1, 3), max_size=3))
    if not intact:
        enum = draw(st.just(enum) | st.sampled_from(_ENUMS) | st.integers(-3, 400))
        if spec is None and draw(st.booleans()):
            shape = draw(wild_shapes)
    tensor = tf_pb.TensorProto(dtype=enum)
    tensor.tensor_shape.dim.extend(tf_pb.TensorShapeProto.Dim(size=size) for size in _dims(shape))
    tensor.tensor_shape.unknown_rank = not intact and draw(st.integers(0, 15)) == 0
    dtype, field = grpc_tfs._DTYPES.get(enum, (np.dtype(np.float32), "float_val"))
    count = _count(shape)
    form = draw(st.sampled_from(["content", "typed", "fill"]))
    if intact or (count is not None and draw(st.booleans())):
        if form == "fill" and count:
            values = draw(_values(dtype, 1, True))
            getattr(tensor, field).extend(_typed_values(values, dtype))
        elif form == "typed":
            values = draw(_values(dtype, count or 0, True))
            getattr(tensor, field).extend(_typed_values(values, dtype))
        else:
            tensor.tensor_content = _blob(draw(_values(dtype, count or 0, True)), dtype)
        return tensor
    if form == "content":
        tensor.tensor_content = draw(st.binary(max_size=64))
        return tensor
    field = draw(st.just(field) | st.sampled_from(sorted(_VALUE_FIELDS)))
    size = 1 if form == "fill" else count if count is not None else draw(st.integers(0, 8))
    size = max(size + draw(st.sampled_from([0, 0, 0, -1, 1])), 0)
    getattr(tensor, field).extend(
        draw(st.lists(_VALUE_FIELDS[field], min_size=size, max_size=size))
    )
    return tensor


@st.composite
def predict_requests(draw: st.DrawFn, card: ModelCard) -> tuple[tfs_pb.PredictRequest, bool]:
    """A ``PredictRequest``, and whether it is intact (every input once) or has odd parts."""
    intact, batch = draw(st.booleans()), draw(st.integers(1, 3))
    request = tfs_pb.PredictRequest()
    request.model_spec.name = card.name
    signatures = ["", "serving_default"] if intact else ["", "serving_default", "other"]
    request.model_spec.signature_name = draw(st.sampled_from(signatures))
    names = [spec.name for spec in card.inputs]
    if not intact:
        names = draw(st.lists(st.sampled_from([*names, "x"]), max_size=4, unique=True))
    for name in names:
        request.inputs[name].CopyFrom(draw(tensor_protos(card.input(name), batch, intact)))
    outputs = ["probabilities"] if intact else ["probabilities", "logits"]
    request.output_filter.extend(draw(st.lists(st.sampled_from(outputs), max_size=2)))
    return request, intact


def _fill_allowance(tensor: tf_pb.TensorProto) -> int:
    """What one value may fill: the elements of a shape within ``MAX_FILL_ELEMENTS`` (none of
    a larger one, which must be refused), as float64 in numpy and float32 after the check."""
    sizes = [dim.size for dim in tensor.tensor_shape.dim]
    count = math.prod(sizes) if all(size >= 0 for size in sizes) else 0
    return count * (8 + 4) if count <= MAX_FILL_ELEMENTS else 0


def _decode_tfs(request: tfs_pb.PredictRequest, card: ModelCard, intact: bool = False) -> None:
    size = request.ByteSize()
    fills = sum(_fill_allowance(tensor) for tensor in request.inputs.values())
    decoded = refused_or(lambda: grpc_tfs.decode_predict(request, card), size, fills, intact=intact)
    if decoded is not None:
        feeds, wanted = decoded
        assert_fits(feeds, card, size + len(request.inputs) * MAX_FILL_ELEMENTS)
        assert all(card.output(name) is not None for name in wanted)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), card=cards)
def test_grpc_tfs_decodes_plausible_requests_or_refuses(
    data: st.DataObject, card: ModelCard
) -> None:
    request, intact = data.draw(predict_requests(card))
    _decode_tfs(request, card, intact)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_grpc_tfs_tensor_to_array_builds_the_shape_it_names_or_refuses(
    data: st.DataObject,
) -> None:
    intact = data.draw(st.booleans())
    tensor = data.draw(tensor_protos(None, 1, intact))
    size = tensor.ByteSize()
    array = refused_or(
        lambda: grpc_tfs.tensor_to_array(tensor, model="m", name="x"),
        size,
        _fill_allowance(tensor),
        intact=intact,
    )
    if array is not None:
        assert array.shape == tuple(dim.size for dim in tensor.tensor_shape.dim)
        assert array.dtype == grpc_tfs._DTYPES[tensor.dtype][0]
        assert array.size <= size + MAX_FILL_ELEMENTS


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), card=cards)
def test_grpc_tfs_parses_any_bytes_or_refuses(data: st.DataObject, card: ModelCard) -> None:
    if data.draw(st.booleans()):
        raw = data.draw(st.binary(max_size=300))
    else:
        raw = _mutated(data.draw, data.draw(predict_requests(card))[0].SerializeToString())
    try:
        request = tfs_pb.PredictRequest.FromString(raw)
    except DecodeError:
        return
    _decode_tfs(request, card)
