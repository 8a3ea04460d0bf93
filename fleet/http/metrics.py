"""The controller's ``GET /metrics``: the whole fleet in Prometheus' text format.

Read at scrape time: one ``FleetFigures`` is taken on the store thread (``await ctx.run``,
the thread every store call runs on, so a scrape queues behind ingest like any read and
never races it), then joined by what the loop owns (ingest's counters and queue, refused
HTTP requests, live-feed clients) and rendered by a prometheus_client collector in a worker
thread (a large fleet's gauges take long enough to render that it is not on the loop).
Nothing runs between scrapes and nothing is stale: a periodic refresh would cost the store
thread whether anyone scrapes or not, and would show figures up to one period old.

Families (units in the names; docs/monitoring.md lists them): devices by state
(``online``, ``offline``, ``pending``: not yet accepted), by model, version and variant and
by agent version; rollouts by phase, and the stage, stage count and members of each active
rollout; ingest (messages stored by kind, queue depth), refused MQTT messages and HTTP
requests by reason, live-feed clients. Per-device gauges (last seen, online, CPU, memory,
temperature, inference p95 per model, outbox depth) exist for at most
``[http] metrics_device_limit`` devices, the most recently seen: that bounds the label
cardinality whatever the fleet's size; ``fleet_device_gauges_left_out_devices`` says how
many were left out. Viewer auth when tokens are configured (Prometheus sends the token with
``authorization: credentials_file``).
"""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from fastapi import APIRouter, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from fleet.app.usecases import FleetApp
from fleet.http.context import Ctx, Viewer
from fleet.ingest import IngestFigures
from fleet.records import DeviceDocuments, JsonObject
from fleet.rollouts.model import Phase

router = APIRouter()

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEVICE_STATES = ("online", "offline", "pending")
# The reasons every scrape shows, at 0 until one happens (a rate needs the series first);
# any other reason appears when it is first counted.
MQTT_REASONS = (
    "too_large",
    "not_utf8",
    "too_deep",
    "number_range",
    "not_json",
    "not_object",
    "schema",
    "topic",
    "handler_failed",
    "store_failed",
)
HTTP_REASONS = ("unauthorized", "forbidden", "cross_origin", "invalid", "too_large")
# A label value where the device says nothing (no variant, no agent version).
NONE = "none"


@dataclass(frozen=True)
class DeviceGauges:
    """One device's own gauges (None where its newest telemetry does not say)."""

    device_id: str
    online: bool
    last_seen: float
    cpu_ratio: float | None
    memory_ratio: float | None
    temperature_c: float | None
    queue_messages: float | None
    p95_s: dict[str, float]  # by model


@dataclass(frozen=True)
class RolloutFigures:
    rollout_id: str
    model: str
    version: str
    phase: str
    stage: int
    stages: int
    members: int


@dataclass(frozen=True)
class FleetFigures:
    """What the store says at one scrape (taken on the store thread)."""

    devices: Counter[str]  # by state: online, offline, pending
    by_model: Counter[tuple[str, str, str]]  # (model, version, variant)
    by_agent_version: Counter[str]
    gauges: list[DeviceGauges]
    left_out: int
    rollout_phases: dict[str, int]
    rollouts: list[RolloutFigures]


@dataclass(frozen=True)
class LoopFigures:
    """What the event loop owns at the same scrape."""

    ingest: IngestFigures | None
    refused_mqtt: dict[str, int]
    refused_http: dict[str, int]
    live_clients: int
    live_published: int
    live_dropped_clients: int


@router.get("/metrics", include_in_schema=False)
async def metrics(ctx: Ctx, _caller: Viewer) -> Response:
    limit = ctx.options.metrics_device_limit
    figures = await ctx.run(functools.partial(read_figures, ctx.app, limit))
    loop = LoopFigures(
        ingest=ctx.ingest() if ctx.ingest is not None else None,
        refused_mqtt=dict.fromkeys(MQTT_REASONS, 0) | dict(ctx.mqtt_refusals()),
        refused_http=dict.fromkeys(HTTP_REASONS, 0) | dict(ctx.refused),
        live_clients=ctx.hub.clients,
        live_published=ctx.hub.published,
        live_dropped_clients=ctx.hub.dropped_clients,
    )
    # In a worker thread: the text of a large fleet's gauges takes long enough to render that
    # the loop (ingest, the live feed) should not wait for it. The figures are immutable.
    body = await asyncio.to_thread(render, figures, loop, limit)
    return Response(body, media_type=None, headers=_TEXT)


_TEXT = {"content-type": CONTENT_TYPE}


def read_figures(app: FleetApp, device_limit: int) -> FleetFigures:
    """Store thread: the devices and rollouts, reduced to what the families show."""
    documents = app.store.device_documents(telemetry_for=device_limit)
    states = [
        RolloutFigures(
            rollout_id=s.spec.rollout_id,
            model=s.spec.model,
            version=s.spec.version,
            phase=s.phase.value,
            stage=s.stage,
            stages=len(s.spec.stages),
            members=len(s.members),
        )
        for s in app.store.rollouts(active=True)
    ]
    return fleet_figures(documents, app.store.rollout_phase_counts(), states, device_limit)


