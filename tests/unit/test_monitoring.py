"""ModelMonitor: counters, latency, throughput, output statistics, drift, feedback, /metrics."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from sklearn.metrics import precision_score, recall_score

from agent.errors import (
    InvalidInputError,
    NonFiniteOutputError,
    UnknownModelError,
    UnknownPredictionError,
)
from agent.inference.backends import BackendOptions, open_backend
from agent.inference.capture import CaptureBuffer
from agent.inference.cardfile import load_card
from agent.inference.monitoring import FOLD_BATCHES, FOLD_BYTES, ModelMonitor, MonitorLimits
from agent.inference.registry import Prediction
from edge_contract.card import ModelCard, ReferenceStats, TensorSpec, card_path_for
from edge_contract.messages import InferenceReport

DIGITS = Path(__file__).parents[2] / "models" / "digits"
CLASSES = 10


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def _card(
    *,
    name: str = "toy",
    version: str = "1",
    task: str = "classification",
    reference: ReferenceStats | None = None,
    width: int = CLASSES,
) -> ModelCard:
    return ModelCard.model_validate(
        {
            "name": name,
            "version": version,
            "runtime": "onnx",
            "task": task,
            "inputs": [TensorSpec(name="x", dtype="float32", shape=(-1, 4))],
            "outputs": [TensorSpec(name="y", dtype="float32", shape=(-1, width))],
            "labels": [f"c{i}" for i in range(width)] if task == "classification" else None,
            "reference": reference,
        }
    )


def _probabilities(top: list[int], confidence: list[float]) -> npt.NDArray[np.float32]:
    """Rows whose top class is ``top[i]`` with probability ``confidence[i]`` (rest spread)."""
    conf = np.asarray(confidence, dtype=np.float32)[:, None]
    rows = np.repeat((1 - conf) / (CLASSES - 1), CLASSES, axis=1)
    rows[np.arange(len(top)), top] = conf[:, 0]
    return rows


def _result(
    monitor: ModelMonitor,
    card: ModelCard,
    output: npt.NDArray[np.float32],
    *,
    first_id: int = 0,
    latency_s: float = 0.002,
) -> Prediction:
    rows = output.shape[0]
    prediction = Prediction(
        model=card.name,
        version=card.version,
        outputs={card.outputs[0].name: output},
        ids=tuple(f"id{first_id + i}" for i in range(rows)),
        latency_s=latency_s,
    )
    inputs = {"x": np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)}
    monitor.on_result(card, prediction, inputs)
    return prediction


def _model(monitor: ModelMonitor, name: str = "toy", version: str = "1") -> dict[str, Any]:
    snapshot = monitor.snapshot()
    json.dumps(snapshot, allow_nan=False)  # telemetry must be able to send it as is
    [block] = [m for m in snapshot["models"] if (m["model"], m["version"]) == (name, version)]
    return block


def _families(monitor: ModelMonitor) -> dict[str, Metric]:
    text = monitor.render_prometheus().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def _sample(families: dict[str, Metric], sample: str, **labels: str) -> float:
    values = [
        s.value
        for family in families.values()
        for s in family.samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(values) == 1, (sample, labels, values)
    return values[0]


class TestCounters:
    def test_rows_batches_errors_and_nonfinite(self) -> None:
        monitor, card = ModelMonitor(), _card()
        monitor.on_loaded(card)
        for rows in (4, 8, 1):
            _result(monitor, card, _probabilities([1] * rows, [0.9] * rows))
        monitor.on_error("toy", "1", InvalidInputError("bad shape", model="toy"))
        monitor.on_error("toy", "1", InvalidInputError("bad dtype", model="toy"))
        monitor.on_error("toy", "1", NonFiniteOutputError(model="toy", output="y", count=5))
        block = _model(monitor)
        assert (block["requests"], block["batches"]) == (13, 3)
        assert block["errors"] == {"InvalidInputError": 2, "NonFiniteOutputError": 1}
        assert block["nonfinite_outputs"] == 5
        assert (block["loaded"], block["runtime"], block["task"]) == (
            True,
            "onnx",
            "classification",
        )

    def test_errors_of_models_not_loaded_are_kept_bounded(self) -> None:
        monitor = ModelMonitor(MonitorLimits(error_only_keys=2))
        for name in ("ghost", "phantom", "spook"):
            monitor.on_error(name, None, UnknownModelError(name))
        errors = {
            (e["model"], e["version"]): e["errors"]
            for e in monitor.snapshot()["errors_without_model"]
        }
        assert errors == {
            ("ghost", ""): {"UnknownModelError": 1},
            ("phantom", ""): {"UnknownModelError": 1},
            ("", ""): {"UnknownModelError": 1},
        }
        families = _families(monitor)
        assert _sample(families, "edge_model_errors_total", model="", kind="UnknownModelError") == 1

    def test_observer_never_raises(self) -> None:
        """A malformed result is logged and counted, not raised into the registry's loop."""
        monitor, card = ModelMonitor(), _card()
        broken = Prediction(model="toy", version="1", outputs={}, ids=("a",), latency_s=0.1)
        monitor.on_result(card, broken, {})
        assert monitor.snapshot()["internal_errors"] == 1
        assert _sample(_families(monitor), "edge_model_monitor_internal_errors_total") == 1

    def test_unloaded_versions_are_reported_then_forgotten(self) -> None:
        monitor = ModelMonitor(MonitorLimits(retired_versions=1))
        first, second, third = (_card(version=v) for v in ("1", "2", "3"))
        for card in (first, second, third):
            monitor.on_loaded(card)
        monitor.on_unloaded(first)
        assert _model(monitor, version="1")["loaded"] is False
        families = _families(monitor)
        assert _sample(families, "edge_model_loaded", version="1") == 0
        assert _sample(families, "edge_model_loaded", version="2") == 1
        monitor.on_unloaded(second)
        versions = {m["version"] for m in monitor.snapshot()["models"]}
        assert versions == {"2", "3"}


