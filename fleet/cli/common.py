"""What every ``fleet`` command shares: its options, the connection they make, how it asks.

The connection options (``--config``, ``--broker``, TLS files, ``--timeout``) are declared
once here and added to a command by ``with_connection``, which hands the command one
``Connection``. A command then asks the controller in one of two ways and gets the same
typed reply (``edge_contract.controller``) either way: over the broker (``remote``,
``signed``), decoded and validated by ``fleet.rpc``; or straight from the controller's
database with ``--db`` (``direct``), through the same use cases (``fleet.app``) the
controller runs. The views render that one type.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Concatenate, NoReturn, ParamSpec, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape

from fleet.config import FleetConfig, database, load_fleet_config
from fleet.errors import FleetConfigError, FleetError, OperatorKeyError

if TYPE_CHECKING:
    from fleet.app.usecases import FleetApp
    from fleet.rpc import OperatorSigner
    from fleet.store import SqlFleetStore

RequestT = TypeVar("RequestT", bound=BaseModel)
ReplyT = TypeVar("ReplyT", bound=BaseModel)
P = ParamSpec("P")

# -- the options ----------------------------------------------------------------------------

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="fleet TOML config file")]
BrokerOpt = Annotated[
    str | None, typer.Option("--broker", help="mqtt://host:port or mqtts://host:port")
]
CaOpt = Annotated[Path | None, typer.Option("--ca-file", help="CA of the broker (TLS)")]
CertOpt = Annotated[Path | None, typer.Option("--cert-file", help="client certificate (TLS)")]
KeyOpt = Annotated[Path | None, typer.Option("--key-file", help="client key (TLS)")]
TimeoutOpt = Annotated[float | None, typer.Option("--timeout", help="seconds to wait")]
DbOpt = Annotated[
    str | None,
    typer.Option("--db", help="read the controller database directly (a SQLite file or a URL)"),
]
DirectOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="edit the controller database directly (on the controller host): a SQLite file "
        "or a URL",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]
OperatorKeyOpt = Annotated[
    Path | None,
    typer.Option("--operator-key", help="operator private key (PEM) to sign the request with"),
]


@dataclass(frozen=True)
class Connection:
    """The connection options of one command, as given (None: from the config)."""

    config: Path | None = None
    broker: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    timeout: float | None = None

    def load(self, db: str | None = None) -> FleetConfig:
        """The fleet config with these options (and ``db``) over the file and environment.

        ``db`` is a SQLite file, as it always was, or a database URL (``[store] url``)."""
        tls = None
        if self.ca_file or self.cert_file or self.key_file:
            tls = {"ca_file": self.ca_file, "cert_file": self.cert_file, "key_file": self.key_file}
        store = {"url": db} if db is not None and "://" in db else None
        path = Path(db) if db is not None and store is None else None
        return load_fleet_config(
            self.config,
            broker=self.broker,
            tls=tls,
            db=path,
            store=store,
            rpc_timeout_s=self.timeout,
        )


# The Connection's fields as the options a command gets (after its own, in this order).
_CONNECTION_OPTIONS = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=option)
    for name, option in (
        ("broker", BrokerOpt),
        ("config", ConfigOpt),
        ("ca_file", CaOpt),
        ("cert_file", CertOpt),
        ("key_file", KeyOpt),
        ("timeout", TimeoutOpt),
    )
]


def with_connection(command: Callable[Concatenate[Connection, P], None]) -> Callable[P, None]:
    """``command(connection, ...)`` as a typer command with the connection options added.

    typer reads a command's options from its signature: the wrapper shows the command's own
    parameters (after the first) and then ``_CONNECTION_OPTIONS``, and gathers those into
    the ``Connection`` it passes on.
    """
    signature = inspect.signature(command, eval_str=True)
    own = list(signature.parameters.values())[1:]

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        given = {option.name: kwargs.pop(option.name) for option in _CONNECTION_OPTIONS}
        command(Connection(**given), *args, **kwargs)  # type: ignore[arg-type]  # typer typed them

    # typer must see this signature, not the command's (which functools.wraps points to).
    del run.__wrapped__
    run.__annotations__ = {}
    run.__signature__ = signature.replace(parameters=[*own, *_CONNECTION_OPTIONS])  # type: ignore[attr-defined]
    return run


# -- asking the controller ------------------------------------------------------------------


def fail(exc: FleetError) -> NoReturn:
    """Print ``exc`` on one line of stderr and exit with its code."""
    # soft_wrap: one line however narrow the terminal, so the message greps and pipes whole.
    # escape: messages name config sections ("[operator]") that rich would take for markup.
    message = f"[red]fleet: {escape(str(exc))}[/red]"
    Console(stderr=True).print(message, highlight=False, soft_wrap=True)
    raise typer.Exit(exc.exit_code)


def request(method: str, kind: type[RequestT], /, **fields: object) -> RequestT:
    """The typed request a command sends (``edge_contract.controller``), checked here first:
    a bad argument fails as the controller would refuse it, naming the field."""
    from edge_contract.controller import decode_request  # noqa: PLC0415
    from edge_contract.errors import PayloadError  # noqa: PLC0415

    try:
        return decode_request(method, kind, fields)
    except PayloadError as exc:
        raise FleetError(str(exc)) from None


def remote(config: FleetConfig, method: str, body: BaseModel, reply: type[ReplyT]) -> ReplyT:
    """Ask the controller over the broker (an unsigned, read-only method)."""
    from fleet.rpc import call  # noqa: PLC0415

    return asyncio.run(call(config, method, body, reply))


def direct(config: FleetConfig, use: Callable[[FleetApp], ReplyT]) -> ReplyT:
    """Run a use case straight on the controller's database (``--db``): the same use cases
    (``fleet.app``) the controller runs for a request, with the same reply."""
    from fleet.app.usecases import FleetApp  # noqa: PLC0415

    store = open_store(config)
    try:
        return use(FleetApp(store))
    finally:
        store.close()


def ask(
    connection: Connection,
    db: str | None,
    method: str,
    body: BaseModel,
    reply: type[ReplyT],
    use: Callable[[FleetApp], ReplyT],
) -> ReplyT:
    """A read: from the database with ``--db``, else over the broker; one reply type."""
    config = connection.load(db)
    if db is not None:
        return direct(config, use)
    return remote(config, method, body, reply)


def change(
    connection: Connection,
    db: str | None,
    operator_key: Path | None,
    method: str,
    body: BaseModel,
    reply: type[ReplyT],
    use: Callable[[FleetApp], ReplyT],
) -> ReplyT:
    """A change: straight on the database with ``--db`` (the controller host's administrator,
    authorized by file access), else over the broker signed with the operator's key."""
    config = connection.load(db)
    if db is not None:
        return direct(config, use)
    return signed(config, operator_key, method, body, reply)


