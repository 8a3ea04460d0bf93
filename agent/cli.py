"""``edge-agent``: the daemon's command line (run, check-config, serve, version).

Exit codes: 0 success, 78 configuration error (listed in the unit's
``RestartPreventExitStatus=``), 1 any other failure. A command that needs a package this
install lacks (``serve``, or ``run`` with models or OTA, without the ``inference`` extra)
prints one line naming the extra and exits 78 too: restarting will not install it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import agent
from agent.config import DEFAULT_CONFIG_PATH, load_config, masked_dump
from agent.errors import EXIT_CONFIG, EXIT_RUNTIME, AgentError, ConfigError
from agent.loop import eventloop
from edge_contract.errors import ContractError
from edge_runtime.errors import SharedRuntimeError

# Import names of what the `inference` extra brings (pyproject.toml). tflite-runtime is left
# out: the LiteRT backend names a missing interpreter itself. "google" is protobuf's
# (google.protobuf), which the gRPC APIs' generated messages import.
INFERENCE_MODULES = frozenset(
    {
        "numpy",
        "onnxruntime",
        "ai_edge_litert",
        "aiohttp",
        "prometheus_client",
        "uvloop",
        "grpc",
        "google",
    }
)


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
    _add_serve_parser(sub)
    return parser


def _add_serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser(
        "serve",
        help="serve models over TensorFlow Serving's REST API (and gRPC), without a fleet",
        description="Load each model (its card beside the file) and serve it over TensorFlow "
        "Serving's REST API (and, with --grpc-port, over gRPC: Open Inference Protocol v2 and "
        "TF Serving's PredictionService) until SIGINT or SIGTERM.",
    )
    serve.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="NAME=PATH",
        help="a model file to serve under NAME (repeat; the same NAME twice serves two versions)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8501, help="TCP port, 0 for any (default 8501)")
    serve.add_argument("--unix", type=Path, default=None, help="serve on this Unix socket instead")
    serve.add_argument(
        "--grpc-port",
        type=int,
        default=None,
        help="also serve gRPC (Open Inference Protocol v2, TF Serving PredictionService) on "
        "this TCP port at --host, 0 for any (default: no gRPC)",
    )
    serve.add_argument(
        "--threads", type=int, default=0, help="threads per model run (default: the runtime's)"
    )
    serve.add_argument(
        "--providers",
        default="CPUExecutionProvider",
        help="ONNX Runtime execution providers in order of preference, comma-separated",
    )
    serve.add_argument(
        "--spinning",
        choices=("auto", "on", "off"),
        default="auto",
        help="ONNX Runtime threads spin between runs (per-model pools only; default auto: the "
        "runtime's choice, on)",
    )
    serve.add_argument("--workers", type=int, default=2, help="model runs at once (default 2)")
    serve.add_argument(
        "--onnx-thread-pools",
        choices=("shared", "per-model"),
        default="shared",
        help="one ONNX Runtime thread pool for all models, or one per model (default shared)",
    )
    serve.add_argument(
        "--max-body-mb", type=float, default=16, help="largest request body in MiB (default 16)"
    )
    serve.add_argument(
        "--body-budget-mb",
        type=float,
        default=None,
        help="request body MiB held by all requests in progress together; more is refused "
        "with 503 (default: twice --max-body-mb)",
    )
    serve.add_argument(
        "--event-loop",
        choices=eventloop.LOOP_CHOICES,
        default="auto",
        help="asyncio event loop (default auto: uvloop where installed)",
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        sys.stdout.write(f"edge-agent {agent.__version__}\n")
        return 0
    if args.command == "serve":
        return _needing_extras(lambda: _serve(args))
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        if args.command == "run" and _roll_back_pending(args.config):
            _reexec()  # the config a remote config-set wrote does not load: the old one does
        return _config_error(exc)
    if args.command == "check-config":
        sys.stdout.write(json.dumps(masked_dump(config), indent=2) + "\n")
        return 0
    return _needing_extras(lambda: _run(config, args.config))


def _config_file(path: Path | None) -> Path | None:
    """The file ``run`` reads: ``--config``, else the default one where it exists."""
    if path is not None:
        return path
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None


def _roll_back_pending(path: Path | None) -> bool:
    from agent.control.configfile import ConfigFiles, roll_back  # noqa: PLC0415

    file = _config_file(path)
    if file is None or not roll_back(ConfigFiles(file)):
        return False
    sys.stderr.write(f"edge-agent: {file} did not load: restored {file}.previous\n")
    return True


def _reexec() -> NoReturn:
    """Start again in this process (same pid: systemd's unit stays active), same arguments."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])  # noqa: S606 - our own argv


def _needing_extras(command: Callable[[], int]) -> int:
    """Run ``command``; a package it imports that is not installed is one line and exit 78."""
    try:
        return command()
    except (ModuleNotFoundError, BaseExceptionGroup) as exc:
        missing = _module_not_found(exc)
        message = None if missing is None else missing_extra_message(missing)
        if message is None:
            raise
        sys.stderr.write(message + "\n")
        return EXIT_CONFIG


def _module_not_found(exc: BaseException) -> ModuleNotFoundError | None:
    # The daemon's tasks run in a TaskGroup: an import inside one arrives in a group.
    if isinstance(exc, ModuleNotFoundError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _module_not_found(inner)
            if found is not None:
                return found
    return None


# Modules of this distribution: their absence is a bug to see in full, not a missing extra.
_OWN_PACKAGES = frozenset({"agent", "edge_contract", "edge_runtime"})


def missing_extra_message(exc: ModuleNotFoundError) -> str | None:
    """The line for a package that is not installed; None for a module of the agent itself
    (a bug to see in full, not an install to fix)."""
    root = (exc.name or "").partition(".")[0]
    if not root or root in _OWN_PACKAGES:
        return None
    if root in INFERENCE_MODULES:
        return (
            "edge-agent: models and `edge-agent serve` need the 'inference' extra "
            f"({root} is not installed): pip install 'edge-fleet[inference]'"
        )
    return f"edge-agent: {root} is not installed (a base dependency): pip install edge-fleet"


def _config_error(exc: ConfigError) -> int:
    sys.stderr.write(f"edge-agent: config error: {exc}\n")
    return exc.exit_code


def _run(config: object, config_path: Path | None = None) -> int:
    from agent.config import AgentConfig  # noqa: PLC0415
    from agent.daemon.app import Agent  # noqa: PLC0415 - keep check-config light and fast
    from edge_runtime.log import configure_logging  # noqa: PLC0415

    assert isinstance(config, AgentConfig)
    configure_logging(config.log.level, config.log.format)
    daemon = Agent(config, _config_file(config_path))
    try:
        eventloop.run(daemon.run(), config.event_loop)
    except ConfigError as exc:
        return _config_error(exc)
    except (AgentError, ContractError, SharedRuntimeError) as exc:
        sys.stderr.write(f"edge-agent: {exc}\n")
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return 0
    if daemon.restart_requested is not None:
        _reexec()
    return 0


def _spinning(args: argparse.Namespace) -> bool | None:
    if args.spinning == "auto":
        return None
    if args.spinning == "off" and args.onnx_thread_pools == "shared":
        raise ConfigError(
            "--spinning off needs --onnx-thread-pools per-model "
            "(ONNX Runtime's shared pools always spin)"
        )
    return bool(args.spinning == "on")


def _serve(args: argparse.Namespace) -> int:
    # Imported here: serving needs numpy and a runtime, the daemon's other commands do not.
    from agent.inference.backends import BackendOptions  # noqa: PLC0415
    from agent.inference.serve import ServeSettings, parse_model_arg, serve  # noqa: PLC0415
    from edge_runtime.log import configure_logging  # noqa: PLC0415

    configure_logging("info", "auto")
    try:
        threads = args.threads
        settings = ServeSettings(
            models=tuple(parse_model_arg(text) for text in args.model),
            host=args.host,
            port=args.port,
            unix_path=args.unix,
            grpc_port=args.grpc_port,
            backend=BackendOptions(
                onnx_providers=tuple(p.strip() for p in args.providers.split(",") if p.strip()),
                intra_op_threads=threads,
                intra_op_spinning=_spinning(args),
                tflite_threads=threads or None,
                onnx_thread_pools=args.onnx_thread_pools,
            ),
            workers=args.workers,
            max_body_bytes=int(args.max_body_mb * 1024 * 1024),
            body_budget_bytes=None
            if args.body_budget_mb is None
            else int(args.body_budget_mb * 1024 * 1024),
        )
        eventloop.run(serve(settings), args.event_loop)
    except ConfigError as exc:
        return _config_error(exc)
    except (AgentError, ContractError, SharedRuntimeError, OSError) as exc:
        sys.stderr.write(f"edge-agent: {exc}\n")
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
