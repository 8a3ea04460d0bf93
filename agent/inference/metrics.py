"""The exposition side of model monitoring: telemetry JSON and Prometheus families.

``ModelMonitor`` (agent.inference.monitoring) reads its state under its lock into one
``View`` per model and version; this module turns those views into the telemetry block
(``view_json``) and into Prometheus metric families (``MonitorCollector``), so the two always
report the same series. Metric names are ``edge_model_<name>``; docs/monitoring.md lists them.
It also owns the REST edge's own families (``RestMetrics``: requests answered with an error,
by a bounded ``reason``, and the request body bytes held), rendered beside the monitor's.
Every family is one ``promtool check metrics`` accepts: counters end in ``_total`` (added by
prometheus_client), units are in the names, and the recent latency quantiles are a summary
(the one type that may carry a ``quantile`` label).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from agent.inference import drift
from agent.inference.capture import CaptureBuffer

Key = tuple[str, str]
# (metric name after "edge_model_", extra label values, value)
Point = tuple[str, tuple[str, ...], float]


@dataclass(frozen=True)
class View:
    """One (model, version) as read under the lock: what snapshot and /metrics both report."""

    model: str
    version: str
    points: list[Point]
    histogram: list[tuple[str, float]]
    latency_sum: float
    top_classes: dict[str, int]


def view_json(view: View) -> dict[str, object]:
    """The telemetry block of one model/version: the metric names, values nested by label.

    Its keys are the metric names the monitor has for that model (they grow with features),
    so the block is a JSON object rather than a fixed shape: docs/monitoring.md lists them.
    """
    block: dict[str, object] = {"model": view.model, "version": view.version}
    by_label: dict[str, dict[str, float]] = {}  # the nested blocks, also in ``block``
    for name, extra, raw in view.points:
        value = round(raw, 6) if isinstance(raw, float) else raw
        if name == "loaded":
            block.update(loaded=bool(value), runtime=extra[0], task=extra[1])
        elif extra:
            if name not in by_label:
                by_label[name] = {}
                block[name] = by_label[name]
            by_label[name][extra[0]] = value
        else:
            block[name] = value
    if "drift_psi" in by_label:
        block["drift_level"] = drift.drift_level(max(by_label["drift_psi"].values()))
    if view.top_classes:
        block["top_classes"] = view.top_classes
    return block


class MonitorCollector:
    """A prometheus_client collector that builds every family from the monitor's state."""

    def __init__(
        self,
        collect: Callable[[], tuple[list[View], dict[Key, Counter[str]], int]],
        capture: Callable[[], CaptureBuffer | None],
    ) -> None:
        self._collect = collect
        self._capture = capture

    def collect(self) -> Iterator[Metric]:
        views, error_only, internal = self._collect()
        families = {name: _family(name, *spec) for name, spec in _MODEL_FAMILIES.items()}
        for view in views:
            labels = [view.model, view.version]
            for name, extra, value in view.points:
                families[name].add_metric([*labels, *extra], value)
            families["latency_seconds"].add_metric(labels, view.histogram, view.latency_sum)
            # The summary's count and sum are cumulative, as a summary's must be (its
            # quantiles cover the recent window): the histogram's.
            batches = view.histogram[-1][1] if view.histogram else 0.0
            families["latency_quantile_seconds"].add_totals(labels, batches, view.latency_sum)
        for (model, version), kinds in error_only.items():
            for kind, count in kinds.items():
                families["errors"].add_metric([model, version, kind], count)
        yield from families.values()
        yield from _capture_families(self._capture())
        yield CounterMetricFamily(
            "edge_model_monitor_internal_errors", "Failures inside the monitor.", value=internal
        )


