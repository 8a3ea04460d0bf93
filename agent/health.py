"""Health of the agent's subsystems: each is ok, degraded or failed, with a reason.

Pure state with change detection: ``update`` returns the change (or None), and the caller
turns changes into events. The snapshot goes into every telemetry message.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    """Ordered from best to worst."""

    OK = "ok"
    DEGRADED = "degraded"
    FAILED = "failed"


_RANK = {Status.OK: 0, Status.DEGRADED: 1, Status.FAILED: 2}


@dataclass(frozen=True)
class Condition:
    """The state of one subsystem."""

    status: Status
    reason: str = ""


@dataclass(frozen=True)
class HealthChange:
    """A subsystem moved from one condition to another."""

    subsystem: str
    before: Condition | None
    after: Condition


class HealthMonitor:
    """Current condition of every subsystem the agent reports on."""

    def __init__(self) -> None:
        self._conditions: dict[str, Condition] = {}

    def update(self, subsystem: str, status: Status, reason: str = "") -> HealthChange | None:
        """Record a condition; returns the change when the status differs from before.

        Only a change of status counts: a reason that varies from sample to sample (a byte
        count, a duration) must not produce an event per telemetry message.
        """
        before = self._conditions.get(subsystem)
        after = Condition(status, reason if status is not Status.OK else "")
        self._conditions[subsystem] = after
        if before is not None and before.status is status:
            return None
        return HealthChange(subsystem, before, after)

    @property
    def overall(self) -> Status:
        if not self._conditions:
            return Status.OK
        return max((c.status for c in self._conditions.values()), key=_RANK.__getitem__)

    def snapshot(self) -> dict[str, object]:
        """JSON-ready: ``{"status": worst, "subsystems": {name: {status, reason}}}``."""
        return {
            "status": self.overall.value,
            "subsystems": {
                name: {"status": c.status.value, "reason": c.reason}
                for name, c in sorted(self._conditions.items())
            },
        }
