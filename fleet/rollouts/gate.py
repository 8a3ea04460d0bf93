"""The health gate: devices' window health aggregated per side, then the new version (the
candidate) judged against the devices still on the previous version (the baseline), metric by
metric: p95 latency regression, error rate, non-finite outputs, drift and accuracy drop.

A metric with too few samples is ``insufficient``, never a pass; one that neither side reports
is ``not_reported``. A figure exactly at its threshold passes. docs/rollouts.md states the
same definitions for operators.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Literal

from fleet.rollouts.model import (
    DeviceHealth,
    GateResult,
    GroupHealth,
    Metric,
    MetricVerdict,
    Thresholds,
    Verdict,
)

# Ties at a threshold pass; this keeps float arithmetic (1.2 * x / x - 1 is a hair above
# 0.2) from turning a tie into a failure.
_EPSILON = 1e-9
_MAX_RATIO = 1e12


def aggregate(devices: Sequence[DeviceHealth]) -> GroupHealth:
    """Sums of the counters; p95 the median of the p95s of devices that served requests;
    drift the worst device's; accuracy the feedback-weighted mean."""
    p95s = [d.p95_s for d in devices if d.requests > 0 and d.p95_s is not None]
    drifts = [d.drift for d in devices if d.drift is not None]
    labelled = [(d.feedback, d.accuracy) for d in devices if d.feedback and d.accuracy is not None]
    weight = sum(feedback for feedback, _ in labelled)
    return GroupHealth(
        devices=len(devices),
        requests=sum(d.requests for d in devices),
        batches=sum(d.batches for d in devices),
        errors=sum(d.errors for d in devices),
        nonfinite=sum(d.nonfinite for d in devices),
        p95_s=statistics.median(p95s) if p95s else None,
        drift=max(drifts) if drifts else None,
        feedback=sum(d.feedback for d in devices),
        accuracy=sum(f * a for f, a in labelled) / weight if weight else None,
    )


def evaluate(candidate: GroupHealth, baseline: GroupHealth | None, t: Thresholds) -> GateResult:
    """Every metric's verdict; the outcome is ``fail`` if any fails, else ``insufficient``
    if any is, else ``pass``."""
    verdicts = (
        _p95(candidate, baseline, t),
        _error_rate(candidate, baseline, t),
        _nonfinite(candidate, baseline, t),
        _drift(candidate, baseline, t),
        _accuracy(candidate, baseline, t),
    )
    found = {v.verdict for v in verdicts}
    outcome: Literal["pass", "fail", "insufficient"] = "pass"
    if "fail" in found:
        outcome = "fail"
    elif "insufficient" in found:
        outcome = "insufficient"
    return GateResult(outcome=outcome, verdicts=verdicts, candidate=candidate, baseline=baseline)


def _exceeds(value: float, threshold: float) -> bool:
    return value > threshold + _EPSILON


def _verdict(
    metric: Metric,
    figures: tuple[float | None, float | None, float | None],
    threshold: float,
    verdict: Verdict,
    detail: str,
) -> MetricVerdict:
    candidate, baseline, value = figures
    return MetricVerdict(
        metric=metric,
        candidate=candidate,
        baseline=baseline,
        value=value,
        threshold=threshold,
        verdict=verdict,
        detail=detail,
    )


def _p95(c: GroupHealth, b: GroupHealth | None, t: Thresholds) -> MetricVerdict:
    limit = t.max_p95_regression
    base = b.p95_s if b is not None and _enough_batches(b, t) else None
    cand = c.p95_s if _enough_batches(c, t) else None
    if cand is None or base is None or base <= 0.0:
        detail = f"p95 regression: insufficient data ({_requests(c, b, t)})"
        figures = (c.p95_s, b.p95_s if b is not None else None, None)
        return _verdict("p95_regression", figures, limit, "insufficient", detail)
    # Clamped: a ratio that overflows to inf would not survive the state's JSON (inf -> null).
    value = min(cand / base - 1.0, _MAX_RATIO)
    failed = _exceeds(value, limit)
    detail = (
        f"p95 regression {_signed(value, '%')} {'>' if failed else '<='} {_signed(limit, '%')} "
        f"({_ms(cand)} vs {_ms(base)})"
    )
    verdict: Verdict = "fail" if failed else "pass"
    return _verdict("p95_regression", (cand, base, value), limit, verdict, detail)


def _enough_batches(g: GroupHealth, t: Thresholds) -> bool:
    return g.requests >= t.min_requests and g.batches >= t.min_batches


def _ms(seconds: float) -> str:
    """Three significant figures: a sub-millisecond model reads 0.0412 ms, not 0.0 ms."""
    return f"{seconds * 1000:.3g} ms"


