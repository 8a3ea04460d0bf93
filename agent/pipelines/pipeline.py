"""Pipelines declared in config: source, pre-processing, model, post-processing, sinks.

Sources: a peripheral's sensor channel (the last ``window`` readings make one input), or JSON
inputs on ``fleet/<device_id>/input/<name>``; the local REST API is a source of its own and
needs no pipeline. Pre-processing scales the readings. The model is the built-in
``threshold`` classifier (with hysteresis, so a noisy reading near the threshold does not
toggle the output) or any loaded model, behind the ``Classify`` callable. Post-processing
keeps the top classes and ignores results under ``min_score``. Sinks: an actuator command
to the peripheral when the class changes, a ``pipeline_result`` event for each change, and
optionally every result on ``fleet/<device_id>/results``.

Each pipeline owns a bounded queue (``queue`` inputs, 4 by default) and one task that runs
the model: a source never waits for inference, and when the model falls behind the oldest
pending input is dropped and counted (a sensor's newest reading is worth more than an old
one; an MQTT source that must not lose requests sets a deeper queue).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypedDict

import structlog

from agent.errors import InferenceError, SerialLinkError
from edge_contract import payloads
from edge_contract.errors import PayloadError

log = structlog.get_logger("agent.pipelines.pipeline")

Actuate = Callable[[int, int], Awaitable[None]]
Emit = Callable[..., Awaitable[None]]


class ResultBody(TypedDict):
    """A result on ``fleet/<id>/results`` before the publisher adds ``device_id`` and ``ts``."""

    pipeline: str
    model: str
    version: str | None
    prediction_id: str | None
    label: str
    score: float
    top: list[list[str | float]]  # [label, score] pairs


class PipelineSnapshot(TypedDict):
    """One pipeline's counters in telemetry's ``pipelines``."""

    inputs: int
    rejected: int
    dropped: int
    results: int
    last_input: float | None
    last_label: str | None
    last_score: float | None
    actuations: int
    errors: int
    model_errors: int
    errors_by_kind: dict[str, int]


PublishResult = Callable[[ResultBody], Awaitable[None]]

# An MQTT input is one model input as JSON text: room for an image-sized tensor, not more.
MAX_INPUT_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Classification:
    """A model's answer for one input: the top class, its score, and the runners-up."""

    label: str
    score: float
    top: tuple[tuple[str, float], ...] = ()
    model: str = "threshold"
    version: str | None = None
    prediction_id: str | None = None


Classify = Callable[[list[float]], Awaitable[Classification]]


class ThresholdModel:
    """Two classes, ``high`` and ``low``, with hysteresis around the threshold."""

    def __init__(self, threshold: float, hysteresis: float) -> None:
        self._threshold = threshold
        self._hysteresis = hysteresis
        self._last = "low"

    def predict(self, features: Sequence[float]) -> Classification:
        value = features[0]
        if self._last == "low" and value >= self._threshold + self._hysteresis:
            self._last = "high"
        elif self._last == "high" and value <= self._threshold - self._hysteresis:
            self._last = "low"
        score = max(0.0, min(1.0, value))
        return Classification(self._last, score, ((self._last, score),))

    async def __call__(self, features: list[float]) -> Classification:
        return self.predict(features)


@dataclass(frozen=True)
class PipelineSpec:
    """What the config declares for one pipeline."""

    name: str
    channel: int | None
    scale: float
    actuator: int | None
    on_label: str = "high"
    window: int = 1
    min_score: float = 0.0
    top_k: int = 1
    publish_results: bool = False
    queue: int = 4


@dataclass
class PipelineCounters:
    inputs: int = 0
    rejected: int = 0
    dropped: int = 0
    results: int = 0
    actuations: int = 0
    errors: int = 0
    model_errors: int = 0
    last_input: float | None = None
    last_label: str | None = None
    last_score: float | None = None
    errors_by_kind: dict[str, int] = field(default_factory=dict)


