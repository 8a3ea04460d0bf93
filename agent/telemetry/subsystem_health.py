"""Health of the agent's subsystems: each is ok, degraded or failed, with a reason.

Pure state with change detection: ``update`` returns the change (or None), and the caller
turns changes into events. The snapshot goes into every telemetry message.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import StrEnum
from typing import TypedDict


class ConditionSnapshot(TypedDict):
    status: str
    reason: str


class HealthSnapshotDict(TypedDict):
    """``health`` in telemetry and the ``health`` reply (``HealthSnapshot`` on the wire)."""

    status: str
    subsystems: dict[str, ConditionSnapshot]


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
        # Telemetry updates health on the outbox worker thread, the link on the loop thread.
        self._lock = threading.Lock()

    def update(self, subsystem: str, status: Status, reason: str = "") -> HealthChange | None:
        """Record a condition; returns the change when the status differs from before.

        Only a change of status counts: a reason that varies from sample to sample (a byte
        count, a duration) must not produce an event per telemetry message.
        """
        after = Condition(status, reason if status is not Status.OK else "")
        with self._lock:
            before = self._conditions.get(subsystem)
            self._conditions[subsystem] = after
        if before is not None and before.status is status:
            return None
        return HealthChange(subsystem, before, after)

    @property
    def overall(self) -> Status:
        with self._lock:
            statuses = [c.status for c in self._conditions.values()]
        return max(statuses, key=_RANK.__getitem__, default=Status.OK)

    def snapshot(self) -> HealthSnapshotDict:
        """JSON-ready: ``{"status": worst, "subsystems": {name: {status, reason}}}``."""
        with self._lock:
            conditions = sorted(self._conditions.items())
        worst = max((c.status for _n, c in conditions), key=_RANK.__getitem__, default=Status.OK)
        return {
            "status": worst.value,
            "subsystems": {
                name: {"status": c.status.value, "reason": c.reason} for name, c in conditions
            },
        }
