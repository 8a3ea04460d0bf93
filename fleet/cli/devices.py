"""``fleet devices``: list, show, accept and tag the devices the controller has seen."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edge_contract.controller import (
    AcceptReply,
    AcceptRequest,
    DeviceReply,
    DevicesListRequest,
    DevicesReply,
    ShowRequest,
    TagRequest,
    TagsReply,
    UntagRequest,
)
from fleet.cli.common import (
    Connection,
    DbOpt,
    DirectOpt,
    JsonOpt,
    OperatorKeyOpt,
    ask,
    change,
    fail,
    print_json,
    request,
    with_connection,
)
from fleet.errors import FleetError
from fleet.prometheus_targets import DEFAULT_TEMPLATE, check_template, file_sd, write_atomically
from fleet.view import device_detail_view, devices_table, tags_table

if TYPE_CHECKING:
    from fleet.device_commands import Outcome

devices_app = typer.Typer(no_args_is_help=True, help="Devices seen by the controller.")


SelectOpt = Annotated[
    str | None,
    typer.Option(
        "--select", help="only the devices a selector matches: site=lab,board!=jetson (* all)"
    ),
]


@devices_app.command("list")
@with_connection
def devices_list(
    connection: Connection, json_out: JsonOpt = False, db: DbOpt = None, select: SelectOpt = None
) -> None:
    """Every device seen: online/offline, last telemetry age, CPU, memory, temperature."""
    try:
        listing = request("devices-list", DevicesListRequest, select=select)
        reply = ask(
            connection, db, "devices-list", listing, DevicesReply, lambda a: a.list_devices(listing)
        )
    except FleetError as exc:
        fail(exc)
    if json_out:
        print_json([device.model_dump() for device in reply.devices])
        return
    console = Console()
    if reply.select is not None:
        console.print(devices_table(reply.devices, title=f"Devices matching {reply.select}"))
        console.print(tags_table(reply.devices))
        return
    console.print(devices_table(reply.devices))
    # Admission under the table (not a column): the table's columns already fill 80 columns.
    pending = [d.device_id for d in reply.devices if d.admission == "pending"]
    if pending:
        console.print(
            f"pending, not deploy targets until `fleet devices accept ID`: {', '.join(pending)}",
            highlight=False,
            soft_wrap=True,
        )


@devices_app.command("prometheus-targets")
@with_connection
def devices_prometheus_targets(
    connection: Connection,
    db: DbOpt = None,
    select: SelectOpt = None,
    port: Annotated[
        int, typer.Option("--port", min=1, max=65535, help="the agents' [metrics] port")
    ] = 9100,
    host_template: Annotated[
        str,
        typer.Option(
            "--host-template",
            help="each target, from {device} and {port}: e.g. '{device}.local:{port}'",
        ),
    ] = DEFAULT_TEMPLATE,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="write the file_sd JSON here (atomically); else stdout"),
    ] = None,
) -> None:
    """Prometheus file_sd targets for the agents' /metrics, one per device (labelled device,
    and each merged tag as tag_KEY with --select). docs/monitoring.md has the config."""
    try:
        check_template(host_template)  # before asking the controller anything
        listing = request("devices-list", DevicesListRequest, select=select)
        reply = ask(
            connection, db, "devices-list", listing, DevicesReply, lambda a: a.list_devices(listing)
        )
        groups = file_sd(reply.devices, port=port, host_template=host_template)
    except FleetError as exc:
        fail(exc)
    if out is None:
        print_json(groups)
        return
    write_atomically(out, groups)
    Console(stderr=True).print(f"{len(groups)} targets written to {out}", highlight=False)


@devices_app.command("show")
@with_connection
def devices_show(
    connection: Connection,
    device_id: Annotated[str, typer.Argument(help="device id")],
    json_out: JsonOpt = False,
    raw: Annotated[
        bool,
        typer.Option(
            "--raw", help="the whole detail as JSON (every telemetry field, recent events)"
        ),
    ] = False,
    db: DbOpt = None,
) -> None:
    """One device: state, resources, link, models, OTA state and its latest events."""
    try:
        show = request("devices-show", ShowRequest, device_id=device_id)
        reply = ask(
            connection, db, "devices-show", show, DeviceReply, lambda a: a.show_device(show)
        )
    except FleetError as exc:
        fail(exc)
    if json_out or raw:
        print_json(reply.device.model_dump())
    else:
        device_detail_view(Console(), reply.device)


@devices_app.command("accept")
@with_connection
def devices_accept(
    connection: Connection,
    device_id: Annotated[str, typer.Argument(help="device id")],
    db: DirectOpt = None,
    operator_key: OperatorKeyOpt = None,
) -> None:
    """Accept a pending device as a deploy target (signed; or --db on the controller host)."""
    try:
        accept = request("devices-accept", AcceptRequest, device_id=device_id)
        change(
            connection,
            db,
            operator_key,
            "devices-accept",
            accept,
            AcceptReply,
            lambda a: a.accept_device(accept, operator="--db"),
        )
    except FleetError as exc:
        fail(exc)
    Console().print(f"device {device_id} accepted", highlight=False)


@devices_app.command("tag")
@with_connection
def devices_tag(
    connection: Connection,
    device_id: Annotated[str, typer.Argument(help="device id")],
    tags: Annotated[list[str], typer.Argument(help="key=value (one or more)")],
    db: DirectOpt = None,
    operator_key: OperatorKeyOpt = None,
) -> None:
    """Set tags on a device (signed); selectors (--select) match them."""
    try:
        pairs = dict(_tag(t) for t in tags)
        body = request("devices-tag", TagRequest, device_id=device_id, tags=pairs)
        reply = change(
            connection,
            db,
            operator_key,
            "devices-tag",
            body,
            TagsReply,
            lambda a: a.rollouts.tag(body),
        )
    except FleetError as exc:
        fail(exc)
    Console().print(f"{device_id}: {_tags_text(reply.tags)}", highlight=False)


@devices_app.command("untag")
@with_connection
def devices_untag(
    connection: Connection,
    device_id: Annotated[str, typer.Argument(help="device id")],
    keys: Annotated[list[str], typer.Argument(help="tag key (one or more)")],
    db: DirectOpt = None,
    operator_key: OperatorKeyOpt = None,
) -> None:
    """Remove tags from a device (signed)."""
    try:
        body = request("devices-untag", UntagRequest, device_id=device_id, keys=keys)
        reply = change(
            connection,
            db,
            operator_key,
            "devices-untag",
            body,
            TagsReply,
            lambda a: a.rollouts.untag(body),
        )
    except FleetError as exc:
        fail(exc)
    missing = sorted(set(keys) - set(reply.removed))
    note = f" (not set: {', '.join(missing)})" if missing else ""
    Console().print(f"{device_id}: {_tags_text(reply.tags)}{note}", highlight=False)


@devices_app.command("cmd")
@with_connection
def devices_cmd(
    connection: Connection,
    target: Annotated[
        list[str], typer.Argument(help="ID NAME, or NAME alone with --select", metavar="[ID] NAME")
    ],
    arg: Annotated[
        list[str] | None,
        typer.Option("--arg", help="key=value of the command's body (a JSON value or a string)"),
    ] = None,
    select: SelectOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Send a command to one device, or every device --select matches, and print the replies
    (within --timeout; the devices that did not answer are named). See
    docs/remote-operations.md."""
    from fleet.device_commands import parse_arguments, send  # noqa: PLC0415

    try:
        device_ids, name = _command_targets(connection, target, select)
        arguments = parse_arguments(arg or [])
        outcomes = asyncio.run(send(connection.load(), device_ids, name, arguments))
    except FleetError as exc:
        fail(exc)
    if json_out:
        print_json(
            [
                {"device_id": o.device_id, "answered": o.answered, "ok": o.ok}
                | ({"reply": o.reply.body()} if o.reply is not None else {})
                | ({"problem": o.problem} if o.problem is not None else {})
                for o in outcomes
            ]
        )
    else:
        _print_outcomes(name, outcomes)
    if not all(o.ok for o in outcomes):
        raise typer.Exit(1)


