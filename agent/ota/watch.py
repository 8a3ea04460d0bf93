"""Watches served requests for the OTA updater: recent latencies per version, and the health
window of a version on probation.

An ``InferenceObserver`` (added to the inference service's ``ObserverGroup``): called on the
event loop for every result and error, so it only counts. The latencies of the version that
served before an update are the baseline the new version's p95 is judged against.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from agent.errors import InferenceError, ModelRunError, NonFiniteOutputError
from agent.inference.registry import Prediction
from agent.ota.health_window import LATENCY_MIN_SAMPLES
from edge_contract.card import ModelCard

RECENT_LATENCIES = 256

Recorder = Callable[[bool, float | None, bool], None]


class RequestWatch:
    """Latencies of recent requests per (model, version), and probation recorders."""

    def __init__(self) -> None:
        self._recent: dict[tuple[str, str], deque[float]] = {}
        self._probation: dict[tuple[str, str], Recorder] = {}

    def watch(self, model: str, version: str, record: Recorder) -> None:
        """Send every outcome of ``model@version`` to ``record(ok, latency_s, nonfinite)``."""
        self._probation[(model, version)] = record

    def unwatch(self, model: str, version: str) -> None:
        self._probation.pop((model, version), None)

    def p95(self, model: str, version: str) -> float | None:
        """p95 latency (s, nearest rank) of the recent requests; None with too few."""
        recent = self._recent.get((model, version))
        if not recent or len(recent) < LATENCY_MIN_SAMPLES:
            return None  # too few for a p95 that is not just the slowest call
        ordered = sorted(recent)
        return ordered[max(0, -(-95 * len(ordered) // 100) - 1)]

    # InferenceObserver
    def on_loaded(self, card: ModelCard) -> None:
        self._recent.setdefault((card.name, card.version), deque(maxlen=RECENT_LATENCIES))

    def on_unloaded(self, card: ModelCard) -> None:
        self._recent.pop((card.name, card.version), None)

    def on_result(self, card: ModelCard, prediction: Prediction, inputs: Mapping[str, Any]) -> None:
        key = (card.name, card.version)
        self._recent.setdefault(key, deque(maxlen=RECENT_LATENCIES)).append(prediction.latency_s)
        record = self._probation.get(key)
        if record is not None:
            record(True, prediction.latency_s, False)

    def on_error(self, model: str, version: str | None, error: InferenceError) -> None:
        # A caller's bad request (wrong shape, busy service) says nothing about the model.
        if version is None or not isinstance(error, ModelRunError | NonFiniteOutputError):
            return
        record = self._probation.get((model, version))
        if record is not None:
            record(False, None, isinstance(error, NonFiniteOutputError))
