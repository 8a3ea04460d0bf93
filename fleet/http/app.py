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
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
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
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
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


class _BodyTooLargeError(Exception):
    pass


class _Limits:
    """Refuses a body over the limit: by its Content-Length before reading anything, and by
    counting what arrives when it is chunked. Also the outermost error net: whatever escapes
    the application becomes a JSON 500, never a traceback."""

    def __init__(self, app: ASGIApp, ctx: HttpContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.ctx.options.max_body_bytes
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await self._too_large(scope, receive, send, limit)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _BodyTooLargeError
            return message

        try:
            await self.app(scope, counted, send)
        except _BodyTooLargeError:
            await self._too_large(scope, receive, send, limit)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        self.ctx.refused["too_large"] += 1
        response = refusal(413, f"the body is over {limit} bytes", "PayloadTooLarge")
        await response(scope, receive, send)
