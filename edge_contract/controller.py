"""The controller's RPC requests: what the ``fleet`` CLI sends on ``fleet-controller/rpc/<method>``.

One strict model per method (unknown fields refused, every field typed and bounded). The CLI
builds them; the controller validates each request body into its method's model before any
use case runs, and refuses a bad one with reason ``schema`` naming the offending field. A
mutating request travels inside the signed operator envelope (``fleet.operators``): its
``body`` is the model's JSON. Pure: no IO.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from edge_contract.errors import PayloadError
from edge_contract.payloads import schema_problem
from edge_contract.topics import DEVICE_ID_PATTERN

# A device id as the controller's commands take it. Deliberately looser than the topic
# pattern (only its length is bounded): an id no device can have is answered "unknown
# device" by name, as before, rather than refused as malformed.
DeviceName = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Text = Annotated[str, StringConstraints(min_length=1, max_length=128)]
# The most devices one ``deploy`` names (``--all`` is the way to reach more).
MAX_DEPLOY_DEVICES = 10_000


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class DevicesListRequest(_Request):
    """``devices-list``: no fields."""


class ShowRequest(_Request):
    """``devices-show``: which device, and how many of its recent events."""

    device_id: Annotated[str, StringConstraints(pattern=f"^{DEVICE_ID_PATTERN.pattern}$")]
    events: Annotated[int, Field(ge=0, le=1000)] = 20


class StatusRequest(_Request):
    """``controller-status``: no fields."""


class OperatorsListRequest(_Request):
    """``operators-list``: no fields."""


class DeployRequest(_Request):
    """``deploy`` (signed): a published release, to named devices or to ``all``."""

    model: Text
    version: Text
    devices: Annotated[list[DeviceName], Field(max_length=MAX_DEPLOY_DEVICES)] = []
    all: bool = False


class RollbackRequest(_Request):
    """``rollback`` (signed): one device, back to its previous committed version of ``model``
    (the one model it reports when not given)."""

    device_id: DeviceName
    model: Text | None = None


class AcceptRequest(_Request):
    """``devices-accept`` (signed): a pending device becomes a deploy target."""

    device_id: DeviceName


class OperatorAddRequest(_Request):
    """``operators-add`` (signed): trust ``public_key`` (base64 or PEM) under ``name``."""

    name: Text
    public_key: Annotated[str, StringConstraints(min_length=1, max_length=4096)]


class OperatorRemoveRequest(_Request):
    """``operators-remove`` (signed): stop trusting ``name``."""

    name: Text


RequestT = TypeVar("RequestT", bound=BaseModel)


def decode_request(method: str, model: type[RequestT], body: dict[str, Any]) -> RequestT:
    """Validate a decoded request ``body`` into ``model``.

    Raises:
        PayloadError: reason ``schema``, the message naming the method and the first bad field.
    """
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise PayloadError(
            f"{method}: {schema_problem(exc)}", excerpt=repr(body)[:80], reason="schema"
        ) from None
