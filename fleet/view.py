"""Renderings of the device view for people: the CLI's tables, ``devices show``, the demo's table.

The views take the controller's typed replies (``edge_contract.controller``: ``DeviceSummary``,
``DeviceDetail``), the same whether the CLI asked over MQTT or read the database (``--db``).
Everything in them came from devices, through the broker, so it is treated as untrusted: the
documents a device sent (status, telemetry, reported state, events: ``JsonObject``) are read
with getters that accept any JSON (telemetry may be partial, or from an older or newer
agent), and device strings go to the terminal as plain text, never as markup, with control
characters replaced and lengths bounded.
"""

from __future__ import annotations

import json
import math
import time
import unicodedata
from collections.abc import Sequence
from datetime import UTC, datetime

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from edge_contract.controller import DesiredRow, DeviceDetail, DeviceSummary, JsonObject

# Events shown by ``devices show``; ``--raw`` has them all.
SHOWN_EVENTS = 5
SHOWN_PIPELINES = 3
SHOWN_MODELS = 4
LABEL_WIDTH = 11


# -- defensive getters ------------------------------------------------------------------------


def obj(value: object) -> JsonObject:
    """``value`` if it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def num(value: object) -> float | None:
    """A finite number, or None (booleans and strings are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        return None
    return number if math.isfinite(number) else None


def text(value: object, limit: int = 60) -> str | None:
    """A printable, bounded string from a string or number; None for anything else."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    raw = str(value)
    # Control and format characters (escape sequences, bidi overrides) never reach a terminal.
    clean = "".join("?" if unicodedata.category(ch).startswith("C") else ch for ch in raw)
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


def parse_ts(value: object) -> datetime | None:
    """An ISO 8601 timestamp as an aware datetime, or None when it is not one."""
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


# -- formatting ---------------------------------------------------------------------------------


def _fmt(value: object, unit: str = "", digits: int = 1) -> str:
    number = num(value)
    if number is None:
        return text(value) or "-"
    if isinstance(value, float):
        return f"{number:.{digits}f}{unit}"
    return f"{value}{unit}"


def age(seconds: object) -> str:
    """A short duration: 0.8s, 42s, 12m, 5h, 3d."""
    value = num(seconds)
    if value is None:
        return "-"
    value = max(value, 0.0)
    if value < 10:
        return f"{value:.1f}s"
    for limit, unit, size in ((60, "s", 1), (3600, "m", 60), (86400, "h", 3600)):
        if value < limit:
            return f"{value / size:.0f}{unit}"
    return f"{value / 86400:.0f}d"


def _bytes(value: object) -> str:
    size = num(value)
    if size is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _percent(value: object) -> str:
    number = num(value)
    return "-" if number is None else f"{number:.1f}%"


def _when(value: object, now: float) -> str | None:
    """``03:17:50Z (12s ago)``, with the date when it is not today (UTC)."""
    moment = parse_ts(value)
    if moment is None:
        return None
    moment = moment.astimezone(UTC)
    today = datetime.fromtimestamp(now, UTC).date()
    shown = moment.strftime("%H:%M:%SZ" if moment.date() == today else "%Y-%m-%d %H:%M:%SZ")
    return f"{shown} ({age(now - moment.timestamp())} ago)"


def _short_ts(value: object) -> str:
    moment = parse_ts(value)
    return moment.astimezone(UTC).strftime("%m-%d %H:%M:%S") if moment else "-" * 14


def _models_cell(models: object, separator: str = ", ") -> Text:
    pairs = sorted(obj(models).items())
    shown = [f"{text(name, 24)} v{text(version, 12) or '?'}" for name, version in pairs]
    return Text(separator.join(shown) or "-")


def _state_cell(device: DeviceSummary) -> Text:
    state = text(device.state, 16) or "unknown"
    if device.online:
        return Text("online", style="green")
    return Text(state, style="yellow" if state == "pending" else "red")


# -- tables -------------------------------------------------------------------------------------


def devices_table(devices: Sequence[DeviceSummary], title: str = "Devices") -> Table:
    """One row per device, every summary column (``fleet devices list``)."""
    table = Table(title=title)
    ids = [text(d.device_id, 64) or "?" for d in devices]
    # Ids and states are what a reader looks for: never shortened, even in a narrow terminal.
    table.add_column("device", no_wrap=True, min_width=max([6, *map(len, ids)]))
    table.add_column("state", no_wrap=True, min_width=7)
    for column in ("last telemetry", "cpu", "memory", "temp", "health", "queue", "models"):
        table.add_column(column)
    table.add_column("agent")
    for device_id, d in zip(ids, devices, strict=True):
        seen = num(d.last_telemetry_age_s)
        table.add_row(
            Text(device_id),
            _state_cell(d),
            "-" if seen is None else f"{seen:.1f}s ago",
            _fmt(d.cpu_percent, "%"),
            _fmt(d.memory_percent, "%"),
            _fmt(d.temperature_c, "°C"),
            Text(text(d.health, 16) or "-"),
            _fmt(d.queue_depth),
            _models_cell(d.models),
            Text(text(d.agent_version, 24) or "-"),
        )
    return table


def tags_table(devices: Sequence[DeviceSummary]) -> Table:
    """Each device's merged tags (``fleet devices list --select``)."""
    table = Table(title="Tags")
    table.add_column("device", no_wrap=True)
    table.add_column("admission", no_wrap=True)
    table.add_column("tags")
    for d in devices:
        tags = ", ".join(f"{text(k, 64)}={text(v, 128)}" for k, v in sorted(d.tags.items()))
        table.add_row(Text(text(d.device_id, 64) or "?"), Text(d.admission), Text(tags or "-"))
    return table


def compact_devices_table(devices: Sequence[DeviceSummary], title: str = "Devices") -> Table:
    """The essentials in 80 columns: device, state, age, cpu, memory, temperature, models.

    The demo's live table. Nothing essential is cut short: the id and state columns never
    shrink, the figures are short by construction, and the models column wraps.
    """
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    ids = [text(d.device_id, 64) or "?" for d in devices]
    # Every column keeps its full width; only an id longer than 24 characters folds.
    longest = max([6, *map(len, ids)])
    table.add_column("device", overflow="fold", min_width=min(longest, 24))
    table.add_column("state", no_wrap=True, min_width=7)
    for column, width in (("seen", 4), ("cpu", 4), ("mem", 4), ("temp", 5)):
        table.add_column(column, no_wrap=True, justify="right", min_width=width)
    table.add_column("models", overflow="fold", min_width=12)
    for device_id, d in zip(ids, devices, strict=True):
        cpu, memory, temp = (num(x) for x in (d.cpu_percent, d.memory_percent, d.temperature_c))
        table.add_row(
            Text(device_id),
            _state_cell(d),
            age(d.last_telemetry_age_s),
            "-" if cpu is None else f"{cpu:.0f}%",
            "-" if memory is None else f"{memory:.0f}%",
            "-" if temp is None else f"{temp:.0f}°C",
            _models_cell(d.models, "\n"),
        )
    return table


# -- devices show -------------------------------------------------------------------------------


def device_detail_lines(detail: DeviceDetail, now: float | None = None) -> list[Text]:
    """The human view of one device: about 20 lines; see ``device_detail_view``."""
    now = time.time() if now is None else now
    summary, status, telemetry = detail.summary, detail.status or {}, detail.telemetry or {}
    lines = [_header(summary, status, now)]
    rows: list[tuple[str, str]] = []
    rows += _hardware_rows(status)
    rows += _health_rows(telemetry, summary)
    rows += _resource_rows(telemetry)
    rows += _link_rows(telemetry, summary, now)
    rows += _serial_rows(obj(telemetry.get("serial")))
    rows += _pipeline_rows(obj(telemetry.get("pipelines")))
    rows += _model_rows(obj(telemetry.get("inference")), obj(status.get("models")))
    rows += _ota_rows(detail.reported or {}, detail.desired, now)
    rows += _event_rows(detail.events)
    for label, value in rows:
        line = Text(f"{label:<{LABEL_WIDTH}}", style="bold")
        line.append(value)
        lines.append(line)
    return lines


def device_detail_view(console: Console, detail: DeviceDetail, now: float | None = None) -> None:
    """Identity, state, resources, link, models, OTA and the latest events of one device."""
    for line in device_detail_lines(detail, now):
        # One line per row: an event line that does not fit is cut, not wrapped.
        console.print(line, no_wrap=True, overflow="ellipsis", highlight=False)


def _header(summary: DeviceSummary, status: JsonObject, now: float) -> Text:
    device_id = text(summary.device_id or status.get("device_id"), 64) or "?"
    state = text(status.get("state") or summary.state, 16) or "unknown"
    reason = text(status.get("reason"), 40)
    line = Text(device_id, style="bold")
    line.append("  ")
    line.append(state, style="green" if state == "online" else "red")
    if reason:
        line.append(f" ({reason})")
    since = _when(status.get("ts"), now)
    # A Last Will's timestamp is from when the agent connected, not when it was lost.
    if since and reason != "connection lost":
        line.append(f" since {since}")
    version = text(status.get("agent_version") or summary.agent_version, 24)
    line.append(f", agent {version or '-'}")
    admission = text(summary.admission, 16)
    if admission == "pending":  # not a deploy target until `fleet devices accept`
        line.append(", pending acceptance", style="yellow")
    return line


def _hardware_rows(status: JsonObject) -> list[tuple[str, str]]:
    """The board kind and the device's own ``[device] tags``, from its status."""
    hardware = text(status.get("hardware_id"), 64)
    tags = obj(status.get("tags"))
    if not hardware and not tags:
        return []  # an agent from before hardware ids
    line = hardware or "-"
    if tags:
        line += "; tags " + ", ".join(
            f"{text(k, 64)}={text(v, 64)}" for k, v in sorted(tags.items())
        )
    return [("hardware", line)]


def _health_rows(telemetry: JsonObject, summary: DeviceSummary) -> list[tuple[str, str]]:
    health = obj(telemetry.get("health"))
    overall = text(health.get("status") or summary.health, 16) or "-"
    problems = [
        f"{text(name, 20)}: {text(obj(sub).get('reason'), 60) or text(obj(sub).get('status'))}"
        for name, sub in sorted(obj(health.get("subsystems")).items())
        if obj(sub).get("status") not in ("ok", None)
    ]
    rows = [("health", overall + (": " + "; ".join(problems) if problems else ""))]
    errors = obj(telemetry.get("errors"))
    if errors:
        rows.append(
            (
                "errors",
                "; ".join(f"{text(k, 20)}: {text(v, 60)}" for k, v in sorted(errors.items())),
            )
        )
    return rows


def _resource_rows(telemetry: JsonObject) -> list[tuple[str, str]]:
    cpu, memory, disk = (obj(telemetry.get(key)) for key in ("cpu", "memory", "disk"))
    cores = num(cpu.get("count"))
    load = cpu.get("load")
    load_1m = num(load[0]) if isinstance(load, list) and load else None
    cpu_text = _percent(cpu.get("percent"))
    if cores is not None:
        cpu_text += f" of {cores:.0f} cores"
    if load_1m is not None:
        cpu_text += f", load {load_1m:.2f}"
    temps = {
        name: value
        for name, raw in obj(telemetry.get("temperatures_c")).items()
        if (value := num(raw)) is not None
    }
    hottest = max(temps, key=lambda name: temps[name]) if temps else None
    temp_text = f"{temps[hottest]:.1f} °C ({text(hottest, 24)})" if hottest else "-"
    rows = [
        ("cpu", cpu_text),
        (
            "memory",
            f"{_percent(memory.get('used_percent'))} of {_bytes(memory.get('total_bytes'))}",
        ),
        (
            "disk",
            f"{_percent(disk.get('used_percent'))} of {_bytes(disk.get('total_bytes'))}, "
            f"{_bytes(disk.get('free_bytes'))} free",
        ),
        ("temp", temp_text),
    ]
    board = obj(telemetry.get("board"))
    flags = [text(k, 30) for k, v in obj(board.get("throttled")).items() if v is True]
    if board:
        rows.append(
            (
                "board",
                (text(board.get("kind"), 20) or "?")
                + (": " + ", ".join(map(str, flags)) if flags else ""),
            )
        )
    return rows


def _link_rows(telemetry: JsonObject, summary: DeviceSummary, now: float) -> list[tuple[str, str]]:
    link, queue = obj(telemetry.get("link")), obj(telemetry.get("queue"))
    connected = link.get("connected")
    link_text = "connected" if connected is True else "disconnected" if connected is False else "-"
    outages = num(link.get("outages"))
    if outages is not None:
        link_text += f", {outages:.0f} outages"
    depth, dropped = num(queue.get("depth")), num(queue.get("dropped_total"))
    queue_text = "-" if depth is None else f"{depth:.0f} messages"
    if depth:
        queue_text += f" ({_bytes(queue.get('bytes'))})"
    if dropped:
        queue_text += f", {dropped:.0f} dropped"
    seq = num(telemetry.get("seq"))
    measured = _when(telemetry.get("ts"), now)
    telemetry_text = "none yet"
    if telemetry:
        telemetry_text = f"seq {'-' if seq is None else f'{seq:.0f}'}"
        telemetry_text += f", measured {measured}" if measured else ""
    received = num(summary.last_telemetry_age_s)
    if received is not None:
        telemetry_text += f", received {age(received)} ago"
    return [("mqtt", f"{link_text}; queue {queue_text}"), ("telemetry", telemetry_text)]


def _serial_rows(serial: JsonObject) -> list[tuple[str, str]]:
    if not serial:
        return []
    parts = ["connected" if serial.get("connected") is True else "disconnected"]
    firmware = text(serial.get("firmware_version"), 16)
    if firmware:
        parts.append(f"firmware {firmware}")
    rtt = num(serial.get("rtt_ms_p50"))
    if rtt is not None:
        parts.append(f"rtt p50 {rtt:.1f} ms")
    faults = sum(num(serial.get(k)) or 0 for k in ("crc_errors", "framing_errors", "ack_failures"))
    parts.append(f"{faults:.0f} errors")
    refused = text(serial.get("refused"), 60)
    if refused:
        parts.append(f"refused: {refused}")
    port = text(serial.get("port"), 200)
    if port:
        # The end of a path names the port; the line is cut at the terminal's edge.
        parts.append(f"port {port if len(port) <= 16 else '…' + port[-15:]}")
    return [("serial", ", ".join(parts))]


def _pipeline_rows(pipelines: JsonObject) -> list[tuple[str, str]]:
    rows = []
    for name, raw in sorted(pipelines.items())[:SHOWN_PIPELINES]:
        p = obj(raw)
        parts = [f"{_fmt(p.get('inputs'))} inputs"]
        label, score = text(p.get("last_label"), 24), num(p.get("last_score"))
        if label is not None:
            parts.append(f"last {label}" + (f" ({score:.2f})" if score is not None else ""))
        for key in ("actuations", "errors"):
            count = num(p.get(key))
            if count is not None:
                parts.append(f"{count:.0f} {key}")
        rows.append(("pipeline", f"{text(name, 24)}: " + ", ".join(parts)))
    if len(pipelines) > SHOWN_PIPELINES:
        rows.append(("", f"and {len(pipelines) - SHOWN_PIPELINES} more pipelines (--raw)"))
    return rows


def _model_rows(inference: JsonObject, status_models: JsonObject) -> list[tuple[str, str]]:
    listed = inference.get("models")
    entries = [obj(m) for m in listed if isinstance(m, dict)] if isinstance(listed, list) else []
    loaded = [m for m in entries if m.get("loaded") is True]
    if not loaded:
        names = _models_cell(status_models).plain
        return [("models", names)] if names != "-" else []
    rows = []
    for model in loaded[:SHOWN_MODELS]:
        rows.append(("model", _model_line(model)))
        quality = _model_quality(model)
        if quality:
            rows.append(("", quality))
    unloaded = [m for m in entries if m.get("loaded") is not True]
    if unloaded:
        shown = [f"{text(m.get('model'), 24)} v{text(m.get('version'), 12)}" for m in unloaded]
        rows.append(("", "unloaded: " + ", ".join(shown[:SHOWN_MODELS])))
    return rows


def _model_line(model: JsonObject) -> str:
    name = f"{text(model.get('model'), 24) or '?'} v{text(model.get('version'), 12) or '?'}"
    quantiles = obj(model.get("latency_quantile_seconds"))
    p50, p95 = num(quantiles.get("0.5")), num(quantiles.get("0.95"))
    latency = "p50 -, p95 -"
    if p50 is not None or p95 is not None:
        latency = ", ".join(
            f"{q} {'-' if v is None else f'{v * 1e3:.2f} ms'}"
            for q, v in (("p50", p50), ("p95", p95))
        )
    errors = sum(num(v) or 0 for v in obj(model.get("errors")).values())
    line = f"{name}: {latency}, {_fmt(model.get('requests'))} requests, {errors:.0f} errors"
    nonfinite = num(model.get("nonfinite_outputs"))
    if nonfinite:
        line += f", {nonfinite:.0f} NaN/Inf"
    return line


def _model_quality(model: JsonObject) -> str:
    parts = []
    accuracy = num(model.get("accuracy"))
    if accuracy is not None:
        parts.append(f"accuracy {accuracy:.1%} ({_fmt(model.get('feedback'))} feedback)")
    psi = [v for v in map(num, obj(model.get("drift_psi")).values()) if v is not None]
    level = text(model.get("drift_level"), 16)
    if psi or level:
        drift = f"drift {level or '-'}"
        if psi:
            drift += f" (PSI {max(psi):.3f})"
        parts.append(drift)
    return ", ".join(parts)


def _slot_version(entry: object) -> str:
    version = text(obj(entry).get("version"), 12)
    slot = text(obj(entry).get("slot"), 4)
    if version is None:
        return "-"
    return version + (f" (slot {slot})" if slot else "")


def _ota_rows(
    reported: JsonObject, desired: DesiredRow | None, now: float
) -> list[tuple[str, str]]:
    rows = []
    models = obj(reported.get("models"))
    for name, raw in sorted(models.items())[:SHOWN_MODELS]:
        entry = obj(raw)
        step = text(entry.get("step"), 24) or "-"
        progress = num(entry.get("progress"))
        if progress is not None:
            step += f" {progress:.0f}%"
        rows.append(
            (
                "OTA",
                f"{text(name, 24)}: active {_slot_version(entry.get('active'))}, "
                f"pending {_slot_version(entry.get('pending'))}, "
                f"previous {_slot_version(entry.get('previous'))}; {step}",
            )
        )
        result = obj(entry.get("last_result"))
        if result:
            outcome = text(result.get("outcome"), 24) or "?"
            line = f"last {outcome} {text(result.get('version'), 12) or ''}".rstrip()
            at = _when(result.get("at"), now)
            line += f" at {at}" if at else ""
            reason = text(result.get("reason"), 40)
            if reason:
                line += f": {reason}: {text(result.get('detail'), 80) or ''}"
            rows.append(("", line))
        variant = text(entry.get("variant"), 32)
        if variant:  # which file of the active release this board runs
            rows.append(("", f"variant {variant} (active)"))
    if desired is not None:
        line = (
            f"{text(desired.model, 24)}@{text(desired.version, 12)} "
            f"({text(desired.action, 16)}, counter {_fmt(desired.counter)})"
        )
        if not models:
            line += "; the device has reported no OTA state"
        rows.append(("desired", line))
    return rows


def _event_rows(events: Sequence[JsonObject | None]) -> list[tuple[str, str]]:
    shown = [obj(e) for e in events][:SHOWN_EVENTS]
    rows = []
    for index, event in enumerate(shown):
        extra = " ".join(
            f"{text(k, 24)}={_event_value(v)}"
            for k, v in event.items()
            if k not in ("ts", "event", "device_id")
        )
        line = f"{_short_ts(event.get('ts'))} {text(event.get('event'), 32) or '?'} {extra}"
        rows.append(("events" if index == 0 else "", line.rstrip()))
    return rows


def _event_value(value: object) -> str:
    if isinstance(value, dict | list):
        return text(json.dumps(value, separators=(",", ":")), 40) or "?"
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    return text(value, 40) or "?"
