"""What every HTTP route needs from the controller, and who is asking.

``HttpContext`` is the HTTP side's whole view of the controller: the use cases
(``fleet.app``), the store thread they run on, the publisher of the signed desired states a
deploy, rollback or rollout hands back, the live hub and the authenticator. Routes take the
caller from ``viewer`` or ``operator`` (FastAPI dependencies): a bearer token in
``Authorization``, or the dashboard's ``fleet_token`` cookie (set by ``POST /login``). An
action carried by the cookie must come from the dashboard's own origin: the cookie is
``SameSite=Strict`` and a cross-origin ``Origin`` header is refused too.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, TypeVar
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request

from fleet.app.replies import Publish
from fleet.app.usecases import FleetApp
from fleet.config import HttpOptions
from fleet.http.auth import Authenticator, Principal, bearer
from fleet.http.live import LiveHub
from fleet.ingest import IngestFigures, StoreThread

T = TypeVar("T")

COOKIE = "fleet_token"


def _no_refusals() -> Counter[str]:
    return Counter()


@dataclass
class HttpContext:
    """The controller's parts the HTTP routes use (one per server)."""

    app: FleetApp
    thread: StoreThread
    publish: Callable[[list[Publish]], None]
    hub: LiveHub
    auth: Authenticator
    options: HttpOptions
    clock: Callable[[], float] = time.time
    # Refused HTTP requests by reason (bad_json, too_large, unauthorized, ...): /metrics.
    refused: Counter[str] = field(default_factory=Counter)
    # The controller's refused MQTT messages by reason (ingest, RPC, file requests).
    mqtt_refusals: Callable[[], Counter[str]] = _no_refusals
    # Ingest's counts and queue (loop thread), for /metrics; None where there is no ingest.
    ingest: Callable[[], IngestFigures] | None = None

    async def run(self, fn: Callable[[], T]) -> T:
        """Run a use case on the controller's store thread."""
        return await self.thread.run(fn)


def context_of(request: Request) -> HttpContext:
    ctx: HttpContext = request.app.state.ctx
    return ctx


def _caller(request: Request) -> Principal:
    ctx = context_of(request)
    token = bearer(request.headers.get("authorization"))
    from_cookie = token is None and COOKIE in request.cookies
    if from_cookie:
        token = request.cookies.get(COOKIE)
    principal = ctx.auth.identify(token)
    if principal is None:
        ctx.refused["unauthorized"] += 1
        raise HTTPException(
            401,
            "a valid token is needed (Authorization: Bearer TOKEN)",
            headers={"WWW-Authenticate": 'Bearer realm="fleet"'},
        )
    if from_cookie and request.method not in ("GET", "HEAD") and not _same_origin(request):
        ctx.refused["cross_origin"] += 1
        raise HTTPException(403, "a cookie-authenticated action from another origin")
    return principal


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not a browser's cross-origin request (browsers send Origin on POST)
    return urlsplit(origin).netloc == request.headers.get("host", "")


def viewer(request: Request) -> Principal:
    """Any authenticated caller (with no tokens configured: the anonymous local viewer)."""
    return _caller(request)


def operator(request: Request) -> Principal:
    """A caller with the operator role; 403 for a viewer."""
    principal = _caller(request)
    if not principal.may_act():
        ctx = context_of(request)
        ctx.refused["forbidden"] += 1
        detail = (
            "this needs the operator role"
            if ctx.auth.configured
            else "actions need an operator token: none is configured ([http] tokens_file)"
        )
        raise HTTPException(403, detail)
    return principal


Ctx = Annotated[HttpContext, Depends(context_of)]
Viewer = Annotated[Principal, Depends(viewer)]
Operator = Annotated[Principal, Depends(operator)]
