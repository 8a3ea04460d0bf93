"""``edge-agent``: the daemon's command line (run, check-config, version).

Exit codes: 0 success, 78 configuration error (listed in the unit's
``RestartPreventExitStatus=``), 1 any other failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import agent
from agent.config import DEFAULT_CONFIG_PATH, load_config, masked_dump
from agent.errors import EXIT_RUNTIME, AgentError, ConfigError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("run", "run the agent daemon"),
        ("check-config", "validate the config and print the effective settings"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument(
            "--config",
            type=Path,
            default=None,
            help=f"TOML config file (default: {DEFAULT_CONFIG_PATH} if it exists)",
        )
    sub.add_parser("version", help="print the agent version")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        sys.stdout.write(f"edge-agent {agent.__version__}\n")
        return 0
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        sys.stderr.write(f"edge-agent: config error: {exc}\n")
        return exc.exit_code
    if args.command == "check-config":
        sys.stdout.write(json.dumps(masked_dump(config), indent=2) + "\n")
        return 0
    return _run(config)


def _run(config: object) -> int:
    from agent.app import Agent  # noqa: PLC0415 - keep check-config light and fast
    from agent.config import AgentConfig  # noqa: PLC0415
    from agent.log import configure_logging  # noqa: PLC0415

    assert isinstance(config, AgentConfig)
    configure_logging(config.log.level, config.log.format)
    try:
        asyncio.run(Agent(config).run())
    except AgentError as exc:
        sys.stderr.write(f"edge-agent: {exc}\n")
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
