"""``fleet operators``: the operator keys the controller trusts for signed requests.

``keygen`` works on this machine only; ``add``, ``remove`` and ``list`` ask the controller
(signed by an existing operator, ``list`` unsigned), or edit its database with ``--db`` on the
controller's host (bootstrap, authorized by file access).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from edge_contract.controller import (
    OperatorAddedReply,
    OperatorAddRequest,
    OperatorRemovedReply,
    OperatorRemoveRequest,
    OperatorsListRequest,
    OperatorsReply,
)
from fleet.cli.common import (
    Connection,
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
from fleet.errors import FleetError, OperatorKeyError

operators_app = typer.Typer(
    no_args_is_help=True, help="Operator keys the controller trusts for signed requests."
)


def _public_key_arg(text: str) -> str:
    """PUBLIC_KEY as given: a file holding the key, or the base64/PEM text itself."""
    from fleet.operators import parse_public_key  # noqa: PLC0415

    path = Path(text)
    if len(text) < 4096 and path.is_file():
        text = path.read_text(errors="replace")
    if "PRIVATE KEY" in text:
        raise OperatorKeyError("that is a private key; give the public key", value=str(path))
    return parse_public_key(text)


@operators_app.command("keygen")
def operators_keygen(
    out: Annotated[Path, typer.Option("--out", help="private key file to create (PEM, 0600)")],
    json_out: JsonOpt = False,
) -> None:
    """Create an operator key: FILE (private, mode 0600) and FILE.pub (public, base64)."""
    from fleet.operators import generate_key, key_id, private_key_pem, public_key_text  # noqa: PLC0415

    key = generate_key()
    public = public_key_text(key.public_key())
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(private_key_pem(key))
        Path(f"{out}.pub").write_text(public + "\n")
    except OSError as exc:
        fail(OperatorKeyError(f"cannot create the key file ({exc.strerror})", value=str(out)))
        return
    kid = key_id(public)
    if json_out:
        print_json({"key_file": str(out), "public_key": public, "key_id": kid})
        return
    console = Console()
    console.print(f"private key: {out} (mode 0600)", highlight=False)
    console.print(f"public key:  {public}", highlight=False)
    console.print(f"key id:      {kid}", highlight=False)
    console.print(
        f"register it: fleet operators add NAME {out}.pub (with --db on the controller's host)",
        highlight=False,
    )


@operators_app.command("add")
@with_connection
def operators_add(
    connection: Connection,
    name: Annotated[str, typer.Argument(help="operator name")],
    public_key: Annotated[str, typer.Argument(help="public key: a file, or base64/PEM text")],
    db: DirectOpt = None,
    operator_key: OperatorKeyOpt = None,
) -> None:
    """Trust an operator key: with --db directly, else signed by an existing operator."""
    try:
        key = _public_key_arg(public_key)
        add = request("operators-add", OperatorAddRequest, name=name, public_key=key)
        reply = change(
            connection,
            db,
            operator_key,
            "operators-add",
            add,
            OperatorAddedReply,
            lambda a: a.add_operator(add),
        )
    except FleetError as exc:
        fail(exc)
    Console().print(f"operator {name} added (key id {reply.key_id})", highlight=False)


@operators_app.command("remove")
@with_connection
def operators_remove(
    connection: Connection,
    name: Annotated[str, typer.Argument(help="operator name")],
    db: DirectOpt = None,
    operator_key: OperatorKeyOpt = None,
) -> None:
    """Stop trusting an operator: with --db directly, else signed by an existing operator."""
    try:
        remove = request("operators-remove", OperatorRemoveRequest, name=name)
        change(
            connection,
            db,
            operator_key,
            "operators-remove",
            remove,
            OperatorRemovedReply,
            # The host's administrator may remove the last operator (nobody else could).
            lambda a: a.remove_operator(remove, keep_last=False),
        )
    except FleetError as exc:
        fail(exc)
    Console().print(f"operator {name} removed", highlight=False)


@operators_app.command("list")
@with_connection
def operators_list(connection: Connection, json_out: JsonOpt = False, db: DirectOpt = None) -> None:
    """The operators the controller trusts, with their key ids."""
    try:
        listing = request("operators-list", OperatorsListRequest)
        reply = ask(
            connection,
            db,
            "operators-list",
            listing,
            OperatorsReply,
            lambda a: a.list_operators(listing),
        )
    except FleetError as exc:
        fail(exc)
    if json_out:
        print_json([operator.model_dump() for operator in reply.operators])
        return
    console = Console()
    if not reply.operators:
        console.print("no operators: add one with `fleet operators add NAME KEY --db DB`")
    for operator in reply.operators:
        console.print(f"{operator.name}  {operator.key_id}", highlight=False)
