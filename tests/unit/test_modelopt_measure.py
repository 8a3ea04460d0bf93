"""Percentiles, accuracy and cosine similarity as the optimization report computes them."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.modelopt.measure import accuracy, mean_cosine, percentile

latencies = st.lists(st.floats(0.001, 1000.0, allow_nan=False), min_size=1, max_size=300)


def test_nearest_rank_percentiles_of_one_to_a_hundred() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # unsorted on purpose
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile(values, 1) == 1.0


def test_p99_of_few_runs_is_the_slowest() -> None:
    assert percentile([3.0, 1.0, 2.0], 99) == 3.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0


@given(values=latencies, q=st.floats(0.5, 100.0))
def test_percentile_is_an_observed_value_with_q_percent_at_or_below(
    values: list[float], q: float
) -> None:
    result = percentile(values, q)
    assert result in values
    at_or_below = sum(v <= result for v in values)
    assert at_or_below >= math.ceil(q / 100 * len(values))
    below = sum(v < result for v in values)
    assert below < math.ceil(q / 100 * len(values))


@given(values=latencies)
def test_p50_never_exceeds_p99(values: list[float]) -> None:
    assert percentile(values, 50) <= percentile(values, 99)


@pytest.mark.parametrize("q", [0.0, -1.0, 100.5])
def test_percentile_out_of_range_is_refused(q: float) -> None:
    with pytest.raises(ValueError, match="percentile"):
        percentile([1.0], q)


def test_percentile_of_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_accuracy_counts_top1_matches() -> None:
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]], dtype=np.float32)
    assert accuracy(scores, np.array([0, 1, 1, 1])) == 0.75


def test_accuracy_refuses_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="3 labels"):
        accuracy(np.zeros((2, 4), dtype=np.float32), np.zeros(3, dtype=np.int64))


def test_cosine_is_one_for_same_direction_and_zero_for_orthogonal() -> None:
    reference = np.array([[1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    assert mean_cosine(reference * 3, reference) == pytest.approx(1.0)
    orthogonal = np.array([[0.0, 1.0], [-2.0, 0.0]], dtype=np.float32)
    assert mean_cosine(orthogonal, reference) == pytest.approx(0.0)
    half = np.array([[1.0, 0.0], [-1.0, 0.0]], dtype=np.float32)
    assert mean_cosine(half, reference) == pytest.approx(0.5)


def test_cosine_of_a_zero_row_is_zero_not_nan() -> None:
    result = mean_cosine(np.zeros((1, 3), dtype=np.float32), np.ones((1, 3), dtype=np.float32))
    assert result == 0.0


def test_cosine_refuses_different_shapes() -> None:
    with pytest.raises(ValueError, match="differ"):
        mean_cosine(np.ones((2, 3)), np.ones((2, 4)))
