"""How an HTTP action runs: as its operator, on the store thread, recorded, then published.

An action of the REST API (accept, deploy, rollback, rollout start / pause / resume / approve /
abort) is one use case of ``fleet.app`` run on the controller's store thread under the name
``http:<token name>``. Its outcome is written to the store's ``operator_log`` like a signed
MQTT request's (``fleet.operator_rpc``): ``ok``, or ``failed`` with the refusal. The signed
desired states it hands back are published only once the use case has committed them.

``ERRORS`` documents the JSON refusal (``edge_contract.controller.Refusal``) of every 4xx a
route of the API can answer, so ``/openapi.json`` says what an error looks like.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import structlog
from pydantic import BaseModel

from edge_contract.controller import Refusal
from edge_contract.errors import PayloadError
from fleet.app.replies import Publish
from fleet.errors import FleetError
from fleet.http.auth import Principal
from fleet.http.context import HttpContext

log = structlog.get_logger("fleet.http")

# A signed reply (``SignedReply``): each has an ``operator`` field.
R = TypeVar("R", bound=BaseModel)

# The prefix of an HTTP caller's name in the operator log and in the replies' ``operator``.
OPERATOR_PREFIX = "http:"

_ERROR_TEXT = {
    400: "refused input (a bad selector, a release that does not exist, ...)",
    401: "no valid token",
    403: "the token's role may not do this",
    404: "no such device or rollout",
    409: "the rollout or device is not in a state that allows it",
    413: "the body is over [http] max_body_bytes",
    422: "the request does not match its schema (the field is named)",
}
# OpenAPI ``responses`` of the API's routes: every refusal is a ``Refusal``.
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": Refusal, "description": text} for status, text in _ERROR_TEXT.items()
}


def operator_name(who: Principal) -> str:
    return f"{OPERATOR_PREFIX}{who.name}"


async def act(
    ctx: HttpContext,
    who: Principal,
    method: str,
    use: Callable[[str], tuple[R, list[Publish]]],
) -> R:
    """Run ``use(operator)`` on the store thread, record its outcome, publish what it signed.

    ``method``: the RPC method's name (``deploy``, ``rollout-pause``, ...), as the log shows it.

    Raises:
        FleetError, PayloadError: the use case refused (recorded as ``failed``).
    """
    operator = operator_name(who)

    def run() -> tuple[R, list[Publish]]:
        try:
            reply, messages = use(operator)
        except (FleetError, PayloadError) as exc:
            _audit(ctx, operator, method, "failed", str(exc))
            raise
        _audit(ctx, operator, method, "ok", "")
        return reply.model_copy(update={"operator": operator}), messages

    reply, messages = await ctx.run(run)
    ctx.publish(messages)
    log.info("http.operator_request", operator=operator, method=method)
    return reply


def _audit(ctx: HttpContext, operator: str, method: str, outcome: str, detail: str) -> None:
    ctx.app.store.log_request(
        operator=operator, method=method, outcome=outcome, detail=detail, now=ctx.clock()
    )
