"""The exposition side of model monitoring: telemetry JSON and Prometheus families.

``ModelMonitor`` (agent.inference.monitoring) reads its state under its lock into one
``View`` per model and version; this module turns those views into the telemetry block
(``view_json``) and into Prometheus metric families (``MonitorCollector``), so the two always
report the same series. Metric names are ``edge_model_<name>``; docs/monitoring.md lists them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

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


def view_json(view: View) -> dict[str, Any]:
    """The telemetry block of one model/version: the metric names, values nested by label."""
    block: dict[str, Any] = {"model": view.model, "version": view.version}
    for name, extra, raw in view.points:
        value = round(raw, 6) if isinstance(raw, float) else raw
        if name == "loaded":
            block.update(loaded=bool(value), runtime=extra[0], task=extra[1])
        elif extra:
            block.setdefault(name, {})[extra[0]] = value
        else:
            block[name] = value
    if "drift_psi" in block:
        block["drift_level"] = drift.drift_level(max(block["drift_psi"].values()))
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
    "latency_quantile_seconds": ("gauge", "Batch latency quantiles, recent.", ("quantile",)),
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
_FAMILY_TYPES: dict[str, type[Metric]] = {
    "gauge": GaugeMetricFamily,
    "counter": CounterMetricFamily,
    "histogram": HistogramMetricFamily,
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
