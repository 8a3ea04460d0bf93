"""The controller's RPC: what the ``fleet`` CLI sends on ``fleet-controller/rpc/<method>``, and
what the controller answers.

Requests: one strict model per method (unknown fields refused, every field typed and
bounded). The CLI builds them; the controller validates each request body into its method's
model before any use case runs, and refuses a bad one with reason ``schema`` naming the
offending field. A mutating request travels inside the signed operator envelope
(``fleet.operators``): its ``body`` is the model's JSON.

Replies: one strict model per method (``RPC_REPLIES``). The controller's use cases return them
(the store's rows, ``DeviceSummary`` and the rest, are these models too); the RPC front end
sends ``{"ok": true, ...reply}``; the CLI validates the body back into the same model, so a
garbled reply is refused naming its field. The documents a device sent (status, telemetry,
reported state, events) travel as ``JsonObject``: any JSON, read defensively by the views.
Pure: no IO.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints, ValidationError

from edge_contract.errors import PayloadError
from edge_contract.payloads import decode_object, schema_problem
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


# A device tag as ``fleet devices tag`` sets it (the selector language's key and value).
TagKey = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")]
TagValue = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:/@+-]{1,128}$")]
MAX_TAGS = 32
# A selector (``site=lab,board!=jetson``) as sent; ``fleet.rollouts.selector`` parses it.
SelectorText = Annotated[str, StringConstraints(max_length=1024)]
RolloutId = Annotated[str, StringConstraints(pattern=r"^r-[0-9a-f]{8}$")]
Share = Annotated[float, Field(ge=0.0, le=1.0)]
Duration = Annotated[float, Field(gt=0.0, le=30 * 86400.0)]


class DevicesListRequest(_Request):
    """``devices-list``: every device, or those a selector matches (``--select``)."""

    select: SelectorText | None = None


class TagRequest(_Request):
    """``devices-tag`` (signed): set the operator's tags of a device."""

    device_id: DeviceName
    tags: Annotated[dict[TagKey, TagValue], Field(min_length=1, max_length=MAX_TAGS)]


class UntagRequest(_Request):
    """``devices-untag`` (signed): remove the operator's tags ``keys`` of a device."""

    device_id: DeviceName
    keys: Annotated[list[TagKey], Field(min_length=1, max_length=MAX_TAGS)]


class RolloutStartRequest(_Request):
    """``rollout-start`` (signed): ``model@version`` in stages to the devices ``select``
    matches (``*``: every accepted device with OTA). Thresholds left out take the defaults
    (``fleet.rollouts.model.Thresholds``); fractions, not percents."""

    model: Text
    version: Text
    select: SelectorText
    stages: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    name: Annotated[str, StringConstraints(max_length=128)] = ""
    health_window_s: Duration = 600.0
    offline_timeout_s: Duration = 1800.0
    require_approval: bool = False
    max_install_failures: Share | None = None
    max_p95_regression: Annotated[float, Field(ge=0.0, le=100.0)] | None = None
    max_error_rate: Share | None = None
    max_drift: Annotated[float, Field(ge=0.0, le=100.0)] | None = None
    max_accuracy_drop: Share | None = None
    # Fewer requests or batches than this on either side of a comparison is "insufficient
    # data": a quiet fleet lowers them, knowing its p95 then rests on fewer batches.
    min_requests: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    min_batches: Annotated[int, Field(ge=1, le=1_000_000)] | None = None


class RolloutListRequest(_Request):
    """``rollout-list``: the newest rollouts (``active``: only those still running)."""

    active: bool = False
    limit: Annotated[int, Field(ge=1, le=1000)] = 50


class RolloutStatusRequest(_Request):
    """``rollout-status``: one rollout; without an id, the newest active one (else the
    newest)."""

    rollout_id: RolloutId | None = None


class RolloutRequest(_Request):
    """``rollout-pause`` / ``-resume`` / ``-approve`` / ``-abort`` (signed) and
    ``rollout-history``: one rollout by id."""

    rollout_id: RolloutId


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
ReplyT = TypeVar("ReplyT", bound=BaseModel)


def decode_request(method: str, model: type[RequestT], body: Mapping[str, object]) -> RequestT:
    """Validate a decoded request (or reply) ``body`` into ``model``.

    Raises:
        PayloadError: reason ``schema``, the message naming the method and the first bad field.
    """
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise PayloadError(
            f"{method}: {schema_problem(exc)}", excerpt=repr(body)[:80], reason="schema"
        ) from None


# -- replies ---------------------------------------------------------------------------------

# A JSON object as a device sent it (stored, then shown): any JSON value under string keys.
JsonObject = dict[str, JsonValue]
ACCEPTED, PENDING = "accepted", "pending"
# `fleet devices revoke ID --db`: its certificate is revoked; never a deploy target again.
REVOKED = "revoked"


