"""The controller's MQTT RPC front end: ``fleet-controller/rpc/<method>`` -> a use case -> reply.

A thin adapter over ``fleet.app``: for each request it decodes the method's request model
(``edge_contract.controller``), passes a mutating method through the operator gate
(``fleet.operator_rpc``), runs the use case on the store thread, publishes the desired states
a deploy or rollback hands back, and answers on the request's response topic with
``{"ok": true, ...reply}`` or ``{"ok": false, "error", "kind", ...}``. A malformed request, or
one without a response topic, is also counted with the controller's refused messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

import structlog
from pydantic import BaseModel

from edge_contract import payloads
from edge_contract.controller import (
    AcceptReply,
    AcceptRequest,
    DeployRequest,
    DevicesListRequest,
    JsonObject,
    OperatorAddRequest,
    OperatorRemoveRequest,
    OperatorsListRequest,
    Refusal,
    Reply,
    RollbackRequest,
    RolloutListRequest,
    RolloutRequest,
    RolloutStartRequest,
    RolloutStatusRequest,
    ShowRequest,
    SignedReply,
    StatusRequest,
    TagRequest,
    UntagRequest,
    decode_request,
    reply_body,
)
from edge_contract.errors import PayloadError, TopicError
from edge_contract.topics import parse_controller_rpc
from edge_runtime.errors import MqttError
from edge_runtime.mqtt.base import InboundMessage, PublishOptions
from edge_runtime.mqtt.link import MqttLink
from fleet.app.replies import Publish
from fleet.app.rollouts import EVENTS, RolloutApp
from fleet.app.usecases import FleetApp
from fleet.errors import (
    DeviceNotAcceptedError,
    FleetError,
    OperatorRefusedError,
    UnknownDeviceError,
)
from fleet.ingest import StoreThread, rejection_reason
from fleet.operator_rpc import OperatorGate, Outcome
from fleet.operators import Verified

log = structlog.get_logger("fleet.service")

RequestT = TypeVar("RequestT", bound=BaseModel)
# One method: the request body as decoded JSON -> the typed reply and messages to publish.
Handler = Callable[[JsonObject], tuple[Reply, list[Publish]]]
# Count and dead-letter a request (the ingest's ledger): message, reason, detail.
Reject = Callable[[InboundMessage, str, str], None]


class RpcServer:
    """Answers the CLI's requests; every store call runs on the controller's store thread."""

    def __init__(
        self,
        app: FleetApp,
        gate: OperatorGate,
        link: MqttLink,
        thread: StoreThread,
        reject: Reject,
    ) -> None:
        self.app = app
        self._gate = gate
        self._link = link
        self._thread = thread
        self._reject = reject
        self._tasks: set[asyncio.Task[None]] = set()
        self._methods = self._routes()

    def _routes(self) -> dict[str, Handler]:
        app = self.app
        rollouts = app.rollouts
        # Read-only: unsigned.
        routes = {
            "devices-list": _read("devices-list", DevicesListRequest, app.list_devices),
            "devices-show": _read("devices-show", ShowRequest, app.show_device),
            "controller-status": _read("controller-status", StatusRequest, app.controller_status),
            "operators-list": _read("operators-list", OperatorsListRequest, app.list_operators),
            "rollout-list": _read("rollout-list", RolloutListRequest, rollouts.list_rollouts),
            "rollout-status": _read("rollout-status", RolloutStatusRequest, rollouts.status),
            "rollout-history": _read("rollout-history", RolloutRequest, rollouts.history),
        }
        # Everything that changes the fleet: signed by a trusted operator key (fleet.operators).
        routes["devices-accept"] = self._signed("devices-accept", AcceptRequest, self._accept)
        routes["operators-add"] = self._signed(
            "operators-add", OperatorAddRequest, lambda r, _v: (app.add_operator(r), [])
        )
        routes["operators-remove"] = self._signed(
            "operators-remove", OperatorRemoveRequest, lambda r, _v: (app.remove_operator(r), [])
        )
        routes["devices-tag"] = self._signed(
            "devices-tag", TagRequest, lambda r, _v: (rollouts.tag(r), [])
        )
        routes["devices-untag"] = self._signed(
            "devices-untag", UntagRequest, lambda r, _v: (rollouts.untag(r), [])
        )
        if app.releases is not None:
            routes["rollout-start"] = self._signed(
                "rollout-start",
                RolloutStartRequest,
                lambda r, v: rollouts.start(r, operator=v.operator),
            )
            for kind in EVENTS:
                routes[f"rollout-{kind}"] = self._signed(
                    f"rollout-{kind}", RolloutRequest, _event(rollouts, kind)
                )
            routes["deploy"] = self._signed("deploy", DeployRequest, lambda r, _v: app.deploy(r))
            routes["rollback"] = self._signed(
                "rollback", RollbackRequest, lambda r, _v: app.rollback(r)
            )
        return routes

    def _signed(
        self,
        method: str,
        model: type[RequestT],
        use: Callable[[RequestT, Verified], tuple[SignedReply, list[Publish]]],
    ) -> Handler:
        """A mutating method: the gate verifies the envelope, then its body is the request."""

        def verified(request: Verified) -> Outcome:
            return use(decode_request(method, model, request.body), request)

        return lambda body: self._gate.run(method, body, verified)

    def _accept(
        self, request: AcceptRequest, verified: Verified
    ) -> tuple[SignedReply, list[Publish]]:
        reply: AcceptReply = self.app.accept_device(request, operator=verified.operator)
        log.info("controller.device_accepted", device=request.device_id, operator=verified.operator)
        return reply, []

    def call(self, method: str, request: JsonObject) -> tuple[Reply, list[Publish]]:
        """Store thread: run one RPC; returns its reply and the messages to publish.

        Mutating methods pass the operator gate first (``fleet.operator_rpc``).
        """
        handler = self._methods.get(method)
        if handler is None:
            raise FleetError(f"unknown method {method!r}")
        return handler(request)

    def on_request(self, message: InboundMessage) -> None:
        """Loop thread: decode the request once, count a malformed one, then answer it
        (``ok: false`` for a malformed one); a request without a response topic is only
        counted."""
        method, problem = "", None
        request: JsonObject = {}
        try:
            method = parse_controller_rpc(message.topic)
            request = payloads.decode_object(message.payload) if message.payload else {}
        except (TopicError, PayloadError) as exc:
            self._reject(message, rejection_reason(exc), str(exc))
            problem = exc
        else:
            if message.response_topic is None:
                self._reject(message, "no_response_topic", "a request without a response topic")
        if message.response_topic is None:
            return  # nowhere to send an answer
        answer = self._answer(message, message.response_topic, method, request, problem)
        task = asyncio.get_running_loop().create_task(answer)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(
        self,
        message: InboundMessage,
        response_topic: str,
        method: str,
        request: JsonObject,
        problem: TopicError | PayloadError | None,
    ) -> None:
        try:
            if problem is not None:
                raise problem
            answer, messages = await self._thread.run(lambda: self.call(method, request))
            if messages and self.app.releases is not None:
                self.app.releases.publish(messages)
            reply: JsonObject = {"ok": True, **reply_body(answer)}
        except (FleetError, TopicError, PayloadError) as exc:
            reply = self._refusal(message, exc)
        except Exception as exc:  # every request gets an answer
            log.exception("controller.rpc_failed", topic=message.topic)
            reply = Refusal(error=repr(exc)[:300], kind="InternalError").model_dump()
        options = PublishOptions(correlation_data=message.correlation_data, message_expiry_s=30)
        try:
            self._link.publish(response_topic, payloads.encode(reply), options=options)
        except MqttError as exc:
            log.warning("controller.reply_failed", error=str(exc))

    def _refusal(self, message: InboundMessage, exc: Exception) -> JsonObject:
        refusal = Refusal(error=str(exc), kind=type(exc).__name__)
        if isinstance(exc, OperatorRefusedError):
            refusal = refusal.model_copy(update={"reason": exc.reason, "detail": exc.detail})
            # Counted with every other refused message (the gate keeps the audit log).
            self._reject(message, "unauthorized", f"{exc.reason}: {exc.detail}")
        if isinstance(exc, UnknownDeviceError | DeviceNotAcceptedError):
            # The CLI names the device from this.
            refusal = refusal.model_copy(update={"device_id": exc.device_id})
        return refusal.model_dump(exclude_none=True)


def _event(
    rollouts: RolloutApp, kind: str
) -> Callable[[RolloutRequest, Verified], tuple[SignedReply, list[Publish]]]:
    """An operator event (pause, resume, approve, abort) signed by ``verified.operator``."""
    return lambda r, v: rollouts.event(kind, r, operator=v.operator)


def _read(method: str, model: type[RequestT], use: Callable[[RequestT], Reply]) -> Handler:
    """A read-only method: its body is the request."""
    return lambda body: (use(decode_request(method, model, body)), [])
