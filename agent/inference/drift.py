"""Drift arithmetic: the population stability index (PSI) and the histograms it compares.

Pure numpy, no state. The monitor (``agent.inference.monitoring``) counts what a model
predicts over a sliding window and asks this module how far those counts are from the
reference distribution in the model card (``ReferenceStats.class_frequency`` for predicted
classes, ``confidence_edges``/``confidence_fractions`` for top-1 confidence). The other
arithmetic the monitor reports lives here too: latency bucket lookup and the rolling
accuracy, precision and recall of labelled feedback.

PSI between a reference distribution ``r`` and an observed one ``o`` (both fractions that sum
to 1 over the same bins) is ``sum((o - r) * ln(o / r))``. Every term is >= 0 (``o - r`` and
``ln(o / r)`` always have the same sign), so PSI is >= 0 and 0 only when the two agree. The
conventional reading: below 0.1 stable, 0.1 to 0.25 moderate shift, above 0.25 significant.

Empty bins: ``ln(o / r)`` is infinite when a bin is empty on one side, so both
distributions are floored at ``EPSILON`` (then renormalised to sum to 1) before the sum.
1e-4 sits below the resolution of the monitor's window (one prediction in 1000 is 1e-3), so
the floor never hides a bin that holds even a single observation, while it bounds what one
empty bin can contribute: a reference bin of fraction ``r`` that is empty in the window adds
about ``r * ln(r / 1e-4)`` (0.69 for r = 0.1), which is a loud but finite signal.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

EPSILON = 1e-4
STABLE_BELOW = 0.1
SIGNIFICANT_ABOVE = 0.25

DriftLevel = Literal["stable", "moderate", "significant"]


def as_fractions(counts: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Counts (or unnormalised weights) per bin as fractions summing to 1.

    ``ValueError`` for negative or non-finite entries, or when everything is zero.
    """
    values = np.asarray(counts, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"expected a non-empty 1-D array of counts, got shape {values.shape}")
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError(f"counts must be finite and >= 0, got {values.tolist()}")
    total = float(values.sum())
    if total == 0:
        raise ValueError("counts are all zero: no distribution to compare")
    fractions: npt.NDArray[np.float64] = values / total
    return fractions


def _floored(fractions: npt.NDArray[np.float64], epsilon: float) -> npt.NDArray[np.float64]:
    floored: npt.NDArray[np.float64] = np.maximum(fractions, epsilon)
    renormalised: npt.NDArray[np.float64] = floored / floored.sum()
    return renormalised


def psi(reference: npt.ArrayLike, observed: npt.ArrayLike, *, epsilon: float = EPSILON) -> float:
    """Population stability index of ``observed`` against ``reference``.

    Both are counts or fractions per bin, in the same bin order; each is normalised to sum
    to 1, then floored at ``epsilon`` (see the module docstring). ``ValueError`` if the bin
    counts differ or either side is empty.
    """
    if not 0 < epsilon < 1:
        raise ValueError(f"epsilon must be in (0, 1), got {epsilon}")
    expected = as_fractions(reference)
    actual = as_fractions(observed)
    if expected.shape != actual.shape:
        raise ValueError(
            f"reference has {expected.size} bins, observed has {actual.size}: they must match"
        )
    expected = _floored(expected, epsilon)
    actual = _floored(actual, epsilon)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def drift_level(value: float) -> DriftLevel:
    """The conventional reading of a PSI value."""
    if value < STABLE_BELOW:
        return "stable"
    if value <= SIGNIFICANT_ABOVE:
        return "moderate"
    return "significant"


def histogram_counts(values: npt.ArrayLike, edges: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """How many ``values`` fall in each bin delimited by ``edges`` (ascending).

    Bins are half open ``[e_i, e_i+1)`` except the last, which includes its right edge, as
    ``numpy.histogram`` does. Values outside the edges count in the nearest end bin rather
    than vanishing: a drift score must see every observation. NaN values are not counted.
    """
    bounds = np.asarray(edges, dtype=np.float64)
    if bounds.ndim != 1 or bounds.size < 2 or np.any(np.diff(bounds) <= 0):
        raise ValueError(f"edges must be at least two strictly ascending values, got {bounds}")
    data = np.asarray(values, dtype=np.float64).ravel()
    data = data[~np.isnan(data)]
    bins = bounds.size - 1
    index = np.clip(np.searchsorted(bounds, data, side="right") - 1, 0, bins - 1)
    return np.bincount(index, minlength=bins).astype(np.int64)


def class_counts(predicted: npt.ArrayLike, classes: int) -> npt.NDArray[np.int64]:
    """How many times each class index in ``0..classes-1`` was predicted."""
    indices = np.asarray(predicted, dtype=np.int64).ravel()
    if indices.size and (indices.min() < 0 or indices.max() >= classes):
        raise ValueError(
            f"class indices must be in 0..{classes - 1}, got {indices.min()}..{indices.max()}"
        )
    return np.bincount(indices, minlength=classes).astype(np.int64)


def bucket_index(value: float, upper_bounds: Sequence[float]) -> int:
    """The Prometheus-style bucket of ``value``: the first bound >= it, or len (+Inf)."""
    return bisect.bisect_left(upper_bounds, value)


def classification_scores(
    truth: npt.ArrayLike, predicted: npt.ArrayLike
) -> tuple[float, float, float]:
    """Accuracy, macro precision and macro recall of class indices (same length, non-empty).

    Precision averages over the classes predicted at least once, recall over the classes
    present in ``truth``: a class with no support has no defined score, and counting it as 0
    would punish a window for what it did not happen to contain.
    """
    actual = np.asarray(truth, dtype=np.int64)
    guess = np.asarray(predicted, dtype=np.int64)
    if actual.shape != guess.shape or actual.ndim != 1 or actual.size == 0:
        raise ValueError(f"need two equal non-empty 1-D arrays, got {actual.shape} {guess.shape}")
    hits = actual == guess
    precision = [hits[guess == cls].mean() for cls in np.unique(guess)]
    recall = [hits[actual == cls].mean() for cls in np.unique(actual)]
    return float(hits.mean()), float(np.mean(precision)), float(np.mean(recall))
