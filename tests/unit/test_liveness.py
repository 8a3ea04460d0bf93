"""The watchdog's liveness registry: deadlines per loop, with an injected clock."""

from __future__ import annotations

import pytest

from agent.daemon.liveness import Liveness


def _registry() -> Liveness:
    liveness = Liveness()
    liveness.register("mqtt", 3.0, now=100.0)
    liveness.register("inference", 5.0, now=100.0)
    return liveness


class TestLiveness:
    def test_registering_counts_as_a_beat(self) -> None:
        assert _registry().late(now=102.0) == []

    def test_a_loop_without_a_beat_past_its_deadline_is_late(self) -> None:
        liveness = _registry()
        liveness.beat("inference", now=103.5)
        assert liveness.late(now=103.5) == ["mqtt"]

    def test_each_loop_has_its_own_deadline(self) -> None:
        liveness = _registry()
        assert liveness.late(now=104.0) == ["mqtt"]
        assert liveness.late(now=106.0) == ["inference", "mqtt"]

    def test_a_beat_brings_a_late_loop_back(self) -> None:
        liveness = _registry()
        assert liveness.late(now=110.0) == ["inference", "mqtt"]
        liveness.beat("mqtt", now=110.0)
        liveness.beat("inference", now=110.0)
        assert liveness.late(now=110.0) == []

    def test_an_older_beat_does_not_move_the_last_one_back(self) -> None:
        liveness = _registry()
        liveness.beat("mqtt", now=105.0)
        liveness.beat("mqtt", now=101.0)
        assert liveness.late(now=107.0) == ["inference"]

    def test_an_unregistered_loop_is_not_watched(self) -> None:
        liveness = _registry()
        liveness.unregister("inference")
        assert liveness.names == ["mqtt"]
        assert liveness.late(now=200.0) == ["mqtt"]
        with pytest.raises(KeyError):
            liveness.beat("serial", now=1.0)

    def test_a_deadline_must_be_positive(self) -> None:
        with pytest.raises(ValueError, match="deadline"):
            Liveness().register("x", 0, now=0.0)
