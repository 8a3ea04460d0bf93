"""The controller's HTTP API's own requests and replies (``fleet.http.api``; docs/http-api.md).

The MQTT RPC does not take these: they are the REST API's history and listing reads (the
device list's filters, the telemetry series, the event pages, the releases). Every other
route answers the RPC's own models (``edge_contract.controller``). Strict, bounded and
closed like those.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from edge_contract.controller import JsonObject, SelectorText, StrictReply, StrictRequest
from edge_contract.topics import DEVICE_ID_PATTERN

DeviceState = Literal["online", "offline", "pending"]
# An epoch bound the series and event reads take (Unix seconds; year 5138 at most).
Epoch = Annotated[float, Field(ge=0.0, le=1e11, allow_inf_nan=False)]
MAX_SERIES_POINTS = 1000
MAX_EVENTS_PAGE = 1000
# The most devices one listing answers (the store holds every device; a page of them).
MAX_DEVICES_PAGE = 100_000


class DevicesQuery(StrictRequest):
    """``GET /devices``: a selector, a state (``pending``: not accepted yet) and a limit."""

    select: SelectorText | None = None
    state: DeviceState | None = None
    limit: Annotated[int, Field(ge=1, le=MAX_DEVICES_PAGE)] | None = None


class TelemetryQuery(StrictRequest):
    """``GET /devices/{id}/telemetry``: ``[since, until]`` (default: the last hour) in at most
    ``points`` buckets."""

    device_id: Annotated[str, StringConstraints(pattern=f"^{DEVICE_ID_PATTERN.pattern}$")]
    since: Epoch | None = None
    until: Epoch | None = None
    points: Annotated[int, Field(ge=1, le=MAX_SERIES_POINTS)] = 120


class EventsQuery(StrictRequest):
    """``GET /devices/{id}/events``: the newest ``limit`` events older than event ``before``."""

    device_id: Annotated[str, StringConstraints(pattern=f"^{DEVICE_ID_PATTERN.pattern}$")]
    limit: Annotated[int, Field(ge=1, le=MAX_EVENTS_PAGE)] = 50
    before: Annotated[int, Field(ge=1, le=2**63 - 1)] | None = None


class TelemetryBucket(StrictReply):
    """One time bucket of a device's telemetry: the mean (and max) of its samples' readings,
    None where no sample of the bucket had the reading. ``temperature_c``: the hottest sensor."""

    at: float  # the bucket's start (Unix seconds)
    samples: int
    cpu_percent: float | None
    cpu_percent_max: float | None
    memory_percent: float | None
    memory_percent_max: float | None
    temperature_c: float | None
    temperature_c_max: float | None


class ModelBucket(StrictReply):
    """One model's readings in one bucket (means; ``p95_max_s`` the worst p95 seen)."""

    p95_s: float | None
    p95_max_s: float | None
    requests_per_s: float | None
    drift_psi: float | None  # the worst signal's PSI
    accuracy: float | None


class ModelSeries(StrictReply):
    """One model's buckets, index for index with ``TelemetrySeriesReply.buckets``."""

    model: str
    versions: list[str]  # the versions that reported in the range, oldest first
    buckets: list[ModelBucket | None]


class TelemetrySeriesReply(StrictReply):
    """A device's telemetry over ``[since, until]`` in buckets of ``step_s`` seconds; only the
    buckets holding a sample are listed. ``truncated``: the range held more rows than one
    read takes (the oldest are shown)."""

    device_id: str
    since: float
    until: float
    step_s: float
    samples: int
    truncated: bool
    buckets: list[TelemetryBucket]
    models: list[ModelSeries]


class StoredEvent(StrictReply):
    """One stored event of a device: its id (the page cursor), name, arrival and body."""

    id: int
    event: str
    received: float
    body: JsonObject | None


class EventsReply(StrictReply):
    """A page of a device's events, newest first; ``next_before`` pages on (None: no more)."""

    device_id: str
    events: list[StoredEvent]
    next_before: int | None


class ReleaseVariant(StrictReply):
    """One signed file of a release and the hardware and runtime it is for."""

    target: str
    variant: str
    hardware: list[str]
    runtime: str
    providers: list[str]
    precision: str | None
    length: int
    sha256: str


class ReleaseSummary(StrictReply):
    """One release (``model@version``) in the controller's TUF repository."""

    model: str
    version: str
    release: int
    variants: list[ReleaseVariant]


class ReleasesReply(StrictReply):
    """Every release in the repository, by model, then release counter."""

    releases: list[ReleaseSummary]