class TestLatencyAndThroughput:
    def test_quantiles_over_the_window(self) -> None:
        """Latencies 1..101 ms: p50 51, p95 96, p99 100 (linear interpolation)."""
        monitor, card = ModelMonitor(), _card()
        for ms in range(1, 102):
            _result(monitor, card, _probabilities([0], [0.9]), latency_s=ms / 1000)
        quantiles = _model(monitor)["latency_quantile_seconds"]
        assert quantiles == pytest.approx({"0.5": 0.051, "0.95": 0.096, "0.99": 0.100})
        families = _families(monitor)
        assert _sample(families, "edge_model_latency_quantile_seconds", quantile="0.99") == (
            pytest.approx(0.1)
        )

    def test_window_keeps_only_the_last_batches(self) -> None:
        monitor, card = ModelMonitor(MonitorLimits(latency_window=10)), _card()
        for ms in [500] * 20 + [1] * 10:
            _result(monitor, card, _probabilities([0], [0.9]), latency_s=ms / 1000)
        assert _model(monitor)["latency_quantile_seconds"]["0.99"] == pytest.approx(0.001)

    def test_histogram_is_cumulative_since_load(self) -> None:
        monitor, card = ModelMonitor(), _card()
        for seconds in (0.0004, 0.002, 0.02, 7.0):
            _result(monitor, card, _probabilities([0], [0.9]), latency_s=seconds)
        families = _families(monitor)
        bucket = "edge_model_latency_seconds_bucket"
        assert _sample(families, bucket, le="0.0005") == 1
        assert _sample(families, bucket, le="0.001") == 1
        assert _sample(families, bucket, le="0.0025") == 2
        assert _sample(families, bucket, le="0.025") == 3
        assert _sample(families, bucket, le="5.0") == 3
        assert _sample(families, bucket, le="+Inf") == 4
        assert _sample(families, "edge_model_latency_seconds_count") == 4
        assert _sample(families, "edge_model_latency_seconds_sum") == pytest.approx(7.0224)

    def test_throughput_over_a_sliding_window(self) -> None:
        clock = FakeClock(1000.0)
        monitor, card = ModelMonitor(now=clock), _card()
        monitor.on_loaded(card)
        clock.now = 1000.01  # a first batch right after loading is not read as 20,000 rows/s
        _result(monitor, card, _probabilities([0] * 200, [0.9] * 200))
        assert _model(monitor)["throughput_rows_per_second"] == pytest.approx(200.0)
        clock.now = 1000.0
        monitor.on_loaded(card)  # loading again starts the counts again
        for second in range(10):  # 50 rows a second for 10 s, since loading
            clock.now = 1000.5 + second
            _result(monitor, card, _probabilities([0] * 50, [0.9] * 50))
        clock.now = 1010.0
        assert _model(monitor)["throughput_rows_per_second"] == pytest.approx(50.0)
        for second in range(120):  # then 10 rows a second for two minutes
            clock.now = 1010.5 + second
            _result(monitor, card, _probabilities([0] * 10, [0.9] * 10))
        clock.now = 1130.0
        assert _model(monitor)["throughput_rows_per_second"] == pytest.approx(10.0)
        clock.now = 1300.0  # idle for longer than the window
        assert _model(monitor)["throughput_rows_per_second"] == 0.0


