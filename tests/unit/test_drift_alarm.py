"""agent.inference.drift_alarm: one event per threshold crossing, with hysteresis."""

from __future__ import annotations

import pytest

from agent.inference.drift_alarm import DriftAlarm, DriftCrossing


def scores(
    psi: float, signal: str = "class", version: str = "2"
) -> list[tuple[str, str, dict[str, float]]]:
    return [("digits", version, {signal: psi})]


def events(alarm: DriftAlarm, *values: float) -> list[str]:
    return [c.event for psi in values for c in alarm.update(scores(psi))]


def test_a_rise_above_the_threshold_is_one_event_with_its_fields() -> None:
    alarm = DriftAlarm(0.25)

    assert alarm.update(scores(0.05)) == []
    crossed = alarm.update(scores(0.4))

    assert crossed == [DriftCrossing("model_drift", "digits", "2", "class", 0.4, 0.25)]
    assert crossed[0].fields() == {
        "model": "digits",
        "version": "2",
        "signal": "class",
        "psi": 0.4,
        "threshold": 0.25,
    }


def test_staying_above_sends_nothing_more() -> None:
    assert events(DriftAlarm(0.25), 0.3, 0.5, 0.9, 0.26) == ["model_drift"]


def test_a_tie_at_the_threshold_is_not_drift() -> None:
    assert events(DriftAlarm(0.25), 0.25, 0.25) == []


def test_hovering_between_recovery_and_threshold_does_not_flap() -> None:
    """Above, just under, above again: one event, since the score never got back to stable."""
    assert events(DriftAlarm(0.25), 0.3, 0.2, 0.3, 0.11, 0.29) == ["model_drift"]


def test_recovery_below_the_stable_level_is_one_event_and_a_new_rise_is_a_new_crossing() -> None:
    assert events(DriftAlarm(0.25), 0.3, 0.09, 0.05, 0.3) == [
        "model_drift",
        "model_drift_recovered",
        "model_drift",
    ]


def test_a_low_threshold_recovers_under_half_of_it() -> None:
    alarm = DriftAlarm(0.08)

    assert alarm.recover_below == pytest.approx(0.04)
    assert events(alarm, 0.09, 0.05, 0.039) == ["model_drift", "model_drift_recovered"]


def test_signals_and_versions_are_separate() -> None:
    alarm = DriftAlarm(0.25)
    alarm.update(scores(0.3, signal="class"))

    crossed = alarm.update(
        [("digits", "2", {"class": 0.3, "confidence": 0.5}), ("digits", "3", {"class": 0.4})]
    )

    assert {(c.version, c.signal) for c in crossed} == {("2", "confidence"), ("3", "class")}


def test_a_version_no_longer_reported_is_forgotten() -> None:
    alarm = DriftAlarm(0.25)
    alarm.update(scores(0.3, version="2"))
    alarm.update(scores(0.01, version="3"))  # "2" is gone: no recovery event for it

    assert events(alarm, 0.3) == ["model_drift"]  # "2" back and drifting: a new crossing


def test_the_threshold_must_be_positive() -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        DriftAlarm(0.0)
