"""When a model's drift crosses its threshold, and when it recovers: one event per crossing.

The monitor scores drift (PSI per signal, ``agent.inference.drift``) over a sliding window
of predictions, so the score moves a little with every batch; an alarm that fired and
cleared at one level would flap around it. ``DriftAlarm`` keeps, per (model, version,
signal), whether that signal is in drift: it enters when the PSI rises ABOVE the threshold
(``inference.drift_event_psi``, by default the "significant" level, 0.25) and leaves only
once it falls back BELOW the recovery level, the "stable" level (0.1) or half the threshold
when that is lower. Between the two nothing is reported. Pure: no IO, no clock; the
inference service feeds it the scores it reports in each telemetry message.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from agent.inference import drift

# (model, version, signal)
SignalKey = tuple[str, str, str]


@dataclass(frozen=True)
class DriftCrossing:
    """One event to send: ``model_drift`` or ``model_drift_recovered``."""

    event: Literal["model_drift", "model_drift_recovered"]
    model: str
    version: str
    signal: str
    psi: float
    threshold: float

    def fields(self) -> dict[str, object]:
        """The event's fields (``docs/mqtt-api.md``)."""
        return {
            "model": self.model,
            "version": self.version,
            "signal": self.signal,
            "psi": round(self.psi, 6),
            "threshold": self.threshold,
        }


class DriftAlarm:
    """Per (model, version, signal): in drift or not, with hysteresis (module docstring)."""

    def __init__(self, threshold: float) -> None:
        if not threshold > 0:
            raise ValueError(f"the drift threshold must be > 0, got {threshold}")
        self.threshold = threshold
        self.recover_below = min(drift.STABLE_BELOW, threshold / 2)
        self._drifting: set[SignalKey] = set()

    def update(self, scores: Iterable[tuple[str, str, Mapping[str, float]]]) -> list[DriftCrossing]:
        """Take the current PSI per signal of each (model, version); the crossings since the
        previous call. A version no longer reported is forgotten (its state too)."""
        crossings: list[DriftCrossing] = []
        seen: set[SignalKey] = set()
        for model, version, signals in scores:
            for signal, psi in signals.items():
                key = (model, version, signal)
                seen.add(key)
                crossing = self._cross(key, psi)
                if crossing is not None:
                    crossings.append(crossing)
        self._drifting &= seen
        return crossings

    def _cross(self, key: SignalKey, psi: float) -> DriftCrossing | None:
        if key not in self._drifting and psi > self.threshold:
            self._drifting.add(key)
            return DriftCrossing("model_drift", *key, psi, self.threshold)
        if key in self._drifting and psi < self.recover_below:
            self._drifting.discard(key)
            return DriftCrossing("model_drift_recovered", *key, psi, self.threshold)
        return None
