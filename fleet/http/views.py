"""What the dashboard's pages show, computed from the use cases' typed replies (pure).

``device_row`` turns one device's ``DeviceDetail`` (and its merged tags) into the row of the
device list: state and since when, tags, models with version and variant, host readings,
inference p95 and drift, the serial link, last seen. The same few figures are what the
browser's live code (``static/dashboard.js``) recomputes from a telemetry message, so both
read the message the same way: ``inference.models[].latency_quantile_seconds["0.95"]``,
``max(drift_psi)``, ``serial.connected``. Stored documents are the devices' (validated at
ingest, but typed loosely): every field is optional here and a wrong type reads as missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edge_contract import payloads
from edge_contract.controller import DeviceDetail, JsonObject, RolloutVerdict

P95 = "0.95"
MISSING = "\u2013"  # an en dash: not reported


@dataclass(frozen=True)
class ModelCell:
    """One model a device runs: name, version, and the release variant when reported."""

    model: str
    version: str
    variant: str | None = None


@dataclass(frozen=True)
class DeviceRow:
    """One row of the device list (numbers in their units; None when not reported)."""

    device_id: str
    state: str
    since: float | None
    admission: str
    tags: dict[str, str] = field(default_factory=dict)
    models: list[ModelCell] = field(default_factory=list)
    cpu_percent: float | None = None
    memory_percent: float | None = None
    temperature_c: float | None = None
    p95_s: float | None = None
    drift_psi: float | None = None
    serial: str | None = None  # "connected" | "disconnected" | None (no serial link)
    last_seen: float | None = None


def device_row(detail: DeviceDetail, tags: dict[str, str], now: float) -> DeviceRow:
    summary = detail.summary
    status = detail.status or {}
    telemetry = detail.telemetry or {}
    age = summary.last_telemetry_age_s
    return DeviceRow(
        device_id=summary.device_id,
        state=summary.state,
        since=epoch_of(status.get("ts")),
        admission=summary.admission,
        tags=dict(tags),
        models=models_of(status, detail.reported or {}),
        cpu_percent=_number(summary.cpu_percent),
        memory_percent=_number(summary.memory_percent),
        temperature_c=_number(summary.temperature_c),
        p95_s=p95_of(telemetry),
        drift_psi=drift_of(telemetry),
        serial=serial_of(telemetry),
        last_seen=None if age is None else now - age,
    )


def models_of(status: JsonObject, reported: JsonObject) -> list[ModelCell]:
    """The models the status message names, with the variant the reported state gives."""
    named = _object(status.get("models"))
    slots = _object(reported.get("models"))
    cells = []
    for model, version in sorted(named.items()):
        slot = _object(slots.get(model))
        active = _object(slot.get("active"))
        variant = _text(slot.get("variant")) or _text(active.get("variant"))
        cells.append(ModelCell(model, _text(version) or "?", variant))
    return cells


def p95_of(telemetry: JsonObject) -> float | None:
    """The highest p95 batch latency (s) over the models of the telemetry's inference block."""
    found = [
        _number(_object(m.get("latency_quantile_seconds")).get(P95)) for m in _models(telemetry)
    ]
    values = [v for v in found if v is not None]
    return max(values) if values else None


def drift_of(telemetry: JsonObject) -> float | None:
    """The highest drift PSI over every model and signal."""
    values = [
        v
        for m in _models(telemetry)
        for v in map(_number, _object(m.get("drift_psi")).values())
        if v is not None
    ]
    return max(values) if values else None


def serial_of(telemetry: JsonObject) -> str | None:
    serial = telemetry.get("serial")
    if not isinstance(serial, dict):
        return None
    return "connected" if serial.get("connected") is True else "disconnected"


def _models(telemetry: JsonObject) -> list[JsonObject]:
    models = _object(telemetry.get("inference")).get("models")
    return [m for m in models if isinstance(m, dict)] if isinstance(models, list) else []


def series_point(at: float, telemetry: JsonObject) -> dict[str, float | None]:
    """One telemetry message as a chart point (the device page's fallback series, and the
    shape the live code appends): the same field names for every point."""
    cpu = _object(telemetry.get("cpu"))
    memory = _object(telemetry.get("memory"))
    temps = [v for v in map(_number, _object(telemetry.get("temperatures_c")).values()) if v]
    return {
        "at": at,
        "cpu_percent": _number(cpu.get("percent")),
        "memory_percent": _number(memory.get("used_percent")),
        "temperature_c": max(temps) if temps else None,
        "p95_s": p95_of(telemetry),
        "drift_psi": drift_of(telemetry),
    }


# -- rollouts ---------------------------------------------------------------------------------

VERDICT_UNITS = {
    "p95_regression": "share",
    "error_rate": "share",
    "accuracy_drop": "share",
    "install_failures": "share",
    "drift": "psi",
}


def figure(value: float | None, metric: str) -> str:
    """A gate figure with its unit: a share as a percentage, PSI as a plain number."""
    if value is None:
        return MISSING
    if VERDICT_UNITS.get(metric) == "share":
        return f"{value * 100:.1f} %"
    if VERDICT_UNITS.get(metric) == "psi":
        return f"{value:.3f} PSI"
    if metric == "latency":
        return f"{value * 1000:.1f} ms"
    return f"{value:g}"


def verdict_cells(verdict: RolloutVerdict) -> dict[str, str]:
    """A gate verdict's figures with units: both sides' own figures (a p95 is a latency,
    the others are shares or PSI), the compared value and its threshold."""
    m = verdict.metric
    side = "latency" if m == "p95_regression" else m
    return {
        "metric": m,
        "candidate": figure(verdict.candidate, side),
        "baseline": figure(verdict.baseline, side),
        "value": figure(verdict.value, m),
        "threshold": figure(verdict.threshold, m),
        "verdict": verdict.verdict,
        "detail": verdict.detail,
    }


def epoch_of(value: object) -> float | None:
    """A message's time (ISO 8601 with a zone, as devices send it; or epoch seconds) as
    epoch seconds; None when it is neither."""
    if isinstance(value, str):
        try:
            return payloads.from_iso(value).timestamp()
        except (ValueError, OverflowError):
            return None
    return _number(value)


# -- small readers ----------------------------------------------------------------------------


def _object(value: object) -> JsonObject:
    return value if isinstance(value, dict) else {}


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
