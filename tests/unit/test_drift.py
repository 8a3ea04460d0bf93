"""PSI, histogram and rolling-score arithmetic of agent.inference.drift."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import precision_score, recall_score

from agent.inference import drift

# Distributions over 2..12 bins, as positive weights (normalised by the functions under test).
weights = st.lists(st.floats(0.001, 1000.0), min_size=2, max_size=12)


class TestPsi:
    def test_hand_computed_two_bins(self) -> None:
        """[.5, .5] -> [.25, .75]: .25*ln2 + .25*ln1.5 = .25*ln3."""
        assert drift.psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.25 * math.log(3))

    def test_counts_and_fractions_agree(self) -> None:
        """Observed counts are normalised: 25/75 of 100 is the same as .25/.75."""
        assert drift.psi([0.5, 0.5], [25, 75]) == pytest.approx(drift.psi([1, 1], [0.25, 0.75]))

    def test_empty_observed_bin_is_floored_not_infinite(self) -> None:
        """An empty bin costs r*ln(r/eps)-ish: finite, and loud enough to read as drift."""
        eps = drift.EPSILON
        high, low = 1 / (1 + eps), eps / (1 + eps)  # [1, 0] floored and renormalised
        expected = (high - 0.5) * math.log(high / 0.5) + (low - 0.5) * math.log(low / 0.5)
        value = drift.psi([0.5, 0.5], [10, 0])
        assert value == pytest.approx(expected)
        assert drift.drift_level(value) == "significant"

    def test_reference_bin_that_is_zero(self) -> None:
        """A reference fraction of 0 (the digits card has some) is floored the same way."""
        assert math.isfinite(drift.psi([0.0, 1.0], [1, 99]))
        assert drift.psi([0.0, 1.0], [0, 100]) == pytest.approx(0.0)

    @given(weights)
    def test_identical_distributions_score_zero(self, reference: list[float]) -> None:
        assert drift.psi(reference, reference) == pytest.approx(0.0, abs=1e-12)

    @given(st.data())
    def test_non_negative_and_symmetric(self, data: st.DataObject) -> None:
        """Every term (o-r)*ln(o/r) is >= 0, and swapping o and r leaves each term unchanged."""
        reference = data.draw(weights)
        observed = data.draw(
            st.lists(st.floats(0.001, 1000.0), min_size=len(reference), max_size=len(reference))
        )
        forward = drift.psi(reference, observed)
        assert forward >= 0
        assert drift.psi(observed, reference) == pytest.approx(forward, rel=1e-9, abs=1e-12)

    def test_grows_with_the_shift(self) -> None:
        """Moving mass from one bin to the other raises PSI monotonically, from 0."""
        shifts = np.linspace(0, 0.45, 10)
        values = [drift.psi([0.5, 0.5], [0.5 - d, 0.5 + d]) for d in shifts]
        assert values[0] == pytest.approx(0.0)
        assert all(later > earlier for earlier, later in itertools.pairwise(values))

    @pytest.mark.parametrize(
        ("reference", "observed"),
        [
            ([0.5, 0.5], [1, 1, 1]),
            ([], []),
            ([0.5, 0.5], [0, 0]),
            ([-1, 2], [1, 1]),
            ([0.5, float("nan")], [1, 1]),
        ],
    )
    def test_invalid_inputs_name_the_problem(
        self, reference: list[float], observed: list[float]
    ) -> None:
        with pytest.raises(ValueError, match=r"bins|counts|array"):
            drift.psi(reference, observed)

    @pytest.mark.parametrize(
        ("value", "level"),
        [
            (0.0, "stable"),
            (0.0999, "stable"),
            (0.1, "moderate"),
            (0.25, "moderate"),
            (0.2501, "significant"),
            (3.0, "significant"),
        ],
    )
    def test_levels(self, value: float, level: str) -> None:
        assert drift.drift_level(value) == level


class TestHistogram:
    @given(st.lists(st.floats(0.0, 1.0), max_size=200))
    def test_matches_numpy_histogram_inside_the_edges(self, values: list[float]) -> None:
        edges = np.linspace(0.0, 1.0, 11)
        expected, _ = np.histogram(values, bins=edges)
        np.testing.assert_array_equal(drift.histogram_counts(values, edges), expected)

    def test_out_of_range_values_land_in_the_end_bins(self) -> None:
        counts = drift.histogram_counts([-0.5, 0.0, 0.49, 0.5, 1.0, 7.0, float("nan")], [0, 0.5, 1])
        assert counts.tolist() == [3, 3]

    def test_uneven_edges(self) -> None:
        counts = drift.histogram_counts([0.05, 0.15, 0.5, 0.95, 0.99], [0.0, 0.1, 0.9, 1.0])
        assert counts.tolist() == [1, 2, 2]

    @pytest.mark.parametrize("edges", [[0.0], [0.0, 0.0], [1.0, 0.5, 0.0]])
    def test_bad_edges(self, edges: list[float]) -> None:
        with pytest.raises(ValueError, match="ascending"):
            drift.histogram_counts([0.5], edges)

    def test_class_counts(self) -> None:
        assert drift.class_counts(np.array([2, 0, 2, 3]), 5).tolist() == [1, 0, 2, 1, 0]
        with pytest.raises(ValueError, match=r"0\.\.4"):
            drift.class_counts([5], 5)

    @pytest.mark.parametrize(
        ("value", "bucket"), [(0.0, 0), (0.001, 0), (0.0011, 1), (0.01, 1), (0.5, 2), (9.0, 3)]
    )
    def test_bucket_index_is_less_or_equal(self, value: float, bucket: int) -> None:
        """Prometheus buckets count values <= their bound; above every bound is +Inf."""
        assert drift.bucket_index(value, (0.001, 0.01, 1.0)) == bucket


class TestClassificationScores:
    def test_hand_computed(self) -> None:
        """truth 0 0 1 1 2, predicted 0 1 1 1 1: precision (1 + 2/4)/2, recall (1/2 + 1 + 0)/3."""
        accuracy, precision, recall = drift.classification_scores([0, 0, 1, 1, 2], [0, 1, 1, 1, 1])
        assert accuracy == pytest.approx(3 / 5)
        assert precision == pytest.approx((1 + 2 / 4) / 2)
        assert recall == pytest.approx((0.5 + 1 + 0) / 3)

    @given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), min_size=1, max_size=60))
    def test_agrees_with_scikit_learn(self, pairs: list[tuple[int, int]]) -> None:
        """Macro averages over the classes with support, as sklearn computes with ``labels=``."""
        truth = [t for t, _ in pairs]
        guess = [p for _, p in pairs]
        accuracy, precision, recall = drift.classification_scores(truth, guess)
        assert accuracy == pytest.approx(np.mean(np.array(truth) == np.array(guess)))
        assert precision == pytest.approx(
            precision_score(truth, guess, labels=sorted(set(guess)), average="macro")
        )
        assert recall == pytest.approx(
            recall_score(truth, guess, labels=sorted(set(truth)), average="macro")
        )

    def test_rejects_mismatched_lengths(self) -> None:
        with pytest.raises(ValueError, match="equal"):
            drift.classification_scores([0, 1], [0])
