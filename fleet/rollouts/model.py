"""The rollout's data, shared by its pure parts and the controller that drives them.

A rollout is a ``RolloutSpec`` (what the operator asked for, fixed at start) and a
``RolloutState`` (where it is; persisted as JSON after every transition). The state machine
(``fleet.rollouts.machine``) is given an ``Observation`` of the fleet at a time it is told and
answers with a ``Step``: the new state, the desired-state ``Action``s to sign and send, and the
``Transition``s to record. The gate (``fleet.rollouts.gate``) turns per-device ``DeviceHealth``
into a ``GateResult``. Nothing here does IO or reads a clock.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Seconds = Annotated[float, Field(gt=0.0, le=30 * 86400.0)]
DeviceId = Annotated[str, Field(min_length=1, max_length=128)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StageSize(_Frozen):
    """One entry of ``--stages``: a device count (``1``) or a share of the selection (``10%``)."""

    count: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    percent: Annotated[float, Field(gt=0.0, le=100.0)] | None = None


class Thresholds(_Frozen):
    """When a stage halts. Fractions, not percents: ``--max-p95-regression 20%`` is 0.20."""

    max_install_failures: Fraction = 0.05
    max_p95_regression: Annotated[float, Field(ge=0.0, le=100.0)] = 0.20
    max_error_rate: Fraction = 0.01  # candidate error rate above the baseline's, absolute
    max_drift: Annotated[float, Field(ge=0.0, le=100.0)] = 0.2  # PSI
    max_accuracy_drop: Fraction = 0.02  # ``--min-accuracy-drop 2pt``: 2 points
    min_requests: Annotated[int, Field(ge=1)] = 20  # per group in the window, else insufficient
    # Batches per group in the window before its p95 counts: the agent's p95 covers its recent
    # batches since the version loaded, the first (cold) ones too; among 40 they are not it.
    min_batches: Annotated[int, Field(ge=1)] = 40
    min_feedback: Annotated[int, Field(ge=1)] = 20  # labelled feedbacks per group for accuracy


class RolloutSpec(_Frozen):
    """What ``fleet rollout start`` asked for; never changes after the start."""

    rollout_id: Annotated[str, Field(pattern=r"^r-[0-9a-f]{8}$")]
    name: Annotated[str, Field(max_length=128)] = ""
    model: Annotated[str, Field(min_length=1, max_length=128)]
    version: Annotated[str, Field(min_length=1, max_length=128)]
    selector: Annotated[str, Field(max_length=1024)]
    stages: Annotated[tuple[StageSize, ...], Field(min_length=1, max_length=32)]
    thresholds: Thresholds = Thresholds()
    health_window_s: Seconds = 600.0
    offline_timeout_s: Seconds = 1800.0
    require_approval: bool = False
    operator: Annotated[str, Field(max_length=128)] = ""
    created_at: float


class Phase(StrEnum):
    INSTALLING = "installing"  # the stage's new members were sent the new version
    WATCHING = "watching"  # all members settled; the health window runs
    AWAITING_APPROVAL = "awaiting_approval"
    PAUSED = "paused"
    COMPLETED = "completed"
    HALTED = "halted"  # the gate or the install failures stopped it; changed devices reverted
    ABORTED = "aborted"  # the operator stopped it; changed devices reverted


ACTIVE_PHASES = frozenset({Phase.INSTALLING, Phase.WATCHING, Phase.AWAITING_APPROVAL, Phase.PAUSED})


class Outcome(StrEnum):
    PENDING = "pending"  # sent, not yet committed or failed
    COMMITTED = "committed"
    FAILED = "failed"  # ota_failed / refused (wrong_hardware, ...) for this version
    NOT_REACHED = "not_reached"  # offline past the offline timeout
    REVERTED = "reverted"  # sent back to its previous version by a halt or abort


class DeviceInstall(_Frozen):
    """What the store knows about one member's install of the rollout's model."""

    active_version: str | None = None
    variant: str | None = None
    failed_reason: str | None = None  # the newest failure/refusal of this version since sent
    last_seen: float | None = None  # the newest status/telemetry/event received


class DeviceHealth(_Frozen):
    """One device's inference health for one model version over a window (deltas of the
    agent's cumulative counters; the agent's recent p95 and drift at the window's end)."""

    device_id: DeviceId
    requests: Annotated[int, Field(ge=0)] = 0
    batches: Annotated[int, Field(ge=0)] = 0
    errors: Annotated[int, Field(ge=0)] = 0
    nonfinite: Annotated[int, Field(ge=0)] = 0
    p95_s: Annotated[float, Field(ge=0.0)] | None = None
    drift: Annotated[float, Field(ge=0.0)] | None = None
    feedback: Annotated[int, Field(ge=0)] = 0
    accuracy: Fraction | None = None


