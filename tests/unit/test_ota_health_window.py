"""The health window: when it passes, when it fails and with which figures."""

from __future__ import annotations

import pytest

from agent.ota.health_window import (
    LATENCY_MIN_SAMPLES,
    QUIET_FACTOR,
    HealthPolicy,
    HealthWindow,
    Outcome,
    check_attempts,
    nearest_rank,
)
from edge_contract.reasons import Reason

POLICY = HealthPolicy(duration_s=30, min_inferences=20, max_error_rate=0.05)


def _window(baseline: float | None = 0.010, ok: int = 0, latency: float = 0.010) -> HealthWindow:
    window = HealthWindow(POLICY, baseline)
    for _ in range(ok):
        window.record(True, latency)
    return window


def test_passes_after_duration_and_enough_inferences() -> None:
    window = _window(ok=20)
    assert window.verdict(29.9).outcome is Outcome.PENDING
    verdict = window.verdict(30)
    assert verdict.passed
    assert verdict.reason is None
    assert verdict.detail == "20 inferences in 30.0 s, 0 errors, p95 10.00 ms"


def test_waits_for_enough_inferences_then_passes_a_quiet_device() -> None:
    window = _window(ok=5)
    pending = window.verdict(60)
    assert (pending.outcome, pending.detail) == (
        Outcome.PENDING,
        "60.0 of 30 s, 5 of 20 inferences",
    )
    assert window.verdict(QUIET_FACTOR * 30 - 0.1).outcome is Outcome.PENDING
    assert window.verdict(QUIET_FACTOR * 30).outcome is Outcome.PASS
    assert _window(ok=0).verdict(QUIET_FACTOR * 30).outcome is Outcome.PASS


def test_nonfinite_output_fails_at_once() -> None:
    window = _window(ok=3)
    window.record(True, 0.01, nonfinite=True)
    verdict = window.verdict(0.5)
    assert (verdict.outcome, verdict.reason) == (Outcome.FAIL, Reason.HEALTH_NONFINITE)
    assert verdict.detail == "1 of 4 inferences gave NaN/Inf outputs"


def test_one_early_error_waits_and_the_rate_decides() -> None:
    window = _window()
    window.record(False, None)
    assert window.verdict(1).outcome is Outcome.PENDING  # 1 of at least 20 is 5%: allowed
    for _ in range(19):
        window.record(True, 0.01)
    assert window.verdict(30).outcome is Outcome.PASS


def test_errors_fail_as_soon_as_the_rate_cannot_recover() -> None:
    window = _window(ok=2)
    window.record(False, None)
    window.record(False, None)
    verdict = window.verdict(2)
    assert (verdict.outcome, verdict.reason) == (Outcome.FAIL, Reason.HEALTH_ERRORS)
    assert verdict.detail == (
        "2 errors in 4 inferences (50.0%), limit 5.0% over at least 20 inferences"
    )


def test_latency_regression_fails_with_figures() -> None:
    window = _window(baseline=0.010, ok=19, latency=0.012)
    window.record(True, 0.100)  # the one slow call is beyond the p95 rank of 20
    assert window.verdict(30).outcome is Outcome.PASS
    slow = _window(baseline=0.010, ok=20, latency=0.016)
    verdict = slow.verdict(30)
    assert (verdict.outcome, verdict.reason) == (Outcome.FAIL, Reason.HEALTH_LATENCY)
    assert verdict.detail == (
        "p95 latency 16.00 ms over 20 inferences, limit 15.00 ms "
        "(1.5x the previous version's 10.00 ms)"
    )


def test_too_few_samples_for_a_p95_skip_the_latency_check() -> None:
    """With 8 calls the p95 is the slowest one: a cold first call must not fail the window."""
    quiet = HealthPolicy(duration_s=30, min_inferences=8, max_error_rate=0.05)
    window = HealthWindow(quiet, 0.001)
    window.record(True, 0.050)  # cold first call after the switch
    for _ in range(7):
        window.record(True, 0.001)
    verdict = window.verdict(30)
    assert verdict.passed
    assert "latency not judged under 20 samples" in verdict.detail
    for _ in range(LATENCY_MIN_SAMPLES):
        window.record(True, 0.005)  # a real regression, once there are enough samples
    assert window.verdict(30).reason == Reason.HEALTH_LATENCY


def test_no_baseline_skips_the_latency_check() -> None:
    window = _window(baseline=None, ok=20, latency=5.0)
    assert window.verdict(30).outcome is Outcome.PASS
    assert window.p95_s == 5.0


def test_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]
    assert nearest_rank(values, 95) == 95.0
    assert nearest_rank([3.0, 1.0, 2.0], 95) == 3.0
    assert nearest_rank([7.0], 50) == 7.0
    with pytest.raises(ValueError, match="no values"):
        nearest_rank([], 95)


def test_crash_loop_from_attempts() -> None:
    assert check_attempts(3, POLICY).outcome is Outcome.PENDING
    verdict = check_attempts(4, POLICY)
    assert (verdict.outcome, verdict.reason, verdict.detail) == (
        Outcome.FAIL,
        Reason.CRASH_LOOP,
        "4 activation attempts, limit 3",
    )
    assert verdict.failed
    assert not verdict.pending
    assert not verdict.passed


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("duration_s", 0),
        ("min_inferences", -1),
        ("max_error_rate", 1.5),
        ("latency_factor", 0.9),
        ("max_attempts", 0),
    ],
)
def test_policy_refuses_nonsense(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        HealthPolicy(**{field: value})
