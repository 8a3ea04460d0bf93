"""The model registry: named, versioned models served side by side, hot swap, bounded inference.

Owns the life of a loaded model version (open -> signature check -> golden check -> warm-up ->
serve -> retire -> close) and the path of one request (validate on the event loop, run on one of
a few inference threads, refuse non-finite outputs, give each batch row a prediction id, tell the
observer). Versions follow TensorFlow Serving: the default version of a name is the one loaded
most recently; an explicit version reaches any loaded version. Loading a version switches the
default atomically once the new version has passed its checks; requests already running on the
old version finish there and its backend is closed when the last one is done.

The registry never touches HTTP (``agent.inference.rest`` does); all its state lives on the
event loop thread, only ``Backend.run`` and loading run in worker threads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import structlog

from agent.errors import (
    GoldenMismatchError,
    InferenceError,
    InvalidInputError,
    ModelLoadError,
    ModelSignatureError,
    NonFiniteOutputError,
    ServiceBusyError,
    UnknownModelError,
)
from agent.inference.backends import (
    Backend,
    BackendOptions,
    CheckedFeeds,
    InputContract,
    batch_sizes,
    caller_dtype,
    check_signature,
    input_contract,
    open_backend,
)
from agent.inference.cardfile import load_card
from agent.inference.run_threads import InferenceWorkers
from edge_contract.card import ModelCard, card_path_for

log = structlog.get_logger("agent.inference.registry")

Array = npt.NDArray[Any]
EventSink = Callable[[str, dict[str, object]], None]
# How many past version records (failed loads, unloaded versions) a name keeps for status().
_STATUS_HISTORY = 8


@dataclass(slots=True)
class Prediction:
    """The answer to one predict call (not frozen only because a frozen dataclass is slower
    to make, on every request; nothing changes it)."""

    model: str
    version: str
    outputs: dict[str, Array]  # float32, batch first; read-only (observers read them later)
    ids: tuple[str, ...]  # one prediction id per batch row (for feedback / capture)
    latency_s: float  # time inside backend.run


class InferenceObserver(Protocol):
    """Told about loads, results and errors (``agent.inference.monitoring.ModelMonitor``).

    Called on the event loop thread; must be cheap and never raise (no disk IO on the caller).
    """

    def on_loaded(self, card: ModelCard) -> None: ...
    def on_unloaded(self, card: ModelCard) -> None: ...
    def on_result(
        self, card: ModelCard, prediction: Prediction, inputs: Mapping[str, Array]
    ) -> None: ...
    def on_error(self, model: str, version: str | None, error: InferenceError) -> None: ...


class ObserverGroup:
    """Several observers in the registry's one observer slot (the monitor, an update's health
    window); one that raises is logged and the others are still told."""

    def __init__(self, *observers: InferenceObserver) -> None:
        self._observers = list(observers)

    def add(self, observer: InferenceObserver) -> None:
        self._observers.append(observer)

    def _each(self, call: Callable[[InferenceObserver], None]) -> None:
        for observer in self._observers:
            try:
                call(observer)
            except Exception:  # a broken observer must not silence the others
                log.exception("observer.failed", observer=type(observer).__name__)

    def on_loaded(self, card: ModelCard) -> None:
        self._each(lambda observer: observer.on_loaded(card))

    def on_unloaded(self, card: ModelCard) -> None:
        self._each(lambda observer: observer.on_unloaded(card))

    def on_result(
        self, card: ModelCard, prediction: Prediction, inputs: Mapping[str, Array]
    ) -> None:
        self._each(lambda observer: observer.on_result(card, prediction, inputs))

    def on_error(self, model: str, version: str | None, error: InferenceError) -> None:
        self._each(lambda observer: observer.on_error(model, version, error))


class VersionState(StrEnum):
    """A version's state, named as TensorFlow Serving's ``ModelVersionStatus.State`` (+ ERROR)."""

    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    UNLOADING = "UNLOADING"
    END = "END"
    ERROR = "ERROR"


@dataclass(frozen=True)
class VersionStatus:
    """One version of a model as ``status()`` reports it."""

    version: str
    state: VersionState
    error_code: str = "OK"  # a canonical gRPC code name, as TensorFlow Serving reports it
    error_message: str = ""


@dataclass(eq=False)
class _Servable:
    """One loaded version: its backend and the requests running on it."""

    card: ModelCard
    backend: Backend
    in_flight: int = 0
    retiring: bool = False
    # The card's inputs; the same object as the backend's when the file declares just those,
    # so the backend does not check a request again.
    contract: InputContract = field(init=False)

    def __post_init__(self) -> None:
        self.contract = input_contract(self.card.name, self.card.inputs)


# What a worker thread hands back: the outputs, the time inside ``backend.run``, and the
# first output with NaN/Inf and how many (a tuple: the cheapest thing to make).
_RunResult = tuple[dict[str, Array], float, tuple[str, int] | None]


class ModelRegistry:
    """Loaded models by name and version, and the bounded pool that runs them."""

    def __init__(
        self,
        options: BackendOptions,
        *,
        workers: int = 2,
        max_queue: int = 64,
        observer: InferenceObserver | None = None,
        on_event: EventSink | None = None,
        warmup_runs: int = 3,
    ) -> None:
        if workers < 1 or max_queue < 1:
            raise ValueError(f"workers ({workers}) and max_queue ({max_queue}) must be >= 1")
        self._options = options
        self._max_queue = max_queue
        self._observer = observer
        self._on_event = on_event
        self._warmup_runs = warmup_runs
        self._workers = InferenceWorkers(workers)
        # Loading has its own thread so that a swap never queues requests behind a load.
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="model-load")
        # Per name, versions in load order: the last one is the default.
        self._versions: dict[str, dict[str, _Servable]] = {}
        self._statuses: dict[str, dict[str, VersionStatus]] = {}
        self._closed = False
        self._pending = 0  # requests queued or running, all models together
        self._idle: asyncio.Future[None] | None = None  # close() waits on it for _pending 0
        self._id_prefix = secrets.token_hex(3)
        self._id_counter = itertools.count(1)

    # -- loading ---------------------------------------------------------------------------

    async def load(
        self,
        path: Path,
        *,
        card: ModelCard | None = None,
        keep_others: bool = False,
        providers: Sequence[str] = (),
    ) -> ModelCard:
        """Load, check and warm up ``path``, then make it the default version of its name.

        Other loaded versions of the name are retired (TensorFlow Serving's "latest" policy)
        unless ``keep_others``; they finish their in-flight requests first. ``providers``:
        ONNX Runtime execution providers to try before the configured ones (an OTA
        variant's signed list). On failure the
        typed error is raised, a ``model_load_failed`` event is emitted and whatever served
        before keeps serving.
        """
        loop = asyncio.get_running_loop()
        try:
            if card is None:
                card = await loop.run_in_executor(self._loader, load_card, card_path_for(path))
        except InferenceError as exc:
            self._emit(
                "model_load_failed", path=str(path), kind=type(exc).__name__, reason=str(exc)
            )
            raise
        self._set_status(card, VersionState.LOADING, only_if_new=True)
        log.info("model.loading", model=card.name, version=card.version, path=str(path))
        try:
            backend = await loop.run_in_executor(
                self._loader, self._prepare, path, card, tuple(providers)
            )
        except InferenceError as exc:
            self._set_status(card, VersionState.ERROR, error=exc, only_if_new=True)
            self._emit(
                "model_load_failed",
                model=card.name,
                version=card.version,
                path=str(path),
                kind=type(exc).__name__,
                reason=str(exc),
            )
            raise
        if self._closed:
            backend.close()
            raise InferenceError(f"{card.name}: the registry closed while the model loaded")
        for fallback in getattr(backend, "provider_fallbacks", ()):  # ONNX Runtime's only
            self._emit(
                "provider_fallback",
                model=card.name,
                version=card.version,
                provider=fallback.provider,
                error=fallback.error,
            )
        self._activate(_Servable(card, backend), keep_others=keep_others)
        return card

    def _prepare(self, path: Path, card: ModelCard, providers: tuple[str, ...] = ()) -> Backend:
        """Worker thread: open the file and refuse it unless it does what its card says."""
        options = self._options
        if providers:
            wanted = tuple(dict.fromkeys([*providers, *options.onnx_providers]))
            options = dataclasses.replace(options, onnx_providers=wanted)
        backend = open_backend(path, card.runtime, options, model=card.name)
        try:
            check_signature(card, backend)
            feeds = _check_golden(card, backend) if card.golden else _zero_feeds(card)
            for _ in range(self._warmup_runs):
                _raise_if_nonfinite(card, backend.run(feeds))
        except BaseException:
            backend.close()
            raise
        return backend

    def _activate(self, servable: _Servable, *, keep_others: bool) -> None:
        """Make ``servable`` the default of its name in one step on the loop: no request sees
        a half-switched registry."""
        card = servable.card
        versions = self._versions.setdefault(card.name, {})
        replaced = versions.pop(card.version, None)
        retired = [] if keep_others else list(versions.values())
        if not keep_others:
            versions.clear()
        versions[card.version] = servable
        self._set_status(card, VersionState.AVAILABLE)
        self._notify(lambda observer: observer.on_loaded(card))
        self._emit("model_loaded", model=card.name, version=card.version, runtime=card.runtime)
        log.info("model.available", model=card.name, version=card.version)
        for old in ([replaced] if replaced else []) + retired:
            self._retire(old)

    # -- unloading -------------------------------------------------------------------------

    def unload(self, name: str, version: str | None = None) -> None:
        """Stop routing to ``name`` (all versions, or one); running requests finish first."""
        versions = self._versions.get(name)
        if not versions or (version is not None and version not in versions):
            raise UnknownModelError(name, version)
        doomed = [versions.pop(version)] if version is not None else list(versions.values())
        if version is None or not versions:
            del self._versions[name]
            versions.clear()
        for servable in doomed:
            self._retire(servable)

    def _retire(self, servable: _Servable) -> None:
        servable.retiring = True
        if not self._reloaded(servable):
            self._set_status(servable.card, VersionState.UNLOADING)
        if servable.in_flight == 0:
            self._close_servable(servable)

    def _close_servable(self, servable: _Servable) -> None:
        card = servable.card
        servable.backend.close()
        log.info("model.closed", model=card.name, version=card.version)
        if self._reloaded(servable):
            return  # the same version serves again from a new load: its status and metrics stay
        self._set_status(card, VersionState.END)
        self._notify(lambda observer: observer.on_unloaded(card))
        self._emit("model_unloaded", model=card.name, version=card.version)

    def _reloaded(self, servable: _Servable) -> bool:
        """True if a newer load of the same name and version replaced ``servable``."""
        current = self._versions.get(servable.card.name, {}).get(servable.card.version)
        return current is not None and current is not servable

    # -- inference -------------------------------------------------------------------------

    async def predict(
        self, name: str, feeds: Mapping[str, Array], *, version: str | None = None
    ) -> Prediction:
        """Run one batch on the default (or the given) version of ``name``."""
        # One coroutine and few helper layers: everything after the inference runs with
        # cold caches (see agent.inference.run_threads), where each Python call is costly.
        servable = self._resolve(name, version)
        card = servable.card
        try:
            conformed = servable.contract.conform(feeds)
            batch = conformed.batch
            if batch is None:
                raise _mixed_batches(conformed)
            if self._pending >= self._max_queue:
                raise ServiceBusyError(model=name, queued=self._pending)
        except InferenceError as exc:
            self._report_error(card, exc)
            raise
        servable.in_flight += 1
        self._pending += 1
        # The version stays open until its thread is done, even if the caller is cancelled
        # meanwhile (on_finished).
        future = self._workers.run(
            functools.partial(_run_timed, servable.backend, conformed),
            on_finished=functools.partial(self._release, servable),
        )
        try:
            outputs, latency_s, nonfinite = await future
        except InferenceError as exc:
            self._report_error(card, exc)
            raise
        if nonfinite is not None:
            raise self._nonfinite(card, *nonfinite)
        prediction = Prediction(name, card.version, outputs, self._new_ids(batch), latency_s)
        observer = self._observer
        if observer is not None:
            try:
                observer.on_result(card, prediction, conformed)
            except Exception:  # a broken monitor must not fail requests
                log.exception("observer.failed")
        return prediction

    def _nonfinite(self, card: ModelCard, output: str, count: int) -> NonFiniteOutputError:
        error = NonFiniteOutputError(model=card.name, output=output, count=count)
        self._report_error(card, error)
        self._emit(
            "model_output_nonfinite",
            model=card.name,
            version=card.version,
            output=output,
            count=count,
        )
        return error

    def _resolve(self, name: str, version: str | None) -> _Servable:
        versions = self._versions.get(name)
        if not versions:
            raise UnknownModelError(name, version)
        if version is None:
            return next(reversed(versions.values()))
        servable = versions.get(version)
        if servable is None:
            raise UnknownModelError(name, version)
        return servable

    def _release(self, servable: _Servable) -> None:
        servable.in_flight -= 1
        self._pending -= 1
        if self._pending == 0 and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)
        if servable.retiring and servable.in_flight == 0:
            self._close_servable(servable)

    def _new_ids(self, count: int) -> tuple[str, ...]:
        # A random per-process prefix keeps ids from two runs of the agent apart.
        prefix, counter = self._id_prefix, self._id_counter
        if count == 1:
            return (f"{prefix}-{next(counter):x}",)
        return tuple(f"{prefix}-{next(counter):x}" for _ in range(count))

    # -- queries ---------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Names with at least one version serving, sorted."""
        return sorted(self._versions)

    def serving(self) -> dict[str, str]:
        """Each name serving now and its default version (health, presence, logs)."""
        return {name: self.card(name).version for name in self.names()}

    def card(self, name: str, version: str | None = None) -> ModelCard:
        """The card of the default (or the given) serving version of ``name``."""
        return self._resolve(name, version).card

    def backend(self, name: str, version: str | None = None) -> Backend:
        """The backend of the default (or the given) serving version of ``name``: for
        benchmarks and diagnostics that compare the runtime itself with the service."""
        return self._resolve(name, version).backend

    def status(self, name: str) -> list[VersionStatus]:
        """Every version of ``name`` the registry knows about, the most recent first."""
        statuses = self._statuses.get(name)
        if not statuses:
            raise UnknownModelError(name)
        return list(reversed(statuses.values()))

    # -- shutdown --------------------------------------------------------------------------

    async def close(self) -> None:
        """Unload everything, wait for running requests, stop the worker threads."""
        self._closed = True
        for name in list(self._versions):
            self.unload(name)
        if self._pending:
            if self._idle is None or self._idle.done():
                self._idle = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._idle)  # shared by every close() that waits
        self._workers.stop()
        self._loader.shutdown(wait=False, cancel_futures=True)

    def probe_workers(self, call: Callable[[], None] | None = None) -> list[asyncio.Future[None]]:
        """A call (a no-op by default) on every inference thread; see ``InferenceWorkers``."""
        return self._workers.probe() if call is None else self._workers.probe(call)

    # -- helpers ---------------------------------------------------------------------------

    def _set_status(
        self,
        card: ModelCard,
        state: VersionState,
        *,
        error: InferenceError | None = None,
        only_if_new: bool = False,
    ) -> None:
        """Record a version's state; ``only_if_new`` leaves a version that serves alone (a
        failed reload of a serving version does not mark it failed)."""
        if only_if_new and card.version in self._versions.get(card.name, {}):
            return
        statuses = self._statuses.setdefault(card.name, {})
        statuses.pop(card.version, None)
        statuses[card.version] = VersionStatus(
            version=card.version,
            state=state,
            error_code="OK" if error is None else _error_code(error),
            error_message="" if error is None else str(error),
        )
        while len(statuses) > _STATUS_HISTORY:
            oldest = next(iter(statuses))
            if oldest in self._versions.get(card.name, {}):
                break
            del statuses[oldest]

    def _notify(self, call: Callable[[InferenceObserver], None]) -> None:
        if self._observer is None:
            return
        try:
            call(self._observer)
        except Exception:  # a broken monitor must not fail requests
            log.exception("observer.failed")

    def _report_error(self, card: ModelCard, error: InferenceError) -> None:
        self._notify(lambda observer: observer.on_error(card.name, card.version, error))

    def _emit(self, event: str, **fields: Any) -> None:
        if event not in {"model_loaded", "model_unloaded"}:
            log.warning(event, **fields)
        if self._on_event is None:
            return
        try:
            self._on_event(event, fields)
        except Exception:  # an event sink failure must not fail a load or a request
            log.exception("event_sink.failed", name=event)


def _error_code(error: InferenceError) -> str:
    if isinstance(error, ModelLoadError):
        return "NOT_FOUND"
    if isinstance(error, ModelSignatureError | InvalidInputError):
        return "INVALID_ARGUMENT"
    if isinstance(error, GoldenMismatchError | NonFiniteOutputError):
        return "FAILED_PRECONDITION"
    return "UNKNOWN"


def _mixed_batches(feeds: CheckedFeeds) -> InvalidInputError:
    sizes = sorted(batch_sizes(feeds.values()))
    return InvalidInputError(
        f"inputs have different batch sizes {sizes}", model=feeds.contract.model
    )


def _run_timed(backend: Backend, feeds: Mapping[str, Array]) -> _RunResult:
    """Worker thread: one ``backend.run``, its latency, and the first non-finite output."""
    started = time.perf_counter()
    outputs = backend.run(feeds)
    latency_s = time.perf_counter() - started
    for array in outputs.values():
        array.setflags(write=False)
    return outputs, latency_s, _first_nonfinite(outputs)


def _first_nonfinite(outputs: Mapping[str, Array]) -> tuple[str, int] | None:
    for name, array in outputs.items():
        if array.dtype.kind in "fc":
            bad = int(array.size - np.count_nonzero(np.isfinite(array)))
            if bad:
                return name, bad
    return None


def _raise_if_nonfinite(card: ModelCard, outputs: Mapping[str, Array]) -> None:
    found = _first_nonfinite(outputs)
    if found is not None:
        raise NonFiniteOutputError(model=card.name, output=found[0], count=found[1])


def _zero_feeds(card: ModelCard) -> dict[str, Array]:
    """A batch of one zero input per tensor: the warm-up input of a card without a golden."""
    return {
        spec.name: np.zeros([1 if size == -1 else size for size in spec.shape], caller_dtype(spec))
        for spec in card.inputs
    }


def _check_golden(card: ModelCard, backend: Backend) -> dict[str, Array]:
    """Run the card's golden input and compare; return the golden feeds for the warm-up."""
    assert card.golden is not None
    feeds: dict[str, Array] = {}
    for name, values in card.golden.inputs.items():
        spec = card.input(name)
        if spec is None:
            raise ModelSignatureError(f"golden input {name!r} is not an input", model=card.name)
        feeds[name] = np.asarray(values, dtype=caller_dtype(spec))
    outputs = backend.run(feeds)
    _raise_if_nonfinite(card, outputs)
    worst = 0.0
    for name, values in card.golden.outputs.items():
        if name not in outputs:
            raise ModelSignatureError(f"golden output {name!r} is not an output", model=card.name)
        expected = np.asarray(values, dtype=np.float64)
        actual = outputs[name].astype(np.float64)
        if actual.shape != expected.shape:
            raise ModelSignatureError(
                f"golden output {name!r} has shape {list(actual.shape)}, the card says "
                f"{list(expected.shape)}",
                model=card.name,
            )
        worst = max(worst, float(np.max(np.abs(actual - expected), initial=0.0)))
    if worst > card.golden.atol:
        raise GoldenMismatchError(model=card.name, max_abs_error=worst, tolerance=card.golden.atol)
    return feeds
