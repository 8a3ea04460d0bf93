"""Measuring a variant on this machine: latency percentiles and output quality.

Latency is timed one example at a time (the edge case: one request, one inference) after a
warm-up, with the session's thread count fixed, so variants are compared like for like.
Quality is top-1 accuracy against labels, or, for unlabelled data (embedding models), the
mean cosine similarity of each output row to the fp32 model's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fleet.modelopt.data import Dataset

Feeds = Mapping[str, np.ndarray]
RunOne = Callable[[Feeds], object]
WARMUP_RUNS = 10


@dataclass(frozen=True)
class Latency:
    """Single-example latency over ``runs`` timed runs, in milliseconds."""

    p50_ms: float
    p99_ms: float
    runs: int


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least ``q`` % of values at or below.

    Nearest rank always returns an observed latency (no interpolation between two runs).
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 < q <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], not {q}")
    ordered = sorted(values)
    rank = math.ceil(q / 100.0 * len(ordered))
    return ordered[rank - 1]


def time_single_examples(run_one: RunOne, dataset: Dataset, runs: int) -> Latency:
    """Warm up, then time ``runs`` single-example calls cycling through ``dataset``."""
    if runs < 1:
        raise ValueError(f"runs must be at least 1, not {runs}")
    examples = [dataset.rows(index, index + 1) for index in range(min(dataset.size, runs))]
    for index in range(WARMUP_RUNS):
        run_one(examples[index % len(examples)])
    elapsed: list[float] = []
    for index in range(runs):
        feeds = examples[index % len(examples)]
        start = time.perf_counter()
        run_one(feeds)
        elapsed.append((time.perf_counter() - start) * 1000.0)
    return Latency(p50_ms=percentile(elapsed, 50), p99_ms=percentile(elapsed, 99), runs=runs)


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of class scores ``outputs`` [N, classes] against integer ``labels``."""
    if outputs.ndim != 2 or len(outputs) != len(labels):
        raise ValueError(f"outputs {outputs.shape} do not match {len(labels)} labels")
    return float(np.mean(outputs.argmax(axis=1) == labels))


def mean_cosine(outputs: np.ndarray, reference: np.ndarray) -> float:
    """Mean cosine similarity between matching rows of ``outputs`` and ``reference``."""
    if outputs.shape != reference.shape:
        raise ValueError(f"outputs {outputs.shape} and reference {reference.shape} differ")
    a = outputs.reshape(len(outputs), -1).astype(np.float64)
    b = reference.reshape(len(reference), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = np.sum(a * b, axis=1) / np.maximum(norms, np.finfo(np.float64).tiny)
    return float(cosine.mean())
