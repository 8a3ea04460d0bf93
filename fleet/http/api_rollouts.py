"""The REST API's rollouts (``/api/v1/rollouts``): list, detail, history, and the operator's
start / pause / resume / approve / abort, over ``fleet.app.rollouts.RolloutApp``.

Reads need a viewer; the changes need an operator, are POSTs, go through the rollout state
machine exactly as the signed MQTT requests do, and are recorded in the operator log as
``http:<token name>`` (``fleet.http.acting``). An unknown rollout id is a 404.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query

from edge_contract.controller import (
    RolloutHistoryReply,
    RolloutListRequest,
    RolloutReply,
    RolloutRequest,
    RolloutsReply,
    RolloutStartRequest,
    RolloutStatusRequest,
)
from fleet.http.acting import ERRORS, act
from fleet.http.context import Ctx, HttpContext, Operator, Viewer

router = APIRouter(prefix="/rollouts", tags=["rollouts"], responses=ERRORS)

RolloutId = Annotated[str, Path(pattern=r"^r-[0-9a-f]{8}$", description="a rollout id")]
Event = Literal["pause", "resume", "approve", "abort"]


@router.get("", response_model=RolloutsReply)
async def list_rollouts(
    who: Viewer,
    ctx: Ctx,
    active: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> RolloutsReply:
    """The newest rollouts first (``active``: only those still running)."""
    body = RolloutListRequest(active=active, limit=limit)
    return await ctx.run(lambda: ctx.app.rollouts.list_rollouts(body))


@router.post("", response_model=RolloutReply, status_code=201)
async def start_rollout(who: Operator, ctx: Ctx, body: RolloutStartRequest) -> RolloutReply:
    """Start ``model@version`` in stages to the devices ``select`` matches."""
    return await act(
        ctx, who, "rollout-start", lambda op: ctx.app.rollouts.start(body, operator=op)
    )


@router.get("/{rollout_id}", response_model=RolloutReply)
async def show_rollout(who: Viewer, ctx: Ctx, rollout_id: RolloutId) -> RolloutReply:
    """One rollout: its settings, stages, members and last gate."""
    body = RolloutStatusRequest(rollout_id=rollout_id)

    def read() -> RolloutReply:
        _require(ctx, rollout_id)
        return ctx.app.rollouts.status(body)

    return await ctx.run(read)


@router.get("/{rollout_id}/history", response_model=RolloutHistoryReply)
async def rollout_history(who: Viewer, ctx: Ctx, rollout_id: RolloutId) -> RolloutHistoryReply:
    """Every transition of the rollout, oldest first."""
    body = RolloutRequest(rollout_id=rollout_id)

    def read() -> RolloutHistoryReply:
        _require(ctx, rollout_id)
        return ctx.app.rollouts.history(body)

    return await ctx.run(read)


async def _event(ctx: HttpContext, who: Operator, rollout_id: str, kind: Event) -> RolloutReply:
    body = RolloutRequest(rollout_id=rollout_id)

    def use(operator: str) -> tuple[RolloutReply, list[tuple[str, bytes]]]:
        _require(ctx, rollout_id)
        return ctx.app.rollouts.event(kind, body, operator=operator)

    return await act(ctx, who, f"rollout-{kind}", use)


@router.post("/{rollout_id}/pause", response_model=RolloutReply)
async def pause_rollout(who: Operator, ctx: Ctx, rollout_id: RolloutId) -> RolloutReply:
    """Hold the rollout where it is (409 if it is not running)."""
    return await _event(ctx, who, rollout_id, "pause")


@router.post("/{rollout_id}/resume", response_model=RolloutReply)
async def resume_rollout(who: Operator, ctx: Ctx, rollout_id: RolloutId) -> RolloutReply:
    """Go on with a paused rollout."""
    return await _event(ctx, who, rollout_id, "resume")


@router.post("/{rollout_id}/approve", response_model=RolloutReply)
async def approve_rollout(who: Operator, ctx: Ctx, rollout_id: RolloutId) -> RolloutReply:
    """Let a rollout that waits for approval go on to its next stage."""
    return await _event(ctx, who, rollout_id, "approve")


@router.post("/{rollout_id}/abort", response_model=RolloutReply)
async def abort_rollout(who: Operator, ctx: Ctx, rollout_id: RolloutId) -> RolloutReply:
    """Stop the rollout and send its changed devices back to their previous version."""
    return await _event(ctx, who, rollout_id, "abort")


def _require(ctx: HttpContext, rollout_id: str) -> None:
    """Store thread: 404 for a rollout the store does not hold."""
    if ctx.app.rollouts.store.rollout(rollout_id) is None:
        raise HTTPException(404, f"unknown rollout {rollout_id}")
