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
(``grpc_tfs.decode_predict``, ``tensor_to_array``), for four cards (the committed digits
float32 and int8 ones, a MiniLM-like one of two int64 inputs, and one of bool, uint8 and
float16 inputs): random bytes, random JSON, mutated messages, and plausible requests, intact
(which must decode) or with one fault: a name, datatype, shape (negative, zero, 2**40, 2**63,
[0, 2**40, 2**40], 61 axes), element count, value, size field, typed field or framing off.

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
from google.protobuf.message import DecodeError, Message
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
M = TypeVar("M", bound=Message)
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
# Shapes: sizes negative, zero or absurd; no element but sizes numpy cannot hold; more axes
# than numpy has.
dims = st.integers(min_value=0, max_value=3) | st.integers(min_value=-3, max_value=-1) | huge_ints
wild_shapes = (
    st.sampled_from(
        [[0, 2**40, 2**40], [2**40, 0, 2**40], [0, 2**62], [2**40, 2**40], [2**63 - 1], [-1, 64]]
    )
    | st.lists(dims, max_size=6)
    | st.lists(st.just(1), min_size=60, max_size=70).map(lambda ones: [*ones, 2])
)
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


# A damaged request has one fault, in one tensor or in the request itself, so that each kind
# of bad input is drawn often on an otherwise valid request (and faults still combine across
# the tensors of a request whose fault is its list of inputs).
def _fault(draw: st.DrawFn, intact: bool, faults: list[str]) -> str | None:
    return None if intact else draw(st.sampled_from(faults))


def _specs_and_faults(
    draw: st.DrawFn, card: ModelCard, fault: str | None, tensor_faults: list[str]
) -> tuple[list[TensorSpec], list[str | None]]:
    """The inputs a request carries and each one's fault: every input once, in any order,
    with one faulty tensor for ``fault == "tensor"``; any inputs, any faults for "inputs"."""
    if fault == "inputs":
        specs = draw(st.lists(st.sampled_from(card.inputs), max_size=4))
        return specs, [draw(st.sampled_from([None, *tensor_faults])) for _ in specs]
    specs = list(draw(st.permutations(card.inputs)))
    faults: list[str | None] = [None] * len(specs)
    if fault == "tensor":
        faults[draw(st.integers(0, len(specs) - 1))] = draw(st.sampled_from(tensor_faults))
    return specs, faults


@st.composite
def _shape_for(draw: st.DrawFn, spec: TensorSpec, batch: int, fault: str | None) -> list[int]:
    """A shape ``spec`` accepts for ``batch``; with the ``shape`` fault, a wild one or one of
    another rank or sizes."""
    if fault == "shape":
        rank = len(spec.shape)
        return draw(wild_shapes | st.lists(st.integers(0, 4), min_size=rank - 1, max_size=rank + 1))
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


@st.composite
def _values(draw: st.DrawFn, dtype: np.dtype[Any], count: int, fault: str | None) -> list[Any]:
    """``count`` values of ``dtype``; with the ``values`` fault one is odd (a string, NaN,
    1e39, 2**70, a list, ...), with the ``count`` fault one is missing or one too many."""
    values = draw(st.lists(_good(dtype), min_size=count, max_size=count))
    if fault == "values":
        odd = draw(weird_values | json_scalars | odd_floats)
        if values:
            values[draw(st.integers(0, len(values) - 1))] = odd
        else:
            values.append(odd)
    elif fault == "count":
        if values and draw(st.booleans()):
            values.pop()
        else:
            values.append(draw(_good(dtype)))
    return values


def _blob(values: list[Any], dtype: np.dtype[Any]) -> bytes:
    """Values as little-endian bytes of ``dtype`` (zeros for values it cannot hold: NaN as an
    integer). Converted straight to ``dtype``: numpy's own guess for [1, 2**64 - 1] is
    float64."""
    with np.errstate(all="ignore"):
        try:
            return np.array(values, dtype=dtype.newbyteorder("<")).tobytes()
        except (OverflowError, ValueError, TypeError):
            return bytes(len(values) * dtype.itemsize)


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

