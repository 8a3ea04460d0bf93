"""``fleet http``: the controller's HTTP side, from this machine.

``fleet http token NAME --role viewer|operator --tokens-file FILE`` appends a new bearer token
to the controller's tokens file (``[http] tokens_file``; created with mode 0600) as its
SHA-256 only, and prints the token once: it cannot be read back from the file. The controller
reads the file when it starts (docs/http-api.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from fleet.cli.common import fail
from fleet.errors import FleetConfigError
from fleet.http.auth import Role, add_token

http_app = typer.Typer(no_args_is_help=True, help="The controller's HTTP API and dashboard.")


@http_app.command("token")
def http_token(
    name: Annotated[str, typer.Argument(help="who holds the token (recorded with each action)")],
    role: Annotated[Role, typer.Option("--role", help="viewer (reads) or operator (actions)")],
    tokens_file: Annotated[
        Path,
        typer.Option("--tokens-file", help="the controller's tokens file (\\[http] tokens_file)"),
    ],
) -> None:
    """Add a bearer token to the tokens file and print it (once)."""
    try:
        text = tokens_file.read_text(encoding="utf-8") if tokens_file.exists() else ""
        line, token = add_token(text, name, role, source=str(tokens_file))
        fd = os.open(tokens_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as handle:
            if text and not text.endswith("\n"):
                handle.write("\n")
            handle.write(line + "\n")
    except OSError as exc:
        fail(FleetConfigError(f"tokens file {str(tokens_file)!r}: {exc.strerror}"))
    except FleetConfigError as exc:
        fail(exc)
    typer.echo(token)
