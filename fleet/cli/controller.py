"""The controller's own commands: ``fleet serve`` runs it; ``deploy`` and ``rollback`` set
what devices should run (signed); ``controller-status`` shows what it refused."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from edge_contract.controller import (
    DeployReply,
    DeployRequest,
    RollbackReply,
    RollbackRequest,
    StatusReply,
    StatusRequest,
)
from fleet.cli.common import (
    BrokerOpt,
    CaOpt,
    CertOpt,
    ConfigOpt,
    Connection,
    JsonOpt,
    KeyOpt,
    OperatorKeyOpt,
    fail,
    print_json,
    remote,
    request,
    signed,
    with_connection,
)
from fleet.errors import FleetError


def serve(
    broker: BrokerOpt = None,
    db: Annotated[
        str | None, typer.Option("--db", help="controller database: a SQLite file or a URL")
    ] = None,
    config: ConfigOpt = None,
    ca_file: CaOpt = None,
    cert_file: CertOpt = None,
    key_file: KeyOpt = None,
    log_format: Annotated[str, typer.Option("--log-format", help="auto, json or console")] = "auto",
    repo: Annotated[
        Path | None, typer.Option("--repo", help="TUF repository to serve (enables OTA)")
    ] = None,
) -> None:
    """Run the controller: record every device's status, telemetry and events; serve OTA."""
    from edge_runtime.log import configure_logging  # noqa: PLC0415
    from fleet.service import Controller  # noqa: PLC0415

    if log_format not in ("auto", "json", "console"):
        fail(FleetError(f"--log-format must be auto, json or console, not {log_format!r}"))
    configure_logging("info", log_format)  # type: ignore[arg-type]
    try:
        connection = Connection(config, broker, ca_file, cert_file, key_file)
        cfg = connection.load(db)
        if repo is not None:
            cfg = cfg.model_copy(update={"ota": cfg.ota.model_copy(update={"repo": repo})})
        asyncio.run(Controller(cfg).run())
    except FleetError as exc:
        fail(exc)


@with_connection
def deploy(
    connection: Connection,
    release: Annotated[str, typer.Argument(help="NAME@VERSION of a published model")],
    device: Annotated[
        list[str] | None, typer.Option("--device", help="device id (repeatable)")
    ] = None,
    all_devices: Annotated[bool, typer.Option("--all", help="every device seen")] = False,
    json_out: JsonOpt = False,
    operator_key: OperatorKeyOpt = None,
) -> None:
    """Set the desired model of devices (signed, retained; the controller needs --repo)."""
    name, _, version = release.partition("@")
    try:
        if not name or not version:
            raise FleetError(f"release must be NAME@VERSION, not {release!r}")
        if bool(device) == all_devices:
            raise FleetError("give --device ID (one or more) or --all")
        fields = {"model": name, "version": version, "devices": device or [], "all": all_devices}
        body = request("deploy", DeployRequest, **fields)
        reply = signed(connection.load(), operator_key, "deploy", body, DeployReply)
    except FleetError as exc:
        fail(exc)
    if json_out:
        print_json(reply.model_dump())
        return
    console = Console()
    console.print(f"{name}@{version} desired on: {', '.join(reply.devices)}", highlight=False)
    for skipped in reply.skipped:
        console.print(f"skipped {skipped.device_id}: {skipped.reason}", highlight=False)


@with_connection
def rollback(
    connection: Connection,
    device: Annotated[str, typer.Option("--device", help="device id")],
    model: Annotated[str | None, typer.Option("--model", help="model name")] = None,
    json_out: JsonOpt = False,
    operator_key: OperatorKeyOpt = None,
) -> None:
    """Return a device to its previous committed model version."""
    try:
        body = request("rollback", RollbackRequest, device_id=device, model=model)
        reply = signed(connection.load(), operator_key, "rollback", body, RollbackReply)
    except FleetError as exc:
        fail(exc)
    if json_out:
        print_json(reply.model_dump())
        return
    Console().print(
        f"rollback of {reply.model} to {reply.version} on: {reply.device_id}", highlight=False
    )


@with_connection
def controller_status(connection: Connection) -> None:
    """Messages the controller refused since it started, by reason, and the newest ones (JSON)."""
    try:
        body = request("controller-status", StatusRequest)
        reply = remote(connection.load(), "controller-status", body, StatusReply)
    except FleetError as exc:
        fail(exc)
    print_json(reply.model_dump())


def register(app: typer.Typer) -> None:
    """Add these commands at the top level of ``app``."""
    app.command("serve")(serve)
    app.command("deploy")(deploy)
    app.command("rollback")(rollback)
    app.command("controller-status")(controller_status)
