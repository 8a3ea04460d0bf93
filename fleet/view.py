"""Rich renderings of the device view for people (the CLI's non-JSON output and the demo)."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table


def _fmt(value: Any, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def devices_table(devices: list[dict[str, Any]], title: str = "Devices") -> Table:
    """One row per device."""
    table = Table(title=title)
    # Ids and states are what a reader looks for: never shortened, even in a narrow terminal.
    table.add_column(
        "device", no_wrap=True, min_width=max([6, *(len(d["device_id"]) for d in devices)])
    )
    table.add_column("state", no_wrap=True, min_width=7)
    for column in (
        "last telemetry",
        "cpu",
        "memory",
        "temp",
        "health",
        "queue",
        "models",
        "agent",
    ):
        table.add_column(column)
    for d in devices:
        state = "[green]online[/green]" if d["online"] else f"[red]{d['state']}[/red]"
        age = d.get("last_telemetry_age_s")
        table.add_row(
            d["device_id"],
            state,
            "-" if age is None else f"{age:.1f}s ago",
            _fmt(d.get("cpu_percent"), "%"),
            _fmt(d.get("memory_percent"), "%"),
            _fmt(d.get("temperature_c"), "°C"),
            d.get("health") or "-",
            _fmt(d.get("queue_depth")),
            ", ".join(f"{name} v{version}" for name, version in (d.get("models") or {}).items())
            or "-",
            d.get("agent_version") or "-",
        )
    return table


def device_detail_view(console: Console, detail: dict[str, Any]) -> None:
    """Summary table, latest telemetry and recent events of one device."""
    console.print(devices_table([detail["summary"]], title=detail["summary"]["device_id"]))
    telemetry = detail.get("telemetry")
    if telemetry:
        console.print("[bold]Latest telemetry[/bold]")
        console.print_json(json.dumps(telemetry))
    if detail.get("reported") or detail.get("desired"):
        console.print(models_table(detail.get("reported") or {}, detail.get("desired")))
    events = Table(title="Recent events")
    for column in ("ts", "event", "details"):
        events.add_column(column)
    for event in detail.get("events", []):
        extra = {k: v for k, v in event.items() if k not in ("ts", "event", "device_id")}
        events.add_row(event.get("ts", "-"), event.get("event", "-"), json.dumps(extra))
    console.print(events)


def _version(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "-"
    return f"{entry.get('version')} (release {entry.get('release')}, slot {entry.get('slot')})"


def models_table(reported: dict[str, Any], desired: dict[str, Any] | None) -> Table:
    """OTA state per model: installed versions (active, pending, previous) and the last result."""
    title = "Models (OTA)"
    if desired:
        title += (
            f": desired {desired.get('model')}@{desired.get('version')} "
            f"({desired.get('action')}, counter {desired.get('counter')})"
        )
    table = Table(title=title)
    for column in ("model", "active", "pending", "previous", "step", "last result"):
        table.add_column(column)
    for name, entry in sorted((reported.get("models") or {}).items()):
        result = entry.get("last_result") or {}
        outcome = result.get("outcome", "-")
        if result.get("reason"):
            outcome += f" ({result['reason']}: {result.get('detail')})"
        step = entry.get("step") or "-"
        if entry.get("progress") is not None:
            step += f" {entry['progress']}%"
        table.add_row(
            name,
            _version(entry.get("active")),
            _version(entry.get("pending")),
            _version(entry.get("previous")),
            step,
            f"{outcome} {result.get('version', '')} {result.get('at', '')}".strip(),
        )
    return table
