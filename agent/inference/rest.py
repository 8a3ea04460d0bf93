"""The local REST service: TensorFlow Serving's REST API over the model registry (aiohttp).

Existing TensorFlow Serving clients work unchanged: model status, metadata (signature_def) and
predict in the row (``instances``) and columnar (``inputs``) formats, on the default version or
an explicit one; errors are ``{"error": "..."}`` with TF Serving's status codes. Our additions
ride along without breaking those clients: ``prediction_ids`` and ``model_spec`` in predict
responses, ``POST /v1/models/<name>:feedback`` (labelled feedback for the monitor),
``GET /metrics`` (Prometheus text) and ``GET /healthz``. The Open Inference Protocol (v2)
routes (``agent.inference.oip_http``) ride on the same app, behind the same middlewares. See
docs/inference-api.md.

One of the agent modules that import aiohttp (with its v2 routes, oip_http.py; the other
serves ``[metrics] port``: agent/telemetry/metrics_http.py). Bodies are capped (413 before
buffering more than the cap), and so are the body bytes of all requests in progress together
(a byte budget taken from Content-Length before the body is read, the per-request cap for a
body without one; 503 with Retry-After when it is spent): a parsed JSON body holds several
times its size while it becomes arrays (docs/benchmarks.md, "REST edge: memory under
concurrent large bodies"), so the budget, not the request count, is what bounds the
process's memory. Large bodies are parsed and large results encoded in a worker thread so
that one big request does not stall the event loop for everyone else. Every error
answer is counted by a bounded reason (``RestMetrics``) and shown on ``/metrics`` beside the
monitor's families.
"""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, TypedDict, TypeVar
from urllib.parse import quote

import numpy as np
import numpy.typing as npt
import structlog
from aiohttp import web

from agent.errors import (
    AgentError,
    InferenceError,
    InvalidInputError,
    ServiceBusyError,
    UnknownModelError,
    UnknownPredictionError,
)
from agent.inference import jsonwire
from agent.inference.backends import caller_dtype, conform_caller_feeds
from agent.inference.metrics import RestMetrics
from agent.inference.oip_http import OipApi
from agent.inference.registry import ModelRegistry, Prediction
from agent.loop.eventloop import off_loop_if
from edge_contract.card import ModelCard, TensorSpec

log = structlog.get_logger("agent.inference.rest")

