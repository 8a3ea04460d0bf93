"""Pipelines declared in config: source, pre-processing, model, post-processing, sinks.

This is the serial-link part of the design: the source is a peripheral's sensor channel, the
pre-processing scales the raw ADC value, the model is the built-in ``threshold`` classifier
(with hysteresis, so a noisy reading near the threshold does not toggle the output), and the
post-processing maps the class to an actuator command sent back to the peripheral. Each
decision change is reported as a ``pipeline_result`` event. Runtime-backed models (ONNX
Runtime, LiteRT) plug into the same ``Model`` protocol with the models issue.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from agent.errors import SerialLinkError

log = structlog.get_logger("agent.pipeline")

Actuate = Callable[[int, int], Awaitable[None]]
Emit = Callable[..., Awaitable[None]]


@dataclass(frozen=True)
class Prediction:
    """A model's output: a class label and a score in [0, 1]."""

    label: str
    score: float


class Model(Protocol):
    def predict(self, features: list[float]) -> Prediction: ...


class ThresholdModel:
    """Two classes, ``high`` and ``low``, with hysteresis around the threshold."""

    def __init__(self, threshold: float, hysteresis: float) -> None:
        self._threshold = threshold
        self._hysteresis = hysteresis
        self._last = "low"

    def predict(self, features: list[float]) -> Prediction:
        value = features[0]
        if self._last == "low" and value >= self._threshold + self._hysteresis:
            self._last = "high"
        elif self._last == "high" and value <= self._threshold - self._hysteresis:
            self._last = "low"
        return Prediction(self._last, max(0.0, min(1.0, value)))


@dataclass(frozen=True)
class PipelineSpec:
    """What the config declares for one pipeline."""

    name: str
    channel: int
    scale: float
    threshold: float
    hysteresis: float
    actuator: int
    on_label: str = "high"


class SensorPipeline:
    """One pipeline from a sensor channel to an actuator."""

    def __init__(self, spec: PipelineSpec, model: Model, actuate: Actuate, emit: Emit) -> None:
        self.spec = spec
        self._model = model
        self._actuate = actuate
        self._emit = emit
        self._commanded: int | None = None
        self.inputs = 0
        self.actuations = 0
        self.errors = 0
        self.last_input: float | None = None
        self.last_label: str | None = None

    async def on_sensor(self, channel: int, raw: int) -> None:
        if channel != self.spec.channel:
            return
        self.inputs += 1
        features = [raw * self.spec.scale]
        self.last_input = features[0]
        prediction = self._model.predict(features)
        self.last_label = prediction.label
        wanted = 1 if prediction.label == self.spec.on_label else 0
        if wanted == self._commanded:
            return
        try:
            await self._actuate(self.spec.actuator, wanted)
        except SerialLinkError as exc:
            # Not marked as commanded, so the next reading tries again.
            self.errors += 1
            log.warning("pipeline.actuate_failed", pipeline=self.spec.name, error=str(exc))
            return
        self._commanded = wanted
        self.actuations += 1
        await self._emit(
            "pipeline_result",
            pipeline=self.spec.name,
            input=round(features[0], 4),
            label=prediction.label,
            score=round(prediction.score, 4),
            actuator=self.spec.actuator,
            value=wanted,
        )

    def reset(self) -> None:
        """Forget the last command (the peripheral reconnected and may be in its safe state)."""
        self._commanded = None

    def snapshot(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "last_input": self.last_input,
            "last_label": self.last_label,
            "actuations": self.actuations,
            "errors": self.errors,
        }
