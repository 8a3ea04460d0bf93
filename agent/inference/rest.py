"""The local REST service: TensorFlow Serving's REST API over the model registry (aiohttp).

Existing TensorFlow Serving clients work unchanged: model status, metadata (signature_def) and
predict in the row (``instances``) and columnar (``inputs``) formats, on the default version or
an explicit one; errors are ``{"error": "..."}`` with TF Serving's status codes. Our additions
ride along without breaking those clients: ``prediction_ids`` and ``model_spec`` in predict
responses, ``POST /v1/models/<name>:feedback`` (labelled feedback for the monitor),
``GET /metrics`` (Prometheus text) and ``GET /healthz``. See docs/inference-api.md.

The only agent module that imports aiohttp. Bodies are capped (413 before buffering more than
the cap); large bodies are parsed and large results encoded in a worker thread so that one big
request does not stall the event loop for everyone else.
"""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

import numpy as np
import numpy.typing as npt
import structlog
from aiohttp import web

from agent.errors import (
    InferenceError,
    InvalidInputError,
    ServiceBusyError,
    UnknownModelError,
    UnknownPredictionError,
)
from agent.inference.backends import caller_dtype, conform_feeds
from agent.inference.card import ModelCard, TensorSpec
from agent.inference.registry import ModelRegistry, Prediction

log = structlog.get_logger("agent.inference.rest")