_V2_FAULTS = ["name", "datatype", "shape", "count", "values", "form"]


@st.composite
def _v2_input(
    draw: st.DrawFn, spec: TensorSpec, batch: int, fault: str | None
) -> tuple[dict[str, Any], bytes]:
    """One ``$request_input`` for ``spec`` (JSON data, flat or nested, or binary) and its
    binary bytes (empty for JSON), with ``fault`` if one is given."""
    name, datatype = spec.name, _v2_name(spec)
    if fault == "name":
        name = draw(st.sampled_from(["", "x", "pixels", "input_ids", "flag", "a" * 300]))
    if fault == "datatype":
        datatype = draw(st.sampled_from([*oip.NUMPY_DTYPES, "BYTES", "fp32", "", "BF16"]))
    shape = draw(_shape_for(spec, batch, fault))
    dtype = oip.NUMPY_DTYPES.get(datatype, np.dtype("<f4"))
    count = _count(shape)
    values = draw(_values(dtype, count or 0, fault))
    tensor: dict[str, Any] = {"name": name, "shape": shape, "datatype": datatype}
    if draw(st.booleans()):  # JSON
        if count is None or fault == "form":
            tensor["data"] = draw(json_values)
        else:
            tensor["data"] = _nested(values, shape) if draw(st.booleans()) else values
        return tensor, b""
    blob = b""
    if count is not None:
        blob = _blob(draw(_values(dtype, count, None)), dtype)
    if fault == "values":  # any bytes: NaN, Infinity, subnormals
        blob = draw(st.binary(min_size=len(blob), max_size=len(blob)))
    size: object = len(blob)
    if fault == "count":
        size = draw(
            st.sampled_from([-1, 0, len(blob) + 1, len(blob) - 1, 2**64, 2**63 - 1])
            | st.sampled_from(["4", 1.5, True, None])
        )
    tensor["parameters"] = {"binary_data_size": size}
    if fault == "form":  # data as well
        tensor["data"] = draw(json_values)
    return tensor, blob


@st.composite
def v2_bodies(draw: st.DrawFn, card: ModelCard) -> tuple[bytes, int | None, bool]:
    """A v2 request body for ``card``, its header length (None: all JSON) and whether it is
    intact (every input once, in any order, JSON or binary) or has a fault."""
    intact, batch = draw(st.booleans()), draw(st.integers(1, 3))
    fault = _fault(draw, intact, ["tensor"] * 4 + ["inputs", "request", "trailing", "length"])
    specs, faults = _specs_and_faults(draw, card, fault, _V2_FAULTS)
    tensors = [draw(_v2_input(spec, batch, one)) for spec, one in zip(specs, faults, strict=True)]
    request: dict[str, Any] = {"inputs": [tensor for tensor, _ in tensors]}
    if draw(st.booleans()):
        request["id"] = "r-1"
    if draw(st.booleans()):
        flags = st.booleans()
        request["outputs"] = [
            {"name": name, "parameters": {"binary_data": draw(flags)}}
            for name in draw(st.lists(st.just("probabilities"), max_size=1))
        ]
        request["parameters"] = {"binary_data_output": draw(flags)}
    if fault == "request":
        key = draw(st.sampled_from(["id", "outputs", "parameters", "model_name", "extra"]))
        request[key] = draw(
            json_values | st.just([{"name": "logits"}]) | st.just({"binary_data_output": 1})
        )
    header = _dump(request)
    blobs = b"".join(blob for _, blob in tensors)
    binary = any("parameters" in tensor for tensor, _ in tensors)
    body = header + blobs
    if fault == "trailing":
        body += draw(st.binary(min_size=1, max_size=8))
    length = len(header) if binary or draw(st.booleans()) else None
    if fault == "length":
        length = draw(st.integers(1, len(body)))  # a header length that lies
    return body, length, intact


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
@given(card=cards, payload=payloads, header=st.none() | st.text(max_size=6))
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