Array = npt.NDArray[Any]
T = TypeVar("T")
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
# Body bytes all requests in progress may hold together: two bodies at the largest size. A
# parsed JSON body peaks at several times its size (Python lists of floats, then arrays;
# docs/benchmarks.md, "REST edge: memory under concurrent large bodies"), so this bounds the
# request data in memory however many clients send at once.
DEFAULT_BODY_BUDGET_BYTES = 2 * DEFAULT_MAX_BODY_BYTES
RETRY_AFTER_S = 1
SIGNATURE_NAME = "serving_default"
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Above these sizes JSON work moves to a worker thread (parsing a large body would hold the
# event loop, and every other request, for as long as it takes).
_OFFLOAD_BODY_BYTES = 256 * 1024
_OFFLOAD_OUTPUT_ELEMENTS = 64 * 1024
_READ_CHUNK_BYTES = 1024 * 1024
_TF_DTYPES = {
    "float32": "DT_FLOAT",
    "float16": "DT_HALF",
    "int8": "DT_INT8",
    "uint8": "DT_UINT8",
    "int32": "DT_INT32",
    "int64": "DT_INT64",
    "bool": "DT_BOOL",
}
_NAME = r"{name:[^/:]+}"
_VERSION = r"{version:[^/:]+}"


class MonitorService(Protocol):
    """What the REST service needs from the monitor (``ModelMonitor``)."""

    def feedback(self, model: str, prediction_id: str, label: str | int) -> None: ...
    def render_prometheus(self) -> bytes: ...


class RestServer:
    """A running REST service; ``close()`` stops it."""

    def __init__(
        self, runner: web.AppRunner, *, url: str, port: int | None, unix_path: Path | None
    ) -> None:
        self._runner = runner
        self.url = url
        self.port = port
        self.unix_path = unix_path

    async def close(self) -> None:
        await self._runner.cleanup()
        path = self.unix_path
        if path is not None and path.exists() and stat.S_ISSOCK(path.stat().st_mode):
            path.unlink()


async def start_rest(
    registry: ModelRegistry,
    monitor: MonitorService | None,
    *,
    host: str = "127.0.0.1",
    port: int = 8501,
    unix_path: str | Path | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    body_budget_bytes: int | None = None,
    extra_metrics: Callable[[], bytes] | None = None,
) -> RestServer:
    """Serve the API on ``host:port`` (0: any free port), or on a Unix socket if given.

    ``body_budget_bytes`` (default: twice ``max_body_bytes``) caps the body bytes of the
    requests in progress together; it must hold at least one body of ``max_body_bytes``.
    ``extra_metrics``: more Prometheus text for ``/metrics`` (the agent's own families),
    rendered on the event loop.
    """
    budget = 2 * max_body_bytes if body_budget_bytes is None else body_budget_bytes
    if budget < max_body_bytes:
        raise ValueError(
            f"the body budget ({budget} bytes) must hold one body of max_body_bytes "
            f"({max_body_bytes})"
        )
    api = _Api(registry, monitor, max_body_bytes, RestMetrics(budget), extra_metrics)
    app = web.Application(
        client_max_size=max_body_bytes, middlewares=[api.errors_as_json, api.body_budget]
    )
    api.add_routes(app.router)
    # No access log: a log line per request costs more than the inference of a small model.
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    socket_path = Path(unix_path) if unix_path is not None else None
    site: web.BaseSite = (
        web.UnixSite(runner, str(socket_path))
        if socket_path is not None
        else web.TCPSite(runner, host, port)
    )
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    if socket_path is not None:
        url = f"http+unix://{quote(str(socket_path), safe='')}"
        return RestServer(runner, url=url, port=None, unix_path=socket_path)
    bound_port = int(runner.addresses[0][1])
    shown_host = f"[{host}]" if ":" in host else host
    return RestServer(
        runner, url=f"http://{shown_host}:{bound_port}", port=bound_port, unix_path=None
    )


class _Api:
    """The request handlers, bound to one registry and monitor."""

    def __init__(
        self,
        registry: ModelRegistry,
        monitor: MonitorService | None,
        max_body_bytes: int,
        metrics: RestMetrics,
        extra_metrics: Callable[[], bytes] | None = None,
    ) -> None:
        self._registry = registry
        self._monitor = monitor
        self._max_body_bytes = max_body_bytes
        self._metrics = metrics
        self._extra_metrics = extra_metrics

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get(f"/v1/models/{_NAME}", self.status)
        router.add_get(f"/v1/models/{_NAME}/versions/{_VERSION}", self.status)
        router.add_get(f"/v1/models/{_NAME}/metadata", self.metadata)
        router.add_get(f"/v1/models/{_NAME}/versions/{_VERSION}/metadata", self.metadata)
        router.add_post(f"/v1/models/{_NAME}:predict", self.predict)
        router.add_post(f"/v1/models/{_NAME}/versions/{_VERSION}:predict", self.predict)
        router.add_post(f"/v1/models/{_NAME}:feedback", self.feedback)
        router.add_get("/metrics", self.metrics)
        router.add_get("/healthz", self.healthz)
        # The Open Inference Protocol (v2) beside TF Serving's: same body cap, budget, errors.
        OipApi(self._registry, self._read_body).add_routes(router)

    async def status(self, request: web.Request) -> web.Response:
        name, version = request.match_info["name"], request.match_info.get("version")
        statuses = self._registry.status(name)
        if version is not None:
            statuses = [status for status in statuses if status.version == version]
            if not statuses:
                raise UnknownModelError(name, version)
        body = [
            {
                "version": status.version,
                "state": status.state.value,
                "status": {"error_code": status.error_code, "error_message": status.error_message},
            }
            for status in statuses
        ]
        return web.json_response({"model_version_status": body})

    async def metadata(self, request: web.Request) -> web.Response:
        card = self._registry.card(request.match_info["name"], request.match_info.get("version"))
        return web.json_response(_metadata(card))

    async def predict(self, request: web.Request) -> web.Response:
        name, version = request.match_info["name"], request.match_info.get("version")
        # An unknown model is a 404 before the body is even read.
        card = self._registry.card(name, version)
        # The body is referenced only by the parse (see _read_body), so it is freed as soon
        # as the arrays are built.
        feeds, row_format = await off_loop_if(
            (request.content_length or _OFFLOAD_BODY_BYTES + 1) > _OFFLOAD_BODY_BYTES,
            _decode_predict,
            await self._read_body(request),
            card,
        )
        prediction = await self._registry.predict(name, feeds, version=version)
        elements = sum(array.size for array in prediction.outputs.values())
        encoded = await off_loop_if(
            elements > _OFFLOAD_OUTPUT_ELEMENTS, _encode_predict, prediction, row_format
        )
        return web.Response(body=encoded, content_type="application/json")

    async def feedback(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        monitor = self._require_monitor()
        doc = jsonwire.loads_object(await self._read_body(request), model=name, what=_BODY)
        prediction_id, label = doc.get("prediction_id"), doc.get("label")
        if not isinstance(prediction_id, str) or not prediction_id:
            raise InvalidInputError(
                f"'prediction_id' must be a non-empty string, got {prediction_id!r}", model=name
            )
        if isinstance(label, bool) or not isinstance(label, int | str):
            raise InvalidInputError(
                f"'label' must be a class index or a label string, got {label!r}", model=name
            )
        monitor.feedback(name, prediction_id, label)
        return web.json_response({"model": name, "prediction_id": prediction_id, "label": label})

    async def metrics(self, request: web.Request) -> web.Response:
        # In a thread: the monitor computes quantiles and drift for every model on each scrape.
        text = await asyncio.to_thread(self._require_monitor().render_prometheus)
        # The edge's own families, on the loop that updates them (a few samples).
        text += self._metrics.render()
        if self._extra_metrics is not None:
            text += self._extra_metrics()
        return web.Response(body=text, headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def healthz(self, request: web.Request) -> web.Response:
        models = self._registry.serving()
        return web.json_response({"status": "ok", "models": models})

    def _require_monitor(self) -> MonitorService:
        if self._monitor is None:
            raise web.HTTPNotImplemented(text="model monitoring is not enabled in this server")
        return self._monitor

    async def _read_body(self, request: web.Request) -> bytes:
        """The body (its declared size was checked and budgeted by ``body_budget``); one
        without a Content-Length (chunked) is cut off with 413 once it passes the limit.

        Read from the stream, not with ``request.read()``: that keeps the bytes on the request
        until the answer is sent, and the parse is their only use.
        """
        limit = self._max_body_bytes
        chunks, size = [], 0
        async for chunk in request.content.iter_chunked(_READ_CHUNK_BYTES):
            size += len(chunk)
            if size > limit:
                raise web.HTTPRequestEntityTooLarge(
                    max_size=limit,
                    actual_size=size,
                    text=f"request body is over the limit of {limit} bytes",
                )
            chunks.append(chunk)
        return b"".join(chunks)

    @web.middleware
    async def body_budget(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        """Hold the request's body bytes against the budget until its answer is ready.

        Before a byte of the body is read: 413 when Content-Length is over the per-request
        cap, 503 with Retry-After when the budget cannot hold it. A body without a length
        (chunked) is charged the per-request cap, the most it may grow to.
        """
        declared = request.content_length
        if declared is not None and declared > self._max_body_bytes:
            raise web.HTTPRequestEntityTooLarge(
                max_size=self._max_body_bytes,
                actual_size=declared,
                text=f"request body of {declared} bytes is over the limit of "
                f"{self._max_body_bytes} bytes",
            )
        charge = declared if declared is not None else 0
        if declared is None and request.body_exists:
            charge = self._max_body_bytes
        metrics = self._metrics
        if charge and metrics.body_bytes_held + charge > metrics.body_budget_bytes:
            raise _BodyBudgetFull(charge, metrics.body_bytes_held, metrics.body_budget_bytes)
        metrics.body_bytes_held += charge
        try:
            return await handler(request)
        finally:
            metrics.body_bytes_held -= charge

    @web.middleware
    async def errors_as_json(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        """Every error as TensorFlow Serving sends it, ``{"error": "..."}`` and a status code,
        counted by reason."""
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            status, reason, message, headers = _http_error(request, exc)
        except Exception as exc:
            status, reason, message, headers = _error_answer(request, exc)
        self._metrics.refused(reason, status)
        return web.json_response({"error": message}, status=status, headers=headers)


# -- JSON <-> tensors ------------------------------------------------------------------------

_BODY = "request body"  # what a JSON refusal calls it


class _BodyBudgetFull(AgentError):
    """The requests in progress hold the body budget: this one is refused before its body."""

    def __init__(self, size: int, held: int, budget: int) -> None:
        super().__init__(
            f"server busy: a request body of {size} bytes does not fit beside the {held} "
            f"bytes of bodies in progress (budget {budget} bytes); retry later"
        )


def _decode_predict(body: bytes, card: ModelCard) -> tuple[dict[str, Array], bool]:
    """A predict body to named input arrays, and whether it was in the row format."""
    doc = jsonwire.loads_object(body, model=card.name, what=_BODY)
    signature = doc.get("signature_name", SIGNATURE_NAME)
    if signature not in (SIGNATURE_NAME, ""):
        raise InvalidInputError(
            f"signature_name {signature!r} not found: the only signature is {SIGNATURE_NAME!r}",
            model=card.name,
        )
    row_format = "instances" in doc
    if row_format == ("inputs" in doc):
        raise InvalidInputError(
            "body must have exactly one of 'instances' (row format) or 'inputs' (columnar)",
            model=card.name,
        )
    columns: dict[str, object] = (
        dict(_rows_to_columns(doc["instances"], card)) if row_format else _columns(doc, card)
    )
    # Each input's lists are let go as soon as they are an array: the Python floats of a
    # parsed body take about six times the bytes of its text.
    del doc
    arrays = {}
    for name in list(columns):
        arrays[name] = _to_array(columns.pop(name), name, card.name)
    # Converted here, in the thread that parsed a large body, not later on the event loop;
    # the conversion refuses values that are not finite in the input's dtype (1e39 in
    # float32).
    return conform_caller_feeds(card.name, card.inputs, arrays), row_format


def _rows_to_columns(instances: object, card: ModelCard) -> dict[str, list[object]]:
    if not isinstance(instances, list) or not instances:
        raise InvalidInputError("'instances' must be a non-empty list", model=card.name)
    if all(isinstance(row, dict) for row in instances):
        names = list(instances[0])
        columns: dict[str, list[object]] = {name: [] for name in names}
        for index, row in enumerate(instances):
            if sorted(row) != sorted(names):
                raise InvalidInputError(
                    f"instance {index} names inputs {sorted(row)}, instance 0 names "
                    f"{sorted(names)}",
                    model=card.name,
                )
            for name in names:
                columns[name].append(row[name])
        return columns
    if len(card.inputs) != 1:
        raise InvalidInputError(
            f"the model takes {len(card.inputs)} inputs: each instance must be an object "
            f"naming them ({[spec.name for spec in card.inputs]})",
            model=card.name,
        )
    return {card.inputs[0].name: instances}


def _columns(doc: dict[str, object], card: ModelCard) -> dict[str, object]:
    inputs = doc["inputs"]
    if isinstance(inputs, dict):
        return inputs
    if len(card.inputs) != 1:
        raise InvalidInputError(
            f"the model takes {len(card.inputs)} inputs: 'inputs' must be an object naming them",
            model=card.name,
        )
    return {card.inputs[0].name: inputs}


def _to_array(value: object, name: str, model: str) -> Array:
    """Nested JSON lists to an array; dtype, shape and finiteness (in the input's own dtype,
    after the cast) are checked by ``conform_feeds``."""
    try:
        return np.asarray(value)
    except (ValueError, TypeError, RecursionError) as exc:
        raise InvalidInputError(
            f"input {name!r} is not a rectangular array of numbers ({exc})", model=model
        ) from exc


def _encode_predict(prediction: Prediction, row_format: bool) -> bytes:
    outputs = prediction.outputs
    doc: dict[str, object] = {}  # only serialised
    if row_format:
        doc["predictions"] = _rows(outputs, len(prediction.ids), prediction.model)
    elif len(outputs) == 1:
        doc["outputs"] = next(iter(outputs.values()))
    else:
        doc["outputs"] = dict(outputs)
    doc["prediction_ids"] = list(prediction.ids)
    doc["model_spec"] = {
        "name": prediction.model,
        "version": prediction.version,
        "signature_name": SIGNATURE_NAME,
    }
    return jsonwire.dumps(doc)


def _rows(outputs: dict[str, Array], batch: int, model: str) -> Any:
    if len(outputs) == 1:
        return next(iter(outputs.values()))  # its rows are the predictions
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != batch:
            raise InferenceError(
                f"{model}: output {name!r} has shape {list(array.shape)}, not one row per "
                f"instance ({batch}): use the columnar format ('inputs')"
            )
    lists = {name: array.tolist() for name, array in outputs.items()}
    return [{name: values[row] for name, values in lists.items()} for row in range(batch)]


class _Dim(TypedDict):
    size: str
    name: str


class _TensorShape(TypedDict):
    dim: list[_Dim]
    unknown_rank: bool


class TensorInfo(TypedDict):
    dtype: str
    tensor_shape: _TensorShape
    name: str


class SignatureDef(TypedDict):
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]
    method_name: str


class ModelSpec(TypedDict):
    name: str
    signature_name: str
    version: str


class ModelMetadata(TypedDict):
    """TensorFlow Serving's GetModelMetadataResponse (``metadata.signature_def`` nests twice)."""

    model_spec: ModelSpec
    metadata: dict[str, dict[str, dict[str, SignatureDef]]]


def _metadata(card: ModelCard) -> ModelMetadata:
    """GetModelMetadataResponse in TensorFlow Serving's JSON shape, from the card."""
    signature: SignatureDef = {
        "inputs": {spec.name: _tensor_info(spec) for spec in card.inputs},
        "outputs": {spec.name: _tensor_info(spec) for spec in card.outputs},
        "method_name": "tensorflow/serving/predict",
    }
    return {
        "model_spec": {"name": card.name, "signature_name": "", "version": card.version},
        "metadata": {"signature_def": {"signature_def": {SIGNATURE_NAME: signature}}},
    }


def _tensor_info(spec: TensorSpec) -> TensorInfo:
    # The dtype clients exchange: float for a quantized tensor (the backend converts).
    dims: list[_Dim] = [{"size": str(size), "name": ""} for size in spec.shape]
    return {
        "dtype": _TF_DTYPES[caller_dtype(spec)],
        "tensor_shape": {"dim": dims, "unknown_rank": False},
        "name": spec.name,
    }


# -- errors ----------------------------------------------------------------------------------


# (status, reason, message, extra headers) of an error answer.
_ErrorAnswer = tuple[int, str, str, dict[str, str] | None]


def _error_answer(request: web.Request, exc: Exception) -> _ErrorAnswer:
    if isinstance(exc, InferenceError):
        status, reason = _status_for(exc)
        return status, reason, str(exc), None
    if isinstance(exc, _BodyBudgetFull):
        return 503, "body_budget", str(exc), {"Retry-After": str(RETRY_AFTER_S)}
    # The service keeps serving whatever one request hit.
    log.error("rest.unexpected_error", path=request.path, exc_info=exc)
    return 500, "internal", f"internal error: {type(exc).__name__}: {exc}", None


def _http_error(request: web.Request, exc: web.HTTPException) -> _ErrorAnswer:
    if exc.status in (404, 405):
        message = f"Malformed request: {request.method} {request.path}"
    else:
        message = exc.text or exc.reason
    return exc.status, _HTTP_REASONS.get(exc.status, "other"), message, None


_HTTP_REASONS = {
    404: "unknown_route",
    405: "method_not_allowed",
    413: "too_large",
    501: "not_enabled",
}


def _status_for(error: InferenceError) -> tuple[int, str]:
    if isinstance(error, InvalidInputError):
        return 400, error.reason
    if isinstance(error, UnknownModelError):
        return 404, "unknown_model"
    if isinstance(error, UnknownPredictionError):
        return 404, "unknown_prediction"
    if isinstance(error, ServiceBusyError):
        return 503, "busy"
    return 500, "model_error"
