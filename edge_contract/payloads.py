"""JSON payload encoding and decoding shared by the agent and the controller (pure, no IO).

Payloads are compact UTF-8 JSON objects. ``decode_json`` / ``decode_object`` are the single
place where bytes from the network become data. Limits come before types: the size is checked
first, then the nesting depth by a scan of the raw bytes (Python's ``json`` recurses, so a
deep array would otherwise end in ``RecursionError``), then the parse refuses ``NaN`` and
``Infinity`` and integers outside 64 bits. Anything else raises ``PayloadError`` with a short
``reason`` code and an excerpt of the offending bytes; typed models check the fields after.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from edge_contract.errors import PayloadError

ModelT = TypeVar("ModelT", bound=BaseModel)

# Telemetry is a few KiB; anything far larger on these topics is a bug or an attack.
MAX_PAYLOAD_BYTES = 256 * 1024
# Every message of the fleet nests a few levels; model inputs nest one level per tensor axis.
MAX_DEPTH = 32
# Signed 64-bit: what SQLite's INTEGER, a seq or a counter can hold.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
_EXCERPT = 80
# JSON strings (with their escapes) and then the brackets left outside them.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")


def encode(obj: Mapping[str, object]) -> bytes:
    """Compact JSON of a dict (or a TypedDict, or a model's ``model_dump``); non-finite
    floats become null so the output is strict JSON."""
    return json.dumps(_finite(obj), separators=(",", ":"), allow_nan=False).encode()


def decode_object(
    payload: bytes | bytearray, *, max_bytes: int = MAX_PAYLOAD_BYTES, max_depth: int = MAX_DEPTH
) -> dict[str, Any]:
    """Parse a JSON object payload within the size and depth limits.

    Raises:
        PayloadError: too large, too deep, not UTF-8, not JSON, a non-finite or out-of-range
            number, or not an object at the top level.
    """
    value = decode_json(payload, max_bytes=max_bytes, max_depth=max_depth)
    if not isinstance(value, dict):
        raise PayloadError("expected a JSON object", excerpt=_excerpt(payload), reason="not_object")
    return value


def decode_json(
    payload: bytes | bytearray, *, max_bytes: int = MAX_PAYLOAD_BYTES, max_depth: int = MAX_DEPTH
) -> Any:
    """Parse any JSON value within the limits (see ``decode_object``)."""
    if len(payload) > max_bytes:
        raise PayloadError(
            f"payload of {len(payload)} bytes exceeds {max_bytes}",
            excerpt=_excerpt(payload),
            reason="too_large",
        )
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(
            f"not valid UTF-8 ({exc.reason} at byte {exc.start})",
            excerpt=_excerpt(payload),
            reason="not_utf8",
        ) from None
    depth = nesting_depth(payload)
    if depth > max_depth:
        raise PayloadError(
            f"nested {depth} levels deep, limit {max_depth}",
            excerpt=_excerpt(payload),
            reason="too_deep",
        )
    try:
        return json.loads(
            text, parse_constant=_no_constant, parse_int=_bounded_int, parse_float=_finite_float
        )
    except _NumberError as exc:
        raise PayloadError(str(exc), excerpt=_excerpt(payload), reason="number_range") from None
    except ValueError as exc:
        raise PayloadError(
            f"not valid JSON ({exc})", excerpt=_excerpt(payload), reason="not_json"
        ) from None


def decode_model(
    model: type[ModelT], payload: bytes | bytearray, *, max_bytes: int = MAX_PAYLOAD_BYTES
) -> ModelT:
    """Decode within the limits, then validate into ``model``.

    Raises:
        PayloadError: as ``decode_object``, or reason ``schema`` naming the first bad field.
    """
    body = decode_object(payload, max_bytes=max_bytes)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise PayloadError(
            schema_problem(exc), excerpt=_excerpt(payload), reason="schema"
        ) from None


def schema_problem(exc: ValidationError) -> str:
    """``field.path: message`` of the first error (and how many more), for one log line."""
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "payload"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}"


def nesting_depth(payload: bytes | bytearray) -> int:
    """The deepest ``[``/``{`` nesting of a JSON text, brackets inside strings not counted.

    Linear in the size and non-recursive, so it is safe on any input; for text that is not
    JSON the figure is an upper bound of what a parser could recurse into.
    """
    depth = deepest = 0
    for bracket in _BRACKET.findall(_STRING.sub(b"", payload)):
        if bracket in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth = max(0, depth - 1)
    return deepest


class _NumberError(ValueError):
    """A number JSON allows and the fleet does not (NaN, Infinity, beyond 64 bits)."""


def _no_constant(name: str) -> float:
    raise _NumberError(f"{name} is not a number the fleet accepts")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NumberError(f"{text} is outside the range of a 64-bit float")
    return value


def _bounded_int(text: str) -> int:
    # Python refuses integers of more than 4,300 digits itself; this keeps them to 64 bits.
    if len(text) > 20:
        raise _NumberError(f"integer of {len(text)} digits is outside 64 bits")
    value = int(text)
    if not INT_MIN <= value <= INT_MAX:
        raise _NumberError(f"integer {value} is outside 64 bits")
    return value


def utc_now() -> str:
    """Current UTC time as ISO 8601 with milliseconds and a Z suffix."""
    return to_iso(datetime.now(UTC))


def to_iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_iso_ts(epoch_s: float) -> str:
    """ISO form of a Unix timestamp."""
    return to_iso(datetime.fromtimestamp(epoch_s, UTC))


def from_iso(text: str) -> datetime:
    """Parse a timestamp written by ``to_iso`` (or any ISO 8601 with an offset)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"timestamp without a time zone: {text!r}")
    return moment


def _excerpt(payload: bytes | bytearray) -> str:
    return payload[:_EXCERPT].decode("utf-8", errors="replace")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
