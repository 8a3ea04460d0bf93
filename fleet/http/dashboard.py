"""The live dashboard at ``/``: server-rendered pages, the live feed, the login cookie.

Pages (Jinja2 templates in ``templates/``) read the use cases directly on the store thread
(``ctx.run``), never over HTTP: the device list (filter by selector), one device (charts,
events, deploy and rollback), the rollouts and one rollout (stages, gate figures against
the thresholds, transitions, the operator's buttons). Assets are files of this package under
``/static/`` (``static/dashboard.js``, ``static/charts.js``, ``static/dashboard.css``, uPlot
vendored with its licence): the CSP is ``default-src 'self'``, so nothing inline and nothing
from elsewhere. ``GET /api/v1/live`` streams the hub (``fleet.http.live``) as Server-Sent
Events; the browser applies them without a reload. Actions are the API's POST routes, called
by the page's script with the ``fleet_token`` cookie set here (``POST /login``, or
``GET /?token=`` which sets it and redirects to a URL without the token); it is HttpOnly
and SameSite=Strict, and a cookie-carried POST from another origin is refused
(``fleet.http.context``). A page asked for without a valid token redirects to ``/login``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from edge_contract.controller import (
    DeviceDetail,
    DevicesListRequest,
    RolloutListRequest,
    RolloutRequest,
    RolloutStatusRequest,
    ShowRequest,
)
from edge_contract.topics import DEVICE_ID_PATTERN
from fleet.errors import FleetError
from fleet.http import views
from fleet.http.auth import MAX_TOKEN_CHARS, Principal
from fleet.http.context import COOKIE, Ctx, HttpContext, Viewer, context_of, viewer
from fleet.http.live import HubFullError, sse_stream

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter()

COOKIE_MAX_AGE_S = 12 * 3600
DEVICE_EVENTS = 50
ROLLOUTS_SHOWN = 100
# The device list parses every device's newest telemetry (the row shows CPU, p95, drift ...).
MAX_ROWS_PARSED = 100_000
# The selector filter travels in the page's URL: bounded like the API's.
Select = Annotated[str | None, Query(max_length=1024)]
DeviceId = Annotated[str, PathParam(pattern=f"^{DEVICE_ID_PATTERN.pattern}$")]
RolloutId = Annotated[str, PathParam(pattern=r"^r-[0-9a-f]{8}$")]


def install(app: FastAPI) -> None:
    """The dashboard's routes, the live feed and ``/static`` on ``app``."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")


# -- filters for the templates ----------------------------------------------------------------


