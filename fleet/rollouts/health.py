"""One device's inference health for one model version over a window, from its telemetry.

The agent reports, in every telemetry message, one ``ModelStats`` block per loaded (model,
version) with CUMULATIVE counters since that version loaded (requests, batches, errors by
kind, NaN/Inf outputs, feedback) and readings of its recent past (latency quantiles, drift
PSI per signal, rolling accuracy). ``device_health`` turns a device's samples into a
``DeviceHealth`` for the window ``[start, end]``: counters are the growth between the sample
that opens the window and the last one in it; the readings are the last sample's. Pure: no
IO, no clock (the caller gives the window).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from edge_contract.messages import InferenceReport, ModelStats
from fleet.rollouts.model import DeviceHealth

Sample = tuple[float, InferenceReport]  # (ts_epoch of the telemetry message, its inference)
P95 = "0.95"


def device_health(
    device_id: str,
    samples: Sequence[Sample],
    model: str,
    version: str,
    start: float,
    end: float,
) -> DeviceHealth | None:
    """``device_id``'s health for ``model@version`` over ``[start, end]``.

    The window opens at the newest sample at or before ``start`` (else the first one in the
    window) and closes at the newest one at or before ``end``; only samples that report this
    model version count. None when no sample inside the window reports it.
    """
    blocks = [
        (ts, block)
        for ts, report in sorted(samples, key=lambda sample: sample[0])
        if ts <= end and (block := report.block(model, version)) is not None
    ]
    if not any(ts >= start for ts, _ in blocks):
        return None
    opening = [block for ts, block in blocks if ts <= start][-1:]
    chain = opening + [block for ts, block in blocks if ts > start or not opening]
    totals = _growth(chain)
    last = chain[-1]
    return DeviceHealth(
        device_id=device_id,
        requests=totals.requests,
        batches=totals.batches,
        errors=totals.errors,
        nonfinite=totals.nonfinite,
        p95_s=last.quantile(P95),
        drift=last.drift,
        feedback=totals.feedback,
        accuracy=last.accuracy,
    )


@dataclass
class _Counters:
    """The cumulative counters a window takes the growth of (errors summed over kinds)."""

    requests: int = 0
    batches: int = 0
    errors: int = 0
    nonfinite: int = 0
    feedback: int = 0

    def add(self, block: ModelStats, since: ModelStats | None) -> None:
        """Add what ``block`` counted since ``since`` (everything, when None)."""
        base = since or ModelStats(model=block.model, version=block.version)
        self.requests += block.requests - base.requests
        self.batches += block.batches - base.batches
        self.errors += sum(block.errors.values()) - sum(base.errors.values())
        self.nonfinite += block.nonfinite_outputs - base.nonfinite_outputs
        self.feedback += (block.feedback or 0) - (base.feedback or 0)


def _growth(chain: list[ModelStats]) -> _Counters:
    """How much the counters grew along consecutive samples of one model version.

    A counter lower than in the sample before means the agent restarted (its counters start
    from zero again): that step counts the later sample's whole value.
    """
    totals = _Counters()
    for previous, current in pairwise(chain):
        totals.add(current, None if _restarted(previous, current) else previous)
    return totals


def _restarted(previous: ModelStats, current: ModelStats) -> bool:
    """Whether any cumulative counter went down between two samples."""
    pairs = [
        (previous.requests, current.requests),
        (previous.batches, current.batches),
        (previous.nonfinite_outputs, current.nonfinite_outputs),
        (previous.feedback or 0, current.feedback or 0),
        *((count, current.errors.get(kind, 0)) for kind, count in previous.errors.items()),
    ]
    return any(after < before for before, after in pairs)
