"""The controller's REST API (``/api/v1``): a thin adapter over the use cases of ``fleet.app``.

Each route builds the use case's typed request (``edge_contract.controller``) from its path,
query or JSON body, runs it on the store thread, publishes the signed desired states a
deploy, rollback or rollout hands back, and answers the typed reply: the same models as the
MQTT RPC, so ``/openapi.json`` describes exactly what the CLI gets. Reads need a viewer,
actions an operator (``fleet.http.context``); actions are POSTs, never GETs, and are recorded
in the operator log as ``http:<token name>`` (``fleet.http.acting``).

Here: devices, their telemetry and events, releases, deploy and rollback, controller status;
the rollouts are in ``fleet.http.api_rollouts``. docs/http-api.md lists every route.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from fastapi.security import HTTPBearer

from edge_contract.controller import (
    AcceptReply,
    AcceptRequest,
    DeployReply,
    DeployRequest,
    DeviceReply,
    DevicesReply,
    RollbackReply,
    RollbackRequest,
    ShowRequest,
    StatusReply,
    StatusRequest,
)
from edge_contract.http_api import (
    MAX_DEVICES_PAGE,
    MAX_EVENTS_PAGE,
    MAX_SERIES_POINTS,
    DevicesQuery,
    DeviceState,
    EventsQuery,
    EventsReply,
    ReleasesReply,
    TelemetryQuery,
    TelemetrySeriesReply,
)
from edge_contract.topics import DEVICE_ID_PATTERN
from fleet.http import api_rollouts
from fleet.http.acting import ERRORS, act
from fleet.http.context import Ctx, Operator, Viewer

# Declares the bearer scheme in /openapi.json; who the caller is, is ``Viewer``/``Operator``'s
# question (auto_error off: the dashboard's cookie is accepted there too).
_bearer = HTTPBearer(auto_error=False, description="a token from `fleet http token`")
router = APIRouter(prefix="/api/v1", responses=ERRORS, dependencies=[Depends(_bearer)])

DeviceId = Annotated[str, Path(pattern=f"^{DEVICE_ID_PATTERN.pattern}$", description="a device id")]
Epoch = Annotated[
    float | None, Query(ge=0.0, le=1e11, allow_inf_nan=False, description="Unix seconds")
]


@router.get("/devices", response_model=DevicesReply, tags=["devices"])
async def list_devices(
    who: Viewer,
    ctx: Ctx,
    select: Annotated[str | None, Query(max_length=1024, description="a selector")] = None,
    state: Annotated[DeviceState | None, Query(description="pending: not accepted")] = None,
    limit: Annotated[int | None, Query(ge=1, le=MAX_DEVICES_PAGE)] = None,
) -> DevicesReply:
    """Every device (sorted by id), or those a selector matches, in a state."""
    query = DevicesQuery(select=select, state=state, limit=limit)
    return await ctx.run(lambda: ctx.app.find_devices(query))


@router.get("/devices/{device_id}", response_model=DeviceReply, tags=["devices"])
async def show_device(
    who: Viewer,
    ctx: Ctx,
    device_id: DeviceId,
    events: Annotated[int, Query(ge=0, le=1000)] = 20,
) -> DeviceReply:
    """One device: its summary, its stored documents and its newest events."""
    body = ShowRequest(device_id=device_id, events=events)
    return await ctx.run(lambda: ctx.app.show_device(body))


@router.get("/devices/{device_id}/telemetry", response_model=TelemetrySeriesReply, tags=["devices"])
async def device_telemetry(
    who: Viewer,
    ctx: Ctx,
    device_id: DeviceId,
    since: Epoch = None,
    until: Epoch = None,
    points: Annotated[int, Query(ge=1, le=MAX_SERIES_POINTS)] = 120,
) -> TelemetrySeriesReply:
    """The device's telemetry over ``[since, until]`` (default: the last hour) in at most
    ``points`` time buckets: CPU, memory, temperature, and per model p95 latency, request
    rate, drift and accuracy."""
    query = TelemetryQuery(device_id=device_id, since=since, until=until, points=points)
    return await ctx.run(lambda: ctx.app.telemetry_series(query))


@router.get("/devices/{device_id}/events", response_model=EventsReply, tags=["devices"])
async def device_events(
    who: Viewer,
    ctx: Ctx,
    device_id: DeviceId,
    limit: Annotated[int, Query(ge=1, le=MAX_EVENTS_PAGE)] = 50,
    before: Annotated[int | None, Query(ge=1, le=2**63 - 1, description="an event id")] = None,
) -> EventsReply:
    """A page of the device's events, newest first; ``next_before`` fetches the next page."""
    query = EventsQuery(device_id=device_id, limit=limit, before=before)
    return await ctx.run(lambda: ctx.app.device_events(query))


@router.post("/devices/{device_id}/accept", response_model=AcceptReply, tags=["devices"])
async def accept_device(who: Operator, ctx: Ctx, device_id: DeviceId) -> AcceptReply:
    """Make a pending device a deploy target (``changed``: it was pending)."""
    body = AcceptRequest(device_id=device_id)
    return await act(
        ctx, who, "devices-accept", lambda op: (ctx.app.accept_device(body, operator=op), [])
    )


@router.get("/models", response_model=ReleasesReply, tags=["releases"])
async def list_releases(who: Viewer, ctx: Ctx) -> ReleasesReply:
    """Every release in the controller's TUF repository, with its variants (404: OTA off)."""
    if ctx.app.releases is None:
        raise HTTPException(404, "OTA is not enabled on this controller ([ota] repo)")
    return await ctx.run(ctx.app.list_releases)


@router.post("/deploy", response_model=DeployReply, tags=["releases"])
async def deploy(who: Operator, ctx: Ctx, body: DeployRequest) -> DeployReply:
    """A signed release to named devices (or ``all``); ``skipped`` names who was left out."""
    return await act(ctx, who, "deploy", lambda _op: ctx.app.deploy(body))


@router.post("/rollback", response_model=RollbackReply, tags=["releases"])
async def rollback(who: Operator, ctx: Ctx, body: RollbackRequest) -> RollbackReply:
    """One device back to its previous committed version of a model."""
    return await act(ctx, who, "rollback", lambda _op: ctx.app.rollback(body))


@router.get("/status", response_model=StatusReply, tags=["controller"])
async def controller_status(who: Viewer, ctx: Ctx) -> StatusReply:
    """What the controller refused since it started, by reason, and the newest dead letters."""
    return await ctx.run(lambda: ctx.app.controller_status(StatusRequest()))


router.include_router(api_rollouts.router)
