"""``fleet rollout``: start a staged rollout, follow it, pause, resume, approve or abort it.

``start``, ``pause``, ``resume``, ``approve`` and ``abort`` change the fleet: they are signed
with the operator's key and need the running controller with OTA (the driver that moves a
rollout lives there). ``list``, ``status`` and ``history`` are reads, over the broker or with
``--db`` on the controller's host. Durations take ``30s``, ``10m``, ``1h`` (or seconds);
shares take ``5%`` or ``0.05``; the accuracy drop takes points (``2pt`` is 0.02).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from edge_contract.controller import (
    RolloutDetail,
    RolloutHistoryReply,
    RolloutListRequest,
    RolloutReply,
    RolloutRequest,
    RolloutsReply,
    RolloutStartRequest,
    RolloutStatusRequest,
)
from fleet.cli.common import (
    Connection,
    DbOpt,
    JsonOpt,
    OperatorKeyOpt,
    ask,
    fail,
    print_json,
    request,
    signed,
    with_connection,
)
from fleet.cli.rollout_view import (
    TERMINAL,
    history_table,
    plain_progress,
    rollouts_table,
    status_view,
)
from fleet.errors import FleetError

rollout_app = typer.Typer(no_args_is_help=True, help="Staged rollouts gated on model health.")

IdArg = Annotated[str, typer.Argument(help="rollout id (r-xxxxxxxx)")]
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str, option: str) -> float:
    """``30s``, ``10m``, ``1h``, ``2d`` or plain seconds -> seconds."""
    raw = text.strip().lower()
    scale = _UNITS.get(raw[-1:])
    number = raw[:-1] if scale is not None else raw
    try:
        value = float(number) * (scale or 1.0)
    except ValueError:
        raise FleetError(f"{option}: {text!r} is not a duration (30s, 10m, 1h)") from None
    if not math.isfinite(value) or value <= 0:
        raise FleetError(f"{option}: {text!r} must be a positive duration")
    return value


def parse_share(text: str, option: str, *, points: bool = False) -> float:
    """``5%`` or ``0.05`` -> 0.05 (``points``: ``2pt`` -> 0.02 as well)."""
    raw = text.strip().lower()
    try:
        if raw.endswith("%") or (points and raw.endswith("pt")):
            value = float(raw.rstrip("%").removesuffix("pt")) / 100.0
        else:
            value = float(raw)
    except ValueError:
        raise FleetError(f"{option}: {text!r} is not a share (5% or 0.05)") from None
    if not math.isfinite(value) or value < 0:
        raise FleetError(f"{option}: {text!r} must not be negative")
    return value


def selection(select: str | None, all_devices: bool, devices: str | None) -> str:
    """The selector text of ``--select S`` | ``--all`` | ``--devices a,b``."""
    given = [x for x in (select is not None, all_devices, devices is not None) if x]
    if len(given) != 1:
        raise FleetError("give exactly one of --select SELECTOR, --all or --devices a,b")
    if all_devices:
        return "*"
    if devices is not None:
        ids = [d.strip() for d in devices.split(",") if d.strip()]
        if not ids:
            raise FleetError("--devices needs at least one device id")
        return f"device={'|'.join(ids)}"
    assert select is not None
    return select


def _share(value: str | None, option: str) -> float | None:
    return None if value is None else parse_share(value, option)


@rollout_app.command("start")
@with_connection
def start(
    connection: Connection,
    release: Annotated[str, typer.Argument(help="NAME@VERSION of a published model")],
    stages: Annotated[str, typer.Option("--stages", help="e.g. 1,10%,50%,100%")],
    select: Annotated[str | None, typer.Option("--select", help="selector")] = None,
    all_devices: Annotated[bool, typer.Option("--all", help="every eligible device")] = False,
    devices: Annotated[str | None, typer.Option("--devices", help="a,b,c")] = None,
    health_window: Annotated[str, typer.Option("--health-window")] = "10m",
    max_install_failures: Annotated[str | None, typer.Option("--max-install-failures")] = None,
    max_p95_regression: Annotated[str | None, typer.Option("--max-p95-regression")] = None,
    max_error_rate: Annotated[str | None, typer.Option("--max-error-rate")] = None,
    max_drift: Annotated[float | None, typer.Option("--max-drift", help="PSI")] = None,
    min_accuracy_drop: Annotated[
        str | None, typer.Option("--min-accuracy-drop", help="halt above this drop, e.g. 2pt")
    ] = None,
    min_requests: Annotated[int | None, typer.Option("--min-requests", min=1)] = None,
    min_batches: Annotated[int | None, typer.Option("--min-batches", min=1)] = None,
    offline_timeout: Annotated[str, typer.Option("--offline-timeout")] = "30m",
    require_approval: Annotated[bool, typer.Option("--require-approval")] = False,
    name: Annotated[str, typer.Option("--name", help="a name to recognise it by")] = "",
    json_out: JsonOpt = False,
    operator_key: OperatorKeyOpt = None,
) -> None:
    """Roll NAME@VERSION out in stages; each stage must hold its health against the rest."""
    model, _, version = release.partition("@")
    try:
        if not model or not version:
            raise FleetError(f"release must be NAME@VERSION, not {release!r}")
        fields: dict[str, object] = {
            "model": model,
            "version": version,
            "select": selection(select, all_devices, devices),
            "stages": stages,
            "name": name,
            "health_window_s": parse_duration(health_window, "--health-window"),
            "offline_timeout_s": parse_duration(offline_timeout, "--offline-timeout"),
            "require_approval": require_approval,
            "max_install_failures": _share(max_install_failures, "--max-install-failures"),
            "max_p95_regression": _share(max_p95_regression, "--max-p95-regression"),
            "max_error_rate": _share(max_error_rate, "--max-error-rate"),
            "max_drift": max_drift,
            "max_accuracy_drop": None
            if min_accuracy_drop is None
            else parse_share(min_accuracy_drop, "--min-accuracy-drop", points=True),
            "min_requests": min_requests,
            "min_batches": min_batches,
        }
        body = request("rollout-start", RolloutStartRequest, **fields)
        reply = signed(connection.load(), operator_key, "rollout-start", body, RolloutReply)
    except FleetError as exc:
        fail(exc)
    _show(reply.rollout, json_out, started=True)


@rollout_app.command("list")
@with_connection
def list_rollouts(
    connection: Connection,
    active: Annotated[bool, typer.Option("--active", help="only running rollouts")] = False,
    json_out: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """The newest rollouts: id, release, phase, stage."""
    try:
        body = request("rollout-list", RolloutListRequest, active=active)
        reply = ask(
            connection,
            db,
            "rollout-list",
            body,
            RolloutsReply,
            lambda a: a.rollouts.list_rollouts(body),
        )
    except FleetError as exc:
        fail(exc)
    if json_out:
        print_json([r.model_dump() for r in reply.rollouts])
        return
    Console().print(rollouts_table(reply.rollouts))


@rollout_app.command("status")
@with_connection
def status(
    connection: Connection,
    rollout_id: Annotated[str | None, typer.Argument(help="rollout id (default: newest)")] = None,
    json_out: JsonOpt = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="redraw until the rollout ends (Ctrl-C stops)")
    ] = False,
    interval: Annotated[float, typer.Option("--interval", help="seconds between redraws")] = 2.0,
    db: DbOpt = None,
) -> None:
    """Per stage: reached, committed, failed, not reached; the gate's figures and thresholds."""
    try:
        body = request("rollout-status", RolloutStatusRequest, rollout_id=rollout_id)
        reply = ask(
            connection, db, "rollout-status", body, RolloutReply, lambda a: a.rollouts.status(body)
        )
        if not watch:
            _show(reply.rollout, json_out)
            return
        _watch(connection, db, reply.rollout, max(0.2, interval), json_out)
    except FleetError as exc:
        fail(exc)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _watch(
    connection: Connection, db: str | None, first: RolloutDetail, interval: float, as_json: bool
) -> None:
    """Redraw (a TTY) or print a line per change (a pipe) until the rollout is terminal."""
    body = request("rollout-status", RolloutStatusRequest, rollout_id=first.summary.rollout_id)
    console = Console()
    tty = console.is_terminal and not as_json
    current, last_line = first, ""
    while True:
        if tty:
            console.clear()
            status_view(console, current)
        else:
            line = plain_progress(current)
            if line != last_line:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
                last_line = line
        if current.summary.phase in TERMINAL:
            if as_json:
                print_json(current.model_dump())
            return
        time.sleep(interval)
        current = ask(
            connection, db, "rollout-status", body, RolloutReply, lambda a: a.rollouts.status(body)
        ).rollout


