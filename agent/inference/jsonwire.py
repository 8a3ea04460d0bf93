"""JSON answers of the inference APIs (TF Serving REST, Open Inference Protocol v2): encoded
with orjson, numpy arrays written straight from their buffers.

``json.dumps`` of ``array.tolist()`` spends most of its time turning each float32 into a
Python float and printing it with float64's 17 digits; orjson writes the float32's own
shortest form, which reads back to the same float32, and no list is built. Requests are
still parsed by the standard ``json`` module (``agent.inference.rest``, ``oip``): it keeps
integers beyond 64 bits as integers, so they are refused instead of becoming floats.

Answers hold finite numbers only: the registry refuses a non-finite output before it gets
here (orjson would write NaN as ``null``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


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
