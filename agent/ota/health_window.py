"""The health window after an activation: is the new model good enough to commit?

Pure: the caller feeds each inference outcome (``record``) and asks for a ``verdict`` with
the seconds elapsed since the switch; no clock, no IO, no numpy.

Rules (``HealthPolicy``):

- Any NaN/Inf output fails at once (``health_nonfinite``).
- Errors fail as soon as the error rate can no longer end within ``max_error_rate``: the
  rate is counted over ``max(inferences, min_inferences)``, so one early error among few
  inferences does not fail a window that would still pass (``health_errors``).
- The window decides once ``duration_s`` has passed AND ``min_inferences`` came. If the
  duration is over but too few inferences came (a quiet device), it keeps waiting up to
  ``QUIET_FACTOR`` times the duration and then decides on what it has: no traffic is not
  evidence against the model, and waiting forever would pin the update.
- When it decides, the p95 latency (nearest rank) of the successful inferences may be at
  most ``latency_factor`` times the previous version's p95 (``health_latency``); without a
  baseline, or with fewer than ``LATENCY_MIN_SAMPLES`` latency samples (where a p95 is only
  the slowest call), that check is skipped and the summary says so.
- Crash loops are judged from the activation attempts that the slot state counts across
  restarts: ``check_attempts`` fails with ``crash_loop`` above ``max_attempts``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

from edge_contract.reasons import Reason

QUIET_FACTOR = 10
# Below this many samples a p95 is just the slowest call (one cold start after the switch
# would fail the window), so the latency check waits for at least this many.
LATENCY_MIN_SAMPLES = 20


@dataclass(frozen=True)
class HealthPolicy:
    """When a newly activated model counts as healthy."""

    duration_s: float = 30.0
    min_inferences: int = 20
    max_error_rate: float = 0.05
    latency_factor: float = 1.5
    max_attempts: int = 3

    def __post_init__(self) -> None:
        if not self.duration_s > 0:
            raise ValueError(f"duration_s must be > 0, not {self.duration_s}")
        if self.min_inferences < 0:
            raise ValueError(f"min_inferences must be >= 0, not {self.min_inferences}")
        if not 0 <= self.max_error_rate <= 1:
            raise ValueError(f"max_error_rate must be within [0, 1], not {self.max_error_rate}")
        if not self.latency_factor >= 1:
            raise ValueError(f"latency_factor must be >= 1, not {self.latency_factor}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, not {self.max_attempts}")


class Outcome(StrEnum):
    PENDING = "pending"
    PASS = "pass"  # noqa: S105 (a verdict, not a password)
    FAIL = "fail"


@dataclass(frozen=True)
class Verdict:
    """The window's judgement; ``reason`` is set for FAIL, ``detail`` gives the figures."""

    outcome: Outcome
    detail: str
    reason: Reason | None = None

    @property
    def pending(self) -> bool:
        return self.outcome is Outcome.PENDING

    @property
    def passed(self) -> bool:
        return self.outcome is Outcome.PASS

    @property
    def failed(self) -> bool:
        return self.outcome is Outcome.FAIL


