"""``fleet``: the operator's command line (device view, controller service).

Tables for people, ``--json`` for scripts. Device queries go to the controller over MQTT
(``--broker``), or straight to its database with ``--db`` on the controller's own host.
Requests that change anything (deploy, rollback, rollout start/pause/resume/approve/abort,
devices accept/tag/untag, operators add/remove) are
signed with the operator's key (``[operator] key_file``, ``FLEET_OPERATOR__KEY_FILE`` or
``--operator-key``); with ``--db`` the operator and accept commands edit the controller's
database directly (bootstrap on the controller's host, authorized by file access).
Exit codes: 0 ok, 2 unknown device, 65 device pending or refused input, 69 broker or
controller unavailable, 77 request refused by the controller, 78 configuration error.

The commands live by group: ``devices``, ``operators``, ``controller`` (serve, deploy,
rollback, controller-status), ``model``, ``rollout``, ``http`` (tokens of the HTTP API);
``ca``, ``certs`` and ``broker`` (provisioning, ``pki``, which also adds ``devices provision``
and ``devices revoke``);
``common`` holds what they share.
"""

from __future__ import annotations

import importlib.metadata
import sys
from typing import Annotated

import typer

from fleet.cli import controller
from fleet.cli.devices import devices_app
from fleet.cli.http import http_app
from fleet.cli.model import model_app
from fleet.cli.operators import operators_app
from fleet.cli.pki import broker_app, ca_app, certs_app
from fleet.cli.rollout import rollout_app
from fleet.release.cli import keys_app

__all__ = ["app", "main", "package_version"]

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.splitlines()[0])
app.add_typer(devices_app, name="devices")
app.add_typer(operators_app, name="operators")
app.add_typer(model_app, name="model")
app.add_typer(keys_app, name="keys")
app.add_typer(rollout_app, name="rollout")
app.add_typer(http_app, name="http")
app.add_typer(ca_app, name="ca")
app.add_typer(certs_app, name="certs")
app.add_typer(broker_app, name="broker")
controller.register(app)


def package_version() -> str:
    """The installed distribution's version; the package's own when it is not installed."""
    try:
        return importlib.metadata.version("edge-fleet")
    except importlib.metadata.PackageNotFoundError:
        import fleet  # noqa: PLC0415

        return str(getattr(fleet, "__version__", "unknown"))


def _print_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"fleet {package_version()}\n")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    """Options taken before any command (``--version``)."""


def main() -> None:
    """The CLI itself; the ``fleet`` command reaches it through ``fleet.__main__``, which
    first makes sure the ``fleet`` extra (typer, rich) is installed."""
    from edge_runtime.log import configure_logging  # noqa: PLC0415

    # Library logs go to stderr and only for errors, so --json stays clean; the link's
    # reconnect warnings are left out: the command says in one line what went wrong.
    configure_logging("error", "console")
    app()
