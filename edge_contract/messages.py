"""Typed models of what devices send the controller: status, telemetry, events, reported state.

Shared by the agent (what it sends) and the controller (what it accepts): every message on
``fleet/<id>/status|telemetry|events|reported`` is validated into one of these through
``edge_contract.payloads.decode_model`` before anything is stored, so a refusal carries a reason
code (``schema`` naming the field, or the decoder's ``too_deep``, ``number_range``, ...).

Only the fields the controller reads are typed and ranged; numbers are strict (no ``"5"``
for 5, no ``true`` for 1). Telemetry and events grow fields with every feature, so unknown
fields are kept (bounded by the decoder's size and depth limits); the status is a small,
fixed document and refuses unknown fields. ``ts`` is kept as the device wrote it (the stored
JSON is unchanged) but must parse as an ISO 8601 time with a zone, between 2000 and one day
from now; ``ts_epoch`` gives it as Unix seconds for ordering.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from edge_contract import payloads
from edge_contract.errors import PayloadError
from edge_contract.identity import MAX_TAGS, HardwareId, TagKey, TagValue
from edge_contract.topics import DEVICE_ID_PATTERN, Channel

# A device clock may run a little ahead; a day ahead is a broken clock or a forged message.
MAX_FUTURE_S = 86400.0
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
MAX_TEXT = 256
MAX_KEYS = 512


def _timestamp(text: str) -> str:
    try:
        moment = payloads.from_iso(text)
    except ValueError:
        raise ValueError("not an ISO 8601 time with a zone") from None
    try:
        epoch = moment.timestamp()
    except OverflowError:  # a year at the edge of datetime's range with an offset
        raise ValueError("outside the range of a timestamp") from None
    if epoch < EARLIEST.timestamp():
        raise ValueError("before 2000")
    if epoch > time.time() + MAX_FUTURE_S:
        raise ValueError("more than a day in the future")
    return text


def _parses(text: str) -> str:
    try:
        payloads.from_iso(text)
    except ValueError:
        raise ValueError("not an ISO 8601 time with a zone") from None
    return text


DeviceId = Annotated[str, StringConstraints(pattern=f"^{DEVICE_ID_PATTERN.pattern}$")]
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT)]
Key = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT)]
# A timestamp the controller orders by: ISO 8601 with a zone, 2000 .. now + 1 day.
Timestamp = Annotated[str, StringConstraints(max_length=64), AfterValidator(_timestamp)]
# A timestamp shown only (boot time of a board without a real-time clock may read 1970).
AnyTimestamp = Annotated[str, StringConstraints(max_length=64), AfterValidator(_parses)]
Count = Annotated[int, Field(ge=0, le=payloads.INT_MAX)]
Percent = Annotated[float, Field(ge=0.0, le=100.0)]
Celsius = Annotated[float, Field(ge=-273.15, le=1000.0)]


class _Open(BaseModel):
    """A section that may hold more than the controller reads."""

    model_config = ConfigDict(strict=True, extra="allow")


class _Device(_Open):
    device_id: DeviceId | None = None  # the reported state names no device: the topic does

    @property
    def ts_epoch(self) -> float | None:
        ts = getattr(self, "ts", None)
        return payloads.from_iso(ts).timestamp() if isinstance(ts, str) else None


class StatusMessage(_Device):
    """``fleet/<id>/status``: retained presence (also the broker's Last Will)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    state: Literal["online", "offline"]
    agent_version: Text | None = None
    models: dict[Key, Text] = Field(default_factory=dict, max_length=MAX_KEYS)
    boot_time: AnyTimestamp | None = None
    started_at: AnyTimestamp | None = None
    ts: Timestamp
    reason: Text | None = None
    hardware_id: HardwareId | None = None
    tags: dict[TagKey, TagValue] = Field(default_factory=dict, max_length=MAX_TAGS)


class CpuReading(_Open):
    percent: Percent | None = None


class MemoryReading(_Open):
    used_percent: Percent | None = None


class HealthReading(_Open):
    status: Text | None = None


class QueueReading(_Open):
    depth: Count | None = None
    dropped: Count | None = None
    dropped_total: Count | None = None


# A PSI is >= 0; the agent floors empty bins (agent/inference/drift.py), so a real score stays
# far below this cap, which only refuses nonsense.
MAX_PSI = 1e6
MAX_MODEL_BLOCKS = 64
MAX_LABELS = 64  # error kinds, quantiles, drift signals per model block
Seconds = Annotated[float, Field(ge=0.0, le=1e9, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Psi = Annotated[float, Field(ge=0.0, le=MAX_PSI, allow_inf_nan=False)]
Rate = Annotated[float, Field(ge=0.0, le=1e12, allow_inf_nan=False)]
Label = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class ModelStats(_Open):
    """One block of ``inference.models``: one model version's monitor readings.

    Counters (``requests``, ``batches``, ``errors``, ``nonfinite_outputs``, ``feedback``) are
    cumulative since that version loaded on the agent (they restart with the agent);
    ``latency_quantile_seconds`` ("0.5", "0.95", "0.99") covers the recent batches; ``drift_psi``
    (signal -> PSI) the recent output window; ``accuracy`` the recent feedback. What is absent
    has nothing to report yet. Other readings of the monitor (``confidence_mean``, ...) are kept.
    """

    model: Name
    version: Name
    loaded: bool | None = None
    runtime: Text | None = None
    task: Text | None = None
    requests: Count = 0
    batches: Count = 0
    errors: dict[Label, Count] = Field(default_factory=dict, max_length=MAX_LABELS)
    nonfinite_outputs: Count = 0
    latency_quantile_seconds: dict[Label, Seconds] = Field(
        default_factory=dict, max_length=MAX_LABELS
    )
    throughput_rows_per_second: Rate | None = None
    drift_psi: dict[Label, Psi] = Field(default_factory=dict, max_length=MAX_LABELS)
    drift_level: Literal["stable", "moderate", "significant"] | None = None
    feedback: Count | None = None
    accuracy: Fraction | None = None

    def quantile(self, q: str) -> float | None:
        """The recent latency quantile ``q`` ("0.95") in seconds, if reported."""
        return self.latency_quantile_seconds.get(q)

    @property
    def drift(self) -> float | None:
        """The worst signal's PSI, or None before the window holds enough predictions."""
        return max(self.drift_psi.values()) if self.drift_psi else None


class InferenceReport(_Open):
    """``inference`` in telemetry: the model monitor's snapshot (``docs/monitoring.md``)."""

    models: list[ModelStats] = Field(default_factory=list, max_length=MAX_MODEL_BLOCKS)
    internal_errors: Count | None = None

    def block(self, model: str, version: str) -> ModelStats | None:
        """The block of ``model`` at ``version``, if this report has one."""
        return next((m for m in self.models if m.model == model and m.version == version), None)


class TelemetryMessage(_Device):
    """``fleet/<id>/telemetry``: one periodic measurement (``docs/mqtt-api.md``)."""

    stream: Annotated[str, StringConstraints(max_length=64)] = ""
    seq: Count
    ts: Timestamp
    cpu: CpuReading | None = None
    memory: MemoryReading | None = None
    temperatures_c: dict[Key, Celsius] | None = Field(default=None, max_length=MAX_KEYS)
    health: HealthReading | None = None
    queue: QueueReading | None = None
    inference: InferenceReport | None = None


class EventMessage(_Device):
    """``fleet/<id>/events``: a state change; each kind carries its own fields."""

    event: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    ts: Timestamp


class SlotVersion(_Open):
    version: Text
    variant: Text | None = None


class ReportedModel(_Open):
    active: SlotVersion | None = None
    pending: SlotVersion | None = None
    previous: SlotVersion | None = None
    variant: Text | None = None  # the active version's variant of its release
    step: Text | None = None


class ReportedMessage(_Device):
    """``fleet/<id>/reported``: the retained OTA state of every model on the device."""

    agent_version: Text | None = None
    desired_counter: Count | None = None
    ts: Timestamp
    models: dict[Key, ReportedModel | None] = Field(max_length=MAX_KEYS)


DeviceMessage = StatusMessage | TelemetryMessage | EventMessage | ReportedMessage

MODELS: dict[Channel, type[DeviceMessage]] = {
    Channel.STATUS: StatusMessage,
    Channel.TELEMETRY: TelemetryMessage,
    Channel.EVENTS: EventMessage,
    Channel.REPORTED: ReportedMessage,
}


def decode_device_message(
    channel: Channel, device_id: str, payload: bytes | bytearray
) -> tuple[DeviceMessage, dict[str, Any]]:
    """Validate a device's message on ``channel``; returns the model and the body to store.

    A body without ``device_id`` takes the topic's; one naming another device is refused.

    Raises:
        PayloadError: the decoder's reasons, ``schema``, or ``device_mismatch``.
    """
    model = payloads.decode_model(MODELS[channel], payload)
    if model.device_id not in (None, device_id):
        raise PayloadError(
            f"device_id {model.device_id!r} does not match the topic's {device_id!r}",
            excerpt=bytes(payload[:80]).decode("utf-8", errors="replace"),
            reason="device_mismatch",
        )
    return model, model.model_dump(mode="json", exclude_unset=True) | {"device_id": device_id}