def _reference() -> ReferenceStats:
    return ReferenceStats(
        samples=100,
        class_frequency=(0.1,) * CLASSES,
        confidence_edges=(0.0, 0.5, 1.0),
        confidence_fractions=(0.2, 0.8),
    )


class TestOutputsAndDrift:
    def test_confidence_statistics_over_the_last_predictions(self) -> None:
        monitor, card = ModelMonitor(MonitorLimits(output_window=50)), _card()
        confidence = np.linspace(0.2, 0.99, 80)
        top = [i % 3 for i in range(80)]
        _result(monitor, card, _probabilities(top, confidence.tolist()))
        outputs = _model(monitor)
        recent = confidence[-50:].astype(np.float32)  # the model speaks float32
        assert outputs["output_window_samples"] == 50
        assert outputs["confidence_mean"] == pytest.approx(recent.mean(), abs=1e-6)
        assert outputs["confidence_std"] == pytest.approx(recent.std(), abs=1e-6)
        counts = np.bincount(top[-50:], minlength=3)
        assert outputs["top_classes"] == {f"c{i}": int(counts[i]) for i in np.argsort(-counts)}

    def test_no_drift_score_before_min_samples(self) -> None:
        monitor = ModelMonitor(MonitorLimits(drift_min_samples=100))
        card = _card(reference=_reference())
        _result(monitor, card, _probabilities([0] * 99, [0.9] * 99))
        assert "drift_psi" not in _model(monitor)
        assert "edge_model_drift_psi" not in {
            s.name for f in _families(monitor).values() for s in f.samples
        }
        _result(monitor, card, _probabilities([0], [0.9]))
        assert set(_model(monitor)["drift_psi"]) == {"class", "confidence"}

    def test_outputs_like_the_reference_do_not_drift(self) -> None:
        monitor, card = ModelMonitor(), _card(reference=_reference())
        top = [i % CLASSES for i in range(100)]  # 10 of each class
        confidence = [0.4] * 20 + [0.9] * 80  # 20% under 0.5, as the reference says
        _result(monitor, card, _probabilities(top, confidence))
        block = _model(monitor)
        assert block["drift_psi"] == pytest.approx({"class": 0.0, "confidence": 0.0}, abs=1e-9)
        assert block["drift_level"] == "stable"

    def test_collapsed_outputs_drift_significantly(self) -> None:
        """Every prediction class 3 at confidence 0.3: both signals far from the reference."""
        monitor, card = ModelMonitor(), _card(reference=_reference())
        _result(monitor, card, _probabilities([3] * 100, [0.3] * 100))
        block = _model(monitor)
        eps = 1e-4
        # Class: 9 empty bins floored at eps, one bin holding everything (renormalised).
        full, empty = 1 / (1 + 9 * eps), eps / (1 + 9 * eps)
        expected_class = (full - 0.1) * np.log(full / 0.1) + 9 * (empty - 0.1) * np.log(empty / 0.1)
        # Confidence: all in the low bin; the high bin is floored.
        low, high = 1 / (1 + eps), eps / (1 + eps)
        expected_conf = (low - 0.2) * np.log(low / 0.2) + (high - 0.8) * np.log(high / 0.8)
        assert block["drift_psi"]["class"] == pytest.approx(expected_class, rel=1e-5)
        assert block["drift_psi"]["confidence"] == pytest.approx(expected_conf, rel=1e-5)
        assert block["drift_level"] == "significant"
        report = InferenceReport.model_validate_json(json.dumps(monitor.snapshot()))
        typed = report.block(card.name, card.version)
        assert typed is not None and typed.drift_level == "significant"
        assert typed.drift == pytest.approx(max(expected_class, expected_conf), rel=1e-5)
        families = _families(monitor)
        assert _sample(families, "edge_model_drift_psi", signal="class") == pytest.approx(
            expected_class, rel=1e-5
        )

    def test_embedding_norms(self) -> None:
        monitor = ModelMonitor()
        card = _card(name="embed", task="embedding", width=2)
        output = np.array([[3.0, 4.0], [6.0, 8.0]], dtype=np.float32)  # norms 5 and 10
        _result(monitor, card, output)
        block = _model(monitor, name="embed")
        assert (block["embedding_norm_mean"], block["embedding_norm_std"]) == (7.5, 2.5)
        assert "confidence_mean" not in block
        families = _families(monitor)
        assert _sample(families, "edge_model_embedding_norm_mean", model="embed") == 7.5