def nearest_rank(values: list[float], percent: float) -> float:
    """The nearest-rank percentile of ``values`` (non-empty), e.g. ``percent=95``."""
    if not values:
        raise ValueError("nearest_rank of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


def check_attempts(attempts: int, policy: HealthPolicy) -> Verdict:
    """FAIL with ``crash_loop`` when more activations were started than the policy allows."""
    if attempts > policy.max_attempts:
        return Verdict(
            Outcome.FAIL,
            f"{attempts} activation attempts, limit {policy.max_attempts}",
            Reason.CRASH_LOOP,
        )
    return Verdict(Outcome.PENDING, f"attempt {attempts} of {policy.max_attempts}")


@dataclass
class HealthWindow:
    """Counts the inferences of one activation and judges them."""

    policy: HealthPolicy
    baseline_p95_s: float | None
    inferences: int = field(default=0, init=False)
    errors: int = field(default=0, init=False)
    nonfinite: int = field(default=0, init=False)
    latencies_s: list[float] = field(default_factory=list, init=False)

    def record(self, ok: bool, latency_s: float | None, nonfinite: bool = False) -> None:
        """One inference: ``ok`` False for an error; ``nonfinite`` for a NaN/Inf output."""
        self.inferences += 1
        if not ok:
            self.errors += 1
        if nonfinite:
            self.nonfinite += 1
        if ok and latency_s is not None and math.isfinite(latency_s) and latency_s >= 0:
            self.latencies_s.append(latency_s)

    @property
    def p95_s(self) -> float | None:
        """p95 latency of the successful inferences so far (the next version's baseline)."""
        return nearest_rank(self.latencies_s, 95) if self.latencies_s else None

    def verdict(self, elapsed_s: float) -> Verdict:
        """PENDING until the window can decide; then PASS or FAIL with the figures."""
        if self.nonfinite:
            return self._fail(
                Reason.HEALTH_NONFINITE,
                f"{self.nonfinite} of {self.inferences} inferences gave NaN/Inf outputs",
            )
        errors = self._errors_verdict()
        if errors is not None:
            return errors
        if not self._can_decide(elapsed_s):
            return Verdict(Outcome.PENDING, self._progress(elapsed_s))
        latency = self._latency_verdict()
        if latency is not None:
            return latency
        return Verdict(Outcome.PASS, self._summary(elapsed_s))

    def _can_decide(self, elapsed_s: float) -> bool:
        if elapsed_s < self.policy.duration_s:
            return False
        enough = self.inferences >= self.policy.min_inferences
        return enough or elapsed_s >= QUIET_FACTOR * self.policy.duration_s

    def _errors_verdict(self) -> Verdict | None:
        counted = max(self.inferences, self.policy.min_inferences, 1)
        if self.errors / counted <= self.policy.max_error_rate:
            return None
        rate = self.errors / max(self.inferences, 1)
        return self._fail(
            Reason.HEALTH_ERRORS,
            f"{self.errors} errors in {self.inferences} inferences ({rate:.1%}), "
            f"limit {self.policy.max_error_rate:.1%} over at least "
            f"{self.policy.min_inferences} inferences",
        )

    def _latency_verdict(self) -> Verdict | None:
        p95 = self.p95_s
        if self.baseline_p95_s is None or p95 is None:
            return None
        if len(self.latencies_s) < LATENCY_MIN_SAMPLES:
            return None
        limit = self.baseline_p95_s * self.policy.latency_factor
        if p95 <= limit:
            return None
        return self._fail(
            Reason.HEALTH_LATENCY,
            f"p95 latency {p95 * 1000:.2f} ms over {len(self.latencies_s)} inferences, "
            f"limit {limit * 1000:.2f} ms ({self.policy.latency_factor}x the previous "
            f"version's {self.baseline_p95_s * 1000:.2f} ms)",
        )

    def _fail(self, reason: Reason, detail: str) -> Verdict:
        return Verdict(Outcome.FAIL, detail, reason)

    def _progress(self, elapsed_s: float) -> str:
        return (
            f"{elapsed_s:.1f} of {self.policy.duration_s:g} s, "
            f"{self.inferences} of {self.policy.min_inferences} inferences"
        )

    def _summary(self, elapsed_s: float) -> str:
        p95 = self.p95_s
        latency = "no latency samples" if p95 is None else f"p95 {p95 * 1000:.2f} ms"
        if p95 is not None and len(self.latencies_s) < LATENCY_MIN_SAMPLES:
            latency += f" (latency not judged under {LATENCY_MIN_SAMPLES} samples)"
        return f"{self.inferences} inferences in {elapsed_s:.1f} s, {self.errors} errors, {latency}"