Array = npt.NDArray[Any]
T = TypeVar("T")

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
SIGNATURE_NAME = "serving_default"
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Above these sizes JSON work moves to a worker thread (a 16 MiB body takes ~100 ms to parse).
_OFFLOAD_BODY_BYTES = 256 * 1024
_OFFLOAD_OUTPUT_ELEMENTS = 64 * 1024
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
) -> RestServer:
    """Serve the API on ``host:port`` (0: any free port), or on a Unix socket if given."""
    app = web.Application(client_max_size=max_body_bytes, middlewares=[_errors_as_json])
    _Api(registry, monitor, max_body_bytes).add_routes(app.router)
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
        self, registry: ModelRegistry, monitor: MonitorService | None, max_body_bytes: int
    ) -> None:
        self._registry = registry
        self._monitor = monitor
        self._max_body_bytes = max_body_bytes

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
        body = await self._read_body(request)
        feeds, row_format = await _maybe_off_loop(
            len(body) > _OFFLOAD_BODY_BYTES, _decode_predict, body, card
        )
        prediction = await self._registry.predict(name, feeds, version=version)
        elements = sum(array.size for array in prediction.outputs.values())
        encoded = await _maybe_off_loop(
            elements > _OFFLOAD_OUTPUT_ELEMENTS, _encode_predict, prediction, row_format
        )
        return web.Response(body=encoded, content_type="application/json")

    async def feedback(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        monitor = self._require_monitor()
        doc = _parse_object(await self._read_body(request), model=name)
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
        return web.Response(body=text, headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def healthz(self, request: web.Request) -> web.Response:
        models = self._registry.serving()
        return web.json_response({"status": "ok", "models": models})

    def _require_monitor(self) -> MonitorService:
        if self._monitor is None:
            raise web.HTTPNotImplemented(text="model monitoring is not enabled in this server")
        return self._monitor

    async def _read_body(self, request: web.Request) -> bytes:
        """The body, refused with 413 from its Content-Length alone when that is over the cap;
        a chunked body is cut off by aiohttp once it passes ``client_max_size``."""
        declared = request.content_length
        if declared is not None and declared > self._max_body_bytes:
            raise web.HTTPRequestEntityTooLarge(
                max_size=self._max_body_bytes,
                actual_size=declared,
                text=f"request body of {declared} bytes is over the limit of "
                f"{self._max_body_bytes} bytes",
            )
        return await request.read()


# -- JSON <-> tensors ------------------------------------------------------------------------


def _parse_object(body: bytes, *, model: str) -> dict[str, Any]:
    try:
        # Python's json accepts NaN/Infinity tokens, as TensorFlow Serving does.
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InvalidInputError(f"request body is not valid JSON ({exc})", model=model) from exc
    if not isinstance(doc, dict):
        raise InvalidInputError(
            f"request body must be a JSON object, got {type(doc).__name__}", model=model
        )
    return doc


def _decode_predict(body: bytes, card: ModelCard) -> tuple[dict[str, Array], bool]:
    """A predict body to named input arrays, and whether it was in the row format."""
    doc = _parse_object(body, model=card.name)
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
    columns = _rows_to_columns(doc["instances"], card) if row_format else _columns(doc, card)
    arrays = {name: _to_array(value, name, card.name) for name, value in columns.items()}
    # Converted here, in the thread that parsed a large body, not later on the event loop.
    return conform_feeds(card.name, card.inputs, arrays), row_format


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


def _columns(doc: dict[str, Any], card: ModelCard) -> dict[str, Any]:
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
    """Nested JSON lists to an array; dtype and shape are checked by ``conform_feeds``."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, RecursionError) as exc:
        raise InvalidInputError(
            f"input {name!r} is not a rectangular array of numbers ({exc})", model=model
        ) from exc
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        # Refused here: a NaN in would come out as a NaN the monitor blames on the model.
        raise InvalidInputError(f"input {name!r} contains NaN or Infinity", model=model)
    return array


def _encode_predict(prediction: Prediction, row_format: bool) -> bytes:
    outputs = prediction.outputs
    doc: dict[str, Any] = {}
    if row_format:
        doc["predictions"] = _rows(outputs, len(prediction.ids), prediction.model)
    elif len(outputs) == 1:
        doc["outputs"] = next(iter(outputs.values())).tolist()
    else:
        doc["outputs"] = {name: array.tolist() for name, array in outputs.items()}
    doc["prediction_ids"] = list(prediction.ids)
    doc["model_spec"] = {
        "name": prediction.model,
        "version": prediction.version,
        "signature_name": SIGNATURE_NAME,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def _rows(outputs: dict[str, Array], batch: int, model: str) -> list[Any]:
    if len(outputs) == 1:
        return list(next(iter(outputs.values())).tolist())
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != batch:
            raise InferenceError(
                f"{model}: output {name!r} has shape {list(array.shape)}, not one row per "
                f"instance ({batch}): use the columnar format ('inputs')"
            )
    lists = {name: array.tolist() for name, array in outputs.items()}
    return [{name: values[row] for name, values in lists.items()} for row in range(batch)]


def _metadata(card: ModelCard) -> dict[str, Any]:
    """GetModelMetadataResponse in TensorFlow Serving's JSON shape, from the card."""
    signature = {
        "inputs": {spec.name: _tensor_info(spec) for spec in card.inputs},
        "outputs": {spec.name: _tensor_info(spec) for spec in card.outputs},
        "method_name": "tensorflow/serving/predict",
    }
    return {
        "model_spec": {"name": card.name, "signature_name": "", "version": card.version},
        "metadata": {"signature_def": {"signature_def": {SIGNATURE_NAME: signature}}},
    }


def _tensor_info(spec: TensorSpec) -> dict[str, Any]:
    # The dtype clients exchange: float for a quantized tensor (the backend converts).
    dims = [{"size": str(size), "name": ""} for size in spec.shape]
    return {
        "dtype": _TF_DTYPES[caller_dtype(spec)],
        "tensor_shape": {"dim": dims, "unknown_rank": False},
        "name": spec.name,
    }


async def _maybe_off_loop(off_loop: bool, work: Callable[..., T], *args: Any) -> T:
    if off_loop:
        return await asyncio.to_thread(work, *args)
    return work(*args)


# -- errors ----------------------------------------------------------------------------------


def _status_for(error: InferenceError) -> int:
    if isinstance(error, InvalidInputError):
        return 400
    if isinstance(error, UnknownModelError | UnknownPredictionError):
        return 404
    if isinstance(error, ServiceBusyError):
        return 503
    return 500


def _error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def _errors_as_json(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every error as TensorFlow Serving sends it: ``{"error": "..."}`` and a status code."""
    try:
        return await handler(request)
    except InferenceError as exc:
        return _error_response(_status_for(exc), str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status in (404, 405):
            message = f"Malformed request: {request.method} {request.path}"
        else:
            message = exc.text or exc.reason
        return _error_response(exc.status, message)
    except Exception as exc:  # the service keeps serving whatever one request hit
        log.exception("rest.unexpected_error", path=request.path)
        return _error_response(500, f"internal error: {type(exc).__name__}: {exc}")