class TestFeedback:
    def test_rolling_scores_from_indices_and_labels(self) -> None:
        monitor, card = ModelMonitor(), _card()
        predicted = [0, 1, 1, 1, 1]
        truth = [0, 0, 1, 1, 2]
        _result(monitor, card, _probabilities(predicted, [0.9] * 5))
        for n, label in enumerate(truth):
            monitor.feedback("toy", f"id{n}", label if n % 2 else f"c{label}")
        block = _model(monitor)
        assert (block["feedback"], block["accuracy"]) == (5, 0.6)
        assert block["precision"] == pytest.approx(
            precision_score(truth, predicted, labels=[0, 1], average="macro")
        )
        assert block["recall"] == pytest.approx(
            recall_score(truth, predicted, labels=[0, 1, 2], average="macro")
        )
        families = _families(monitor)
        assert _sample(families, "edge_model_accuracy") == pytest.approx(0.6)
        assert _sample(families, "edge_model_feedback_total") == 5

    def test_window_of_feedbacks(self) -> None:
        monitor, card = ModelMonitor(MonitorLimits(feedback_window=3)), _card()
        _result(monitor, card, _probabilities([2] * 6, [0.9] * 6))
        for n, label in enumerate([0, 0, 0, 2, 2, 2]):
            monitor.feedback("toy", f"id{n}", label)
        block = _model(monitor)
        assert (block["feedback"], block["accuracy"]) == (6, 1.0)

    def test_each_prediction_counts_once(self) -> None:
        monitor, card = ModelMonitor(), _card()
        _result(monitor, card, _probabilities([4], [0.9]))
        monitor.feedback("toy", "id0", 4)
        with pytest.raises(UnknownPredictionError, match="'id0'"):
            monitor.feedback("toy", "id0", 4)

    def test_old_ids_age_out(self) -> None:
        monitor, card = ModelMonitor(MonitorLimits(remembered_predictions=5)), _card()
        _result(monitor, card, _probabilities([1] * 10, [0.9] * 10))
        with pytest.raises(UnknownPredictionError, match="'id4'"):
            monitor.feedback("toy", "id4", 1)
        monitor.feedback("toy", "id5", 1)

    @pytest.mark.parametrize("label", [10, -1, "c10", "cat", "3"])
    def test_invalid_label_keeps_the_prediction(self, label: str | int) -> None:
        monitor, card = ModelMonitor(), _card()
        _result(monitor, card, _probabilities([1], [0.9]))
        with pytest.raises(InvalidInputError, match=repr(label)):
            monitor.feedback("toy", "id0", label)
        monitor.feedback("toy", "id0", "c1")  # still answerable with a valid label
        assert _model(monitor)["accuracy"] == 1.0

    def test_unknown_model_and_non_classifier(self) -> None:
        monitor = ModelMonitor()
        with pytest.raises(UnknownModelError, match="'nobody'"):
            monitor.feedback("nobody", "id0", 1)
        monitor.on_loaded(_card(name="embed", task="embedding", width=2))
        with pytest.raises(InvalidInputError, match="classification"):
            monitor.feedback("embed", "id0", 1)


