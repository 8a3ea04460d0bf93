"""The envelope of a command request (``fleet/<id>/cmd/<name>``): its deadline.

A request body may carry ``expires_at`` (Unix time, seconds) beside the command's own
arguments; the sender also sets the MQTT v5 Message Expiry Interval so the broker drops a
queued request itself. The deadline in the body is what the agent checks: a request that
waited in a persistent session while the device was offline, or a retained one, is refused
with reason ``expired`` once its deadline has passed instead of being run late. Pure: no IO.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_contract.errors import PayloadError

DEADLINE_FIELD = "expires_at"
# 2**53: beyond it a float no longer holds whole seconds; any later deadline is a forgery.
MAX_DEADLINE = float(2**53)
DEFAULT_COMMAND_TTL_S = 60.0

Deadline = Annotated[float, Field(gt=0.0, le=MAX_DEADLINE, allow_inf_nan=False)]


class CommandEnvelope(BaseModel):
    """The fields every command request may carry besides its arguments."""

    model_config = ConfigDict(strict=False, extra="ignore", frozen=True)

    expires_at: Deadline | None = None


def split_deadline(body: dict[str, Any]) -> tuple[float | None, dict[str, Any]]:
    """The request's deadline (or None) and its arguments without it.

    Raises:
        PayloadError: reason ``schema`` when ``expires_at`` is not a valid Unix time.
    """
    arguments = dict(body)
    raw = arguments.pop(DEADLINE_FIELD, None)
    if raw is None:
        return None, arguments
    if isinstance(raw, bool):  # JSON true is not a time, whatever int(True) says
        raise PayloadError(f"{DEADLINE_FIELD}: not a Unix time", excerpt="true", reason="schema")
    try:
        envelope = CommandEnvelope.model_validate({DEADLINE_FIELD: raw})
    except ValidationError:
        raise PayloadError(
            f"{DEADLINE_FIELD}: not a Unix time in range", excerpt=str(raw)[:64], reason="schema"
        ) from None
    return envelope.expires_at, arguments


def is_expired(deadline: float | None, now: float) -> bool:
    """True when a request with ``deadline`` must not run at ``now`` (no deadline: never)."""
    return deadline is not None and not (math.isfinite(now) and now < deadline)


def deadline_in(ttl_s: float, now: float) -> float:
    """The ``expires_at`` of a request sent at ``now`` that may run within ``ttl_s``."""
    return round(now + ttl_s, 3)
