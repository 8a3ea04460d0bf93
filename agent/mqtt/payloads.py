"""JSON payload encoding and decoding shared by the agent and the controller (pure, no IO).

Payloads are compact UTF-8 JSON objects. ``decode_object`` is the single place where bytes
from the network become data: it enforces a size limit and an object at the top level, and
raises ``PayloadError`` with an excerpt of the offending bytes for anything else.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

from agent.errors import PayloadError

# Telemetry is a few KiB; anything far larger on these topics is a bug or an attack.
MAX_PAYLOAD_BYTES = 256 * 1024
_EXCERPT = 80


def encode(obj: dict[str, Any]) -> bytes:
    """Compact JSON; non-finite floats become null so the output is strict JSON."""
    return json.dumps(_finite(obj), separators=(",", ":"), allow_nan=False).encode()


def decode_object(
    payload: bytes | bytearray, *, max_bytes: int = MAX_PAYLOAD_BYTES
) -> dict[str, Any]:
    """Parse a JSON object payload.

    Raises:
        PayloadError: too large, not UTF-8, not JSON, or not an object at the top level.
    """
    if len(payload) > max_bytes:
        raise PayloadError(
            f"payload of {len(payload)} bytes exceeds {max_bytes}", excerpt=_excerpt(payload)
        )
    try:
        value = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise PayloadError(f"not valid JSON ({exc})", excerpt=_excerpt(payload)) from None
    if not isinstance(value, dict):
        raise PayloadError("expected a JSON object", excerpt=_excerpt(payload))
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
