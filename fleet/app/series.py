"""A device's telemetry history as chart series: stored rows -> at most ``points`` buckets. Pure.

``downsample`` splits ``[since, until]`` into ``points`` equal buckets and, for each bucket that
holds a sample, takes the mean (and the max where a peak matters) of the host readings (CPU %,
memory %, the hottest temperature sensor) and, per model, of its p95 latency, request rate,
worst drift PSI and accuracy. The rows are stored JSON, read defensively: a reading that is
missing or not a finite number is skipped, never guessed.

The request rate comes from the cumulative ``requests`` counter of a model version: the
difference between two consecutive samples of the same version over the time between them.
A counter that went down (the agent restarted, the version reloaded) starts again without a
rate for that sample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import JsonValue

from edge_contract.controller import (
    JsonObject,
)
from edge_contract.http_api import (
    ModelBucket,
    ModelSeries,
    TelemetryBucket,
    TelemetrySeriesReply,
)
from fleet.records import TelemetryRow


@dataclass
class _Values:
    """The readings of one quantity in one bucket."""

    seen: list[float] = field(default_factory=list)

    def add(self, value: float | None) -> None:
        if value is not None:
            self.seen.append(value)

    def mean(self) -> float | None:
        return math.fsum(self.seen) / len(self.seen) if self.seen else None

    def max(self) -> float | None:
        return max(self.seen) if self.seen else None


@dataclass
class _ModelAcc:
    p95: _Values = field(default_factory=_Values)
    rate: _Values = field(default_factory=_Values)
    drift: _Values = field(default_factory=_Values)
    accuracy: _Values = field(default_factory=_Values)

    def bucket(self) -> ModelBucket:
        return ModelBucket(
            p95_s=self.p95.mean(),
            p95_max_s=self.p95.max(),
            requests_per_s=self.rate.mean(),
            drift_psi=self.drift.mean(),
            accuracy=self.accuracy.mean(),
        )


@dataclass
class _Bucket:
    samples: int = 0
    cpu: _Values = field(default_factory=_Values)
    memory: _Values = field(default_factory=_Values)
    temperature: _Values = field(default_factory=_Values)
    models: dict[str, _ModelAcc] = field(default_factory=dict)


def downsample(
    device_id: str,
    rows: Sequence[TelemetryRow],
    *,
    since: float,
    until: float,
    points: int,
    truncated: bool = False,
) -> TelemetrySeriesReply:
    """``rows`` (oldest first, each within ``[since, until]``) in at most ``points`` buckets.

    Raises:
        ValueError: ``until`` is not after ``since``, or ``points`` is below 1.
    """
    if not until > since or points < 1:
        raise ValueError(f"an empty range [{since}, {until}] or {points} points")
    step = (until - since) / points
    buckets: dict[int, _Bucket] = {}
    versions: dict[str, list[str]] = {}
    last_count: dict[tuple[str, str], tuple[float, float]] = {}
    for row in rows:
        index = min(points - 1, max(0, int((row.ts - since) / step)))
        bucket = buckets.setdefault(index, _Bucket())
        bucket.samples += 1
        _host(bucket, row.body)
        for name, version, block in _blocks(row.body):
            known = versions.setdefault(name, [])
            if version not in known:
                known.append(version)
            acc = bucket.models.setdefault(name, _ModelAcc())
            _model(acc, block, row.ts, last_count, (name, version))
    order = sorted(buckets)
    return TelemetrySeriesReply(
        device_id=device_id,
        since=since,
        until=until,
        step_s=step,
        samples=len(rows),
        truncated=truncated,
        buckets=[_device_bucket(since + i * step, buckets[i]) for i in order],
        models=[
            ModelSeries(
                model=name,
                versions=known,
                buckets=[_model_bucket(buckets[i], name) for i in order],
            )
            for name, known in sorted(versions.items())
        ],
    )


def _device_bucket(at: float, bucket: _Bucket) -> TelemetryBucket:
    return TelemetryBucket(
        at=at,
        samples=bucket.samples,
        cpu_percent=bucket.cpu.mean(),
        cpu_percent_max=bucket.cpu.max(),
        memory_percent=bucket.memory.mean(),
        memory_percent_max=bucket.memory.max(),
        temperature_c=bucket.temperature.mean(),
        temperature_c_max=bucket.temperature.max(),
    )


def _model_bucket(bucket: _Bucket, name: str) -> ModelBucket | None:
    acc = bucket.models.get(name)
    return None if acc is None else acc.bucket()


def _host(bucket: _Bucket, body: JsonObject) -> None:
    bucket.cpu.add(_number(_object(body.get("cpu")).get("percent")))
    bucket.memory.add(_number(_object(body.get("memory")).get("used_percent")))
    sensors = [_number(v) for v in _object(body.get("temperatures_c")).values()]
    readings = [t for t in sensors if t is not None]
    bucket.temperature.add(max(readings) if readings else None)


def _blocks(body: JsonObject) -> list[tuple[str, str, JsonObject]]:
    """(model, version, block) of each block of ``inference.models`` that names both."""
    models = _object(body.get("inference")).get("models")
    found = []
    for block in map(_object, models if isinstance(models, list) else []):
        name, version = block.get("model"), block.get("version")
        if isinstance(name, str) and isinstance(version, str):
            found.append((name, version, block))
    return found


def _model(
    acc: _ModelAcc,
    block: JsonObject,
    ts: float,
    last_count: dict[tuple[str, str], tuple[float, float]],
    key: tuple[str, str],
) -> None:
    acc.p95.add(_number(_object(block.get("latency_quantile_seconds")).get("0.95")))
    drifts = [d for d in map(_number, _object(block.get("drift_psi")).values()) if d is not None]
    acc.drift.add(max(drifts) if drifts else None)
    acc.accuracy.add(_number(block.get("accuracy")))
    requests = _number(block.get("requests"))
    if requests is None:
        return
    previous = last_count.get(key)
    last_count[key] = (ts, requests)
    if previous is not None and ts > previous[0] and requests >= previous[1]:
        acc.rate.add((requests - previous[1]) / (ts - previous[0]))


def _object(value: JsonValue | None) -> JsonObject:
    return value if isinstance(value, dict) else {}


def _number(value: JsonValue | None) -> float | None:
    """A finite number as float; None for anything else (booleans included)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None