class TestPrometheus:
    def test_exposition_parses_with_types_and_labels(self) -> None:
        monitor, card = ModelMonitor(low_confidence_threshold=0.5), _card(reference=_reference())
        monitor.on_loaded(card)
        _result(monitor, card, _probabilities([1] * 100, [0.3] * 10 + [0.9] * 90))
        monitor.on_error("toy", "1", InvalidInputError("bad", model="toy"))
        families = _families(monitor)
        types = {name: family.type for name, family in families.items()}
        assert types["edge_model_requests"] == "counter"
        assert types["edge_model_errors"] == "counter"
        assert types["edge_model_latency_seconds"] == "histogram"
        assert types["edge_model_throughput_rows_per_second"] == "gauge"
        assert types["edge_model_drift_psi"] == "gauge"
        assert _sample(families, "edge_model_requests_total", model="toy", version="1") == 100
        assert _sample(families, "edge_model_errors_total", kind="InvalidInputError") == 1
        assert _sample(families, "edge_model_low_confidence_total") == 10
        assert _sample(families, "edge_model_loaded", runtime="onnx", task="classification") == 1
        assert _sample(families, "edge_model_confidence_mean") == pytest.approx(0.84, abs=1e-6)

    def test_capture_stats_are_exported(self, tmp_path: Path) -> None:
        capture = CaptureBuffer(tmp_path, max_bytes=1 << 20)
        try:
            monitor, card = ModelMonitor(low_confidence_threshold=0.5, capture=capture), _card()
            _result(monitor, card, _probabilities([1, 2], [0.3, 0.9]))
            assert capture.flush(10.0)
            families = _families(monitor)
            assert _sample(families, "edge_model_capture_records") == 1
            assert _sample(families, "edge_model_capture_dropped_total", reason="evicted") == 0
            assert monitor.snapshot()["capture"]["count"] == 1
        finally:
            capture.close()


class TestCapture:
    def test_low_confidence_rows_are_captured(self, tmp_path: Path) -> None:
        capture = CaptureBuffer(tmp_path, max_bytes=1 << 20)
        try:
            clock = FakeClock()
            monitor = ModelMonitor(
                low_confidence_threshold=0.5, capture=capture, wall_clock=lambda: 1.7e9, now=clock
            )
            card = _card()
            _result(monitor, card, _probabilities([1, 2, 3, 4], [0.3, 0.9, 0.49, 0.5]))
            assert capture.flush(10.0)
            records = capture.records()
            assert [(r.prediction_id, r.label) for r in records] == [("id0", "c1"), ("id2", "c3")]
            assert [r.confidence for r in records] == pytest.approx([0.3, 0.49])
            assert {r.ts for r in records} == {1.7e9}
            np.testing.assert_array_equal(capture.load(records[1])["x"], [8, 9, 10, 11])
            assert _model(monitor)["low_confidence"] == 2
        finally:
            capture.close()


