"""The Open Inference Protocol (v2) routes on the REST service's aiohttp app.

A thin adapter: ``agent.inference.oip`` owns the protocol's messages and binary framing,
``ModelRegistry.predict`` (and the monitor behind it) the request path, and the REST
service's middlewares what every route shares: the body cap (413), the body byte budget (503
with Retry-After), and ``{"error": "..."}`` answers counted by reason on ``/metrics`` (404 for
an unknown model or version, 400 for bad input). Routes, as the protocol names them:

    GET  /v2/health/live                            GET /v2/health/ready
    GET  /v2                                        (server metadata)
    GET  /v2/models/<name>[/versions/<v>]           (model metadata)
    GET  /v2/models/<name>[/versions/<v>]/ready
    POST /v2/models/<name>[/versions/<v>]/infer     (JSON or binary tensors)

Large bodies are decoded and large answers encoded in a worker thread, as on the TF Serving
routes, so one big request does not stall the event loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import web

from agent import __version__
from agent.inference import oip
from agent.inference.registry import ModelRegistry, VersionState
from agent.loop.eventloop import off_loop_if

T = TypeVar("T")
ReadBody = Callable[[web.Request], Awaitable[bytes]]

SERVER_NAME = "edge-agent"
# Above these sizes the JSON and array work moves to a worker thread (as in rest.py).
_OFFLOAD_BODY_BYTES = 256 * 1024
_OFFLOAD_OUTPUT_ELEMENTS = 64 * 1024
_NAME = r"{name:[^/:]+}"
_MODEL = f"/v2/models/{_NAME}"
_VERSIONED = f"/v2/models/{_NAME}/versions/{{version:[^/:]+}}"


class OipApi:
    """The v2 handlers over one registry; ``read_body`` is the REST service's capped reader."""

    def __init__(self, registry: ModelRegistry, read_body: ReadBody) -> None:
        self._registry = registry
        self._read_body = read_body

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/v2/health/live", self.live)
        router.add_get("/v2/health/ready", self.ready)
        router.add_get("/v2", self.server_metadata)
        for prefix in (_MODEL, _VERSIONED):
            router.add_get(prefix, self.model_metadata)
            router.add_get(f"{prefix}/ready", self.model_ready)
            router.add_post(f"{prefix}/infer", self.infer)

    async def live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        # Ready when a model serves: the agent keeps running with none loaded (load failures
        # are reported), and a load balancer should not send it requests then. The protocol
        # says 200 for true and a 4xx for false (tritonclient's is_server_ready checks 200).
        ready = bool(self._registry.names())
        return web.json_response({"ready": ready}, status=200 if ready else 400)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response(oip.server_metadata(SERVER_NAME, __version__))

    async def model_metadata(self, request: web.Request) -> web.Response:
        name, version = request.match_info["name"], request.match_info.get("version")
        card = self._registry.card(name, version)  # UnknownModelError: 404
        versions = [
            status.version
            for status in self._registry.status(name)
            if status.state is VersionState.AVAILABLE
        ]
        return web.json_response(oip.model_metadata(card, versions))

    async def model_ready(self, request: web.Request) -> web.Response:
        name, version = request.match_info["name"], request.match_info.get("version")
        self._registry.card(name, version)  # a version that does not serve: 404
        return web.json_response({"name": name, "ready": True})

    async def infer(self, request: web.Request) -> web.Response:
        name, version = request.match_info["name"], request.match_info.get("version")
        # An unknown model is a 404 before the body is read.
        card = self._registry.card(name, version)
        body = await self._read_body(request)
        length = oip.header_length(
            request.headers.get(oip.HEADER_LENGTH), len(body), model=card.name
        )
        decoded = await off_loop_if(
            len(body) > _OFFLOAD_BODY_BYTES, oip.decode_request, body, length, card
        )
        del body  # the arrays are copies: the body's bytes go now, not after the answer
        prediction = await self._registry.predict(name, decoded.feeds, version=version)
        # Ours, beside the protocol's fields: the ids that POST /v1/models/<name>:feedback takes.
        parameters = {"prediction_ids": ",".join(prediction.ids)}
        elements = sum(array.size for array in prediction.outputs.values())
        encoded, header = await off_loop_if(
            elements > _OFFLOAD_OUTPUT_ELEMENTS,
            oip.encode_response,
            prediction.model,
            prediction.version,
            decoded,
            prediction.outputs,
            parameters,
        )
        if header is None:
            return web.Response(body=encoded, content_type="application/json")
        return web.Response(
            body=encoded,
            content_type="application/octet-stream",
            headers={oip.HEADER_LENGTH: str(header)},
        )
