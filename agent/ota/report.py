"""How the updater tells the fleet what it is doing: events and the retained reported state.

Every step is an event on ``fleet/<device_id>/events`` (``ota_downloading`` with a percent,
``ota_verifying``, ``ota_installed``, ``ota_activating``, ``ota_committed``, ``ota_rejected``,
``ota_rolled_back``, ``ota_deferred``) and updates the retained ``fleet/<device_id>/reported``
document, which always holds the whole picture per model: active, pending and previous
versions, the current step and the last result. Both go through the outbox, so they survive
an outage like telemetry does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, TypedDict


class SlotRef(TypedDict):
    """A slot and what it holds, as the reported state names it."""

    slot: str
    version: str
    release: int
    variant: str | None


class SlotSummary(TypedDict):
    active: SlotRef | None
    pending: SlotRef | None
    previous: SlotRef | None


class LastResult(TypedDict):
    outcome: str
    version: str
    reason: str | None
    detail: str | None
    at: str


class ReportedModel(TypedDict):
    """One model in ``reported`` (``edge_contract.messages.ReportedModel`` on the wire)."""

    active: SlotRef | None
    pending: SlotRef | None
    previous: SlotRef | None
    variant: str | None  # the active slot's variant
    step: str | None
    progress: float | None
    last_result: LastResult | None


class Reported(TypedDict):
    """The reported document without its ``device_id`` (the publisher adds it)."""

    agent_version: str
    desired_counter: int
    models: dict[str, ReportedModel]
    ts: str


Emit = Callable[..., Coroutine[Any, Any, None]]
PublishReported = Callable[[Reported], Awaitable[None]]

# Steps of an update, in order; the last three end it.
STEPS = (
    "downloading",
    "verifying",
    "installed",
    "activating",
    "health_check",
    "committed",
    "rejected",
    "rolled_back",
)


def utc_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Reporter:
    """Events and the reported document of one device's updates."""

    def __init__(self, emit: Emit, publish_reported: PublishReported, agent_version: str) -> None:
        self._emit = emit
        self._publish = publish_reported
        self._agent_version = agent_version
        self._models: dict[str, ReportedModel] = {}
        self.desired_counter = 0

    def models(self) -> dict[str, ReportedModel]:
        """Each model's state as the reported document holds it (a shallow copy)."""
        return dict(self._models)

    def model(self, name: str) -> ReportedModel:
        return self._models.setdefault(
            name,
            {
                "active": None,
                "pending": None,
                "previous": None,
                "variant": None,
                "step": None,
                "progress": None,
                "last_result": None,
            },
        )

    def set_slots(
        self,
        name: str,
        *,
        active: SlotRef | None,
        pending: SlotRef | None,
        previous: SlotRef | None,
    ) -> None:
        entry = self.model(name)
        entry["active"], entry["pending"], entry["previous"] = active, pending, previous
        entry["variant"] = active["variant"] if active else None

    async def step(self, name: str, version: str, step: str, **fields: Any) -> None:
        """An intermediate step: event and reported state."""
        entry = self.model(name)
        entry["step"] = step
        entry["progress"] = fields.get("percent")
        await self._emit(f"ota_{step}", model=name, version=version, **fields)
        await self.publish()

    async def outcome(
        self,
        name: str,
        version: str,
        outcome: str,
        *,
        reason: str | None = None,
        detail: str | None = None,
        **fields: Any,
    ) -> None:
        """The end of an update: committed, rejected or rolled_back (with the reason)."""
        entry = self.model(name)
        entry["step"] = outcome
        entry["progress"] = None
        entry["last_result"] = {
            "outcome": outcome,
            "version": version,
            "reason": reason,
            "detail": detail,
            "at": utc_iso(),
        }
        extra = {"reason": reason, "detail": detail} if reason else {}
        await self._emit(f"ota_{outcome}", model=name, version=version, **extra, **fields)
        await self.publish()

    async def refused(self, reason: str, detail: str, **fields: Any) -> None:
        """A desired-state message refused before any model was named as trustworthy."""
        await self._emit("ota_rejected", reason=reason, detail=detail, **fields)

    async def deferred(self, reason: str, detail: str) -> None:
        await self._emit("ota_deferred", reason=reason, detail=detail)

    async def publish(self) -> None:
        await self._publish(
            {
                "agent_version": self._agent_version,
                "desired_counter": self.desired_counter,
                "models": self._models,
                "ts": utc_iso(),
            }
        )
