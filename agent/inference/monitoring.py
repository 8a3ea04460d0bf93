"""Model monitoring: per model and version, what the service did and how the outputs look.

``ModelMonitor`` is the registry's ``InferenceObserver``. For each loaded (model, version) it
keeps request, batch, error and NaN/Inf counters; batch latency (a window for p50/p95/p99
and a cumulative Prometheus histogram); rows per second over a sliding window; for
classifiers the predicted class and top-1 confidence of the last predictions, and the drift
of both against the card's reference statistics (PSI, ``agent.inference.drift``); for
embedding models the norm of the last embeddings; and labelled feedback (rolling accuracy,
macro precision and recall). Rows under the low-confidence threshold are counted and handed
to the capture buffer.

Observer methods run on the event loop: each costs O(batch), does no disk IO and never
raises (an internal failure is logged and counted). ``snapshot`` gives the JSON block for
telemetry and ``render_prometheus`` the ``/metrics`` text, from the same series (the JSON keys
are the metric names without the ``edge_model_`` prefix). See docs/monitoring.md.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, NotRequired, TypedDict

import numpy as np
import numpy.typing as npt
import structlog
from prometheus_client import CollectorRegistry, generate_latest

from agent.errors import (
    InferenceError,
    InvalidInputError,
    NonFiniteOutputError,
    UnknownModelError,
    UnknownPredictionError,
)
from agent.inference import drift
from agent.inference.capture import CaptureBuffer, CaptureRecord
from agent.inference.metrics import Key, MonitorCollector, Point, View, view_json
from edge_contract.card import ModelCard

if TYPE_CHECKING:  # the registry imports nothing from here; this keeps it that way at run time
    from agent.inference.registry import Prediction

log = structlog.get_logger("agent.inference.monitoring")

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
LATENCY_QUANTILES = (0.5, 0.95, 0.99)
TOP_CLASSES_IN_SNAPSHOT = 10
LABELS_IN_MESSAGES = 20
# Output windows take queued outputs in bulk once this many batches or bytes are waiting
# (or when anything reads them): rare enough to vanish per request, small enough that the
# fold itself stays well under a millisecond and holds little memory.
FOLD_BATCHES = 256
FOLD_BYTES = 1 << 20


class ErrorsWithoutModel(TypedDict):
    """Errors of a request whose model or version never resolved (a wrong name, say)."""

    model: str
    version: str
    errors: dict[str, int]


class MonitorSnapshot(TypedDict):
    """``inference`` in telemetry (``InferenceService`` adds ``load_failures``)."""

    models: list[dict[str, object]]  # ``view_json`` blocks
    internal_errors: int
    errors_without_model: NotRequired[list[ErrorsWithoutModel]]
    capture: NotRequired[dict[str, int]]
    load_failures: NotRequired[dict[str, str]]


@dataclass(frozen=True)
class MonitorLimits:
    """Window sizes and bounds; every piece of monitor state is bounded by one of these."""

    latency_window: int = 2048  # batches kept for the latency quantiles
    throughput_window_s: float = 60.0
    output_window: int = 1000  # last predictions kept for output statistics and drift
    drift_min_samples: int = 100  # no drift score before the window holds this many
    remembered_predictions: int = 10_000  # prediction ids that feedback may still name
    feedback_window: int = 500  # last feedbacks for accuracy, precision, recall
    retired_versions: int = 4  # unloaded versions whose stats are still reported
    error_only_keys: int = 64  # (model, version) pairs seen only through errors


class _Ring:
    """The last ``size`` values of a stream, in a preallocated array (order not kept)."""

    def __init__(self, size: int, dtype: type[np.generic]) -> None:
        self._data = np.zeros(size, dtype=dtype)
        self._next = 0
        self._filled = 0

    def extend(self, values: npt.NDArray[Any]) -> None:
        size = self._data.size
        values = values[-size:]
        positions = (self._next + np.arange(values.size)) % size
        self._data[positions] = values
        self._next = (self._next + values.size) % size
        self._filled = min(size, self._filled + values.size)

    def values(self) -> npt.NDArray[Any]:
        return self._data[: self._filled]


class _ModelStats:
    """Everything monitored about one (model, version), bounded by ``MonitorLimits``."""

    def __init__(self, card: ModelCard, limits: MonitorLimits, since: float) -> None:
        self.card, self.limits, self.since = card, limits, since
        self.loaded = True
        self.requests = self.batches = self.nonfinite = 0
        self.low_confidence = self.feedback_total = 0
        self.errors: Counter[str] = Counter()
        self.latency_sum = 0.0
        self.latency_buckets = [0] * (len(LATENCY_BUCKETS_S) + 1)  # not cumulative; +Inf last
        self.latencies: deque[float] = deque(maxlen=limits.latency_window)
        self.rows_by_second: deque[list[int]] = deque()  # [whole second, rows]
        self.predicted = _Ring(limits.output_window, np.int64)
        self.confidence = _Ring(limits.output_window, np.float64)
        self.norms = _Ring(limits.output_window, np.float64)
        self.feedback: deque[tuple[int, int]] = deque(maxlen=limits.feedback_window)
        self.is_classifier = _is_classifier(card)
        width = card.outputs[0].shape[-1] if card.outputs[0].shape else -1
        self.classes = width if width > 0 else len(card.labels or ()) or None

    def record_batch(self, rows: int, latency_s: float, now: float) -> None:
        self.requests += rows
        self.batches += 1
        self.latencies.append(latency_s)
        self.latency_sum += latency_s
        self.latency_buckets[drift.bucket_index(latency_s, LATENCY_BUCKETS_S)] += 1
        second = int(now)
        if self.rows_by_second and self.rows_by_second[-1][0] == second:
            self.rows_by_second[-1][1] += rows
        else:
            self.rows_by_second.append([second, rows])
        self._forget_rows_before(now - self.limits.throughput_window_s)

    def throughput(self, now: float) -> float:
        """Rows per second over the window (or since loading, if that is shorter)."""
        self._forget_rows_before(now - self.limits.throughput_window_s)
        # At least one second (the bucket size): the first batch after a load is not a spike.
        span = min(self.limits.throughput_window_s, max(now - self.since, 1.0))
        rows = sum(count for _, count in self.rows_by_second)
        return rows / span

    def _forget_rows_before(self, start: float) -> None:
        # A one-second bucket leaves once it ends before the window starts.
        while self.rows_by_second and self.rows_by_second[0][0] + 1 <= start:
            self.rows_by_second.popleft()

    def label(self, index: int) -> str:
        labels = self.card.labels
        return labels[index] if labels and 0 <= index < len(labels) else str(index)

    def drift_psi(self) -> dict[str, float]:
        """PSI per signal ("class", "confidence") once the window holds enough predictions."""
        reference, confidence = self.card.reference, self.confidence.values()
        if reference is None or confidence.size < self.limits.drift_min_samples:
            return {}
        scores: dict[str, float] = {}
        frequency = reference.class_frequency
        if frequency is not None and self.classes == len(frequency):
            observed = drift.class_counts(self.predicted.values(), len(frequency))
            scores["class"] = drift.psi(frequency, observed)
        if reference.confidence_edges is not None and reference.confidence_fractions is not None:
            histogram = drift.histogram_counts(confidence, reference.confidence_edges)
            scores["confidence"] = drift.psi(reference.confidence_fractions, histogram)
        return scores

    def top_classes(self) -> dict[str, int]:
        """The most predicted classes in the output window, by label."""
        if not self.classes or not self.predicted.values().size:
            return {}
        counts = drift.class_counts(self.predicted.values(), self.classes)
        top = np.argsort(-counts, kind="stable")[:TOP_CLASSES_IN_SNAPSHOT].tolist()
        return {self.label(index): int(counts[index]) for index in top if counts[index]}

    def points(self, now: float) -> Iterator[Point]:
        """Every series of this model/version: (family, extra label values, value)."""
        card = self.card
        yield "loaded", (card.runtime, card.task), 1 if self.loaded else 0
        yield "requests", (), self.requests
        yield "batches", (), self.batches
        yield from (("errors", (kind,), count) for kind, count in self.errors.items())
        yield "nonfinite_outputs", (), self.nonfinite
        if self.latencies:
            quantiles = np.quantile(np.fromiter(self.latencies, np.float64), LATENCY_QUANTILES)
            for q, seconds in zip(LATENCY_QUANTILES, quantiles.tolist(), strict=True):
                yield "latency_quantile_seconds", (str(q),), seconds
        yield "throughput_rows_per_second", (), self.throughput(now)
        if self.is_classifier:
            yield from self._classifier_points()
        window = self.norms.values()
        if card.task == "embedding" and window.size:
            yield "output_window_samples", (), window.size
            yield "embedding_norm_mean", (), float(window.mean())
            yield "embedding_norm_std", (), float(window.std())

    def _classifier_points(self) -> Iterator[Point]:
        window = self.confidence.values()
        yield "output_window_samples", (), window.size
        if window.size:
            yield "confidence_mean", (), float(window.mean())
            yield "confidence_std", (), float(window.std())
        yield from (("drift_psi", (signal,), value) for signal, value in self.drift_psi().items())
        yield "low_confidence", (), self.low_confidence
        yield "feedback", (), self.feedback_total
        if self.feedback:
            truth, predicted = zip(*self.feedback, strict=True)
            accuracy, precision, recall = drift.classification_scores(truth, predicted)
            yield "accuracy", (), accuracy
            yield "precision", (), precision
            yield "recall", (), recall

    def histogram(self) -> list[tuple[str, float]]:
        """Cumulative latency buckets in prometheus_client's (le, count) form."""
        cumulative = np.cumsum(self.latency_buckets).tolist()
        bounds = [repr(float(bound)) for bound in LATENCY_BUCKETS_S] + ["+Inf"]
        return list(zip(bounds, cumulative, strict=True))