_REST_FAULTS = ["shape", "count", "values", "flat", "json"]


@st.composite
def _column(draw: st.DrawFn, spec: TensorSpec, batch: int, fault: str | None) -> Any:
    """One input's values for ``batch`` instances, nested as the spec's shape (``flat``
    fault: not nested; ``json``: any JSON value)."""
    if fault == "json":
        return draw(json_values)
    shape = draw(_shape_for(spec, batch, fault))
    count = _count(shape)
    if count is None:
        return draw(json_values)
    values = draw(_values(np.dtype(caller_dtype(spec)), count, fault))
    return values if fault == "flat" else _nested(values, shape)


def _row(column: Any, row: int) -> Any:
    return column[row] if isinstance(column, list) and row < len(column) else column


@st.composite
def predict_bodies(draw: st.DrawFn, card: ModelCard) -> tuple[bytes, bool]:
    """A ``:predict`` body, rows (``instances``) or columns (``inputs``), and whether it is
    intact or has a fault."""
    intact, batch = draw(st.booleans()), draw(st.integers(1, 3))
    fault = _fault(draw, intact, ["tensor"] * 4 + ["inputs", "signature", "extra", "unnamed"])
    specs = list(card.inputs)
    faults: list[str | None] = [None] * len(specs)
    if fault == "inputs":
        specs = draw(st.lists(st.sampled_from(card.inputs), max_size=3))
        faults = [draw(st.sampled_from([None, *_REST_FAULTS])) for _ in specs]
    elif fault == "tensor":
        faults[draw(st.integers(0, len(specs) - 1))] = draw(st.sampled_from(_REST_FAULTS))
    columns = {
        spec.name: draw(_column(spec, batch, one)) for spec, one in zip(specs, faults, strict=True)
    }
    # A model of one input may take its values unnamed (a fault for a model of several).
    named = (len(card.inputs) > 1 and fault != "unnamed") or draw(st.booleans())
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
        doc["signature_name"] = draw(st.sampled_from(["", "serving_default"]))
    if fault == "signature":
        doc["signature_name"] = draw(st.sampled_from(["other", 3, None, ["serving_default"]]))
    if fault == "extra":
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
# Each typed field, over the whole range its type holds.
_CONTENTS: dict[str, st.SearchStrategy[Any]] = {
    "bool_contents": st.booleans(),
    "int_contents": _INT32,
    "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats() | odd_floats,
}
_GRPC_V2_FAULTS = ["name", "datatype", "shape", "count", "values", "field", "both", "raw"]


def _dims(shape: list[int]) -> list[int]:
    """A shape as int64 dimensions (what the message can carry)."""
    return [min(max(size, -(2**63)), 2**63 - 1) for size in shape]


@st.composite
def _infer_input(
    draw: st.DrawFn,
    request: v2_pb.ModelInferRequest,
    spec: TensorSpec,
    batch: int,
    fault: str | None,
    raw: bool,
) -> bytes:
    """Adds one input for ``spec`` to ``request``, with typed contents unless the request is
    ``raw``; returns its raw bytes."""
    name, datatype = spec.name, _v2_name(spec)
    if fault == "name":
        name = draw(st.sampled_from(["", "x", "pixels"]))
    if fault == "datatype":
        datatype = draw(st.sampled_from([*V2_DATATYPES, "BYTES", ""]))
    shape = draw(_shape_for(spec, batch, fault))
    tensor = request.inputs.add(name=name, datatype=datatype, shape=_dims(shape))
    dtype = V2_DATATYPES.get(datatype, np.dtype(np.float32))
    count = _count(shape)
    size = count if count is not None else draw(st.integers(0, 8))
    if fault == "count":
        size = max(size + draw(st.sampled_from([-1, 1])), 0)
    values = draw(st.lists(_good(dtype), min_size=size, max_size=size))
    field = grpc_v2._CONTENTS_FIELD.get(datatype, "fp32_contents")
    if fault == "field":
        field = draw(st.sampled_from(sorted(_CONTENTS)))
    if fault in ("values", "field"):  # anything the field holds: 2**32 for an int8, NaN, ...
        values = draw(st.lists(_CONTENTS[field], min_size=size, max_size=size))
    if not raw or fault == "both":
        getattr(tensor.contents, field).extend(values)
    if fault == "both":
        tensor.parameters["binary_data_size"].int64_param = draw(st.integers(-5, 100))
    if fault == "raw":  # bytes of any length
        return draw(st.binary(max_size=64))
    return _blob(values, dtype)


