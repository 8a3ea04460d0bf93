"""The agent's own /metrics families (agent.telemetry.prometheus): the same figures as the
telemetry sample, in the names and units promtool accepts."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from agent.control.inbound import RejectedSnapshot
from agent.telemetry.prometheus import AgentMetrics, AgentSources
from agent.telemetry.service import LinkSnapshot
from agent.uplink.outbox import OutboxStats

BODY: dict[str, Any] = {
    "cpu": {"percent": 25.0, "count": 4, "load": [0.5, 0.25, 0.125]},
    "memory": {"total_bytes": 1000, "available_bytes": 400, "used_percent": 60.0},
    "disk": {"total_bytes": 10, "free_bytes": 5, "used_percent": 50.0},
    "network": {"bytes_sent": 7, "bytes_recv": 8},
    "temperatures_c": {"thermal/cpu-thermal": 48.2, "odd": "hot"},
    "agent": {"rss_bytes": 123, "cpu_percent": 150.0, "threads": 9, "uptime_s": 3.5},
    "uptime_s": 99.0,
    "health": {"status": "degraded", "subsystems": {"mqtt": {"status": "degraded"}}},
}


def _sources(**changes: Any) -> AgentSources:
    link: LinkSnapshot = {"connected": True, "outages": 2, "last_outage_s": 1.5}
    rejected: RejectedSnapshot = {"total": 3, "by_reason": {"not_json": 3}}
    base: dict[str, Any] = {
        "info": {"device_id": "dev-1", "agent_version": "0.1.0", "board": "generic"},
        "sample": lambda: (BODY, 1_800_000_000.0),
        "link": lambda: link,
        "inflight": lambda: 5,
        "sent": lambda: 40,
        "outbox": lambda: OutboxStats(depth=6, bytes=600, max_bytes=6000, dropped_total=1),
        "rejected": lambda: rejected,
    }
    return AgentSources(**(base | changes))


def _samples(metrics: AgentMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_host_figures_come_from_the_telemetry_sample_as_ratios_and_bytes() -> None:
    samples = _samples(AgentMetrics(_sources()))
    assert samples[("edge_agent_cpu_usage_ratio", ())] == 0.25
    assert samples[("edge_agent_load_average", (("period", "5m"),))] == 0.25
    assert samples[("edge_agent_memory_used_ratio", ())] == 0.6
    assert samples[("edge_agent_disk_used_ratio", ())] == 0.5
    assert samples[("edge_agent_network_sent_bytes_total", ())] == 7
    assert samples[("edge_agent_temperature_celsius", (("sensor", "thermal/cpu-thermal"),))] == 48.2
    assert ("edge_agent_temperature_celsius", (("sensor", "odd"),)) not in samples
    assert samples[("edge_agent_self_cpu_usage_ratio", ())] == 1.5
    assert samples[("edge_agent_sample_timestamp_seconds", ())] == 1_800_000_000.0
    assert samples[("edge_agent_health", (("state", "degraded"), ("subsystem", "all")))] == 1
    assert samples[("edge_agent_health", (("state", "ok"), ("subsystem", "mqtt")))] == 0
    info = (("agent_version", "0.1.0"), ("board", "generic"), ("device_id", "dev-1"))
    assert samples[("edge_agent_info", info)] == 1


def test_link_outbox_and_rejections_are_read_live() -> None:
    samples = _samples(AgentMetrics(_sources()))
    assert samples[("edge_agent_mqtt_connected", ())] == 1
    assert samples[("edge_agent_mqtt_outages_total", ())] == 2
    assert samples[("edge_agent_mqtt_inflight_messages", ())] == 5
    assert samples[("edge_agent_mqtt_sent_messages_total", ())] == 40
    assert samples[("edge_agent_outbox_messages", ())] == 6
    assert samples[("edge_agent_outbox_bytes", ())] == 600
    assert samples[("edge_agent_outbox_dropped_messages_total", ())] == 1
    assert samples[("edge_agent_rejected_messages_total", (("reason", "not_json"),))] == 3


def test_before_the_first_sample_there_are_no_host_families() -> None:
    samples = _samples(AgentMetrics(_sources(sample=lambda: None)))
    assert not any(name.startswith("edge_agent_cpu") for name, _ in samples)
    assert samples[("edge_agent_mqtt_connected", ())] == 1


def test_serial_link_when_configured() -> None:
    serial = {
        "connected": True,
        "frames_in": 10,
        "frames_out": 11,
        "crc_errors": 1,
        "framing_errors": 2,
        "ack_failures": 0,
        "resends": 4,
        "rtt_ms_p50": 2.0,
        "rtt_ms_p99": None,
        "sensor_drops": 0,
    }
    samples = _samples(AgentMetrics(_sources(serial=lambda: serial)))
    assert samples[("edge_agent_serial_connected", ())] == 1
    assert samples[("edge_agent_serial_frames_total", (("direction", "out"),))] == 11
    assert samples[("edge_agent_serial_errors_total", (("kind", "framing"),))] == 2
    assert samples[("edge_agent_serial_rtt_p50_seconds", ())] == 0.002
    assert ("edge_agent_serial_rtt_p99_seconds", ()) not in samples
    assert not any(n.startswith("edge_agent_serial") for n, _ in _samples(AgentMetrics(_sources())))


def test_ota_state_per_model() -> None:
    models = {
        "digits": {
            "active": {"slot": "a", "version": "2", "release": 2, "variant": "pi4"},
            "step": "downloading",
            "progress": 40.0,
        },
        "kws": {"active": None, "step": None, "progress": None},
    }
    samples = _samples(AgentMetrics(_sources(ota=lambda: models)))
    active = (("model", "digits"), ("variant", "pi4"), ("version", "2"))
    assert samples[("edge_agent_ota_active_model", active)] == 1
    assert (
        samples[("edge_agent_ota_update_step", (("model", "digits"), ("step", "downloading")))] == 1
    )
    assert samples[("edge_agent_ota_update_step", (("model", "kws"), ("step", "idle")))] == 1
    assert samples[("edge_agent_ota_update_step", (("model", "kws"), ("step", "committed")))] == 0
    assert samples[("edge_agent_ota_download_progress_ratio", (("model", "digits"),))] == 0.4
