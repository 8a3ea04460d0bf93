"""The controller's REST API (``/api/v1``): a thin adapter over the use cases of ``fleet.app``.

Each route builds the use case's typed request (``edge_contract.controller``) from its path,
query or JSON body, runs it on the store thread, publishes the signed desired states a
deploy, rollback or rollout hands back, and answers the typed reply: the same models as the
MQTT RPC, so ``/openapi.json`` describes exactly what the CLI gets. Reads need a viewer,
actions an operator (``fleet.http.context``); actions are POSTs, never GETs.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from edge_contract.controller import (
    DeviceReply,
    DevicesListRequest,
    DevicesReply,
    RolloutListRequest,
    RolloutsReply,
    ShowRequest,
)
from edge_contract.topics import DEVICE_ID_PATTERN
from fleet.http.context import Ctx, Viewer

router = APIRouter(prefix="/api/v1")

DeviceId = Annotated[str, Path(pattern=f"^{DEVICE_ID_PATTERN.pattern}$", description="a device id")]


@router.get("/devices", response_model=DevicesReply, tags=["devices"])
async def list_devices(
    who: Viewer,
    ctx: Ctx,
    select: Annotated[str | None, Query(max_length=1024, description="a selector")] = None,
) -> DevicesReply:
    body = DevicesListRequest(select=select)
    return await ctx.run(lambda: ctx.app.list_devices(body))


@router.get("/devices/{device_id}", response_model=DeviceReply, tags=["devices"])
async def show_device(
    who: Viewer,
    ctx: Ctx,
    device_id: DeviceId,
    events: Annotated[int, Query(ge=0, le=1000)] = 20,
) -> DeviceReply:
    body = ShowRequest(device_id=device_id, events=events)
    return await ctx.run(lambda: ctx.app.show_device(body))


@router.get("/rollouts", response_model=RolloutsReply, tags=["rollouts"])
async def list_rollouts(
    who: Viewer,
    ctx: Ctx,
    active: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> RolloutsReply:
    body = RolloutListRequest(active=active, limit=limit)
    return await ctx.run(lambda: ctx.app.rollouts.list_rollouts(body))
