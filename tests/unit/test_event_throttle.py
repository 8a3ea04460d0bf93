"""EventThrottle: one event per key per interval, with the held-back ones counted."""

from __future__ import annotations

from agent.control.events import EventThrottle


class TestEventThrottle:
    def test_first_passes_then_held_then_counted(self) -> None:
        """Within the interval events are held and counted; the next admitted one carries it."""
        clock = [100.0]
        throttle = EventThrottle(60.0, now=lambda: clock[0])
        assert throttle.admit("m") == 0
        assert [throttle.admit("m") for _ in range(5)] == [None] * 5
        clock[0] += 59.9
        assert throttle.admit("m") is None
        clock[0] += 0.2
        assert throttle.admit("m") == 6
        assert throttle.admit("m") is None

    def test_keys_are_independent(self) -> None:
        """Another model (or version) is not held back by the first one's events."""
        clock = [0.0]
        throttle = EventThrottle(10.0, now=lambda: clock[0])
        assert throttle.admit(("a", "1")) == 0
        assert throttle.admit(("a", "2")) == 0
        assert throttle.admit(("a", "1")) is None
        assert throttle.admit(("b", "1")) == 0