def fleet_figures(
    documents: list[DeviceDocuments],
    phases: dict[str, int],
    rollouts: list[RolloutFigures],
    device_limit: int,
) -> FleetFigures:
    """Pure: the figures of ``documents`` (the most recently seen first)."""
    devices: Counter[str] = Counter(dict.fromkeys(DEVICE_STATES, 0))
    by_model: Counter[tuple[str, str, str]] = Counter()
    by_agent: Counter[str] = Counter()
    for doc in documents:
        devices[_state(doc)] += 1
        status = doc.status or {}
        by_agent[_label(status.get("agent_version"))] += 1
        variants = _variants(doc.reported)
        for model, version in _section(status, "models").items():
            by_model[(model, _label(version), variants.get(model, NONE))] += 1
    gauges = [_gauges(doc) for doc in documents[:device_limit]]
    return FleetFigures(
        devices=devices,
        by_model=by_model,
        by_agent_version=by_agent,
        gauges=gauges,
        left_out=max(0, len(documents) - device_limit),
        rollout_phases=phases,
        rollouts=rollouts,
    )


def _state(doc: DeviceDocuments) -> str:
    if doc.admission != "accepted":
        return "pending"
    return "online" if doc.state == "online" else "offline"


def _variants(reported: JsonObject | None) -> dict[str, str]:
    """The active slot's variant of each model the device reports (OTA)."""
    found = {}
    for model, entry in _section(reported or {}, "models").items():
        variant = entry.get("variant") if isinstance(entry, dict) else None
        found[model] = _label(variant)
    return found


def _gauges(doc: DeviceDocuments) -> DeviceGauges:
    telemetry = doc.telemetry or {}
    temperatures = [
        t for t in map(_number, _section(telemetry, "temperatures_c").values()) if t is not None
    ]
    cpu = _number(_section(telemetry, "cpu").get("percent"))
    memory = _number(_section(telemetry, "memory").get("used_percent"))
    return DeviceGauges(
        device_id=doc.device_id,
        online=doc.state == "online",
        last_seen=doc.last_seen,
        cpu_ratio=None if cpu is None else cpu / 100.0,
        memory_ratio=None if memory is None else memory / 100.0,
        temperature_c=max(temperatures) if temperatures else None,
        queue_messages=_number(_section(telemetry, "queue").get("depth")),
        p95_s=_p95_by_model(_section(telemetry, "inference").get("models")),
    )


def _p95_by_model(blocks: object) -> dict[str, float]:
    """Each model's recent p95 batch latency from the telemetry's inference blocks (the
    default version's when several versions serve: the first block of a model)."""
    found: dict[str, float] = {}
    if not isinstance(blocks, list):
        return found
    for block in blocks[:64]:  # a device's models, bounded whatever it sends
        if not isinstance(block, dict) or not isinstance(block.get("model"), str):
            continue
        p95 = _number(_section(block, "latency_quantile_seconds").get("0.95"))
        if p95 is not None:
            found.setdefault(block["model"], p95)
    return found


def _section(doc: Mapping[str, object], key: str) -> JsonObject:
    value = doc.get(key)
    return value if isinstance(value, dict) else {}


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _label(value: object) -> str:
    return value[:128] if isinstance(value, str) and value else NONE


# -- exposition ------------------------------------------------------------------------------


def render(figures: FleetFigures, loop: LoopFigures, device_limit: int) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(figures, loop, device_limit))
    data: bytes = generate_latest(registry)
    return data


class _Collector:
    def __init__(self, figures: FleetFigures, loop: LoopFigures, device_limit: int) -> None:
        self._figures = figures
        self._loop = loop
        self._limit = device_limit

    def collect(self) -> Iterator[Metric]:
        yield from _fleet_families(self._figures)
        yield from _rollout_families(self._figures)
        yield from _loop_families(self._loop)
        yield from _device_families(self._figures, self._limit)


def _fleet_families(figures: FleetFigures) -> Iterator[Metric]:
    devices = GaugeMetricFamily(
        "fleet_devices",
        "Devices by state: online, offline (accepted ones), pending (not yet accepted).",
        labels=["state"],
    )
    for state, count in sorted(figures.devices.items()):
        devices.add_metric([state], count)
    yield devices
    by_model = GaugeMetricFamily(
        "fleet_model_devices",
        "Devices serving a model, by version and variant (their status and reported state).",
        labels=["model", "version", "variant"],
    )
    for (model, version, variant), count in sorted(figures.by_model.items()):
        by_model.add_metric([model, version, variant], count)
    yield by_model
    by_agent = GaugeMetricFamily(
        "fleet_agent_version_devices", "Devices by agent version.", labels=["agent_version"]
    )
    for version, count in sorted(figures.by_agent_version.items()):
        by_agent.add_metric([version], count)
    yield by_agent