# Family name (after "edge_model_") -> (type, help, labels besides model and version).
_MODEL_FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "loaded": ("gauge", "1 while serving; 0 once unloaded.", ("runtime", "task")),
    "requests": ("counter", "Rows answered.", ()),
    "batches": ("counter", "Batches answered.", ()),
    "errors": ("counter", "Failed calls by error class.", ("kind",)),
    "nonfinite_outputs": ("counter", "NaN/Inf values in outputs.", ()),
    "latency_seconds": ("histogram", "Batch latency inside the backend.", ()),
    "latency_quantile_seconds": ("summary", "Batch latency quantiles, recent.", ("quantile",)),
    "throughput_rows_per_second": ("gauge", "Rows per second, sliding window.", ()),
    "output_window_samples": ("gauge", "Predictions in the output window.", ()),
    "confidence_mean": ("gauge", "Mean top-1 confidence, output window.", ()),
    "confidence_std": ("gauge", "Std of top-1 confidence, output window.", ()),
    "embedding_norm_mean": ("gauge", "Mean embedding L2 norm, output window.", ()),
    "embedding_norm_std": ("gauge", "Std of embedding L2 norm, output window.", ()),
    "drift_psi": ("gauge", "PSI of the output window against the card.", ("signal",)),
    "low_confidence": ("counter", "Rows under the low-confidence threshold.", ()),
    "feedback": ("counter", "Labelled feedbacks accepted.", ()),
    "accuracy": ("gauge", "Rolling accuracy from feedback.", ()),
    "precision": ("gauge", "Rolling macro precision from feedback.", ()),
    "recall": ("gauge", "Rolling macro recall from feedback.", ()),
}


class _QuantileSummary(Metric):
    """A summary family with quantile samples (prometheus_client's ``SummaryMetricFamily``
    takes only a count and a sum): the shape ``promtool`` accepts for a ``quantile`` label."""

    def __init__(self, name: str, documentation: str, labels: list[str]) -> None:
        super().__init__(name, documentation, "summary")
        self._labels = labels

    def add_metric(self, values: list[str], value: float) -> None:
        self.add_sample(self.name, dict(zip(self._labels, values, strict=True)), value)

    def add_totals(self, values: list[str], count: float, total: float) -> None:
        labels = dict(zip(self._labels, values, strict=False))
        self.add_sample(f"{self.name}_count", labels, count)
        self.add_sample(f"{self.name}_sum", labels, total)


_FAMILY_TYPES: dict[str, type[Metric]] = {
    "gauge": GaugeMetricFamily,
    "counter": CounterMetricFamily,
    "histogram": HistogramMetricFamily,
    "summary": _QuantileSummary,
}


def _family(name: str, kind: str, doc: str, extra: tuple[str, ...]) -> Any:
    family_type: Any = _FAMILY_TYPES[kind]
    return family_type(f"edge_model_{name}", doc, labels=["model", "version", *extra])


def _capture_families(capture: CaptureBuffer | None) -> Iterator[Metric]:
    if capture is None:
        return
    stats = capture.stats()
    yield GaugeMetricFamily("edge_model_capture_records", "Captured records.", value=stats.count)
    yield GaugeMetricFamily("edge_model_capture_bytes", "Captured bytes.", value=stats.bytes)
    yield GaugeMetricFamily("edge_model_capture_max_bytes", "Capture cap.", value=stats.max_bytes)
    dropped = CounterMetricFamily(
        "edge_model_capture_dropped", "Capture records not kept, by reason.", labels=["reason"]
    )
    dropped.add_metric(["queue_full"], stats.dropped_queue_full)
    dropped.add_metric(["evicted"], stats.evicted)
    dropped.add_metric(["write_error"], stats.write_errors)
    yield dropped


# Why the REST edge answered a request with an error, and the status it answers with. The
# label set is fixed here (clients choose paths and bodies, never label values); anything
# else is ``other`` with its status.
REST_ERROR_REASONS: dict[str, int] = {
    "bad_json": 400,  # not JSON, NaN/Infinity literals, too deep, not an object
    "bad_input": 400,  # valid JSON the model cannot take (shape, dtype, non-finite, ...)
    "bad_framing": 400,  # v2 binary tensors: header length or binary_data_size do not add up
    "unknown_model": 404,
    "unknown_prediction": 404,  # feedback naming an id that is unknown, aged out or answered
    "unknown_route": 404,
    "method_not_allowed": 405,
    "too_large": 413,  # a body over the per-request limit
    "not_enabled": 501,  # feedback or /metrics without a monitor
    "body_budget": 503,  # the bodies being handled already hold the byte budget
    "busy": 503,  # the inference queue is full
    "model_error": 500,  # the model failed or answered NaN/Inf
    "internal": 500,
}


