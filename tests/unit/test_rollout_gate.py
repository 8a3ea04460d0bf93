"""The health gate (fleet.rollouts.gate): aggregation and each metric's verdict, including
insufficient data, metrics nobody reports, ties at the threshold and the missing baseline."""

from __future__ import annotations

import pytest

from fleet.rollouts.gate import aggregate, evaluate
from fleet.rollouts.model import DeviceHealth, GateResult, GroupHealth, MetricVerdict, Thresholds

T = Thresholds()  # p95 +20%, error rate +1pt, drift 0.2, accuracy drop 2pt, 20 requests/feedback


def group(**figures: float | int | None) -> GroupHealth:
    base: dict[str, float | int | None] = {
        "devices": 3,
        "requests": 300,
        "batches": 300,
        "p95_s": 0.010,
    }
    return GroupHealth.model_validate({**base, **figures})


def verdict(result: GateResult, metric: str) -> MetricVerdict:
    return next(v for v in result.verdicts if v.metric == metric)


def test_aggregate_sums_takes_median_p95_worst_drift_and_weighted_accuracy() -> None:
    devices = [
        DeviceHealth(device_id="a", requests=100, errors=1, nonfinite=2, p95_s=0.010, drift=0.1),
        DeviceHealth(device_id="b", requests=50, p95_s=0.030, feedback=30, accuracy=0.9),
        DeviceHealth(device_id="c", requests=10, p95_s=0.020, drift=0.3, feedback=10, accuracy=0.5),
        DeviceHealth(device_id="d", requests=0, p95_s=9.0),  # served nothing: its p95 is stale
    ]
    g = aggregate(devices)
    assert (g.devices, g.requests, g.errors, g.nonfinite, g.feedback) == (4, 160, 1, 2, 40)
    assert g.p95_s == pytest.approx(0.020)
    assert g.drift == 0.3
    assert g.accuracy == pytest.approx((30 * 0.9 + 10 * 0.5) / 40)
    assert aggregate([]) == GroupHealth()


def test_everything_healthy_passes() -> None:
    result = evaluate(group(), group(), T)
    assert result.outcome == "pass"
    assert {v.metric: v.verdict for v in result.verdicts} == {
        "p95_regression": "pass",
        "error_rate": "pass",
        "nonfinite": "pass",
        "drift": "not_reported",
        "accuracy_drop": "not_reported",
    }


# -- p95 ---------------------------------------------------------------------------------------


def test_p95_regression_fails_naming_both_figures_and_the_threshold() -> None:
    result = evaluate(group(p95_s=0.0135), group(p95_s=0.010), T)
    v = verdict(result, "p95_regression")
    assert (result.outcome, v.verdict) == ("fail", "fail")
    assert v.value == pytest.approx(0.35)
    assert v.detail == "p95 regression +35% > +20% (13.5 ms vs 10 ms)"


def test_p95_of_too_few_batches_is_insufficient_however_many_rows_they_held() -> None:
    # 400 rows in 39 batches: the agent's p95 would still be its first, cold batches.
    few = verdict(
        evaluate(group(batches=39, requests=400, p95_s=0.5), group(), T), "p95_regression"
    )
    assert few.verdict == "insufficient"
    assert "39 batches" in few.detail and "20 and 40 needed on each" in few.detail
    enough = verdict(evaluate(group(batches=40), group(), T), "p95_regression")
    assert enough.verdict == "pass"


def test_sub_millisecond_latencies_keep_three_significant_figures() -> None:
    v = verdict(evaluate(group(p95_s=0.0000412), group(p95_s=0.0000401), T), "p95_regression")
    assert v.detail.endswith("(0.0412 ms vs 0.0401 ms)")


def test_p95_faster_passes() -> None:
    v = verdict(evaluate(group(p95_s=0.008), group(p95_s=0.010), T), "p95_regression")
    assert v.verdict == "pass"
    assert v.detail.startswith("p95 regression -20% <= +20%")


def test_p95_tie_at_the_threshold_passes() -> None:
    v = verdict(evaluate(group(p95_s=0.012), group(p95_s=0.010), T), "p95_regression")
    assert v.verdict == "pass"
    # 0.0108 / 0.009 - 1 is 0.20000000000000018 in floats: still a tie
    v = verdict(evaluate(group(p95_s=0.0108), group(p95_s=0.009), T), "p95_regression")
    assert v.verdict == "pass"
    v = verdict(evaluate(group(p95_s=0.0121), group(p95_s=0.010), T), "p95_regression")
    assert v.verdict == "fail"


def test_p95_without_baseline_is_insufficient_never_a_pass() -> None:
    result = evaluate(group(), None, T)
    v = verdict(result, "p95_regression")
    assert v.verdict == "insufficient"
    assert "no device on the previous version" in v.detail
    assert result.outcome == "insufficient"


@pytest.mark.parametrize(
    ("candidate", "baseline"),
    [
        (group(requests=19), group()),
        (group(), group(requests=19)),
        (group(p95_s=None), group()),
        (group(), group(p95_s=None)),
        (group(), group(p95_s=0.0)),
    ],
)
def test_p95_with_too_few_requests_or_no_figure_is_insufficient(
    candidate: GroupHealth, baseline: GroupHealth
) -> None:
    assert verdict(evaluate(candidate, baseline, T), "p95_regression").verdict == "insufficient"


