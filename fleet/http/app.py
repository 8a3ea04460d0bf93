"""The controller's HTTP application: its routes, its limits, and every error as JSON.

``build_app`` assembles the FastAPI application over an ``HttpContext``: the REST API
(``fleet.http.api``), the live feed (``fleet.http.live``), the dashboard and ``/metrics``.
Every request is hostile until validated: a body over ``[http] max_body_bytes`` is refused
(413) before it is read whole, request bodies and query parameters are the contract's strict
models, and every refusal is a JSON ``Refusal`` (``error``, ``kind``) with a 4xx status. A
bug in a route is a 500 with ``kind: InternalError`` and no traceback (logged once). Every
response carries a strict Content-Security-Policy: the dashboard's assets are all served
from here, so nothing may load from elsewhere.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge_contract.controller import Refusal
from edge_contract.errors import PayloadError
from fleet.errors import (
    DeviceNotAcceptedError,
    FleetError,
    RolloutError,
    UnknownDeviceError,
)
from fleet.http import api, dashboard
from fleet.http import metrics as metrics_routes
from fleet.http.context import HttpContext, context_of

log = structlog.get_logger("fleet.http")

SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
    (b"x-content-type-options", b"nosniff"),
    # Not no-referrer: under it a browser sends `Origin: null` on the dashboard's own POSTs
    # (the login form, fetch), and the same-origin check of cookie-carried actions refuses them.
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]


def build_app(ctx: HttpContext) -> FastAPI:
    app = FastAPI(
        title="edge-fleet controller",
        version="1",
        summary="Devices, releases, rollouts and deploys of one fleet.",
        docs_url=None,  # Swagger UI loads from a CDN: not here
        redoc_url=None,
    )
    app.state.ctx = ctx
    app.include_router(api.router)
    app.include_router(metrics_routes.router)
    dashboard.install(app)  # the pages at /, /static, the live feed at /api/v1/live
    _errors(app)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    app.add_middleware(_SecurityHeaders)
    app.add_middleware(_Limits, ctx=ctx)  # outermost of the two: before anything is read
    return app


def refusal(status: int, error: str, kind: str, device_id: str | None = None) -> JSONResponse:
    body = Refusal(error=error[:500], kind=kind, device_id=device_id).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status)


def _status_of(exc: FleetError) -> int:
    if isinstance(exc, UnknownDeviceError):
        return 404
    if isinstance(exc, RolloutError | DeviceNotAcceptedError):
        return 409
    return 400


def _errors(app: FastAPI) -> None:
    # Starlette's own class: the router raises it for an unknown path (404) or method (405).
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = refusal(exc.status_code, str(exc.detail), _kind_of(exc.status_code))
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        context_of(request).refused["invalid"] += 1
        return refusal(422, _describe(exc.errors()), "ValidationError")

    @app.exception_handler(FleetError)
    async def refused(request: Request, exc: FleetError) -> JSONResponse:
        device = getattr(exc, "device_id", None)
        device_id = device if isinstance(device, str) else None
        return refusal(_status_of(exc), str(exc), type(exc).__name__, device_id)

    @app.exception_handler(PayloadError)
    async def bad_payload(request: Request, exc: PayloadError) -> JSONResponse:
        context_of(request).refused["invalid"] += 1
        return refusal(400, str(exc), "PayloadError")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("http.route_failed", path=request.url.path[:200])
        return refusal(500, "internal error (logged by the controller)", "InternalError")

    _ = (http_error, invalid, refused, bad_payload, internal)


def _kind_of(status: int) -> str:
    return {401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed"}.get(
        status, "HTTPError"
    )


def _describe(errors: Any) -> str:
    """Pydantic's errors as one line naming each field (no input values echoed at length)."""
    parts = []
    for error in list(errors)[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


class _SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


class _Limits:
    """Refuses a body over the limit (413): by its Content-Length before reading anything;
    without one (chunked), by reading it first, at most ``limit`` bytes, and handing the
    route what was read. Reading first because FastAPI turns any error raised while it
    reads a body into its own 400."""

    def __init__(self, app: ASGIApp, ctx: HttpContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.ctx.options.max_body_bytes
        headers = dict(scope.get("headers", []))
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > limit:
                await self._too_large(scope, receive, send, limit)
                return
            await self.app(scope, receive, send)  # the server delivers no more than that
            return
        body = await _read_at_most(receive, limit)
        if body is None:
            await self._too_large(scope, receive, send, limit)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        self.ctx.refused["too_large"] += 1
        response = refusal(413, f"the body is over {limit} bytes", "PayloadTooLarge")
        await response(scope, receive, send)


async def _read_at_most(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None once it passes ``limit`` bytes (the rest is not read)."""
    parts: list[bytes] = []
    seen = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(parts)  # the client went away: the route sees what came
        chunk = message.get("body", b"")
        seen += len(chunk)
        if seen > limit:
            return None
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body read already, as one message; then the server's own (a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