def _event(
    kind: str, connection: Connection, rollout_id: str, key: Path | None, as_json: bool
) -> None:
    method = f"rollout-{kind}"
    try:
        body = request(method, RolloutRequest, rollout_id=rollout_id)
        reply = signed(connection.load(), key, method, body, RolloutReply)
    except FleetError as exc:
        fail(exc)
    _show(reply.rollout, as_json)


def _operator_command(action: str, doc: str) -> None:
    """``fleet rollout ACTION ID``: one signed operator event (pause, resume, approve, abort)."""

    def command(
        connection: Connection,
        rollout_id: IdArg,
        json_out: JsonOpt = False,
        operator_key: OperatorKeyOpt = None,
    ) -> None:
        _event(action, connection, rollout_id, operator_key, json_out)

    command.__doc__ = doc
    command.__name__ = action
    rollout_app.command(action)(with_connection(command))


for _action, _doc in (
    ("pause", "Stop moving the rollout on (nothing is reverted); resume goes on."),
    ("resume", "Go on with a paused rollout (a health window starts again)."),
    ("approve", "Let a rollout awaiting approval go on to its next stage."),
    ("abort", "Stop the rollout and send what it changed back to the previous version (signed)."),
):
    _operator_command(_action, _doc)


@rollout_app.command("history")
@with_connection
def history(
    connection: Connection, rollout_id: IdArg, json_out: JsonOpt = False, db: DbOpt = None
) -> None:
    """Every transition of a rollout with its time and reason."""
    try:
        body = request("rollout-history", RolloutRequest, rollout_id=rollout_id)
        reply = ask(
            connection,
            db,
            "rollout-history",
            body,
            RolloutHistoryReply,
            lambda a: a.rollouts.history(body),
        )
    except FleetError as exc:
        fail(exc)
    if json_out:
        print_json(reply.model_dump())
        return
    Console().print(history_table(reply))


def _show(rollout: RolloutDetail, as_json: bool, *, started: bool = False) -> None:
    if as_json:
        print_json(rollout.model_dump())
        return
    console = Console()
    if started:
        console.print(f"rollout {rollout.summary.rollout_id} started", highlight=False)
    status_view(console, rollout)