def _requests(c: GroupHealth, b: GroupHealth | None, t: Thresholds) -> str:
    new = f"{c.requests} requests in {c.batches} batches on the new version"
    base = (
        "no device on the previous version"
        if b is None
        else f"{b.requests} in {b.batches} on the previous"
    )
    return f"{new}, {base}; {t.min_requests} and {t.min_batches} needed on each"


def _rate(g: GroupHealth) -> float:
    total = g.requests + g.errors
    return g.errors / total if total else 0.0


def _error_rate(c: GroupHealth, b: GroupHealth | None, t: Thresholds) -> MetricVerdict:
    limit = t.max_error_rate
    cand, base = _rate(c), _rate(b) if b is not None else 0.0
    value = cand - base
    if c.requests + c.errors < t.min_requests:
        detail = (
            f"error rate: insufficient data ({c.requests + c.errors} calls on the new version, "
            f"{t.min_requests} needed)"
        )
        return _verdict("error_rate", (None, base, None), limit, "insufficient", detail)
    failed = _exceeds(value, limit)
    detail = (
        f"error rate {_signed(value, 'pt')} {'>' if failed else '<='} {_signed(limit, 'pt')} "
        f"({cand:.1%} vs {base:.1%})"
    )
    verdict: Verdict = "fail" if failed else "pass"
    return _verdict("error_rate", (cand, base, value), limit, verdict, detail)


def _per_request(g: GroupHealth) -> float:
    return g.nonfinite / max(g.requests, 1)


def _nonfinite(c: GroupHealth, b: GroupHealth | None, t: Thresholds) -> MetricVerdict:
    base = _per_request(b) if b is not None else 0.0
    value = _per_request(c) - base
    figures = (_per_request(c), base, value)
    previous = (
        "no device on the previous version" if b is None else f"{b.nonfinite} in {b.requests}"
    )
    counts = f"{c.nonfinite} in {c.requests} requests vs {previous}"
    clean_baseline = b is None or b.nonfinite == 0
    # Any non-finite output fails against a clean baseline, however few the requests.
    worse = _exceeds(value, 0.0) and c.requests >= t.min_requests
    if c.nonfinite > 0 and (clean_baseline or worse):
        return _verdict("nonfinite", figures, 0.0, "fail", f"non-finite outputs: {counts}")
    if c.requests < t.min_requests:
        detail = f"non-finite outputs: insufficient data ({counts}; {t.min_requests} needed)"
        return _verdict("nonfinite", figures, 0.0, "insufficient", detail)
    return _verdict("nonfinite", figures, 0.0, "pass", f"non-finite outputs: {counts}")


def _drift(c: GroupHealth, b: GroupHealth | None, t: Thresholds) -> MetricVerdict:
    limit = t.max_drift
    base = b.drift if b is not None else None
    if c.drift is None:
        who = "either version" if base is None else "the new version"
        detail = f"drift: not reported by {who}"
        return _verdict("drift", (None, base, None), limit, "not_reported", detail)
    above = _exceeds(c.drift, limit)
    failed = above and (base is None or c.drift > base)
    previous = "none on the previous version" if base is None else f"{base:.3g} on the previous"
    relation = ">" if above else "<="
    detail = f"drift {c.drift:.3g} {relation} {limit:g} ({previous})"
    verdict: Verdict = "fail" if failed else "pass"
    return _verdict("drift", (c.drift, base, c.drift), limit, verdict, detail)


def _accuracy(c: GroupHealth, b: GroupHealth | None, t: Thresholds) -> MetricVerdict:
    limit = t.max_accuracy_drop
    base_feedback = b.feedback if b is not None else 0
    base = b.accuracy if b is not None else None
    if c.feedback == 0 and base_feedback == 0:
        detail = "accuracy: no labelled feedback on either version"
        return _verdict("accuracy_drop", (None, None, None), limit, "not_reported", detail)
    if min(c.feedback, base_feedback) < t.min_feedback or c.accuracy is None or base is None:
        detail = (
            f"accuracy drop: insufficient data ({c.feedback} labelled on the new version, "
            f"{base_feedback} on the previous; {t.min_feedback} needed on each)"
        )
        figures = (c.accuracy, base, None)
        return _verdict("accuracy_drop", figures, limit, "insufficient", detail)
    value = base - c.accuracy
    failed = _exceeds(value, limit)
    detail = (
        f"accuracy drop {_signed(value, 'pt')} {'>' if failed else '<='} {_signed(limit, 'pt')} "
        f"({c.accuracy:.1%} vs {base:.1%})"
    )
    verdict: Verdict = "fail" if failed else "pass"
    return _verdict("accuracy_drop", (c.accuracy, base, value), limit, verdict, detail)


def _signed(fraction: float, unit: str) -> str:
    """``0.35`` as ``+35%`` (or ``+35pt``): a sign, at most one decimal, no trailing zeros."""
    text = f"{fraction * 100:+.1f}".rstrip("0").rstrip(".")
    return ("+0" if text in ("+0", "-0") else text) + unit