class GroupHealth(_Frozen):
    """The devices of one side of the comparison, aggregated (``gate.aggregate``)."""

    devices: int = 0
    requests: int = 0
    batches: int = 0
    errors: int = 0
    nonfinite: int = 0
    p95_s: float | None = None  # median of the devices' p95 among devices with requests
    drift: float | None = None  # the worst device's
    feedback: int = 0
    accuracy: float | None = None  # feedback-weighted mean


Metric = Literal["p95_regression", "error_rate", "nonfinite", "drift", "accuracy_drop"]
Verdict = Literal["pass", "fail", "insufficient", "not_reported"]


class MetricVerdict(_Frozen):
    metric: Metric
    candidate: float | None
    baseline: float | None
    value: float | None  # what is compared with the threshold (a ratio, a rate, a drop)
    threshold: float
    verdict: Verdict
    detail: str  # one line an operator reads: "p95 +35% > +20% (12.1 ms vs 9.0 ms)"


class GateResult(_Frozen):
    outcome: Literal["pass", "fail", "insufficient"]
    verdicts: tuple[MetricVerdict, ...]
    candidate: GroupHealth
    baseline: GroupHealth | None


class Observation(_Frozen):
    """The fleet as the controller's store sees it at ``now`` (given to ``machine.step``).

    ``eligible``: accepted devices with OTA that match the selector now (any order).
    ``installs``: every current member's install view (and the eligible devices' for their
    version before the rollout). ``candidate``/``baseline``: health over the current window
    (from ``state.window_started_at`` to ``now``) of the members on the new version and of
    the selector's devices still on the previous version; empty outside ``WATCHING``.
    """

    now: float
    eligible: tuple[DeviceId, ...] = ()
    installs: dict[DeviceId, DeviceInstall] = Field(default_factory=dict)
    candidate: tuple[DeviceHealth, ...] = ()
    baseline: tuple[DeviceHealth, ...] = ()


class Member(BaseModel):
    """A device the rollout changed (or tried to)."""

    model_config = ConfigDict(extra="forbid")

    stage: int
    previous_version: str | None  # what it ran before; None: nothing to revert to
    outcome: Outcome = Outcome.PENDING
    sent_at: float
    variant: str | None = None
    reason: str | None = None


class RolloutState(BaseModel):
    """Where a rollout is; saved as JSON after every transition."""

    model_config = ConfigDict(extra="forbid")

    spec: RolloutSpec
    phase: Phase
    stage: int = 0
    stage_started_at: float
    window_started_at: float | None = None
    window_extensions: int = 0  # windows added because data was insufficient
    paused_from: Phase | None = None
    members: dict[DeviceId, Member] = Field(default_factory=dict)
    last_gate: GateResult | None = None
    reason: str | None = None  # why it is where it is (the last transition's reason)
    updated_at: float


class Deploy(_Frozen):
    """Sign and send ``version`` of the rollout's model to these devices."""

    kind: Literal["deploy"] = "deploy"
    version: str
    devices: tuple[DeviceId, ...]


class Revert(_Frozen):
    """Send each device back to the version it ran before (signed, action ``rollback``)."""

    kind: Literal["revert"] = "revert"
    versions: dict[DeviceId, str]


Action = Deploy | Revert


class Transition(_Frozen):
    at: float
    from_phase: Phase | None  # None for the start
    to_phase: Phase
    stage: int
    reason: str
    gate: GateResult | None = None


class Step(_Frozen):
    state: RolloutState
    actions: tuple[Action, ...] = ()
    transitions: tuple[Transition, ...] = ()


class Approve(_Frozen):
    kind: Literal["approve"] = "approve"
    operator: str
    at: float


class Pause(_Frozen):
    kind: Literal["pause"] = "pause"
    operator: str
    at: float


class Resume(_Frozen):
    kind: Literal["resume"] = "resume"
    operator: str
    at: float


class Abort(_Frozen):
    kind: Literal["abort"] = "abort"
    operator: str
    at: float
    reason: str = "aborted by the operator"


OperatorEvent = Approve | Pause | Resume | Abort
