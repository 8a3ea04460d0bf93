"""The agent's own Prometheus families: host, MQTT link, outbox, serial link, OTA, health.

The figures come from where telemetry takes them, so ``/metrics`` and the telemetry message
never disagree: host resources and health from the newest telemetry sample itself
(``TelemetryService.last_body``, measured every ``telemetry.interval_s`` on the outbox's
worker thread; ``edge_agent_sample_timestamp_seconds`` says when), and the live parts from
the same calls the sample makes (the link watcher's state, the outbox's statistics, the
forwarder's in-flight count, the inbound rejections, the serial relay's snapshot) plus the
OTA reporter's per-model state (the retained ``reported`` document's source). Read on the
event loop at scrape time; nothing is measured for a scrape.

prometheus_client is imported here, so this module is loaded only when ``/metrics`` is
served (the inference REST port, or ``[metrics] port``: both need the ``inference`` extra).
Names follow promtool's rules: units in the names, ratios in 0..1 (telemetry's percents
divided by 100), counters end in ``_total``. docs/monitoring.md lists every family.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from agent.control.inbound import RejectedSnapshot
from agent.ota.report import STEPS
from agent.telemetry.service import LinkSnapshot
from agent.uplink.outbox import OutboxStats

# A model's update step when none is under way (the reporter's ``step`` is None).
IDLE = "idle"
UPDATE_STEPS = (IDLE, *STEPS)
HEALTH_STATES = ("ok", "degraded", "failed")


@dataclass(frozen=True)
class AgentSources:
    """Where each family reads; every callable runs on the event loop."""

    info: Mapping[str, str]  # device_id, agent_version, board, hardware_id
    sample: Callable[[], tuple[Mapping[str, Any], float] | None]  # newest body, when built
    link: Callable[[], LinkSnapshot]
    inflight: Callable[[], int]
    sent: Callable[[], int]
    outbox: Callable[[], OutboxStats]
    rejected: Callable[[], RejectedSnapshot]
    serial: Callable[[], Mapping[str, Any]] | None = None
    ota: Callable[[], Mapping[str, Mapping[str, Any]]] | None = None


class AgentMetrics:
    """A prometheus_client collector over ``AgentSources``; ``render()`` is the text."""

    def __init__(self, sources: AgentSources, *, clock: Callable[[], float] = time.time) -> None:
        self._sources = sources
        self._clock = clock
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)

    def render(self) -> bytes:
        data: bytes = generate_latest(self._registry)
        return data

    def collect(self) -> Iterator[Metric]:
        sources = self._sources
        info = GaugeMetricFamily(
            "edge_agent_info", "The agent and the board (always 1).", labels=sorted(sources.info)
        )
        info.add_metric([sources.info[k] for k in sorted(sources.info)], 1)
        yield info
        sample = sources.sample()
        if sample is not None:
            body, built_at = sample
            yield GaugeMetricFamily(
                "edge_agent_sample_timestamp_seconds",
                "When the newest telemetry sample (the host figures here) was measured.",
                value=built_at,
            )
            yield from host_families(body)
            yield from health_families(body.get("health"))
        yield from link_families(sources.link(), sources.inflight(), sources.sent())
        yield from outbox_families(sources.outbox(), sources.rejected())
        if sources.serial is not None:
            yield from serial_families(sources.serial())
        if sources.ota is not None:
            yield from ota_families(sources.ota())


def _gauge(name: str, documentation: str, value: object) -> Iterator[Metric]:
    number = _number(value)
    if number is not None:
        yield GaugeMetricFamily(name, documentation, value=number)


def _counter(name: str, documentation: str, value: object) -> Iterator[Metric]:
    number = _number(value)
    if number is not None:
        yield CounterMetricFamily(name, documentation, value=number)


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _ratio(value: object) -> float | None:
    number = _number(value)
    return None if number is None else number / 100.0


def _section(body: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = body.get(key)
    return value if isinstance(value, Mapping) else {}


def host_families(body: Mapping[str, Any]) -> Iterator[Metric]:
    """Host and agent-process figures of one telemetry body (absent readings: no family)."""
    cpu, memory, disk = _section(body, "cpu"), _section(body, "memory"), _section(body, "disk")
    yield from _gauge(
        "edge_agent_cpu_usage_ratio", "Host CPU use, 0-1.", _ratio(cpu.get("percent"))
    )
    yield from _gauge("edge_agent_cpu_cores", "Logical CPUs.", cpu.get("count"))
    load = cpu.get("load")
    if isinstance(load, list) and len(load) == 3:
        family = GaugeMetricFamily(
            "edge_agent_load_average", "Load average by period.", labels=["period"]
        )
        for period, value in zip(("1m", "5m", "15m"), load, strict=True):
            if (number := _number(value)) is not None:
                family.add_metric([period], number)
        yield family
    yield from _gauge("edge_agent_memory_total_bytes", "Host memory.", memory.get("total_bytes"))
    yield from _gauge(
        "edge_agent_memory_available_bytes", "Host memory available.", memory.get("available_bytes")
    )
    yield from _gauge(
        "edge_agent_memory_used_ratio", "Host memory used, 0-1.", _ratio(memory.get("used_percent"))
    )
    yield from _gauge("edge_agent_swap_used_bytes", "Swap used.", memory.get("swap_used_bytes"))
    yield from _gauge(
        "edge_agent_disk_total_bytes",
        "Size of the state dir's filesystem.",
        disk.get("total_bytes"),
    )
    yield from _gauge(
        "edge_agent_disk_free_bytes", "Free on the state dir's filesystem.", disk.get("free_bytes")
    )
    yield from _gauge(
        "edge_agent_disk_used_ratio",
        "Used share of the state dir's filesystem, 0-1.",
        _ratio(disk.get("used_percent")),
    )
    network = _section(body, "network")
    yield from _counter("edge_agent_network_sent_bytes", "Bytes sent.", network.get("bytes_sent"))
    yield from _counter(
        "edge_agent_network_received_bytes", "Bytes received.", network.get("bytes_recv")
    )
    temperatures = _section(body, "temperatures_c")
    if temperatures:
        family = GaugeMetricFamily(
            "edge_agent_temperature_celsius", "Temperature by sensor.", labels=["sensor"]
        )
        for sensor, value in sorted(temperatures.items())[:64]:
            if (number := _number(value)) is not None:
                family.add_metric([str(sensor)[:64]], number)
        yield family
    own = _section(body, "agent")
    yield from _gauge(
        "edge_agent_self_resident_memory_bytes", "The agent's RSS.", own.get("rss_bytes")
    )
    yield from _gauge(
        "edge_agent_self_cpu_usage_ratio",
        "The agent's CPU use (1 = one core).",
        _ratio(own.get("cpu_percent")),
    )
    yield from _gauge("edge_agent_self_threads", "The agent's threads.", own.get("threads"))
    yield from _gauge(
        "edge_agent_self_uptime_seconds", "Since the agent started.", own.get("uptime_s")
    )
    yield from _gauge(
        "edge_agent_host_uptime_seconds", "Since the host booted.", body.get("uptime_s")
    )


def health_families(health: object) -> Iterator[Metric]:
    """The health block as a state set: 1 for each subsystem's state, 0 for the others;
    subsystem ``all`` is the overall state."""
    if not isinstance(health, Mapping):
        return
    family = GaugeMetricFamily(
        "edge_agent_health",
        "1 for the state (ok, degraded, failed) each subsystem is in; subsystem all: overall.",
        labels=["subsystem", "state"],
    )
    states = {"all": health.get("status")}
    for name, condition in sorted(_section(health, "subsystems").items())[:64]:
        states[str(name)[:64]] = condition.get("status") if isinstance(condition, Mapping) else None
    for subsystem, state in states.items():
        for each in HEALTH_STATES:
            family.add_metric([subsystem, each], int(state == each))
    yield family


def link_families(link: LinkSnapshot, inflight: int, sent: int) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "edge_agent_mqtt_connected",
        "1 while connected to the broker.",
        value=int(link["connected"]),
    )
    yield CounterMetricFamily(
        "edge_agent_mqtt_outages", "Broker connections lost since the start.", value=link["outages"]
    )
    yield from _gauge(
        "edge_agent_mqtt_last_outage_seconds", "Length of the last outage.", link["last_outage_s"]
    )
    yield GaugeMetricFamily(
        "edge_agent_mqtt_inflight_messages",
        "Outbox messages published and not yet acknowledged by the broker.",
        value=inflight,
    )
    yield CounterMetricFamily(
        "edge_agent_mqtt_sent_messages", "Outbox messages published.", value=sent
    )


def outbox_families(stats: OutboxStats, rejected: RejectedSnapshot) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "edge_agent_outbox_messages",
        "Messages not yet acknowledged by the broker.",
        value=stats.depth,
    )
    yield GaugeMetricFamily("edge_agent_outbox_bytes", "Bytes the outbox holds.", value=stats.bytes)
    yield GaugeMetricFamily(
        "edge_agent_outbox_max_bytes",
        "The outbox's cap (oldest dropped beyond).",
        value=stats.max_bytes,
    )
    yield CounterMetricFamily(
        "edge_agent_outbox_dropped_messages",
        "Messages dropped (oldest first) to keep the outbox under its cap.",
        value=stats.dropped_total,
    )
    family = CounterMetricFamily(
        "edge_agent_rejected_messages", "Inbound messages refused, by reason.", labels=["reason"]
    )
    for reason, count in sorted(rejected["by_reason"].items())[:64]:
        family.add_metric([reason[:64]], count)
    yield family


def serial_families(serial: Mapping[str, Any]) -> Iterator[Metric]:
    """The serial relay's snapshot (the same one telemetry's ``serial`` carries)."""
    yield GaugeMetricFamily(
        "edge_agent_serial_connected",
        "1 while the peripheral is connected.",
        value=int(bool(serial.get("connected"))),
    )
    frames = CounterMetricFamily(
        "edge_agent_serial_frames", "Frames by direction.", labels=["direction"]
    )
    frames.add_metric(["in"], _number(serial.get("frames_in")) or 0.0)
    frames.add_metric(["out"], _number(serial.get("frames_out")) or 0.0)
    yield frames
    errors = CounterMetricFamily(
        "edge_agent_serial_errors", "Link errors by kind.", labels=["kind"]
    )
    for kind, key in (
        ("crc", "crc_errors"),
        ("framing", "framing_errors"),
        ("ack", "ack_failures"),
    ):
        errors.add_metric([kind], _number(serial.get(key)) or 0.0)
    yield errors
    yield from _counter("edge_agent_serial_resends", "Frames sent again.", serial.get("resends"))
    yield from _counter(
        "edge_agent_serial_sensor_drops", "Sensor readings dropped.", serial.get("sensor_drops")
    )
    for name, key in (("p50", "rtt_ms_p50"), ("p99", "rtt_ms_p99")):
        milliseconds = _number(serial.get(key))
        if milliseconds is not None:
            yield GaugeMetricFamily(
                f"edge_agent_serial_rtt_{name}_seconds",
                f"Recent round-trip time, {name}.",
                value=milliseconds / 1000.0,
            )


def ota_families(models: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
    """Each model's OTA state: the active version and variant, the update step, progress."""
    active = GaugeMetricFamily(
        "edge_agent_ota_active_model",
        "1 for the version (and variant) of each model the agent runs from its OTA slots.",
        labels=["model", "version", "variant"],
    )
    step = GaugeMetricFamily(
        "edge_agent_ota_update_step",
        "1 for the step each model's update is at (idle: none under way), 0 for the others.",
        labels=["model", "step"],
    )
    progress = GaugeMetricFamily(
        "edge_agent_ota_download_progress_ratio", "Download progress, 0-1.", labels=["model"]
    )
    for model, entry in sorted(models.items())[:64]:
        slot = entry.get("active")
        if isinstance(slot, Mapping):
            variant = slot.get("variant") or "none"
            active.add_metric([model, str(slot.get("version")), str(variant)], 1)
        current = entry.get("step") or IDLE
        for each in UPDATE_STEPS:
            step.add_metric([model, each], int(current == each))
        if (percent := _ratio(entry.get("progress"))) is not None:
            progress.add_metric([model], percent)
    yield from (active, step, progress)
