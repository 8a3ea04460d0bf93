"""``edge-agent serve``: models served locally over the REST API, with no fleet at all.

With ``--grpc-port`` the same models are also served over gRPC (Open Inference Protocol v2
and TensorFlow Serving's PredictionService/ModelService, ``agent.inference.grpc_server``),
on the same address, and the gRPC refusals are counted on the REST port's ``/metrics``.

The equivalent of ``tensorflow_model_server --model_name --model_base_path``: each
``--model NAME=PATH`` is loaded with the card beside its file (NAME overrides the card's name;
naming the same NAME twice serves both versions, the later one by default), the REST service
starts with a model monitor behind ``/metrics``, and the process runs until SIGINT or SIGTERM.
A model that fails to load is a configuration error: nothing is served.

The process is set up for request bodies of megabytes (``unmap_large_blocks``): glibc's
allocator returns every block above 128 KiB to the system when it is freed, instead of
keeping it in the heap. Under rounds of concurrent large bodies that (with the REST
service's body budget) keeps the process's memory level after each round instead of growing
round after round (bench/bench_rest_memory.py; docs/benchmarks.md, "REST edge: memory under
concurrent large bodies").
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from pydantic import ValidationError

from agent.errors import ConfigError, InferenceError
from agent.inference.backends import BackendOptions
from agent.inference.cardfile import load_card
from agent.inference.grpc_server import GrpcServer, start_grpc
from agent.inference.metrics import GrpcMetrics
from agent.inference.monitoring import ModelMonitor
from agent.inference.registry import ModelRegistry
from agent.inference.rest import DEFAULT_MAX_BODY_BYTES, RestServer, start_rest
from edge_contract.card import ModelCard, card_path_for
from edge_runtime.allocator import M_MMAP_THRESHOLD, set_mallopt

log = structlog.get_logger("agent.inference.serve")

DEFAULT_PORT = 8501  # TensorFlow Serving's REST port
# glibc's mmap threshold starts here. Setting it fixes it: glibc otherwise raises it to the
# largest mmapped block freed so far (up to 32 MiB), after which freed request bodies and
# arrays stay in the heap, fragmented, and the heap grows.
MMAP_THRESHOLD = 128 * 1024


@dataclass(frozen=True)
class ModelArg:
    """One ``--model NAME=PATH``."""

    name: str
    path: Path


@dataclass(frozen=True)
class ServeSettings:
    """Everything ``edge-agent serve`` takes from its command line."""

    models: tuple[ModelArg, ...]
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    unix_path: Path | None = None
    backend: BackendOptions = field(default_factory=BackendOptions)
    workers: int = 2
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    body_budget_bytes: int | None = None  # default: twice max_body_bytes
    grpc_port: int | None = None  # the gRPC APIs on host:grpc_port; None: off


def parse_model_arg(text: str) -> ModelArg:
    """``NAME=PATH`` to a ``ModelArg``; ``ConfigError`` naming the argument otherwise."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise ConfigError(f"--model takes NAME=PATH, got {text!r}")
    return ModelArg(name=name, path=Path(path))


async def serve(settings: ServeSettings, *, stop: asyncio.Event | None = None) -> None:
    """Load the models, serve them until ``stop`` is set (or SIGINT/SIGTERM), then close."""
    stop = stop or asyncio.Event()
    budget = settings.body_budget_bytes
    if budget is not None and budget < settings.max_body_bytes:
        raise ConfigError(
            f"the body budget ({budget} bytes) must hold one body of the largest size "
            f"({settings.max_body_bytes} bytes)"
        )
    unmap_large_blocks()
    monitor = ModelMonitor()
    registry = ModelRegistry(settings.backend, workers=settings.workers, observer=monitor)
    server: RestServer | None = None
    grpc: GrpcServer | None = None
    grpc_metrics = GrpcMetrics() if settings.grpc_port is not None else None
    try:
        await _load_all(registry, settings.models)
        if settings.grpc_port is not None:
            grpc = await start_grpc(
                registry, host=settings.host, port=settings.grpc_port, metrics=grpc_metrics
            )
        server = await start_rest(
            registry,
            monitor,
            host=settings.host,
            port=settings.port,
            unix_path=settings.unix_path,
            max_body_bytes=settings.max_body_bytes,
            body_budget_bytes=budget,
            extra_metrics=grpc_metrics.render if grpc_metrics is not None else None,
        )
        grpc_address = grpc.address if grpc is not None else None
        log.info("serve.listening", url=server.url, grpc=grpc_address, models=registry.serving())
        with _stop_on_signals(stop):
            await stop.wait()
        log.info("serve.stopping")
    finally:
        if server is not None:
            await server.close()
        if grpc is not None:
            await grpc.close()
        await registry.close()


def unmap_large_blocks() -> bool:
    """Fix glibc's mmap threshold at 128 KiB, so that freed blocks above it (request bodies,
    parsed arrays, encoded answers) go back to the system; True if set.

    The cost is a few page faults per large block, small against the cost of parsing the body
    it came from. Left alone when ``MALLOC_MMAP_THRESHOLD_`` is set (the operator chose) and
    where there is no glibc ``mallopt``. Same approach as ``fleet.release.allocator``, for
    the opposite workload: that process reuses megabyte buffers at a high rate, this one must
    not keep them.
    """
    return set_mallopt({M_MMAP_THRESHOLD: MMAP_THRESHOLD})


async def _load_all(registry: ModelRegistry, models: tuple[ModelArg, ...]) -> None:
    seen: set[str] = set()
    for model in models:
        try:
            card = _card_named(load_card(card_path_for(model.path)), model.name)
            # The same NAME twice is two versions of one model, both kept.
            await registry.load(model.path, card=card, keep_others=model.name in seen)
        except InferenceError as exc:
            raise ConfigError(f"model {model.name!r} cannot be served: {exc}") from exc
        seen.add(model.name)


def _card_named(card: ModelCard, name: str) -> ModelCard:
    """The card under ``name``, checked against the card's own rule for names."""
    try:
        return ModelCard.model_validate({**card.model_dump(), "name": name})
    except ValidationError as exc:
        raise ConfigError(
            f"model name {name!r} is invalid: use lowercase letters, digits, '_', '.', '-' "
            "(at most 64, starting with a letter or digit)"
        ) from exc


@contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop`` while inside; default handling comes back after."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        yield
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