class RestMetrics:
    """What the REST edge counts itself: error answers by reason, and the body bytes held.

    Updated and rendered on the event loop only (no lock): the families are a few samples.
    """

    def __init__(self, body_budget_bytes: int) -> None:
        self.body_budget_bytes = body_budget_bytes
        self.body_bytes_held = 0
        self.errors: Counter[tuple[str, int]] = Counter(
            dict.fromkeys(REST_ERROR_REASONS.items(), 0)
        )
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)

    def refused(self, reason: str, status: int) -> None:
        if REST_ERROR_REASONS.get(reason) != status:
            reason = "other"  # keeps the label set bounded whatever raised
        self.errors[(reason, status)] += 1

    def render(self) -> bytes:
        data: bytes = generate_latest(self._registry)
        return data

    def collect(self) -> Iterator[Metric]:
        errors = CounterMetricFamily(
            "edge_rest_errors",
            "Requests the REST API answered with an error status, by reason.",
            labels=["reason", "code"],
        )
        for (reason, status), count in sorted(self.errors.items()):
            errors.add_metric([reason, str(status)], count)
        yield errors
        yield GaugeMetricFamily(
            "edge_rest_body_bytes",
            "Request body bytes held by requests in progress (Content-Length, or the "
            "per-request limit for a body without one).",
            value=self.body_bytes_held,
        )
        yield GaugeMetricFamily(
            "edge_rest_body_budget_bytes",
            "Body bytes that requests in progress may hold at once; more is refused (503).",
            value=self.body_budget_bytes,
        )


# Why a gRPC front end (agent/inference/grpc_server.py) refused a call, and the status code
# it answered with. Fixed here like REST_ERROR_REASONS; anything else is ``other``.
GRPC_ERROR_REASONS: dict[str, str] = {
    "bad_message": "INVALID_ARGUMENT",  # bytes that do not parse as the method's request
    "bad_input": "INVALID_ARGUMENT",  # a request the model cannot take (shape, dtype, ...)
    "unknown_model": "NOT_FOUND",
    "busy": "UNAVAILABLE",  # the inference queue is full
    "model_error": "INTERNAL",  # the model failed or answered NaN/Inf
    "internal": "INTERNAL",
    "unknown_method": "UNIMPLEMENTED",  # a method or service not served
    "too_many_calls": "RESOURCE_EXHAUSTED",  # grpc_max_concurrent_rpcs calls in progress
    "too_large": "RESOURCE_EXHAUSTED",  # a request message over grpc_max_message_bytes
}
GRPC_SERVICES = (
    "inference.GRPCInferenceService",
    "tensorflow.serving.PredictionService",
    "tensorflow.serving.ModelService",
)


class GrpcMetrics:
    """Calls the gRPC front ends refused, by service, reason and status code (name).

    The sibling of ``RestMetrics``, rendered beside it on ``/metrics``. What gRPC itself
    would refuse is refused first by the server (unknown methods, calls over the concurrency
    limit, messages over the size limit) and counted here. gRPC's backstops above those
    limits refuse without telling Python why: such a call only shows as one that ended before
    its request message reached a handler, which is also how a client that gave up early
    shows; ``unread`` counts those, by service (see ``grpc_server``). Updated and rendered on
    the event loop only.
    """

    def __init__(self) -> None:
        self.errors: Counter[tuple[str, str, str]] = Counter(
            {
                (service, reason, code): 0
                for service in GRPC_SERVICES
                for reason, code in GRPC_ERROR_REASONS.items()
            }
        )
        self.unread: Counter[str] = Counter(dict.fromkeys(GRPC_SERVICES, 0))
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)

    def refused(self, service: str, reason: str, code: str) -> None:
        if service not in GRPC_SERVICES:
            service = "other"
        if GRPC_ERROR_REASONS.get(reason) != code:
            reason = "other"  # keeps the label set bounded whatever raised
        self.errors[(service, reason, code)] += 1

    def ended_unread(self, service: str) -> None:
        """A call ended before its request message reached a handler."""
        self.unread[service if service in GRPC_SERVICES else "other"] += 1

    def render(self) -> bytes:
        data: bytes = generate_latest(self._registry)
        return data

    def collect(self) -> Iterator[Metric]:
        errors = CounterMetricFamily(
            "edge_grpc_errors",
            "Calls the gRPC APIs answered with an error status, by reason.",
            labels=["service", "reason", "code"],
        )
        for (service, reason, code), count in sorted(self.errors.items()):
            errors.add_metric([service, reason, code], count)
        yield errors
        unread = CounterMetricFamily(
            "edge_grpc_unread_calls",
            "Calls that ended before their request message reached a handler: refused by "
            "gRPC's own backstops (a message over twice the size limit; a burst over twice the "
            "concurrency limit), or given up by the client first (gRPC does not say which).",
            labels=["service"],
        )
        for service, count in sorted(self.unread.items()):
            unread.add_metric([service], count)
        yield unread