class SensorPipeline:
    """One pipeline: a bounded input queue, the model, and the sinks."""

    def __init__(
        self,
        spec: PipelineSpec,
        classify: Classify,
        actuate: Actuate | None,
        emit: Emit,
        publish_result: PublishResult | None = None,
    ) -> None:
        self.spec = spec
        self._classify = classify
        self._actuate = actuate
        self._emit = emit
        self._publish_result = publish_result
        self._readings: deque[float] = deque(maxlen=spec.window)
        self._pending: deque[list[float]] = deque()
        self._ready = asyncio.Event()
        self._commanded: int | None = None
        self.counters = PipelineCounters()

    # -- sources --------------------------------------------------------------------------

    def on_sensor(self, channel: int, raw: int) -> None:
        """A reading from the peripheral; an input is queued once ``window`` are in."""
        if channel != self.spec.channel:
            return
        self._readings.append(raw * self.spec.scale)
        if len(self._readings) == self.spec.window:
            self.submit(list(self._readings))

    def submit(self, features: list[float]) -> None:
        """Queue one pre-processed input; drops the oldest pending one when full."""
        self.counters.inputs += 1
        self.counters.last_input = features[-1] if features else None
        if len(self._pending) >= self.spec.queue:
            self._pending.popleft()
            self.counters.dropped += 1
        self._pending.append(features)
        self._ready.set()

    def reject(self, reason: str) -> None:
        """An input that could not be read (malformed MQTT message): counted and logged."""
        self.counters.rejected += 1
        # Logged (throttled) by the rejection ledger that the caller records it in.
        log.debug("pipeline.input_rejected", pipeline=self.spec.name, reason=reason)

    async def run(self) -> None:
        """Run the model on queued inputs until cancelled."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._pending:
                features = self._pending.popleft()
                try:
                    await self.process(features)
                except Exception as exc:  # one input must not end the pipeline for good
                    self._count_failure(exc)

    # -- model and sinks ------------------------------------------------------------------

    async def process(self, features: list[float]) -> Classification | None:
        """Classify one input and feed the sinks; model failures are counted, not raised."""
        try:
            result = await self._classify(features)
        except InferenceError as exc:
            self._count_model_error(exc)
            return None
        self.counters.results += 1
        self.counters.last_label = result.label
        self.counters.last_score = result.score
        if self._publish_result is not None and self.spec.publish_results:
            await self._publish_result(self._result_body(result))
        if result.score < self.spec.min_score:
            return result
        await self._drive(result, features)
        return result

    def _count_failure(self, exc: Exception) -> None:
        kind = type(exc).__name__
        self.counters.errors += 1
        self.counters.errors_by_kind[kind] = self.counters.errors_by_kind.get(kind, 0) + 1
        log.exception("pipeline.input_failed", pipeline=self.spec.name, kind=kind)

    def _count_model_error(self, exc: InferenceError) -> None:
        kind = type(exc).__name__
        self.counters.model_errors += 1
        self.counters.errors_by_kind[kind] = self.counters.errors_by_kind.get(kind, 0) + 1
        log.warning("pipeline.model_failed", pipeline=self.spec.name, kind=kind, error=str(exc))

    async def _drive(self, result: Classification, features: list[float]) -> None:
        if self._actuate is None or self.spec.actuator is None:
            return
        wanted = 1 if result.label == self.spec.on_label else 0
        if wanted == self._commanded:
            return
        try:
            await self._actuate(self.spec.actuator, wanted)
        except SerialLinkError as exc:
            # Not marked as commanded, so the next result tries again.
            self.counters.errors += 1
            log.warning("pipeline.actuate_failed", pipeline=self.spec.name, error=str(exc))
            return
        self._commanded = wanted
        self.counters.actuations += 1
        await self._emit(
            "pipeline_result",
            pipeline=self.spec.name,
            input=round(features[-1], 4),
            label=result.label,
            score=round(result.score, 4),
            model=result.model,
            version=result.version,
            actuator=self.spec.actuator,
            value=wanted,
        )

    def _result_body(self, result: Classification) -> ResultBody:
        return {
            "pipeline": self.spec.name,
            "model": result.model,
            "version": result.version,
            "prediction_id": result.prediction_id,
            "label": result.label,
            "score": round(result.score, 6),
            "top": [[label, round(score, 6)] for label, score in result.top[: self.spec.top_k]],
        }

    def reset(self) -> None:
        """Forget the last command (the peripheral reconnected and may be in its safe state)."""
        self._commanded = None

    def snapshot(self) -> PipelineSnapshot:
        c = self.counters
        return {
            "inputs": c.inputs,
            "rejected": c.rejected,
            "dropped": c.dropped,
            "results": c.results,
            "last_input": c.last_input,
            "last_label": c.last_label,
            "last_score": c.last_score,
            "actuations": c.actuations,
            "errors": c.errors,
            "model_errors": c.model_errors,
            "errors_by_kind": dict(c.errors_by_kind),
        }


def parse_input(payload: bytes | bytearray) -> list[float]:
    """An MQTT source's message: ``{"inputs": [...]}`` or a bare JSON list, numbers only.

    Nested lists are flattened in order (the model input's shape is restored later). Decoded
    within the payload limits (size, nesting depth, 64-bit numbers: ``payloads.decode_json``).

    Raises:
        PayloadError: with the decoder's reason code, or ``schema`` (not numbers in lists)
            or ``empty`` (no values).
    """
    excerpt = payload[:64].decode(errors="replace")
    body = payloads.decode_json(payload, max_bytes=MAX_INPUT_BYTES)
    values = body.get("inputs") if isinstance(body, dict) else body
    flat: list[float] = []
    if not _flatten(values, flat):
        raise PayloadError(
            "pipeline input must be finite numbers in (nested) lists",
            excerpt=excerpt,
            reason="schema",
        )
    if not flat:
        raise PayloadError("pipeline input has no values", excerpt=excerpt, reason="empty")
    return flat


def _flatten(value: object, into: list[float]) -> bool:
    """Append the numbers of ``value`` to ``into``; False at the first thing that is not one."""
    if isinstance(value, list):
        return all(_flatten(item, into) for item in value)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        into.append(float(value))
        return True
    return False
