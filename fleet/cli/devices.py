"""``fleet devices``: list, show and accept the devices the controller has seen."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from edge_contract.controller import (
    AcceptReply,
    AcceptRequest,
    DeviceReply,
    DevicesListRequest,
    DevicesReply,
    ShowRequest,
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
from fleet.view import device_detail_view, devices_table

devices_app = typer.Typer(no_args_is_help=True, help="Devices seen by the controller.")


@devices_app.command("list")
@with_connection
def devices_list(connection: Connection, json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Every device seen: online/offline, last telemetry age, CPU, memory, temperature."""
    try:
        listing = request("devices-list", DevicesListRequest)
        reply = ask(
            connection, db, "devices-list", listing, DevicesReply, lambda a: a.list_devices(listing)
        )
    except FleetError as exc:
        fail(exc)
    if json_out:
        print_json([device.model_dump() for device in reply.devices])
        return
    console = Console()
    console.print(devices_table(reply.devices))
    # Admission under the table (not a column): the table's columns already fill 80 columns.
    pending = [d.device_id for d in reply.devices if d.admission == "pending"]
    if pending:
        console.print(
            f"pending, not deploy targets until `fleet devices accept ID`: {', '.join(pending)}",
            highlight=False,
            soft_wrap=True,
        )


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
