"""A device's telemetry history as chart buckets (fleet.app.series, pure), and the store reads
and use cases behind the REST API's history routes (a SQLite file in tmp_path)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from edge_contract.http_api import (
    DevicesQuery,
    EventsQuery,
    TelemetryQuery,
)
from fleet.app.series import downsample
from fleet.app.usecases import FleetApp
from fleet.errors import FleetError, UnknownDeviceError
from fleet.records import TelemetryRow
from fleet.store import Inbound, SqliteFleetStore


def _body(
    cpu: float | None = None,
    memory: float | None = None,
    temps: dict[str, Any] | None = None,
    models: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if cpu is not None:
        body["cpu"] = {"percent": cpu}
    if memory is not None:
        body["memory"] = {"used_percent": memory}
    if temps is not None:
        body["temperatures_c"] = temps
    if models is not None:
        body["inference"] = {"models": models}
    return body


def _block(
    requests: int, p95: float | None = None, version: str = "1", **more: Any
) -> dict[str, Any]:
    block: dict[str, Any] = {"model": "digits", "version": version, "requests": requests, **more}
    if p95 is not None:
        block["latency_quantile_seconds"] = {"0.5": p95 / 2, "0.95": p95}
    return block


def test_rows_fall_into_equal_buckets_with_means_and_maxima() -> None:
    rows = [
        TelemetryRow(0.0, _body(cpu=10, memory=40, temps={"soc": 50, "board": 30})),
        TelemetryRow(4.0, _body(cpu=30, memory=60, temps={"soc": 54})),
        TelemetryRow(15.0, _body(cpu=80)),
    ]
    series = downsample("pi-1", rows, since=0.0, until=20.0, points=2)
    assert series.step_s == 10.0 and series.samples == 3 and not series.truncated
    first, second = series.buckets
    assert (first.at, first.samples) == (0.0, 2)
    assert (first.cpu_percent, first.cpu_percent_max) == (20.0, 30.0)
    assert (first.memory_percent, first.memory_percent_max) == (50.0, 60.0)
    # The hottest sensor of each sample: 50 then 54.
    assert (first.temperature_c, first.temperature_c_max) == (52.0, 54.0)
    assert (second.at, second.samples, second.cpu_percent) == (10.0, 1, 80.0)
    assert second.memory_percent is None and second.temperature_c is None
    assert series.models == []


def test_there_are_never_more_buckets_than_points_and_empty_ones_are_left_out() -> None:
    rows = [TelemetryRow(float(t), _body(cpu=t % 100)) for t in range(0, 10_000, 7)]
    series = downsample("pi-1", rows, since=0.0, until=10_000.0, points=120)
    assert len(series.buckets) == 120
    assert sum(b.samples for b in series.buckets) == len(rows)
    sparse = downsample("pi-1", rows[:3], since=0.0, until=10_000.0, points=1000)
    # Rows at 0, 7 and 14 s in 10 s buckets: two buckets, the empty ones left out.
    assert [(b.at, b.samples) for b in sparse.buckets] == [(0.0, 2), (10.0, 1)]


def test_a_row_on_the_ranges_end_lands_in_the_last_bucket() -> None:
    series = downsample("pi-1", [TelemetryRow(20.0, _body(cpu=5))], since=0.0, until=20.0, points=4)
    assert [b.at for b in series.buckets] == [15.0]


def test_model_readings_per_bucket_and_a_rate_from_the_request_counter() -> None:
    rows = [
        TelemetryRow(0.0, _body(models=[_block(100, 0.010, drift_psi={"a": 0.1, "b": 0.3})])),
        TelemetryRow(5.0, _body(models=[_block(150, 0.030, accuracy=0.9)])),
        TelemetryRow(10.0, _body(models=[_block(250, 0.020, accuracy=0.7)])),
        TelemetryRow(15.0, _body(cpu=1)),  # a sample without the model: None in its bucket
    ]
    series = downsample("pi-1", rows, since=0.0, until=20.0, points=4)
    [digits] = series.models
    assert digits.model == "digits" and digits.versions == ["1"]
    assert len(digits.buckets) == len(series.buckets) == 4
    first, second, third, fourth = digits.buckets
    assert first is not None and second is not None and third is not None and fourth is None
    assert first.p95_s == 0.010 and first.drift_psi == 0.3 and first.requests_per_s is None
    assert second.requests_per_s == 10.0 and second.accuracy == 0.9 and second.drift_psi is None
    assert third.requests_per_s == 20.0 and third.p95_max_s == 0.020


def test_a_counter_that_restarts_gives_no_rate_and_versions_are_listed_in_order() -> None:
    rows = [
        TelemetryRow(0.0, _body(models=[_block(500)])),
        TelemetryRow(1.0, _body(models=[_block(10)])),  # the agent restarted
        TelemetryRow(2.0, _body(models=[_block(30)])),
        TelemetryRow(3.0, _body(models=[_block(5, version="2")])),
        TelemetryRow(4.0, _body(models=[_block(45, version="2")])),
    ]
    series = downsample("pi-1", rows, since=0.0, until=5.0, points=5)
    [digits] = series.models
    assert digits.versions == ["1", "2"]
    rates = [b.requests_per_s if b else None for b in digits.buckets]
    # Version 2's first sample has no predecessor of its own version.
    assert rates == [None, None, 20.0, None, 40.0]


@pytest.mark.parametrize(
    "body",
    [
        {"cpu": "90", "memory": {"used_percent": True}, "temperatures_c": {"soc": None}},
        {"cpu": {"percent": [1]}, "memory": 3, "temperatures_c": ["hot"]},
        {"inference": {"models": [{"model": 1, "version": "1"}, "x", {"model": "m"}]}},
        {"inference": {"models": {"not": "a list"}}},
        {"inference": "nope"},
    ],
)
def test_odd_stored_readings_are_skipped_not_guessed(body: dict[str, Any]) -> None:
    series = downsample("pi-1", [TelemetryRow(1.0, body)], since=0.0, until=2.0, points=2)
    [bucket] = series.buckets
    assert bucket.samples == 1
    assert bucket.cpu_percent is bucket.memory_percent is bucket.temperature_c is None
    assert series.models == []


def test_a_non_finite_reading_is_skipped() -> None:
    rows = [TelemetryRow(1.0, _body(cpu=math.inf)), TelemetryRow(1.5, _body(cpu=4.0))]
    [bucket] = downsample("pi-1", rows, since=0.0, until=2.0, points=1).buckets
    assert bucket.cpu_percent == 4.0


@pytest.mark.parametrize(("since", "until", "points"), [(5.0, 5.0, 10), (6.0, 5.0, 10), (0, 1, 0)])
def test_an_empty_range_or_no_points_is_refused(since: float, until: float, points: int) -> None:
    with pytest.raises(ValueError, match="empty range"):
        downsample("pi-1", [], since=since, until=until, points=points)


# -- the store's reads and the use cases over them --------------------------------------------


def _iso(epoch: float) -> str:
    return (
        datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def _telemetry(seq: int, ts: float, cpu: float) -> Inbound:
    body = {"seq": seq, "ts": _iso(ts), "stream": "s", "cpu": {"percent": cpu}}
    return Inbound("pi-1", "telemetry", body, ts + 0.5)


@pytest.fixture
def store(tmp_path: Path) -> SqliteFleetStore:
    store = SqliteFleetStore(tmp_path / "f.db")
    base = 1_800_000_000.0
    store.ingest([Inbound("pi-1", "status", {"state": "online"}, base)])
    store.ingest([_telemetry(seq, base + seq * 10, cpu=seq) for seq in range(1, 31)])
    events = [
        Inbound("pi-1", "events", {"event": f"e{n}", "ts": _iso(base + n)}, base + n)
        for n in range(1, 8)
    ]
    store.ingest(events)
    store.ingest([Inbound("pi-2", "status", {"state": "offline"}, base)])
    return store


def test_telemetry_range_reads_the_devices_rows_in_range_oldest_first_and_bounded(
    store: SqliteFleetStore,
) -> None:
    base = 1_800_000_000.0
    rows, truncated = store.telemetry_range("pi-1", base + 50, base + 100, limit=100)
    assert [r.ts - base for r in rows] == [50, 60, 70, 80, 90, 100] and not truncated
    assert rows[0].body["cpu"] == {"percent": 5}
    rows, truncated = store.telemetry_range("pi-1", base, base + 1000, limit=4)
    assert [r.ts - base for r in rows] == [10, 20, 30, 40] and truncated
    assert store.telemetry_range("pi-2", base, base + 1000, limit=4) == ([], False)
    with pytest.raises(UnknownDeviceError):
        store.telemetry_range("ghost", base, base + 1000, limit=4)


def test_device_events_pages_newest_first(store: SqliteFleetStore) -> None:
    page = store.device_events("pi-1", limit=3)
    assert [e.event for e in page] == ["e7", "e6", "e5"]
    older = store.device_events("pi-1", limit=3, before=page[-1].id)
    assert [e.event for e in older] == ["e4", "e3", "e2"]
    assert older[0].body is not None and older[0].body["event"] == "e4"
    with pytest.raises(UnknownDeviceError):
        store.device_events("ghost", limit=3)


def test_the_use_cases_answer_the_history_and_filtered_reads(store: SqliteFleetStore) -> None:
    base = 1_800_000_000.0
    app = FleetApp(store, clock=lambda: base + 301)
    series = app.telemetry_series(TelemetryQuery(device_id="pi-1", points=10))
    # The default range starts at the hour's first sample (a young device's points spread
    # over its own history); an explicit since is kept.
    first, _ = store.telemetry_range("pi-1", base + 301 - 3600, base + 301, limit=1)
    assert (series.since, series.until) == (first[0].ts, base + 301)
    explicit = app.telemetry_series(TelemetryQuery(device_id="pi-1", since=base - 100, points=10))
    assert explicit.since == base - 100
    assert series.samples == 30 and len(series.buckets) <= 10
    with pytest.raises(FleetError, match="must be before"):
        app.telemetry_series(TelemetryQuery(device_id="pi-1", since=base + 400))
    first = app.device_events(EventsQuery(device_id="pi-1", limit=4))
    assert [e.event for e in first.events] == ["e7", "e6", "e5", "e4"]
    assert first.next_before is not None
    last = app.device_events(EventsQuery(device_id="pi-1", limit=4, before=first.next_before))
    assert [e.event for e in last.events] == ["e3", "e2", "e1"] and last.next_before is None
    states = {
        state: [d.device_id for d in app.find_devices(DevicesQuery(state=state)).devices]
        for state in ("online", "offline", "pending")
    }
    assert states == {"online": ["pi-1"], "offline": ["pi-2"], "pending": ["pi-1", "pi-2"]}
    assert [d.device_id for d in app.find_devices(DevicesQuery(limit=1)).devices] == ["pi-1"]
