"""The agent's inference service: models from config, monitoring, capture, the REST API and,
where ``[inference] grpc_port`` is set, the gRPC APIs (``agent.inference.grpc_server``).

Built by the agent's composition root only when the config names models (the agent core
never imports numpy or a runtime otherwise). A model that fails to load is reported as a
``model_load_failed`` event and a failed ``models`` health condition; the agent keeps
running and serving the models that did load. Registry events (loads, swaps, NaN outputs)
become agent events on ``fleet/<device_id>/events``, and so do drift scores crossing
``inference.drift_event_psi`` (``agent.inference.drift_alarm``).
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

from agent.config import AgentConfig
from agent.control.events import EventThrottle
from agent.errors import CommandError, InferenceError
from agent.inference.backends import BackendOptions
from agent.inference.capture import CaptureBuffer, CaptureInfo
from agent.inference.cardfile import load_card
from agent.inference.classify import RegistryClassifier, check_classifier
from agent.inference.drift_alarm import DriftAlarm
from agent.inference.metrics import GrpcMetrics
from agent.inference.monitoring import ModelMonitor, MonitorSnapshot
from agent.inference.registry import ModelRegistry, ObserverGroup
from agent.inference.rest import RestServer, start_rest
from agent.loop.background import BackgroundTasks
from edge_contract.card import card_path_for
from edge_contract.replies import (
    CaptureClearReply,
    CapturedInput,
    CaptureListReply,
    CaptureStats,
    CaptureUploadReply,
    CommandReply,
)

if TYPE_CHECKING:
    from agent.inference.grpc_server import GrpcServer

log = structlog.get_logger("agent.inference")

Emit = Callable[..., Coroutine[Any, Any, None]]
Publish = Callable[[CapturedInput], Awaitable[None]]

# Records per ``capture`` upload command: each becomes one MQTT message through the outbox.
UPLOAD_BATCH = 50
# A model that returns NaN does so for every request: one event per model and version per
# interval, carrying how many were held back.
NONFINITE_EVENT_INTERVAL_S = 60.0


class InferenceService:
    """Registry, monitor, capture buffer and REST server of one agent."""

    def __init__(self, config: AgentConfig, emit: Emit) -> None:
        self._config = config
        self._emit = emit
        inference = config.inference
        self.capture: CaptureBuffer | None = None
        if inference.low_confidence_threshold is not None:
            self.capture = CaptureBuffer(
                config.state_dir / "capture", max_bytes=inference.capture_max_bytes
            )
        self.monitor = ModelMonitor(
            low_confidence_threshold=inference.low_confidence_threshold, capture=self.capture
        )
        # The OTA updater adds its health window here while an update is on probation.
        self.observers = ObserverGroup(self.monitor)
        self.registry = ModelRegistry(
            BackendOptions(
                onnx_providers=tuple(inference.providers),
                tensorrt_fp16=inference.tensorrt_fp16,
                tensorrt_cache_dir=inference.tensorrt_cache_dir
                or config.state_dir / "tensorrt-cache",
                intra_op_threads=inference.intra_op_threads,
                inter_op_threads=inference.inter_op_threads,
                intra_op_spinning=inference.intra_op_spinning,
                onnx_thread_pools=inference.onnx_thread_pools,
                tflite_threads=inference.tflite_threads,
                tflite_runtime=inference.tflite_runtime,
            ),
            workers=inference.workers,
            max_queue=inference.max_queue,
            observer=self.observers,
            on_event=self._registry_event,
        )
        self.rest: RestServer | None = None
        self.grpc: GrpcServer | None = None
        self.grpc_error: str | None = None
        self._grpc_metrics = GrpcMetrics() if inference.grpc_port is not None else None
        # The agent's own /metrics families, served beside the models' (set by the agent).
        self.extra_metrics: Callable[[], bytes] | None = None
        self.rest_error: str | None = None
        self.load_failures: dict[str, str] = {}
        self._nonfinite_events = EventThrottle(NONFINITE_EVENT_INTERVAL_S)
        self._drift_alarm = DriftAlarm(inference.drift_event_psi)
        self._tasks = BackgroundTasks()

    async def start(self) -> None:
        """Load every configured model (failures are reported, not fatal), then serve REST."""
        for model in self._config.models:
            try:
                card = await asyncio.to_thread(load_card, model.card or card_path_for(model.path))
            except InferenceError as exc:
                self._load_failed(str(model.path), exc)
                await self._emit(
                    "model_load_failed",
                    path=str(model.path),
                    kind=type(exc).__name__,
                    reason=str(exc),
                )
                continue
            if model.name is not None and model.name != card.name:
                card = card.model_copy(update={"name": model.name})
            try:
                await self.registry.load(model.path, card=card)
            except InferenceError as exc:
                self._load_failed(str(model.path), exc)  # the registry emitted the event
        if self._config.inference.grpc_port is not None:
            await self._start_grpc()
        if self._config.inference.rest:
            await self._start_rest()

    async def _start_grpc(self) -> None:
        """Serve the gRPC APIs; like REST, a port in use is reported, not fatal."""
        # Imported here: grpc is loaded only where the config turns gRPC on.
        from agent.inference.grpc_server import start_grpc  # noqa: PLC0415

        inference = self._config.inference
        port = inference.grpc_port
        assert port is not None  # checked by the caller
        try:
            self.grpc = await start_grpc(
                self.registry,
                host=inference.grpc_host,
                port=port,
                max_message_bytes=inference.grpc_max_message_bytes,
                max_concurrent_rpcs=inference.grpc_max_concurrent_rpcs,
                metrics=self._grpc_metrics,
            )
        except OSError as exc:
            self.grpc_error = f"cannot serve gRPC on {inference.grpc_host}:{port}: {exc}"
            log.error("inference.grpc_failed", error=self.grpc_error)
            await self._emit("inference_api_failed", reason=self.grpc_error)
            return
        log.info("inference.grpc_listening", address=self.grpc.address)

    async def _start_rest(self) -> None:
        """Serve the REST API; a port in use is reported, and the models still serve pipelines."""
        inference = self._config.inference
        where = inference.unix_socket or f"{inference.host}:{inference.port}"
        try:
            self.rest = await start_rest(
                self.registry,
                self.monitor,
                host=inference.host,
                port=inference.port,
                unix_path=inference.unix_socket,
                max_body_bytes=inference.max_body_bytes,
                body_budget_bytes=inference.body_budget_bytes,
                extra_metrics=self._metrics_beside_rest(),
            )
        except OSError as exc:
            self.rest_error = f"cannot serve the REST API on {where}: {exc.strerror or exc}"
            log.error("inference.rest_failed", error=self.rest_error)
            await self._emit("inference_api_failed", reason=self.rest_error)
            return
        log.info("inference.rest_listening", url=self.rest.url)

    def _metrics_beside_rest(self) -> Callable[[], bytes] | None:
        """The agent's own families (``extra_metrics``) and the gRPC refusals, if served."""
        agent_metrics, grpc_metrics = self.extra_metrics, self._grpc_metrics
        if grpc_metrics is None:
            return agent_metrics
        if agent_metrics is None:
            return grpc_metrics.render
        return lambda: agent_metrics() + grpc_metrics.render()

    def _load_failed(self, path: str, exc: InferenceError) -> None:
        self.load_failures[path] = str(exc)
        log.error("inference.load_failed", path=path, error=str(exc))

    def classifier(self, model: str, *, top_k: int) -> RegistryClassifier:
        """The pipeline-facing classifier of a loaded model (checked to be a classifier)."""
        check_classifier(self.registry.card(model))
        return RegistryClassifier(self.registry, model, top_k=top_k)

    def snapshot(self) -> MonitorSnapshot:
        """Model metrics for the telemetry message; drift crossings since the last become events.

        The drift alarm is fed here so that each ``model_drift`` event and the telemetry
        message built with it report the same score.
        """
        body = self.monitor.snapshot()
        for crossing in self._drift_alarm.update(_drift_scores(body["models"])):
            self._tasks.spawn(self._emit(crossing.event, **crossing.fields()))
            log.info("inference.drift_crossed", kind=crossing.event, **crossing.fields())
        if self.load_failures:
            body["load_failures"] = dict(self.load_failures)
        return body

    def _registry_event(self, event: str, fields: dict[str, object]) -> None:
        if event == "model_output_nonfinite":
            held = self._nonfinite_events.admit((fields.get("model"), fields.get("version")))
            if held is None:
                return
            fields = {**fields, "held_back": held}
        self._tasks.spawn(self._emit(event, **fields))

    # -- the ``capture`` command ----------------------------------------------------------

    async def capture_command(self, action: str, publish: Publish) -> CommandReply:
        """``{"action": "list" | "clear" | "upload"}`` on the low-confidence capture."""
        if self.capture is None:
            raise CommandError("capture is off (inference.low_confidence_threshold is not set)")
        capture = self.capture
        if action == "list":
            records = await asyncio.to_thread(capture.records)
            stats = CaptureStats.model_validate(capture.stats().as_dict())
            return CaptureListReply(count=len(records), stats=stats)
        if action == "clear":
            return CaptureClearReply(cleared=await asyncio.to_thread(capture.clear))
        if action == "upload":
            return CaptureUploadReply(uploaded=await self._upload(capture, publish))
        raise CommandError(f"unknown capture action {action!r}: use list, clear or upload")

    async def _upload(self, capture: CaptureBuffer, publish: Publish) -> int:
        records = await asyncio.to_thread(capture.records)
        sent = 0
        for info in records[:UPLOAD_BATCH]:
            body = await asyncio.to_thread(_record_body, capture, info)
            await publish(body)
            await asyncio.to_thread(capture.remove, info)
            sent += 1
        return sent

    async def close(self) -> None:
        if self.rest is not None:
            await self.rest.close()
        if self.grpc is not None:
            await self.grpc.close()
        await self.registry.close()
        if self.capture is not None:
            await asyncio.to_thread(self.capture.close)


def _drift_scores(
    blocks: Iterable[Mapping[str, object]],
) -> Iterator[tuple[str, str, Mapping[str, float]]]:
    """(model, version, PSI per signal) of the monitor's telemetry blocks that score drift."""
    for block in blocks:
        scores = block.get("drift_psi")
        if isinstance(scores, dict):
            yield str(block["model"]), str(block["version"]), scores


def _record_body(capture: CaptureBuffer, info: CaptureInfo) -> CapturedInput:
    inputs = capture.load(info)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **inputs)  # type: ignore[arg-type]
    # Unvalidated, as before: a model's odd label or confidence is the consumer's to refuse.
    return CapturedInput.model_construct(
        model=info.model,
        version=info.version,
        prediction_id=info.prediction_id,
        label=info.label,
        confidence=info.confidence,
        ts=info.ts,
        inputs_npz_b64=base64.b64encode(buffer.getvalue()).decode("ascii"),
    )
