"""Health conditions: worst status wins, and only status changes are reported."""

from __future__ import annotations

from agent.telemetry.subsystem_health import HealthMonitor, Status


class TestHealthMonitor:
    def test_changes_are_reported_once(self) -> None:
        """A repeated status is not a change, even when its reason text varies."""
        health = HealthMonitor()
        first = health.update("queue", Status.OK)
        assert first is not None and first.before is None
        assert health.update("queue", Status.OK) is None
        change = health.update("queue", Status.DEGRADED, "90% full")
        assert change is not None and change.before is not None
        assert (change.before.status, change.after.status) == (Status.OK, Status.DEGRADED)
        assert health.update("queue", Status.DEGRADED, "91% full") is None

    def test_overall_is_the_worst(self) -> None:
        """The snapshot's status is the worst subsystem's, with each reason listed."""
        health = HealthMonitor()
        assert health.overall is Status.OK
        health.update("mqtt", Status.DEGRADED, "disconnected")
        health.update("disk", Status.FAILED, "99% full")
        health.update("queue", Status.OK, "ignored when ok")
        snapshot = health.snapshot()
        assert snapshot["status"] == "failed"
        assert snapshot["subsystems"] == {
            "disk": {"status": "failed", "reason": "99% full"},
            "mqtt": {"status": "degraded", "reason": "disconnected"},
            "queue": {"status": "ok", "reason": ""},
        }