@st.composite
def infer_requests(draw: st.DrawFn, card: ModelCard) -> tuple[v2_pb.ModelInferRequest, bool]:
    """A ``ModelInferRequest`` with typed contents or raw bytes, and whether it is intact
    (every input once, in any order) or has a fault."""
    request = v2_pb.ModelInferRequest(model_name=card.name)
    intact, batch = draw(st.booleans()), draw(st.integers(1, 3))
    fault = _fault(draw, intact, ["tensor"] * 4 + ["inputs", "raw_count", "outputs", "mixed"])
    specs, faults = _specs_and_faults(draw, card, fault, _GRPC_V2_FAULTS)
    # FP16 comes raw only; a request carries all its inputs one way (the ``mixed`` fault:
    # raw bytes for every input, and typed contents beside them for some).
    raw = draw(st.booleans()) or any(_v2_name(spec) == "FP16" for spec in card.inputs)
    blobs = []
    for spec, one in zip(specs, faults, strict=True):
        typed = not raw or (fault == "mixed" and draw(st.booleans()))
        blobs.append(draw(_infer_input(request, spec, batch, one, not typed)))
    if raw or fault == "mixed":
        request.raw_input_contents.extend(blobs)
    if fault == "raw_count":
        request.raw_input_contents.append(draw(st.binary(max_size=16)))
    names = ["probabilities", "logits", ""] if fault == "outputs" else ["probabilities"]
    for name in draw(st.lists(st.sampled_from(names), max_size=2, unique=fault is None)):
        request.outputs.add(name=name)
    return request, intact


def _decode_infer(request: v2_pb.ModelInferRequest, card: ModelCard, intact: bool = False) -> None:
    size = request.ByteSize()
    decoded = refused_or(lambda: grpc_v2.decode_infer(request, card), size, intact=intact)
    if decoded is not None:
        feeds, wanted = decoded
        assert_fits(feeds, card, size)
        assert all(card.output(name) is not None for name in wanted)


def _parsed(
    data: st.DataObject, requests: st.SearchStrategy[tuple[M, bool]], message_type: type[M]
) -> M | None:
    """Random bytes or a drawn request's bytes mutated, parsed as ``message_type``; None
    where protobuf refuses them (``DecodeError``, the server's ``bad_message``)."""
    if data.draw(st.booleans()):
        raw = data.draw(st.binary(max_size=300))
    else:
        raw = _mutated(data.draw, data.draw(requests)[0].SerializeToString())
    try:
        return message_type.FromString(raw)
    except DecodeError:
        return None


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
    request = _parsed(data, infer_requests(card), v2_pb.ModelInferRequest)
    if request is not None:
        _decode_infer(request, card)


# -- TensorFlow Serving gRPC (grpc_tfs) ---------------------------------------------------

# Each typed field, over the whole range its type holds.
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
_TFS_FAULTS = ["dtype", "shape", "rank", "count", "values", "field", "content"]


def _typed_values(values: list[Any], dtype: np.dtype[Any]) -> list[Any]:
    """Values as their typed field holds them: float16 as its bit patterns."""
    if dtype == np.float16:
        return np.array(values, dtype=np.float16).view(np.uint16).tolist()
    return values