def signed(
    config: FleetConfig,
    operator_key: Path | None,
    method: str,
    body: BaseModel,
    reply: type[ReplyT],
) -> ReplyT:
    """Ask the controller over the broker, signed with the operator's key."""
    from fleet.rpc import call  # noqa: PLC0415

    signer = operator_signer(config, operator_key, method)
    return asyncio.run(call(config, method, body, reply, signer=signer))


def operator_signer(config: FleetConfig, operator_key: Path | None, method: str) -> OperatorSigner:
    """The ``OperatorSigner`` of the configured key; a clear config error when there is none."""
    from fleet.operators import load_private_key  # noqa: PLC0415
    from fleet.rpc import OperatorSigner  # noqa: PLC0415

    path = operator_key or config.operator.key_file
    if path is None:
        raise FleetConfigError(
            f"{method} must be signed by an operator key: give --operator-key FILE, set "
            "[operator] key_file in the fleet config or FLEET_OPERATOR__KEY_FILE "
            "(create one with `fleet operators keygen --out FILE`)"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        message = f"cannot read the operator key ({exc.strerror})"
        raise OperatorKeyError(message, value=str(path)) from None
    return OperatorSigner(load_private_key(data, source=str(path)), config.operator.name)


def open_store(config: FleetConfig) -> SqlFleetStore:
    from fleet.store import SqlFleetStore  # noqa: PLC0415

    location = database(config)
    if isinstance(location, Path) and not location.is_file():
        raise FleetError(f"no controller database at {location}")
    return SqlFleetStore(location)


def print_json(value: object) -> None:
    """``value`` as indented JSON on stdout (``--json``, ``--raw``)."""
    sys.stdout.write(json.dumps(value, indent=2) + "\n")
