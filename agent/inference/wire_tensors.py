"""Tensors as the binary protocols carry them: a dtype name, a shape and flat values.

Pure (numpy only, no protocol library): the gRPC adapters (``grpc_v2``, ``grpc_tfs``) turn
their messages into arrays here, with every size checked against the shape before numpy
sees it (a shape never makes the server allocate more than the message carries, but for
TensorFlow's one-value fill, capped at ``MAX_FILL_ELEMENTS``), and then through
``checked_feeds``: the same input check the REST API applies (names, shapes, dtypes, and
values finite in the input's dtype; ``conform_feeds``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.errors import InvalidInputError
from agent.inference.backends import CheckedFeeds, conform_caller_feeds
from edge_contract.card import ModelCard

Array = npt.NDArray[Any]
# The most elements one value may fill (TensorProto's broadcast form). Every other form carries
# its values in the message, so the message size bounds it; this one would let a few bytes
# claim gigabytes. 16 Mi elements: 64 MiB of float32, four times the default message limit.
MAX_FILL_ELEMENTS = 16 * 1024 * 1024

# The Open Inference Protocol's datatype names (BYTES and BF16 are not served: no model
# here takes strings, and numpy has no bfloat16).
V2_DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_V2_NAMES = {dtype: name for name, dtype in V2_DATATYPES.items()}


def v2_datatype(dtype: np.dtype[Any] | str) -> str:
    """The v2 datatype name of a numpy dtype (``FP32`` for float32)."""
    return _V2_NAMES[np.dtype(dtype)]


def element_count(shape: Sequence[int], *, model: str, name: str) -> int:
    """The number of elements of ``shape``; ``InvalidInputError`` for a negative size."""
    if any(size < 0 for size in shape):
        raise InvalidInputError(
            f"input {name!r} has shape {list(shape)}: sizes must not be negative",
            model=model,
            detail=name,
        )
    return math.prod(shape)  # Python ints: no overflow, however large the sizes claimed


def array_from_bytes(
    data: bytes, dtype: np.dtype[Any], shape: Sequence[int], *, model: str, name: str
) -> Array:
    """Little-endian row-major bytes as an array of ``shape``; the length must match."""
    count = element_count(shape, model=model, name=name)
    if len(data) != count * dtype.itemsize:
        raise InvalidInputError(
            f"input {name!r} has {len(data)} bytes of data, but shape {list(shape)} of "
            f"{dtype} takes {count * dtype.itemsize}",
            model=model,
            detail=name,
        )
    flat = np.frombuffer(data, dtype=dtype.newbyteorder("<")).astype(dtype)
    try:
        return flat.reshape(shape)
    except ValueError as exc:  # an empty tensor of absurd sizes, or more dimensions than numpy's
        raise InvalidInputError(
            f"input {name!r} has shape {list(shape)}, which numpy cannot hold ({exc})",
            model=model,
            detail=name,
        ) from exc


def array_from_values(
    values: Sequence[Any],
    dtype: np.dtype[Any],
    shape: Sequence[int],
    *,
    model: str,
    name: str,
    broadcast_one: bool = False,
) -> Array:
    """Flat typed values as an array of ``shape``; the count must match (or be one value
    filling the whole shape, where the protocol allows it: TensorFlow's TensorProto)."""
    count = element_count(shape, model=model, name=name)
    fill = broadcast_one and len(values) == 1 and count > 1
    if fill:
        if count > MAX_FILL_ELEMENTS:
            raise InvalidInputError(
                f"input {name!r} asks one value to fill shape {list(shape)} ({count} elements; "
                f"at most {MAX_FILL_ELEMENTS})",
                model=model,
                detail=name,
            )
    elif len(values) != count:
        raise InvalidInputError(
            f"input {name!r} has {len(values)} values, but shape {list(shape)} takes {count}",
            model=model,
            detail=name,
        )
    try:
        if fill:
            return np.full(tuple(shape), values[0], dtype=dtype)
        return np.array(values, dtype=dtype).reshape(shape)
    except (OverflowError, ValueError) as exc:  # a uint32 value beyond int16, ...
        raise InvalidInputError(
            f"input {name!r} has values that are not {dtype} ({exc})", model=model, detail=name
        ) from exc


def checked_feeds(card: ModelCard, arrays: Mapping[str, Array]) -> CheckedFeeds:
    """``arrays`` through the input check every front end applies (``conform_feeds``).

    An array that already has its input's float dtype is passed as given by that check, so
    its finiteness is checked here, as the REST API does after parsing.
    """
    return conform_caller_feeds(card.name, card.inputs, arrays)


def pick_outputs(
    outputs: Mapping[str, Array], wanted: Sequence[str], card: ModelCard
) -> dict[str, Array]:
    """The outputs a request names (all of them when it names none), in the order named."""
    if not wanted:
        return dict(outputs)
    check_output_names(wanted, card)
    return {name: outputs[name] for name in wanted}


def check_output_names(wanted: Sequence[str], card: ModelCard) -> None:
    """``InvalidInputError`` for a requested output the model does not have."""
    known = [spec.name for spec in card.outputs]
    for name in wanted:
        if name not in known:
            raise InvalidInputError(
                f"unknown output {name!r}; the model has {known}", model=card.name, detail=name
            )
