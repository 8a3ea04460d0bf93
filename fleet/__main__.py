"""The ``fleet`` command and ``python -m fleet``: the operator's CLI, started only where it runs.

The console script points here, not at ``fleet.cli``, because the CLI imports typer and rich
at its top, and those come with the ``fleet`` extra, not with the base install a board gets.
Without them the command prints one line naming the extra and exits 78 (configuration
error: the install lacks what this command needs, and a restart will not bring it, so the
controller's systemd unit does not restart-loop on it), instead of a traceback.
"""

from __future__ import annotations

import importlib.util
import sys

from fleet.errors import EXIT_CONFIG

# Modules of this distribution: their absence is a bug to see in full, not a missing extra.
_OWN_PACKAGES = frozenset({"agent", "fleet", "edge_contract", "edge_runtime"})
# Modules of the fleet extra that the CLI imports only in the commands that open the
# database (fleet.store): looked for up front, so they fail here as the others do.
_IMPORTED_LATER = ("sqlalchemy", "alembic", "fastapi", "uvicorn", "jinja2", "prometheus_client")


def missing_extra_message(exc: ModuleNotFoundError) -> str | None:
    """The line to print when importing the CLI failed for want of an installed package;
    None when the missing module is this distribution's own (a bug, not an install)."""
    root = (exc.name or "").partition(".")[0]
    if not root or root in _OWN_PACKAGES:
        return None
    # Any third-party module: the fleet extra brings typer and rich with what they need, and
    # installing it also restores a base dependency that went missing.
    return (
        f"fleet: the fleet controller and CLI need the 'fleet' extra ({root} is not "
        "installed): pip install 'edge-fleet[fleet]'"
    )


def main() -> int:
    """Run the CLI; exit 78 with one line on stderr when the fleet extra is not installed."""
    try:
        from fleet.cli import main as cli_main  # noqa: PLC0415 - guarded: needs the extra

        for name in _IMPORTED_LATER:
            if importlib.util.find_spec(name) is None:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    except ModuleNotFoundError as exc:
        message = missing_extra_message(exc)
        if message is None:
            raise
        sys.stderr.write(message + "\n")
        return EXIT_CONFIG
    cli_main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