@st.composite
def tensor_protos(
    draw: st.DrawFn, spec: TensorSpec | None, batch: int, fault: str | None
) -> tf_pb.TensorProto:
    """A ``TensorProto`` (of ``spec``'s dtype, or any served one) as tensor_content or typed
    values, one value filling the shape or one per element, with ``fault`` if one is given."""
    if spec is not None:
        enum = grpc_tfs._ENUMS[np.dtype(caller_dtype(spec))]
        shape = draw(_shape_for(spec, batch, fault))
    else:
        enum = draw(st.sampled_from(_SERVED))
        shape = draw(wild_shapes if fault == "shape" else st.lists(st.integers(1, 3), max_size=3))
    if fault == "dtype":
        enum = draw(st.sampled_from(_ENUMS) | st.integers(-3, 400))
    tensor = tf_pb.TensorProto(dtype=enum)
    tensor.tensor_shape.dim.extend(tf_pb.TensorShapeProto.Dim(size=size) for size in _dims(shape))
    tensor.tensor_shape.unknown_rank = fault == "rank"
    dtype, field = grpc_tfs._DTYPES.get(enum, (np.dtype(np.float32), "float_val"))
    count = _count(shape)
    form = draw(st.sampled_from(["content", "typed", "fill"]))
    if form == "fill" and (count is None or count > 1):
        size = 1
    else:
        size = count if count is not None else draw(st.integers(0, 8))
    if fault == "count":
        size = max(size + draw(st.sampled_from([-1, 1])), 0)
    if fault == "content":
        tensor.tensor_content = draw(st.binary(max_size=64))
        return tensor
    good = draw(st.lists(_good(dtype), min_size=size, max_size=size))
    if form == "content" and fault not in ("values", "field"):
        tensor.tensor_content = _blob(good, dtype)
        return tensor
    values = _typed_values(good, dtype)
    if fault == "field":
        field = draw(st.sampled_from(sorted(_VALUE_FIELDS)))
    if fault in ("values", "field"):  # anything the field holds: -1 for a uint8, NaN, ...
        values = draw(st.lists(_VALUE_FIELDS[field], min_size=size, max_size=size))
    getattr(tensor, field).extend(values)
    return tensor


@st.composite
def predict_requests(draw: st.DrawFn, card: ModelCard) -> tuple[tfs_pb.PredictRequest, bool]:
    """A ``PredictRequest``, and whether it is intact (every input once) or has a fault."""
    intact, batch = draw(st.booleans()), draw(st.integers(1, 3))
    fault = _fault(draw, intact, ["tensor"] * 4 + ["inputs", "signature", "outputs"])
    request = tfs_pb.PredictRequest()
    request.model_spec.name = card.name
    request.model_spec.signature_name = draw(st.sampled_from(["", "serving_default"]))
    if fault == "signature":
        request.model_spec.signature_name = draw(st.sampled_from(["other", " ", "SERVING_DEFAULT"]))
    names = [spec.name for spec in card.inputs]
    faults: list[str | None] = [None] * len(names)
    if fault == "inputs":
        names = draw(st.lists(st.sampled_from([*names, "x"]), max_size=4, unique=True))
        faults = [draw(st.sampled_from([None, *_TFS_FAULTS])) for _ in names]
    elif fault == "tensor":
        faults[draw(st.integers(0, len(names) - 1))] = draw(st.sampled_from(_TFS_FAULTS))
    for name, one in zip(names, faults, strict=True):
        request.inputs[name].CopyFrom(draw(tensor_protos(card.input(name), batch, one)))
    outputs = ["probabilities", "logits"] if fault == "outputs" else ["probabilities"]
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
    tensor = data.draw(tensor_protos(None, 1, _fault(data.draw, intact, _TFS_FAULTS)))
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
    request = _parsed(data, predict_requests(card), tfs_pb.PredictRequest)
    if request is not None:
        _decode_tfs(request, card)
