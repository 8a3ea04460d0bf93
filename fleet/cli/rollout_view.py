"""Renderings of a rollout for people: ``fleet rollout status``, ``list`` and ``history``.

They take the controller's typed replies (``edge_contract.controller``). Device ids, reasons
and names came from devices or operators through the broker: they go to the terminal as plain
text (``fleet.view.text``: control characters replaced, bounded), never as markup.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table
from rich.text import Text

from edge_contract.controller import (
    RolloutDetail,
    RolloutGate,
    RolloutHistoryReply,
    RolloutSummary,
)
from fleet.view import text

# Phases a rollout does not leave (``status --watch`` stops there).
TERMINAL = frozenset({"completed", "halted", "aborted"})
# How a metric's figures read (value and threshold): a share or a plain number.
_SHARES = frozenset({"p95_regression", "error_rate", "accuracy_drop"})


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _figure(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    if metric in _SHARES:
        return f"{value * 100:+.1f}%"
    return f"{value:.4g}"


def rollouts_table(rollouts: Sequence[RolloutSummary]) -> Table:
    table = Table(title="Rollouts")
    for column in ("id", "release", "phase", "stage", "members", "select", "started", "reason"):
        table.add_column(column, no_wrap=column in ("id", "phase"))
    for r in rollouts:
        table.add_row(
            r.rollout_id,
            Text(f"{text(r.model, 64)}@{text(r.version, 64)}"),
            r.phase,
            f"{r.stage + 1}/{r.stages}",
            str(r.members),
            Text(text(r.select, 80) or "*"),
            _when(r.created_at),
            Text(text(r.reason, 120) or ""),
        )
    return table


def stages_table(rollout: RolloutDetail) -> Table:
    """Per stage: its size and how its members stand (``reached`` = committed or failed)."""
    table = Table(title="Stages")
    for column in ("stage", "size", "members", "reached", "committed", "failed"):
        table.add_column(column, justify="right")
    for column in ("pending", "not reached", "reverted"):
        table.add_column(column, justify="right")
    current = rollout.summary.stage
    for s in rollout.stages:
        label = f"{s.index + 1}" + (" <" if s.index == current else "")
        table.add_row(
            label,
            s.size,
            str(s.members),
            str(s.committed + s.failed),
            str(s.committed),
            str(s.failed),
            str(s.pending),
            str(s.not_reached),
            str(s.reverted),
        )
    return table


def gate_table(gate: RolloutGate) -> Table:
    """The gate's figures for each metric against its threshold."""
    baseline = (
        "no baseline"
        if gate.baseline_devices is None
        else f"{gate.baseline_devices} device(s), {gate.baseline_requests} requests"
    )
    title = (
        f"Gate: {gate.outcome} (candidate {gate.candidate_devices} device(s), "
        f"{gate.candidate_requests} requests; baseline {baseline})"
    )
    table = Table(title=title)
    for column in ("metric", "candidate", "baseline", "value", "threshold", "verdict", "detail"):
        table.add_column(column)
    for v in gate.verdicts:
        table.add_row(
            v.metric,
            "-" if v.candidate is None else f"{v.candidate:.4g}",
            "-" if v.baseline is None else f"{v.baseline:.4g}",
            _figure(v.metric, v.value),
            _figure(v.metric, v.threshold),
            v.verdict,
            Text(text(v.detail, 160) or ""),
        )
    return table


def members_table(rollout: RolloutDetail) -> Table:
    table = Table(title="Devices")
    for column in ("device", "stage", "outcome", "previous", "variant", "reason"):
        table.add_column(column)
    for m in rollout.members:
        table.add_row(
            Text(text(m.device_id, 64) or "?"),
            str(m.stage + 1),
            m.outcome.replace("_", " "),
            Text(text(m.previous_version, 32) or "-"),
            Text(text(m.variant, 32) or "-"),
            Text(text(m.reason, 120) or ""),
        )
    return table


def status_view(console: Console, rollout: RolloutDetail) -> None:
    """``fleet rollout status``: the header, the stages, the gate, the devices."""
    s = rollout.summary
    name = f" ({text(s.name, 64)})" if s.name else ""
    console.print(
        Text(
            f"rollout {s.rollout_id}{name}: {text(s.model, 64)}@{text(s.version, 64)} to "
            f"{text(s.select, 200) or '*'}: {s.phase}, stage {s.stage + 1}/{s.stages}"
        )
    )
    if s.reason:
        console.print(Text(f"  {text(s.reason, 300)}"))
    t = rollout.thresholds
    console.print(
        Text(
            f"  window {rollout.health_window_s:g}s, offline timeout "
            f"{rollout.offline_timeout_s:g}s; halts above: install failures "
            f"{t.max_install_failures:.0%}, p95 +{t.max_p95_regression:.0%}, errors "
            f"+{t.max_error_rate:.1%}, drift {t.max_drift:g}, accuracy "
            f"-{t.max_accuracy_drop * 100:g}pt"
            + (", approval required" if rollout.require_approval else "")
        )
    )
    if s.phase == "watching" and rollout.window_started_at is not None:
        elapsed = max(0.0, time.time() - rollout.window_started_at)
        console.print(Text(f"  health window: {elapsed:.0f}s of {rollout.health_window_s:g}s"))
    console.print(stages_table(rollout))
    if rollout.gate is not None:
        console.print(gate_table(rollout.gate))
    console.print(members_table(rollout))


def plain_progress(rollout: RolloutDetail) -> str:
    """One line of ``status --watch`` when stdout is not a terminal (printed on change)."""
    s = rollout.summary
    stages = " ".join(
        f"[{x.index + 1}:{x.size} {x.committed}c/{x.failed}f/{x.pending}p/{x.not_reached}n]"
        for x in rollout.stages
    )
    line = f"{s.rollout_id} {s.phase} stage {s.stage + 1}/{s.stages} {stages}"
    if s.reason:
        line += f" - {text(s.reason, 200)}"
    return line


def history_table(reply: RolloutHistoryReply) -> Table:
    table = Table(title=f"History of {reply.rollout_id}")
    for column in ("time", "from", "to", "stage", "reason"):
        table.add_column(column)
    for t in reply.transitions:
        table.add_row(
            _when(t.at),
            t.from_phase or "-",
            t.to_phase,
            str(t.stage + 1),
            Text(text(t.reason, 300) or ""),
        )
    return table