def _number(value: float | None, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return views.MISSING
    return f"{value:.{digits}f}{' ' + unit if unit else ''}"


def _seconds(value: float | None) -> str:
    """A latency in the unit that reads best (ms under a second)."""
    if value is None:
        return views.MISSING
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def _kib(length: int) -> str:
    return f"{length / 1024:.1f} KiB" if length < 1024 * 1024 else f"{length / 2**20:.1f} MiB"


def _iso(epoch: float) -> str:
    """An instant for ``<time datetime>`` (UTC; the page's script shows it in local time)."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


templates.env.filters["iso"] = _iso
templates.env.filters["epoch"] = views.epoch_of
templates.env.filters["num"] = _number
templates.env.filters["latency"] = _seconds
templates.env.filters["kib"] = _kib


# -- who is asking ----------------------------------------------------------------------------


def _page_caller(request: Request) -> Principal | None:
    """The caller of a page, or None (the page then redirects to the login form)."""
    try:
        return viewer(request)
    except HTTPException:
        return None


def _to_login(request: Request) -> RedirectResponse:
    target = quote(request.url.path, safe="/")
    return RedirectResponse(f"/login?next={target}", status_code=303)


def _page(request: Request, name: str, who: Principal, **values: object) -> HTMLResponse:
    ctx = context_of(request)
    context = {
        "who": who,
        "tokens": ctx.auth.configured,
        "now": ctx.clock(),
        "path": request.url.path,
        **values,
    }
    return templates.TemplateResponse(request, name, context)


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host", "")


def _with_cookie(response: Response, request: Request, token: str) -> Response:
    response.set_cookie(
        COOKIE,
        token,
        max_age=COOKIE_MAX_AGE_S,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


def _next(target: str | None) -> str:
    """Where to go after the login: a path of this site only (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target[:512]


# -- login ------------------------------------------------------------------------------------


@router.get("/login", include_in_schema=False)
async def login_form(request: Request, next: Annotated[str | None, Query()] = None) -> Response:
    return _login_page(request, _next(next))


def _login_page(request: Request, target: str, error: str | None = None) -> Response:
    values = {
        "who": None,
        "tokens": context_of(request).auth.configured,
        "path": request.url.path,
        "next": target,
        "error": error,
    }
    return templates.TemplateResponse(
        request, "login.html", values, status_code=200 if error is None else 401
    )


@router.post("/login", include_in_schema=False)
async def login(request: Request, ctx: Ctx) -> Response:
    """The form's token (urlencoded body; the body limit applies): a cookie, then ``next``."""
    if not _same_origin(request):
        ctx.refused["cross_origin"] += 1
        raise HTTPException(403, "a login form from another origin")
    fields = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=4)
    token = (fields.get("token") or [""])[0].strip()
    target = _next((fields.get("next") or ["/"])[0])
    if len(token) > MAX_TOKEN_CHARS or not ctx.auth.configured or ctx.auth.identify(token) is None:
        ctx.refused["unauthorized"] += 1
        error = "no tokens are configured" if not ctx.auth.configured else "unknown token"
        return _login_page(request, target, error)
    return _with_cookie(RedirectResponse(target, status_code=303), request, token)


@router.post("/logout", include_in_schema=False)
async def logout(request: Request) -> Response:
    if not _same_origin(request):
        raise HTTPException(403, "a logout form from another origin")
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


# -- pages ------------------------------------------------------------------------------------


@router.get("/", include_in_schema=False)
async def devices_page(
    request: Request,
    ctx: Ctx,
    select: Select = None,
    token: Annotated[str | None, Query(max_length=MAX_TOKEN_CHARS)] = None,
) -> Response:
    if token is not None:  # the demo's link: the cookie, then the same page without the token
        if ctx.auth.identify(token) is None:
            ctx.refused["unauthorized"] += 1
            return RedirectResponse("/login", status_code=303)
        target = "/" if not select else f"/?select={quote(select)}"
        return _with_cookie(RedirectResponse(target, status_code=303), request, token)
    who = _page_caller(request)
    if who is None:
        return _to_login(request)
    error = None
    try:
        rows = await ctx.run(lambda: _device_rows(ctx, select))
    except FleetError as exc:  # a selector that does not parse: say so on the page
        rows, error = [], str(exc)
    return _page(request, "devices.html", who, rows=rows, select=select or "", error=error)


def _device_rows(ctx: HttpContext, select: str | None) -> list[views.DeviceRow]:
    """Store thread: every device the selector matches, with what its row shows. Two reads
    for the whole list (the summaries, then every device's documents in one query), not one
    per device."""
    listed = ctx.app.list_devices(DevicesListRequest(select=select or "*"))
    documents = {
        d.device_id: d for d in ctx.app.store.device_documents(telemetry_for=MAX_ROWS_PARSED)
    }
    now = ctx.clock()
    rows = []
    for summary in listed.devices:
        found = documents.get(summary.device_id)
        detail = DeviceDetail(
            summary=summary,
            reported=found.reported if found else None,
            desired=None,
            status=found.status if found else None,
            telemetry=found.telemetry if found else None,
            events=[],
        )
        rows.append(views.device_row(detail, summary.tags, now))
    return rows


@router.get("/devices/{device_id}", include_in_schema=False)
async def device_page(request: Request, ctx: Ctx, device_id: DeviceId) -> Response:
    who = _page_caller(request)
    if who is None:
        return _to_login(request)
    body = ShowRequest(device_id=device_id, events=DEVICE_EVENTS)
    detail = (await ctx.run(lambda: ctx.app.show_device(body))).device
    now = ctx.clock()
    row = views.device_row(detail, {}, now)
    points = []
    if detail.telemetry is not None:
        points.append(views.series_point(row.last_seen or now, detail.telemetry))
    return _page(
        request,
        "device.html",
        who,
        row=row,
        detail=detail,
        events=[e for e in detail.events if e is not None],
        series={"buckets": points},
    )


@router.get("/releases", include_in_schema=False)
async def releases_page(request: Request, ctx: Ctx) -> Response:
    who = _page_caller(request)
    if who is None:
        return _to_login(request)
    try:
        releases = (await ctx.run(ctx.app.list_releases)).releases
    except FleetError as exc:  # OTA is off on this controller: say so on the page
        return _page(request, "releases.html", who, releases=[], error=str(exc))
    return _page(request, "releases.html", who, releases=releases, error=None)


@router.get("/rollouts", include_in_schema=False)
async def rollouts_page(request: Request, ctx: Ctx) -> Response:
    who = _page_caller(request)
    if who is None:
        return _to_login(request)
    body = RolloutListRequest(limit=ROLLOUTS_SHOWN)
    listed = await ctx.run(lambda: ctx.app.rollouts.list_rollouts(body))
    return _page(request, "rollouts.html", who, rollouts=listed.rollouts)


@router.get("/rollouts/{rollout_id}", include_in_schema=False)
async def rollout_page(request: Request, ctx: Ctx, rollout_id: RolloutId) -> Response:
    who = _page_caller(request)
    if who is None:
        return _to_login(request)
    status = RolloutStatusRequest(rollout_id=rollout_id)
    reply = await ctx.run(lambda: ctx.app.rollouts.status(status))
    history = await ctx.run(lambda: ctx.app.rollouts.history(RolloutRequest(rollout_id=rollout_id)))
    rollout = reply.rollout
    verdicts = [views.verdict_cells(v) for v in rollout.gate.verdicts] if rollout.gate else []
    return _page(
        request,
        "rollout.html",
        who,
        rollout=rollout,
        verdicts=verdicts,
        transitions=list(reversed(history.transitions)),
    )


# -- the live feed ----------------------------------------------------------------------------


@router.get("/api/v1/live", include_in_schema=False)
async def live(who: Viewer, ctx: Ctx) -> Response:
    """Server-Sent Events: every device message the controller commits and every rollout
    change, as ``event: KIND`` with the ``LiveEvent`` as JSON. 503 when the hub is full.
    (Left out of the OpenAPI document: a property-based client cannot end a stream.)"""
    stack = contextlib.ExitStack()
    try:
        client = stack.enter_context(ctx.hub.subscribe())
    except HubFullError as exc:
        ctx.refused["live_full"] += 1
        raise HTTPException(503, f"too many live clients: {exc}") from exc

    async def stream() -> AsyncIterator[bytes]:
        with stack:  # unsubscribed when the browser goes away or the hub drops it
            async for frame in sse_stream(client):
                yield frame

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)