class _Reply(BaseModel):
    # Strict and closed like the requests: a reply is input to the CLI, from the broker.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class DeviceSummary(_Reply):
    """One line of ``fleet devices list``; ``None`` where the device has not said."""

    device_id: str
    online: bool
    state: str
    agent_version: str | None
    last_telemetry_age_s: float | None
    last_seq: int | None
    cpu_percent: int | float | None
    memory_percent: int | float | None
    temperature_c: int | float | None
    health: str | None
    queue_depth: int | float | None
    models: JsonObject
    duplicates: int
    admission: str = PENDING
    # Merged tags (``devices-list`` with ``select``): implicit ``device`` and ``hardware``, the
    # device's own, then the operator's; empty in a plain listing.
    tags: dict[str, str] = {}


class DesiredRow(_Reply):
    """The desired state the controller last sent a device for one model."""

    counter: int
    model: str
    version: str
    action: str


class DeviceDetail(_Reply):
    """``fleet devices show``: the summary and the stored documents (None where absent)."""

    summary: DeviceSummary
    reported: JsonObject | None
    desired: DesiredRow | None  # the newest, whatever the model
    status: JsonObject | None
    telemetry: JsonObject | None
    events: list[JsonObject | None]


class Operator(_Reply):
    """A trusted operator key."""

    name: str
    key_id: str
    public_key: str
    added: float


class StoredDeadLetter(_Reply):
    """A refused message as kept: the first bytes of its payload, decoded leniently."""

    topic: str
    reason: str
    detail: str
    excerpt: str
    retained: bool
    received: float


class DevicesReply(_Reply):
    """``devices-list``: every device, or those ``select`` matched (canonical form)."""

    devices: list[DeviceSummary]
    select: str | None = None


class DeviceReply(_Reply):
    """``devices-show``."""

    device: DeviceDetail


class Rejected(_Reply):
    total: int
    by_reason: dict[str, int]


class StatusReply(_Reply):
    """``controller-status``: what was refused since the start, and the newest dead letters."""

    rejected: Rejected
    dead_letters: list[StoredDeadLetter]


class OperatorsReply(_Reply):
    """``operators-list``."""

    operators: list[Operator]


class Skipped(_Reply):
    device_id: str
    reason: str


class DeployReply(_Reply):
    """``deploy``: the devices a release is now desired on, those ``--all`` left out and why."""

    model: str
    version: str
    # The one target of a single-file release; None when each device picks its variant.
    target: str | None
    devices: list[str]
    skipped: list[Skipped]
    # Who signed the request: set by the controller's operator gate over MQTT; None in the
    # CLI's --db mode. Last, as on the wire.
    operator: str | None = None


class RollbackReply(_Reply):
    """``rollback``: the version ``device_id`` is sent back to."""

    device_id: str
    model: str
    version: str
    # Who signed the request: set by the controller's operator gate over MQTT; None in the
    # CLI's --db mode. Last, as on the wire.
    operator: str | None = None


class AcceptReply(_Reply):
    """``devices-accept``: ``changed`` is False when the device already was accepted."""

    device_id: str
    admission: str
    changed: bool
    # Who signed the request: set by the controller's operator gate over MQTT; None in the
    # CLI's --db mode. Last, as on the wire.
    operator: str | None = None


class OperatorAddedReply(_Reply):
    """``operators-add``."""

    name: str
    key_id: str
    # Who signed the request: set by the controller's operator gate over MQTT; None in the
    # CLI's --db mode. Last, as on the wire.
    operator: str | None = None


class OperatorRemovedReply(_Reply):
    """``operators-remove``."""

    name: str
    removed: bool
    # Who signed the request: set by the controller's operator gate over MQTT; None in the
    # CLI's --db mode. Last, as on the wire.
    operator: str | None = None


class TagsReply(_Reply):
    """``devices-tag`` / ``devices-untag``: the device's operator tags now, and the keys an
    untag removed."""

    device_id: str
    tags: dict[str, str]
    removed: list[str]
    # Who signed the request: set by the controller's operator gate over MQTT; None in the
    # CLI's --db mode. Last, as on the wire.
    operator: str | None = None


class RolloutThresholds(_Reply):
    max_install_failures: float
    max_p95_regression: float
    max_error_rate: float
    max_drift: float
    max_accuracy_drop: float
    min_requests: int
    min_batches: int
    min_feedback: int


class RolloutVerdict(_Reply):
    """The gate's figures for one metric against its threshold."""

    metric: str
    candidate: float | None
    baseline: float | None
    value: float | None
    threshold: float
    verdict: str  # pass | fail | insufficient | not_reported
    detail: str


class RolloutGate(_Reply):
    """The gate's last result: the outcome, each metric, and the size of both sides."""

    outcome: str  # pass | fail | insufficient
    verdicts: list[RolloutVerdict]
    candidate_devices: int
    candidate_requests: int
    baseline_devices: int | None
    baseline_requests: int | None