class _Pending(NamedTuple):
    """One result not yet in its model's stats."""

    card: ModelCard
    output: npt.NDArray[Any]  # the batch's first output, as the model gave it
    ids: tuple[str, ...]
    latency_s: float
    at: float  # the monitor's clock when the result came

    @property
    def rows(self) -> int:
        return len(self.ids) or (self.output.shape[0] if self.output.ndim else 1)

    @property
    def scores(self) -> npt.NDArray[Any]:
        """The output with one flattened row per batch row."""
        return self.output.reshape(self.rows, -1)


class _LowRow(NamedTuple):
    row: int
    label: str
    confidence: float


class ModelMonitor:
    """Per model/version metrics from the registry's observer calls; see the module doc."""

    def __init__(
        self,
        limits: MonitorLimits | None = None,
        *,
        low_confidence_threshold: float | None = None,
        capture: CaptureBuffer | None = None,
        now: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if low_confidence_threshold is not None and not 0 < low_confidence_threshold <= 1:
            raise ValueError(
                f"low_confidence_threshold must be in (0, 1], got {low_confidence_threshold}"
            )
        self.limits = limits or MonitorLimits()
        self.low_confidence_threshold = low_confidence_threshold
        self.capture = capture
        self._now = now
        self._wall_clock = wall_clock
        self._lock = threading.Lock()  # snapshot/metrics may be read from another thread
        self._stats: dict[Key, _ModelStats] = {}
        self._retired: deque[Key] = deque()
        self._error_only: dict[Key, Counter[str]] = {}
        self._predictions: OrderedDict[Key, tuple[str, int]] = OrderedDict()
        # Results not yet in their stats (``_record_result``); folded before any report.
        self._pending: list[_Pending] = []
        self._pending_bytes = 0
        self._internal_errors = 0
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(MonitorCollector(self._collect, lambda: self.capture))

    # -- InferenceObserver ----------------------------------------------------------------

    def on_loaded(self, card: ModelCard) -> None:
        try:
            key = (card.name, card.version)
            with self._lock:
                self._fold_pending()  # results of an earlier load of this version go there
                self._stats[key] = _ModelStats(card, self.limits, since=self._now())
                if key in self._retired:
                    self._retired.remove(key)
        except Exception:
            self._internal_failure("on_loaded", card.name)

    def on_unloaded(self, card: ModelCard) -> None:
        try:
            key = (card.name, card.version)
            with self._lock:
                self._fold_pending()  # before its stats may be dropped
                stats = self._stats.get(key)
                if stats is None or not stats.loaded:
                    return
                stats.loaded = False
                self._retired.append(key)
                while len(self._retired) > self.limits.retired_versions:
                    self._stats.pop(self._retired.popleft(), None)
        except Exception:
            self._internal_failure("on_unloaded", card.name)

    def on_result(
        self, card: ModelCard, prediction: Prediction, inputs: Mapping[str, npt.NDArray[Any]]
    ) -> None:
        try:
            with self._lock:
                low_rows = self._record_result(card, prediction)
            if low_rows and self.capture is not None:
                self._capture(card, prediction, inputs, low_rows)
        except Exception:
            self._internal_failure("on_result", card.name)

    def on_error(self, model: str, version: str | None, error: InferenceError) -> None:
        try:
            kind = type(error).__name__
            with self._lock:
                stats = self._stats.get((model, version or ""))
                if stats is not None:
                    stats.errors[kind] += 1
                    if isinstance(error, NonFiniteOutputError):
                        stats.nonfinite += error.count
                else:
                    self._error_only_counter(model, version or "")[kind] += 1
        except Exception:
            self._internal_failure("on_error", model)

    # -- feedback -------------------------------------------------------------------------

    def feedback(self, model: str, prediction_id: str, label: str | int) -> None:
        """Record the true ``label`` (class index or card label) of an earlier prediction.

        ``UnknownModelError`` if the model is not monitored, ``InvalidInputError`` if it is not
        a classifier or the label is not one of its classes, ``UnknownPredictionError`` if the
        id is unknown, aged out, or already had its feedback (each prediction counts once).
        """
        with self._lock:
            self._fold_pending()
            remembered = self._predictions.get((model, prediction_id))
            if remembered is None:
                raise self._feedback_refusal(model, prediction_id)
            version, predicted = remembered
            stats = self._stats.get((model, version))
            if stats is None:  # that version was unloaded and has since been forgotten
                raise UnknownPredictionError(model=model, prediction_id=prediction_id)
            truth = _class_index(stats, label)
            del self._predictions[(model, prediction_id)]
            stats.feedback.append((truth, predicted))
            stats.feedback_total += 1

    def _feedback_refusal(self, model: str, prediction_id: str) -> InferenceError:
        versions = [stats for (name, _), stats in self._stats.items() if name == model]
        if not versions:
            return UnknownModelError(model)
        if not any(stats.is_classifier for stats in versions):
            return InvalidInputError("feedback needs a classification model", model=model)
        return UnknownPredictionError(model=model, prediction_id=prediction_id)

    # -- reports --------------------------------------------------------------------------

    def snapshot(self) -> MonitorSnapshot:
        """Compact JSON-ready state for the telemetry message (no raw arrays)."""
        views, error_only, internal = self._collect()
        report: MonitorSnapshot = {
            "models": [view_json(view) for view in views],
            "internal_errors": internal,
        }
        if error_only:
            report["errors_without_model"] = [
                {"model": model, "version": version, "errors": dict(errors)}
                for (model, version), errors in error_only.items()
            ]
        if self.capture is not None:
            report["capture"] = self.capture.stats().as_dict()
        return report

    def render_prometheus(self) -> bytes:
        """The Prometheus text exposition of every monitored model (for ``/metrics``)."""
        data: bytes = generate_latest(self._registry)
        return data

    # -- internals ------------------------------------------------------------------------

    def _record_result(self, card: ModelCard, prediction: Prediction) -> list[_LowRow]:
        """Take one batch; the rows under the low-confidence threshold.

        The result is queued, and the queue is folded into the stats in bulk (counters,
        latency, throughput and the output windows alike), unless the low-confidence capture
        has to look at this batch now. What runs right after an inference meets caches the
        model has just flushed, where even a little Python costs several times what it does
        in a tight loop: a request costs one append here (bench/bench_models.py measures the
        difference; docs/benchmarks.md, "Models: serving overhead, int8 against fp32, hot
        swap").
        """
        pending = _Pending(
            card, _first_output(card, prediction), prediction.ids, prediction.latency_s, self._now()
        )
        threshold = self.low_confidence_threshold
        if self.capture is not None and threshold is not None and _is_classifier(card):
            self._fold_pending()  # the results before this one first, in order
            stats = self._stats_for(pending)
            predicted, confidence = self._fold(stats, [pending])
            low = np.flatnonzero(confidence < threshold).tolist()
            return [
                _LowRow(row, stats.label(int(predicted[row])), float(confidence[row]))
                for row in low
            ]
        self._pending.append(pending)
        self._pending_bytes += pending.output.nbytes
        if len(self._pending) >= FOLD_BATCHES or self._pending_bytes >= FOLD_BYTES:
            self._fold_pending()
        return []

    def _fold_pending(self) -> None:
        """Queued results into their stats, in order; the output windows take each model
        version's batches in one vectorized pass."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        self._pending_bytes = 0
        groups: dict[int, tuple[_ModelStats, list[_Pending]]] = {}
        for item in pending:
            stats = self._stats_for(item)
            groups.setdefault(id(stats), (stats, []))[1].append(item)
        for stats, items in groups.values():
            self._fold(stats, items)

    def _stats_for(self, item: _Pending) -> _ModelStats:
        """The stats of ``item``'s model version, with ``item`` counted in them."""
        key = (item.card.name, item.card.version)
        stats = self._stats.get(key)
        if stats is None:  # a result before on_loaded: start counting now
            stats = self._stats[key] = _ModelStats(item.card, self.limits, since=item.at)
        stats.record_batch(item.rows, item.latency_s, item.at)
        return stats

    def _fold(
        self, stats: _ModelStats, items: list[_Pending]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """``items`` (rows by flattened output, of one version) into the output windows;
        a classifier's predicted classes and top-1 confidence per row."""
        if stats.card.task == "embedding":
            stats.norms.extend(_row_norms([item.scores for item in items]))
        if not stats.is_classifier:
            return np.empty(0, np.int64), np.empty(0, np.float64)
        scores = np.concatenate([item.scores for item in items])
        stats.classes = stats.classes or scores.shape[1]
        predicted = scores.argmax(axis=1).astype(np.int64)
        confidence = scores.max(axis=1).astype(np.float64)
        stats.predicted.extend(predicted)
        stats.confidence.extend(confidence)
        ids = tuple(prediction_id for item in items for prediction_id in item.ids)
        self._remember(stats.card.name, stats.card.version, ids, predicted)
        if self.low_confidence_threshold is not None:
            stats.low_confidence += int(
                np.count_nonzero(confidence < self.low_confidence_threshold)
            )
        return predicted, confidence

    def _remember(
        self, model: str, version: str, ids: tuple[str, ...], predicted: npt.NDArray[np.int64]
    ) -> None:
        # Not strict: a caller that assigns no ids (``ids == ()``) just gets no feedback.
        for prediction_id, cls in zip(ids, predicted.tolist(), strict=False):
            self._predictions[(model, prediction_id)] = (version, cls)
            self._predictions.move_to_end((model, prediction_id))
        while len(self._predictions) > self.limits.remembered_predictions:
            self._predictions.popitem(last=False)

    def _capture(
        self,
        card: ModelCard,
        prediction: Prediction,
        inputs: Mapping[str, npt.NDArray[Any]],
        low_rows: list[_LowRow],
    ) -> None:
        assert self.capture is not None
        ts = self._wall_clock()
        batched = {name: array for name, array in inputs.items() if np.ndim(array) >= 1}
        for low in low_rows:
            # Copies: the caller may reuse its input buffers once the observer returns.
            row_inputs = {
                name: np.array(array[low.row])
                for name, array in batched.items()
                if len(array) > low.row
            }
            self.capture.add(
                CaptureRecord(
                    model=card.name,
                    version=card.version,
                    prediction_id=prediction.ids[low.row] if low.row < len(prediction.ids) else "",
                    inputs=row_inputs,
                    label=low.label,
                    confidence=low.confidence,
                    ts=ts,
                )
            )

    def _error_only_counter(self, model: str, version: str) -> Counter[str]:
        key = (model, version)
        if key not in self._error_only and len(self._error_only) >= self.limits.error_only_keys:
            key = ("", "")  # bounded: names in errors come from clients and could be anything
        return self._error_only.setdefault(key, Counter())

    def _internal_failure(self, where: str, model: str) -> None:
        self._internal_errors += 1
        log.exception("monitor_internal_error", where=where, model=model)

    def _collect(self) -> tuple[list[View], dict[Key, Counter[str]], int]:
        with self._lock:
            self._fold_pending()
            now = self._now()
            views = [
                View(
                    *key,
                    list(stats.points(now)),
                    stats.histogram(),
                    stats.latency_sum,
                    stats.top_classes() if stats.is_classifier else {},
                )
                for key, stats in self._stats.items()
            ]
            error_only = {key: Counter(errors) for key, errors in self._error_only.items()}
            return views, error_only, self._internal_errors


def _row_norms(batches: list[npt.NDArray[Any]]) -> npt.NDArray[np.float64]:
    """The L2 norm of every row of ``batches`` (2-D each; widths may differ between them)."""
    if len({batch.shape[1] for batch in batches}) > 1:
        return np.concatenate([_row_norms([batch]) for batch in batches])
    rows = np.concatenate(batches).astype(np.float64, copy=False)
    norms: npt.NDArray[np.float64] = np.sqrt(np.einsum("ij,ij->i", rows, rows))
    return norms


def _is_classifier(card: ModelCard) -> bool:
    return card.task == "classification" and len(card.outputs) == 1


def _first_output(card: ModelCard, prediction: Prediction) -> npt.NDArray[Any]:
    name = card.outputs[0].name
    output = prediction.outputs.get(name)
    if output is None:
        output = next(iter(prediction.outputs.values()))
    return output if type(output) is np.ndarray else np.asarray(output)


def _class_index(stats: _ModelStats, label: str | int) -> int:
    """The class index that feedback ``label`` names, or ``InvalidInputError``."""
    labels = stats.card.labels or ()
    classes = stats.classes or len(labels)
    index: int | None = None
    if isinstance(label, int) and not isinstance(label, bool):
        index = label
    elif isinstance(label, str) and label in labels:
        index = labels.index(label)
    elif isinstance(label, str) and not labels and label.isdecimal():
        index = int(label)
    if index is None or not 0 <= index < classes:
        raise InvalidInputError(
            f"label {label!r} is not a class of this model ({classes} classes"
            + (f": {', '.join(labels)})" if 0 < len(labels) <= LABELS_IN_MESSAGES else ")"),
            model=stats.card.name,
            detail=repr(label),
        )
    return index