def _rollout_families(figures: FleetFigures) -> Iterator[Metric]:
    phases = GaugeMetricFamily("fleet_rollouts", "Rollouts by phase.", labels=["phase"])
    for each in Phase:
        phases.add_metric([each.value], figures.rollout_phases.get(each.value, 0))
    yield phases
    labels = ["rollout", "model", "version"]
    stage = GaugeMetricFamily(
        "fleet_rollout_stage", "The current stage of an active rollout, from 0.", labels=labels
    )
    stages = GaugeMetricFamily(
        "fleet_rollout_stages", "Stages of an active rollout.", labels=labels
    )
    members = GaugeMetricFamily(
        "fleet_rollout_member_devices", "Devices an active rollout reached so far.", labels=labels
    )
    phase = GaugeMetricFamily(
        "fleet_rollout_phase",
        "1 for the phase an active rollout is in, 0 for the others.",
        labels=["rollout", "phase"],
    )
    for rollout in figures.rollouts:
        values = [rollout.rollout_id, rollout.model, rollout.version]
        stage.add_metric(values, rollout.stage)
        stages.add_metric(values, rollout.stages)
        members.add_metric(values, rollout.members)
        for each in Phase:
            phase.add_metric([rollout.rollout_id, each.value], int(each.value == rollout.phase))
    yield from (stage, stages, members, phase)


def _loop_families(loop: LoopFigures) -> Iterator[Metric]:
    if loop.ingest is not None:
        stored = CounterMetricFamily(
            "fleet_ingest_stored_messages",
            "Device messages committed to the store, by kind.",
            labels=["kind"],
        )
        for kind in ("status", "telemetry", "events", "reported"):
            stored.add_metric([kind], loop.ingest.stored.get(kind, 0))
        yield stored
        yield GaugeMetricFamily(
            "fleet_ingest_queue_messages",
            "Validated messages waiting for the store writer.",
            value=loop.ingest.queue_depth,
        )
        yield GaugeMetricFamily(
            "fleet_ingest_queue_limit_messages",
            "The writer queue's bound (beyond it messages wait unacknowledged at the broker).",
            value=loop.ingest.queue_limit,
        )
    yield _counts(
        "fleet_rejected_messages",
        "MQTT messages the controller refused, by reason.",
        loop.refused_mqtt,
    )
    yield _counts(
        "fleet_http_refused_requests",
        "HTTP requests the controller refused, by reason.",
        loop.refused_http,
    )
    yield GaugeMetricFamily(
        "fleet_live_clients", "Clients following the live feed.", value=loop.live_clients
    )
    yield CounterMetricFamily(
        "fleet_live_events", "Events published to the live feed.", value=loop.live_published
    )
    yield CounterMetricFamily(
        "fleet_live_dropped_clients",
        "Live-feed clients dropped for being too slow.",
        value=loop.live_dropped_clients,
    )


def _counts(name: str, documentation: str, counts: Mapping[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=["reason"])
    for reason, count in sorted(counts.items()):
        family.add_metric([reason[:64]], count)
    return family


def _device_families(figures: FleetFigures, limit: int) -> Iterator[Metric]:
    def gauge(name: str, documentation: str, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, documentation, labels=["device", *extra])

    seen = gauge("fleet_device_last_seen_timestamp_seconds", "When a message last came.")
    online = gauge("fleet_device_online", "1 while the device's status is online.")
    cpu = gauge("fleet_device_cpu_ratio", "CPU use (0-1) in the newest telemetry.")
    memory = gauge("fleet_device_memory_ratio", "Memory used (0-1), newest telemetry.")
    temperature = gauge("fleet_device_temperature_celsius", "Hottest sensor, newest telemetry.")
    queue = gauge("fleet_device_outbox_messages", "Messages in the device's outbox.")
    p95 = gauge(
        "fleet_device_inference_p95_seconds", "Recent p95 batch latency, by model.", ("model",)
    )
    for device in figures.gauges:
        labels = [device.device_id]
        seen.add_metric(labels, device.last_seen)
        online.add_metric(labels, int(device.online))
        for family, value in (
            (cpu, device.cpu_ratio),
            (memory, device.memory_ratio),
            (temperature, device.temperature_c),
            (queue, device.queue_messages),
        ):
            if value is not None:
                family.add_metric(labels, value)
        for model, seconds in sorted(device.p95_s.items()):
            p95.add_metric([device.device_id, model], seconds)
    yield from (seen, online, cpu, memory, temperature, queue, p95)
    yield GaugeMetricFamily(
        "fleet_device_gauges_limit_devices",
        "Devices with per-device gauges at most ([http] metrics_device_limit).",
        value=limit,
    )
    yield GaugeMetricFamily(
        "fleet_device_gauges_left_out_devices",
        "Devices beyond the limit, the least recently seen, without per-device gauges.",
        value=figures.left_out,
    )
