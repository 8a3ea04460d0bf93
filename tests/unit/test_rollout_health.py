"""fleet.rollouts.health: a device's window health from its cumulative telemetry samples."""

from __future__ import annotations

import pytest

from edge_contract.messages import InferenceReport
from fleet.rollouts.health import device_health
from fleet.rollouts.model import DeviceHealth


def report(*blocks: dict[str, object]) -> InferenceReport:
    return InferenceReport.model_validate({"models": list(blocks)})


def block(version: str = "2", **fields: object) -> dict[str, object]:
    return {"model": "digits", "version": version, **fields}


def health(
    samples: list[tuple[float, InferenceReport]], start: float = 100.0, end: float = 200.0
) -> DeviceHealth | None:
    return device_health("pi-01", samples, "digits", "2", start, end)


def test_counters_are_the_growth_from_the_sample_before_the_window_to_the_last_in_it() -> None:
    samples = [
        (90.0, report(block(requests=100, nonfinite_outputs=1, feedback=5))),
        (150.0, report(block(requests=150, nonfinite_outputs=2, feedback=8))),
        (190.0, report(block(requests=400, nonfinite_outputs=4, feedback=15))),
    ]

    result = health(samples)

    assert result == DeviceHealth(device_id="pi-01", requests=300, nonfinite=3, feedback=10)


def test_without_a_sample_before_the_window_it_opens_at_the_first_sample_in_it() -> None:
    samples = [
        (120.0, report(block(requests=10))),
        (180.0, report(block(requests=70))),
    ]

    assert health(samples) == DeviceHealth(device_id="pi-01", requests=60)


def test_samples_outside_the_window_are_ignored() -> None:
    samples = [
        (10.0, report(block(requests=1))),
        (90.0, report(block(requests=100))),  # opens the window
        (150.0, report(block(requests=130))),
        (250.0, report(block(requests=9000, nonfinite_outputs=50))),  # after the end
    ]

    assert health(samples) == DeviceHealth(device_id="pi-01", requests=30)


def test_the_samples_need_not_come_in_order() -> None:
    samples = [
        (150.0, report(block(requests=130))),
        (90.0, report(block(requests=100))),
    ]

    assert health(samples) == DeviceHealth(device_id="pi-01", requests=30)


def test_a_counter_that_went_down_is_an_agent_restart_and_counts_its_later_value() -> None:
    samples = [
        (90.0, report(block(requests=1000, errors={"InvalidInputError": 4}))),
        (130.0, report(block(requests=1100, errors={"InvalidInputError": 6}))),
        (140.0, report(block(requests=20, errors={"InvalidInputError": 1}))),  # restarted
        (190.0, report(block(requests=50, errors={"InvalidInputError": 3}))),
    ]

    result = health(samples)

    assert result is not None
    assert (result.requests, result.errors) == (100 + 20 + 30, 2 + 1 + 2)


def test_a_restart_is_seen_from_any_counter_even_when_requests_grew_past_the_old_value() -> None:
    samples = [
        (90.0, report(block(requests=10, errors={"NonFiniteOutputError": 5}))),
        (150.0, report(block(requests=40))),  # the errors went away: counters restarted
    ]

    assert health(samples) == DeviceHealth(device_id="pi-01", requests=40)


def test_errors_are_summed_over_kinds_and_a_new_kind_counts_from_zero() -> None:
    samples = [
        (90.0, report(block(requests=10, errors={"InvalidInputError": 2}))),
        (
            150.0,
            report(block(requests=20, errors={"InvalidInputError": 5, "NonFiniteOutputError": 4})),
        ),
    ]

    result = health(samples)

    assert result is not None and result.errors == 3 + 4


def test_no_sample_of_that_version_is_none() -> None:
    samples = [(150.0, report(block(version="1", requests=500)))]

    assert health(samples) is None
    assert health([]) is None


def test_a_version_reported_only_before_the_window_is_none() -> None:
    samples = [
        (90.0, report(block(requests=500))),
        (150.0, report(block(version="1", requests=9))),  # rolled back: no "2" any more
    ]

    assert health(samples) is None


def test_other_models_and_versions_in_the_same_report_are_not_counted() -> None:
    samples = [
        (90.0, report(block(requests=10), block(version="1", requests=1000))),
        (
            150.0,
            report(
                block(requests=15),
                block(version="1", requests=5000),
                {"model": "other", "version": "2", "requests": 7000},
            ),
        ),
    ]

    result = health(samples)

    assert result is not None and result.requests == 5


def test_p95_drift_and_accuracy_are_the_last_samples_readings() -> None:
    samples = [
        (
            90.0,
            report(
                block(
                    latency_quantile_seconds={"0.5": 0.5, "0.95": 0.9},
                    drift_psi={"class": 3.0},
                    accuracy=0.1,
                )
            ),
        ),
        (
            150.0,
            report(
                block(
                    requests=40,
                    latency_quantile_seconds={"0.5": 0.001, "0.95": 0.004, "0.99": 0.01},
                    drift_psi={"class": 0.05, "confidence": 0.31},
                    feedback=25,
                    accuracy=0.92,
                )
            ),
        ),
    ]

    result = health(samples)

    assert result is not None
    assert result.p95_s == pytest.approx(0.004)
    assert result.drift == pytest.approx(0.31)  # the worst signal
    assert result.accuracy == pytest.approx(0.92)
    assert result.feedback == 25


def test_readings_the_agent_has_not_made_yet_are_none() -> None:
    samples = [(150.0, report(block(requests=3)))]

    result = health(samples)

    assert result is not None
    assert (result.p95_s, result.drift, result.accuracy) == (None, None, None)


def test_a_sample_exactly_at_the_start_opens_the_window_and_one_at_the_end_closes_it() -> None:
    samples = [
        (100.0, report(block(requests=10))),
        (200.0, report(block(requests=25))),
    ]

    assert health(samples) == DeviceHealth(device_id="pi-01", requests=15)