class RolloutMember(_Reply):
    """A device the rollout changed (or tried to)."""

    device_id: str
    stage: int
    previous_version: str | None
    outcome: str  # pending | committed | failed | not_reached | reverted
    variant: str | None
    reason: str | None


class RolloutStage(_Reply):
    """One stage: its size as asked and the outcome counts of its members."""

    index: int
    size: str
    members: int
    committed: int
    failed: int
    pending: int
    not_reached: int
    reverted: int


class RolloutSummary(_Reply):
    """One line of ``fleet rollout list``; ``stage`` counts from 0."""

    rollout_id: str
    name: str
    model: str
    version: str
    select: str
    phase: str
    stage: int
    stages: int
    members: int
    reason: str | None
    created_at: float
    updated_at: float


class RolloutDetail(_Reply):
    """``fleet rollout status``: the summary, the settings, every stage and member, the gate."""

    summary: RolloutSummary
    thresholds: RolloutThresholds
    health_window_s: float
    offline_timeout_s: float
    require_approval: bool
    window_started_at: float | None
    stages: list[RolloutStage]
    members: list[RolloutMember]
    gate: RolloutGate | None


class RolloutReply(_Reply):
    """``rollout-status``, and ``rollout-start`` / ``-pause`` / ``-resume`` / ``-approve`` /
    ``-abort`` (signed): the rollout as it is after the request."""

    rollout: RolloutDetail
    # Who signed the request (a change); None for ``rollout-status`` and in --db mode.
    operator: str | None = None


class RolloutsReply(_Reply):
    """``rollout-list``: newest first."""

    rollouts: list[RolloutSummary]


class RolloutTransition(_Reply):
    """One transition of a rollout (``fleet rollout history``)."""

    at: float
    from_phase: str | None
    to_phase: str
    stage: int
    reason: str
    gate: RolloutGate | None


class RolloutHistoryReply(_Reply):
    """``rollout-history``: every transition, oldest first."""

    rollout_id: str
    transitions: list[RolloutTransition]


# The replies of the methods that change the fleet (signed by an operator over MQTT).
SignedReply = (
    DeployReply
    | RollbackReply
    | AcceptReply
    | OperatorAddedReply
    | OperatorRemovedReply
    | TagsReply
    | RolloutReply
)
Reply = (
    DevicesReply
    | DeviceReply
    | StatusReply
    | OperatorsReply
    | DeployReply
    | RollbackReply
    | AcceptReply
    | OperatorAddedReply
    | OperatorRemovedReply
    | TagsReply
    | RolloutReply
    | RolloutsReply
    | RolloutHistoryReply
)


class Refusal(_Reply):
    """Any method's answer when it did not run: ``{"ok": false, "error", "kind", ...}``.

    ``kind`` is the controller's error class (``UnknownDeviceError``, ``OperatorRefusedError``,
    ``InternalError``, ...); ``reason`` and ``detail`` come with an operator refusal, and
    ``device_id`` with an unknown or pending device.
    """

    ok: Literal[False] = False
    error: str
    kind: str
    reason: str | None = None
    detail: str | None = None
    device_id: str | None = None


# Each method's reply model: what the CLI validates an ``ok: true`` answer into.
RPC_REPLIES: dict[str, type[Reply]] = {
    "devices-list": DevicesReply,
    "devices-show": DeviceReply,
    "controller-status": StatusReply,
    "operators-list": OperatorsReply,
    "deploy": DeployReply,
    "rollback": RollbackReply,
    "devices-accept": AcceptReply,
    "operators-add": OperatorAddedReply,
    "operators-remove": OperatorRemovedReply,
    "devices-tag": TagsReply,
    "devices-untag": TagsReply,
    "rollout-start": RolloutReply,
    "rollout-list": RolloutsReply,
    "rollout-status": RolloutReply,
    "rollout-pause": RolloutReply,
    "rollout-resume": RolloutReply,
    "rollout-approve": RolloutReply,
    "rollout-abort": RolloutReply,
    "rollout-history": RolloutHistoryReply,
}


def decode_reply(method: str, model: type[ReplyT], payload: bytes) -> ReplyT | Refusal:
    """The controller's answer to ``method``: ``model`` when it ran, else its ``Refusal``.

    Bounded like every payload (``edge_contract.payloads.decode_object``: size, depth,
    numbers), then validated strictly.

    Raises:
        PayloadError: not a JSON object within the limits, or reason ``schema`` naming the
            method and the first bad field.
    """
    answer = decode_object(payload)
    if answer.get("ok") is True:
        return decode_request(method, model, {k: v for k, v in answer.items() if k != "ok"})
    return decode_request(method, Refusal, answer)


def reply_body(reply: BaseModel) -> dict[str, JsonValue]:
    """The reply as the JSON object the controller sends (before its ``ok``), field for field
    in declaration order."""
    return reply.model_dump()


# The strict bases, for the HTTP API's own models (edge_contract.http_api).
StrictRequest = _Request
StrictReply = _Reply