@pytest.fixture(scope="module")
def digits_run() -> Iterator[tuple[ModelCard, npt.NDArray[Any], npt.NDArray[Any], Any]]:
    """The committed fp32 digits model and its eval split (the card's reference was made there)."""
    path = DIGITS / "digits-fp32.onnx"
    card = load_card(card_path_for(path))
    backend = open_backend(path, card.runtime, BackendOptions(), model=card.name)
    data = np.load(DIGITS / "data" / "eval.npz")
    yield card, data["x"], data["y"], backend
    backend.close()


def _serve(monitor: ModelMonitor, card: ModelCard, backend: Any, x: npt.NDArray[Any]) -> None:
    for start in range(0, len(x), 32):
        batch = {"pixels": x[start : start + 32]}
        output = backend.run(batch)
        ids = tuple(f"eval{start + i}" for i in range(len(batch["pixels"])))
        monitor.on_result(card, Prediction(card.name, card.version, output, ids, 0.001), batch)


class TestWithTheDigitsModel:
    def test_eval_split_matches_its_reference(self, digits_run: Any, tmp_path: Path) -> None:
        """Served the split its card was measured on: no drift, and feedback gives its accuracy."""
        card, x, y, backend = digits_run
        capture = CaptureBuffer(tmp_path, max_bytes=1 << 20)
        try:
            monitor = ModelMonitor(low_confidence_threshold=0.9, capture=capture)
            monitor.on_loaded(card)
            _serve(monitor, card, backend, x)
            for n, label in enumerate(y.tolist()):
                monitor.feedback("digits", f"eval{n}", str(label))
            assert capture.flush(10.0)
            block = _model(monitor, name="digits")
            assert block["requests"] == len(x)
            assert block["drift_level"] == "stable"
            assert max(block["drift_psi"].values()) < 1e-3
            assert card.reference is not None
            assert block["accuracy"] == pytest.approx(card.reference.accuracy, abs=1e-5)
            assert block["confidence_mean"] == pytest.approx(
                card.reference.confidence_mean, abs=1e-4
            )
            # The wire contract's typed block takes the snapshot as the telemetry carries it.
            report = InferenceReport.model_validate_json(json.dumps(monitor.snapshot()))
            typed = report.block("digits", card.version)
            assert typed is not None and typed.requests == len(x)
            assert typed.accuracy == pytest.approx(block["accuracy"])
            assert typed.drift == pytest.approx(max(block["drift_psi"].values()))
            assert "capture" in (report.model_extra or {})
            probabilities = backend.run({"pixels": x})["probabilities"]
            low = np.flatnonzero(probabilities.max(axis=1) < 0.9)
            records = capture.records()
            assert [r.prediction_id for r in records] == [f"eval{i}" for i in low]
            for record, row in zip(records, low, strict=True):
                np.testing.assert_array_equal(capture.load(record)["pixels"], x[row])
        finally:
            capture.close()

    def test_one_digit_only_is_significant_class_drift(self, digits_run: Any) -> None:
        card, x, y, backend = digits_run
        monitor = ModelMonitor()
        _serve(monitor, card, backend, np.concatenate([x[y == 0]] * 3))
        block = _model(monitor, name="digits")
        assert block["output_window_samples"] >= 100
        assert block["drift_psi"]["class"] > 0.25
        assert block["drift_level"] == "significant"
        report = InferenceReport.model_validate_json(json.dumps(monitor.snapshot()))
        typed = report.block("digits", card.version)
        assert typed is not None and typed.drift_level == "significant"


