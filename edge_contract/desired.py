"""The desired-state message: which model a device should run, signed by the controller.

Published retained on ``fleet/<device_id>/desired``. The broker (or anyone who can publish
there) must not be able to redirect a device, so the message is a signed envelope like TUF
metadata: ``{"signed": {...}, "signatures": [{"keyid", "sig"}]}`` over the canonical JSON of
``signed``. The keys are those of the TUF ``timestamp`` role in the device's trusted root (the
controller's online key), so rotating that key through a new root also rotates this one.
``signed`` names the device, a counter that only grows and an expiry: a message for another
device, a replay of an older one or a stale one is refused. The release it names must also be
in the signed TUF metadata (the updater checks that: Uptane's two repositories): the one
target ``model.target`` names, or, without one, the release's signed variants, among which
the device picks the one that fits it.

Pure: the model, the envelope's parsing and the checks that need no key. The canonical JSON
and the signatures are TUF's, so signing and verifying stay behind each side's one door to
securesystemslib: the controller signs with ``fleet.release.repo.sign_desired``, the agent
verifies with ``agent.ota.trust.verify_desired`` (``check_signatures``, ``signatures_valid``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_contract import payloads
from edge_contract.errors import PayloadError, UpdateError
from edge_contract.reasons import Reason

MAX_DESIRED_BYTES = 16 * 1024
# More signatures than any threshold needs is a cost, not a proof.
MAX_SIGNATURES = 8


class DesiredModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$", description="Model name.")
    version: str = Field(pattern=r"^[0-9A-Za-z][0-9A-Za-z_.+-]{0,63}$", description="Version.")
    target: str | None = Field(
        default=None,
        min_length=1,
        max_length=512,
        description="One TUF target path (older controllers, single-file releases); absent: "
        "the device picks among the release's signed variants.",
    )


class DesiredState(BaseModel):
    """What the controller wants one device to run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    device_id: str = Field(description="The only device this message is for.")
    counter: int = Field(ge=1, le=2**63 - 1, description="Grows with every message to this device.")
    expires: datetime = Field(description="UTC; the device ignores the message after this.")
    action: Literal["deploy", "rollback"] = Field(
        description="deploy: install and activate `model`; rollback: return to the "
        "previously committed version of `model.name` (no download)."
    )
    model: DesiredModel


def envelope(state: DesiredState, signatures: list[Mapping[str, object]]) -> bytes:
    """The message to publish: ``state`` with its signatures (``{"keyid", "sig"}`` each) over
    the canonical JSON of ``state.model_dump(mode="json")``."""
    body = {"signed": state.model_dump(mode="json"), "signatures": list(signatures)}
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True)
class SignedDesired:
    """An envelope taken apart: the typed state, the raw ``signed`` object (its canonical
    bytes are what was signed) and the signatures as sent."""

    state: DesiredState
    signed: dict[str, Any]
    signatures: list[Any]


def parse_desired(payload: bytes | bytearray) -> SignedDesired:
    """Size, JSON within the payload limits, envelope shape, then the typed state.

    Raises:
        UpdateError: ``malformed_desired`` naming the payload reason or the first bad field.
    """
    try:
        envelope = payloads.decode_object(payload, max_bytes=MAX_DESIRED_BYTES, max_depth=8)
    except PayloadError as exc:
        raise UpdateError(Reason.MALFORMED_DESIRED, f"{exc.reason}: {exc}") from None
    signed, signatures = envelope.get("signed"), envelope.get("signatures")
    if not isinstance(signed, dict) or not isinstance(signatures, list):
        raise UpdateError(Reason.MALFORMED_DESIRED, "needs 'signed' (object) and 'signatures'")
    if len(signatures) > MAX_SIGNATURES:
        raise UpdateError(
            Reason.MALFORMED_DESIRED, f"{len(signatures)} signatures, limit {MAX_SIGNATURES}"
        )
    try:
        state = DesiredState.model_validate(signed)
    except ValidationError as exc:
        raise UpdateError(
            Reason.MALFORMED_DESIRED, f"field {payloads.schema_problem(exc)}"
        ) from None
    return SignedDesired(state, signed, signatures)


def check_desired(state: DesiredState, *, device_id: str, last_counter: int, now: datetime) -> None:
    """This device, a counter above the last accepted one, not expired (no keys needed).

    Raises:
        UpdateError: ``desired_other_device``, ``desired_replayed`` or ``desired_expired``.
    """
    if state.device_id != device_id:
        raise UpdateError(
            Reason.DESIRED_OTHER_DEVICE, f"message is for device {state.device_id[:64]!r}"
        )
    if state.counter <= last_counter:
        raise UpdateError(
            Reason.DESIRED_REPLAYED,
            f"counter {state.counter} is not above the last accepted {last_counter}",
        )
    if state.expires.tzinfo is None or state.expires <= now:
        raise UpdateError(Reason.DESIRED_EXPIRED, f"expired at {state.expires.isoformat()}")


def utc_now() -> datetime:
    return datetime.now(UTC)