def _command_targets(
    connection: Connection, target: list[str], select: str | None
) -> tuple[list[str], str]:
    """The devices and the command name: ``ID NAME``, or ``NAME`` and the selector's devices."""
    if select is None:
        if len(target) != 2:
            raise FleetError("give ID NAME (or NAME with --select)")
        return [target[0]], target[1]
    if len(target) != 1:
        raise FleetError("with --select give the command NAME only")
    listing = request("devices-list", DevicesListRequest, select=select)
    reply = ask(
        connection, None, "devices-list", listing, DevicesReply, lambda a: a.list_devices(listing)
    )
    if not reply.devices:
        raise FleetError(f"no device matches {select!r}")
    return [device.device_id for device in reply.devices], target[0]


def _print_outcomes(name: str, outcomes: list[Outcome]) -> None:
    table = Table(title=f"{name}: {sum(o.answered for o in outcomes)}/{len(outcomes)} answered")
    for column in ("device", "ok", "summary"):
        table.add_column(column, overflow="fold")
    for outcome in outcomes:
        ok = "-" if not outcome.answered else ("yes" if outcome.ok else "no")
        table.add_row(outcome.device_id, ok, escape(outcome.summary()))
    console = Console()
    console.print(table)
    silent = [o.device_id for o in outcomes if not o.answered]
    if silent:
        console.print(f"no answer in time: {', '.join(silent)}", highlight=False, soft_wrap=True)


def _tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise FleetError(f"a tag is key=value, not {text!r}")
    return key, value


def _tags_text(tags: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(tags.items())) or "no tags"