class TestDeferredWindows:
    """Results are queued and taken into the stats in bulk; every read sees all of them."""

    def test_results_queued_before_a_reload_stay_with_the_earlier_load(self) -> None:
        monitor, card = ModelMonitor(), _card()
        monitor.on_loaded(card)
        _result(monitor, card, _probabilities([1, 2], [0.9, 0.8]))
        assert monitor._pending  # not yet in the stats
        monitor.on_loaded(card)  # the same version loaded again starts its counts again
        _result(monitor, card, _probabilities([3], [0.7]))
        assert (_model(monitor)["requests"], _model(monitor)["batches"]) == (1, 1)

    def test_results_of_a_forgotten_version_do_not_bring_it_back(self) -> None:
        monitor = ModelMonitor(MonitorLimits(retired_versions=1))
        first, second = _card(version="1"), _card(version="2")
        monitor.on_loaded(first)
        _result(monitor, first, _probabilities([0], [0.9]))
        monitor.on_unloaded(first)
        monitor.on_loaded(second)
        monitor.on_unloaded(second)  # version 1 is now forgotten
        assert {m["version"] for m in monitor.snapshot()["models"]} == {"2"}

    def test_counters_and_latency_are_current_at_every_read(self) -> None:
        monitor, card = ModelMonitor(), _card()
        for count in (1, 2, 3):
            _result(monitor, card, _probabilities([0], [0.9]), latency_s=count / 1000)
            block = _model(monitor)
            assert (block["requests"], block["batches"]) == (count, count)
            median_ms = (count + 1) / 2  # of 1, 2, ... count ms
            assert block["latency_quantile_seconds"]["0.5"] == pytest.approx(median_ms / 1000)

    def test_single_rows_folded_in_bulk_match_one_batch(self) -> None:
        limits = MonitorLimits(output_window=50)
        one_by_one, at_once, card = ModelMonitor(limits), ModelMonitor(limits), _card()
        confidence = np.linspace(0.2, 0.99, FOLD_BATCHES + 44).tolist()
        top = [i % 7 for i in range(len(confidence))]
        for i, (cls, conf) in enumerate(zip(top, confidence, strict=True)):
            _result(one_by_one, card, _probabilities([cls], [conf]), first_id=i)
        _result(at_once, card, _probabilities(top, confidence))
        for key in ("output_window_samples", "confidence_mean", "confidence_std", "top_classes"):
            assert _model(one_by_one)[key] == pytest.approx(_model(at_once)[key]), key
        assert _model(one_by_one)["requests"] == len(top)

    def test_queued_results_stay_bounded_in_count_and_bytes(self) -> None:
        monitor, card = ModelMonitor(), _card(name="embed", task="embedding", width=3)
        for i in range(FOLD_BATCHES * 2 + 5):
            _result(monitor, card, np.ones((1, 3), np.float32), first_id=i)
            assert len(monitor._pending) < FOLD_BATCHES
        wide = _card(name="wide", task="embedding", width=FOLD_BYTES // 4)
        _result(monitor, wide, np.ones((1, FOLD_BYTES // 4), np.float32))
        assert monitor._pending == []  # one large output is folded at once
        assert _model(monitor, name="embed")["output_window_samples"] == FOLD_BATCHES * 2 + 5

    def test_feedback_right_after_a_result_finds_its_prediction(self) -> None:
        monitor, card = ModelMonitor(), _card()
        _result(monitor, card, _probabilities([3], [0.8]), first_id=7)
        monitor.feedback("toy", "id7", 3)
        assert _model(monitor)["accuracy"] == 1.0

    def test_embedding_norms_of_outputs_of_different_widths(self) -> None:
        # A token-level output is (batch, tokens, width): its rows differ in length.
        monitor, card = ModelMonitor(), _card(name="embed", task="embedding", width=-1)
        _result(monitor, card, np.full((1, 2, 2), 0.5, np.float32))  # norm 1
        _result(monitor, card, np.full((2, 1, 4), 1.5, np.float32))  # norms 3 and 3
        block = _model(monitor, name="embed")
        assert block["embedding_norm_mean"] == pytest.approx(7 / 3)
