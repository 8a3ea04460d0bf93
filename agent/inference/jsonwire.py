"""JSON of the inference APIs (TF Serving REST, Open Inference Protocol v2): answers encoded
with orjson, numpy arrays written straight from their buffers; request objects parsed.

``json.dumps`` of ``array.tolist()`` spends most of its time turning each float32 into a
Python float and printing it with float64's 17 digits; orjson writes the float32's own
shortest form, which reads back to the same float32, and no list is built. Requests
(``loads_object``, for ``agent.inference.rest`` and ``oip``) are parsed by the standard
``json`` module, not orjson: it keeps integers beyond 64 bits as integers, so they are
refused instead of becoming floats.

Answers hold finite numbers only: the registry refuses a non-finite output before it gets
here (orjson would write NaN as ``null``).
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import numpy as np
import orjson

from agent.errors import InvalidInputError

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


class MalformedJsonError(InvalidInputError):
    """A request that is not a JSON object: not JSON, not an object, NaN/Infinity literals,
    or (v2) nested too deep."""

    reason: ClassVar[str] = "bad_json"


def loads_object(text: bytes, *, model: str, what: str) -> dict[str, object]:
    """``text`` as a JSON object (``what`` names it in the refusal: "request body").

    Its values are checked by whoever reads them. Strict JSON has no NaN or Infinity: such
    literals are refused (a non-finite input would only come out as a non-finite output the
    monitor blames on the model); ``parse_constant`` runs only for them, so numbers cost
    nothing extra. A text nested deeper than the parser recurses is refused as such.
    """
    try:
        doc = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise MalformedJsonError(f"{what} is not valid JSON ({exc})", model=model) from exc
    if not isinstance(doc, dict):
        raise MalformedJsonError(
            f"{what} must be a JSON object, got {type(doc).__name__}", model=model
        )
    return doc


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number (non-finite inputs are refused)")


def dumps(doc: object) -> bytes:
    """``doc`` as compact JSON bytes; numpy arrays and scalars inside it as numbers."""
    return orjson.dumps(doc, default=_plain, option=_OPTIONS)


def _plain(value: Any) -> Any:
    # orjson hands over what it cannot write natively: arrays that are not C-contiguous or of
    # another dtype, numpy scalars.
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
