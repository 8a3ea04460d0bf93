"""The agent's refused inbound messages: one ``RejectionLedger`` for every topic it subscribes to.

Commands, desired state, repository replies and pipeline inputs all hand a message they will
not act on to ``InboundRejections.reject`` (topic, reason code, detail). The counts by reason
are read by the ``health`` command on the loop and by the telemetry tick on the outbox's
worker thread: ``snapshot`` returns a copy published by the loop after each rejection, so the
worker never iterates a counter the loop is changing.
"""

from __future__ import annotations

from typing import TypedDict

import structlog

from edge_runtime.mqtt.base import InboundMessage
from edge_runtime.mqtt.rejections import DeadLetter, RejectionLedger

log = structlog.get_logger("agent.control.inbound")


class RejectedSnapshot(TypedDict):
    """``rejected`` in telemetry and the ``health`` reply (``RejectedCounts`` on the wire)."""

    total: int
    by_reason: dict[str, int]


class InboundRejections:
    """The ledger and a thread-safe snapshot of its counts (``{"total", "by_reason"}``)."""

    def __init__(self, ledger: RejectionLedger | None = None) -> None:
        self.ledger = ledger or RejectionLedger(log, event="agent.rejected")
        self._snapshot: tuple[int, tuple[tuple[str, int], ...]] = (0, ())

    def reject(self, message: InboundMessage, reason: str, detail: str) -> DeadLetter:
        """Record one refused message (loop thread)."""
        letter = self.ledger.reject(
            message.topic, message.payload, reason, detail, retained=message.retain
        )
        counts = self.ledger.counts
        # One attribute assignment: a reader on another thread sees the old or the new tuple.
        self._snapshot = (sum(counts.values()), tuple(sorted(counts.items())))
        return letter

    def snapshot(self) -> RejectedSnapshot:
        """``{"total": N, "by_reason": {reason: n}}``; safe on any thread."""
        total, by_reason = self._snapshot
        return {"total": total, "by_reason": dict(by_reason)}