def test_p95_ratio_that_overflows_still_fails_and_stays_json_safe() -> None:
    result = evaluate(group(p95_s=1e300), group(p95_s=1e-300), T)
    v = verdict(result, "p95_regression")
    assert (v.verdict, v.value) == ("fail", 1e12)
    assert GateResult.model_validate_json(result.model_dump_json()) == result


# -- error rate --------------------------------------------------------------------------------


def test_error_rate_fails_above_the_baseline_by_more_than_the_threshold() -> None:
    v = verdict(evaluate(group(requests=95, errors=5), group(), T), "error_rate")
    assert v.verdict == "fail"
    assert v.value == pytest.approx(0.05)
    assert v.detail == "error rate +5pt > +1pt (5.0% vs 0.0%)"


def test_error_rate_is_relative_to_the_baseline_and_a_tie_passes() -> None:
    # 6% vs 5%: exactly +1pt over the previous version
    v = verdict(
        evaluate(group(requests=94, errors=6), group(requests=95, errors=5), T), "error_rate"
    )
    assert v.verdict == "pass"
    assert v.value == pytest.approx(0.01)


def test_error_rate_insufficient_with_few_calls_and_base_zero_without_baseline() -> None:
    v = verdict(evaluate(group(requests=10, errors=5), group(), T), "error_rate")
    assert v.verdict == "insufficient"
    v = verdict(evaluate(group(requests=100), None, T), "error_rate")
    assert (v.verdict, v.baseline) == ("pass", 0.0)


# -- non-finite outputs ------------------------------------------------------------------------


def test_any_nonfinite_against_a_clean_baseline_fails_even_with_few_requests() -> None:
    v = verdict(evaluate(group(requests=3, nonfinite=1), group(), T), "nonfinite")
    assert v.verdict == "fail"
    assert "non-finite outputs: 1 in 3 requests vs 0 in 300" in v.detail
    assert verdict(evaluate(group(nonfinite=1), None, T), "nonfinite").verdict == "fail"


def test_nonfinite_against_a_baseline_that_has_them_too() -> None:
    same = evaluate(group(nonfinite=3), group(nonfinite=3), T)
    assert verdict(same, "nonfinite").verdict == "pass"  # a tie: no worse than before
    worse = evaluate(group(nonfinite=9), group(nonfinite=3), T)
    assert verdict(worse, "nonfinite").verdict == "fail"
    few = evaluate(group(requests=5, nonfinite=1), group(nonfinite=3), T)
    assert verdict(few, "nonfinite").verdict == "insufficient"


def test_nonfinite_clean_but_few_requests_is_insufficient() -> None:
    v = verdict(evaluate(group(requests=5), group(), T), "nonfinite")
    assert v.verdict == "insufficient"


# -- drift ---------------------------------------------------------------------------------------


def test_drift_pass_fail_tie_and_not_reported() -> None:
    assert verdict(evaluate(group(drift=0.1), group(drift=0.05), T), "drift").verdict == "pass"
    fail = verdict(evaluate(group(drift=0.35), group(drift=0.05), T), "drift")
    assert fail.verdict == "fail"
    assert fail.detail == "drift 0.35 > 0.2 (0.05 on the previous)"
    assert verdict(evaluate(group(drift=0.2), group(drift=0.05), T), "drift").verdict == "pass"
    # above the threshold, but the previous version drifts as much: the data moved, not the model
    assert verdict(evaluate(group(drift=0.3), group(drift=0.4), T), "drift").verdict == "pass"
    assert verdict(evaluate(group(drift=0.3), group(), T), "drift").verdict == "fail"
    assert verdict(evaluate(group(), group(), T), "drift").verdict == "not_reported"
    assert verdict(evaluate(group(), group(drift=0.1), T), "drift").verdict == "not_reported"


# -- accuracy ------------------------------------------------------------------------------------


def test_accuracy_drop_pass_fail_tie_insufficient_and_not_reported() -> None:
    def acc(cand: float, base: float, feedback: int = 50) -> MetricVerdict:
        c = group(feedback=feedback, accuracy=cand)
        b = group(feedback=50, accuracy=base)
        return verdict(evaluate(c, b, T), "accuracy_drop")

    assert acc(0.90, 0.91).verdict == "pass"
    fail = acc(0.87, 0.90)
    assert fail.verdict == "fail"
    assert fail.detail == "accuracy drop +3pt > +2pt (87.0% vs 90.0%)"
    assert acc(0.88, 0.90).verdict == "pass"  # exactly 2 points: a tie
    assert acc(0.50, 0.90, feedback=19).verdict == "insufficient"
    assert verdict(evaluate(group(), group(), T), "accuracy_drop").verdict == "not_reported"
    no_base = evaluate(group(feedback=50, accuracy=0.9), None, T)
    assert verdict(no_base, "accuracy_drop").verdict == "insufficient"


# -- the outcome ---------------------------------------------------------------------------------


def test_fail_wins_over_insufficient() -> None:
    result = evaluate(group(requests=5, nonfinite=1), None, T)
    assert verdict(result, "p95_regression").verdict == "insufficient"
    assert result.outcome == "fail"


def test_result_round_trips_through_json() -> None:
    result = evaluate(group(p95_s=0.0135, drift=0.3), group(), T)
    assert GateResult.model_validate_json(result.model_dump_json()) == result
