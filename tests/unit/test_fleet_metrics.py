"""The controller's /metrics: the figures of stored devices and rollouts, their bounded
per-device gauges, the exposition, and the route's auth (FastAPI's TestClient, no socket)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleet.app.usecases import FleetApp
from fleet.config import HttpOptions
from fleet.http.app import build_app
from fleet.http.auth import ANONYMOUS, Authenticator
from fleet.http.context import HttpContext
from fleet.http.live import LiveHub
from fleet.http.metrics import (
    FleetFigures,
    LoopFigures,
    RolloutFigures,
    fleet_figures,
    metrics,
    render,
)
from fleet.ingest import IngestFigures, StoreThread
from fleet.records import DeviceDocuments
from fleet.store import Inbound, SqliteFleetStore

NOW = 1_800_000_000.0
TS = "2027-01-15T08:00:00Z"


def _doc(device: str, *, state: str = "online", admission: str = "accepted", **parts: Any) -> Any:
    return DeviceDocuments(
        device_id=device,
        state=state,
        admission=admission,
        last_seen=parts.pop("last_seen", NOW),
        status=parts.pop("status", None),
        telemetry=parts.pop("telemetry", None),
        reported=parts.pop("reported", None),
    )


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _loop(**changes: Any) -> LoopFigures:
    base: dict[str, Any] = {
        "ingest": IngestFigures({"telemetry": 7}, 2, 50_000),
        "refused_mqtt": {"schema": 3},
        "refused_http": {"unauthorized": 1},
        "live_clients": 1,
        "live_published": 9,
        "live_dropped_clients": 0,
    }
    return LoopFigures(**(base | changes))


def test_states_models_variants_and_agent_versions() -> None:
    documents = [
        _doc(
            "a",
            status={"models": {"digits": "2"}, "agent_version": "0.3"},
            reported={"models": {"digits": {"variant": "pi4-int8"}}},
        ),
        _doc("b", state="offline", status={"models": {"digits": "2"}}),
        _doc("c", admission="pending", status={"models": {"digits": "1"}}),
        _doc("d", state="unknown"),
    ]
    figures = fleet_figures(documents, {}, [], 10)
    assert figures.devices == {"online": 1, "offline": 2, "pending": 1}
    assert figures.by_model == {
        ("digits", "2", "pi4-int8"): 1,
        ("digits", "2", "none"): 1,
        ("digits", "1", "none"): 1,
    }
    assert figures.by_agent_version == {"0.3": 1, "none": 3}


def test_per_device_gauges_are_bounded_to_the_most_recently_seen() -> None:
    documents = [_doc(f"dev-{i}", last_seen=NOW - i) for i in range(5)]  # newest first
    figures = fleet_figures(documents, {}, [], 2)
    assert [g.device_id for g in figures.gauges] == ["dev-0", "dev-1"]
    assert figures.left_out == 3
    samples = _samples(render(figures, _loop(), 2))
    seen = {labels for (name, labels) in samples if name.startswith("fleet_device_online")}
    assert seen == {(("device", "dev-0"),), (("device", "dev-1"),)}
    assert samples[("fleet_device_gauges_left_out_devices", ())] == 3
    assert samples[("fleet_device_gauges_limit_devices", ())] == 2
    # Zero: no per-device series at all, every device counted as left out.
    assert fleet_figures(documents, {}, [], 0).gauges == []


def test_device_gauges_read_the_newest_telemetry_and_ignore_odd_values() -> None:
    telemetry = {
        "cpu": {"percent": 12.5},
        "memory": {"used_percent": True},  # a bool is not a number
        "temperatures_c": {"cpu": 51.0, "gpu": 55.5, "bad": "hot"},
        "queue": {"depth": 4},
        "inference": {
            "models": [
                {"model": "digits", "latency_quantile_seconds": {"0.95": 0.004}},
                {"model": "digits", "latency_quantile_seconds": {"0.95": 9.0}},  # 2nd version
                {"model": 3, "latency_quantile_seconds": {"0.95": 1.0}},
                "junk",
            ]
        },
    }
    (gauges,) = fleet_figures([_doc("a", telemetry=telemetry)], {}, [], 5).gauges
    assert gauges.cpu_ratio == pytest.approx(0.125)
    assert gauges.memory_ratio is None
    assert gauges.temperature_c == 55.5
    assert gauges.queue_messages == 4
    assert gauges.p95_s == {"digits": 0.004}


def test_exposition_counters_rollouts_and_seeded_reasons() -> None:
    rollout = RolloutFigures("r-0000abcd", "digits", "2", "watching", 1, 3, 4)
    figures = fleet_figures([_doc("a")], {"completed": 2, "watching": 1}, [rollout], 5)
    loop = _loop(refused_mqtt={"schema": 3, "not_json": 0})
    samples = _samples(render(figures, loop, 5))
    assert samples[("fleet_rollouts", (("phase", "completed"),))] == 2
    assert samples[("fleet_rollouts", (("phase", "aborted"),))] == 0
    labels = (("model", "digits"), ("rollout", "r-0000abcd"), ("version", "2"))
    assert samples[("fleet_rollout_stage", labels)] == 1
    assert samples[("fleet_rollout_stages", labels)] == 3
    assert samples[("fleet_rollout_phase", (("phase", "watching"), ("rollout", "r-0000abcd")))] == 1
    assert samples[("fleet_rollout_phase", (("phase", "paused"), ("rollout", "r-0000abcd")))] == 0
    assert samples[("fleet_ingest_stored_messages_total", (("kind", "telemetry"),))] == 7
    assert samples[("fleet_ingest_stored_messages_total", (("kind", "events"),))] == 0
    assert samples[("fleet_ingest_queue_messages", ())] == 2
    assert samples[("fleet_rejected_messages_total", (("reason", "schema"),))] == 3
    assert samples[("fleet_http_refused_requests_total", (("reason", "unauthorized"),))] == 1
    assert samples[("fleet_live_clients", ())] == 1


# -- the route ---------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteFleetStore]:
    opened = SqliteFleetStore(tmp_path / "fleet.db")
    now = time.time()
    status = {"device_id": "a", "state": "online", "models": {"digits": "1"}, "ts": TS}
    opened.ingest([Inbound("a", "status", status, now)])
    yield opened
    opened.close()


def test_route_reads_the_store_on_its_thread(store: SqliteFleetStore) -> None:
    """The route as FastAPI calls it once the caller is authenticated (the 401 without a
    token is checked against the live server in tests/integration/test_prometheus.py)."""
    thread = StoreThread()
    refused: Counter[str] = Counter(unauthorized=1)
    ctx = HttpContext(
        app=FleetApp(store),
        thread=thread,
        publish=lambda _messages: None,
        hub=LiveHub(),
        auth=Authenticator([]),
        options=HttpOptions(metrics_device_limit=1),
        refused=refused,
        ingest=lambda: IngestFigures({"status": 1}, 0, 50_000),
    )
    try:
        answer = asyncio.run(metrics(ctx, ANONYMOUS))
    finally:
        thread.shutdown()
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = _samples(bytes(answer.body))
    assert samples[("fleet_devices", (("state", "pending"),))] == 1
    model = (("model", "digits"), ("variant", "none"), ("version", "1"))
    assert samples[("fleet_model_devices", model)] == 1
    assert samples[("fleet_http_refused_requests_total", (("reason", "unauthorized"),))] == 1
    assert samples[("fleet_http_refused_requests_total", (("reason", "forbidden"),))] == 0
    assert samples[("fleet_ingest_stored_messages_total", (("kind", "status"),))] == 1
    assert samples[("fleet_device_online", (("device", "a"),))] == 1


def test_the_route_is_mounted_and_left_out_of_the_openapi_document() -> None:
    ctx = HttpContext(
        app=None,  # type: ignore[arg-type]  # never called: only the routes are read
        thread=StoreThread(),
        publish=lambda _messages: None,
        hub=LiveHub(),
        auth=Authenticator([]),
        options=HttpOptions(),
    )
    try:
        app = build_app(ctx)
        assert app.url_path_for("metrics") == "/metrics"
        assert "/metrics" not in app.openapi()["paths"]
    finally:
        ctx.thread.shutdown()


def test_figures_type_is_frozen() -> None:
    figures = fleet_figures([], {}, [], 1)
    assert isinstance(figures, FleetFigures)
    with pytest.raises(AttributeError):
        figures.left_out = 3  # type: ignore[misc]


def test_store_documents_newest_first_with_telemetry_for_the_first_only(
    store: SqliteFleetStore,
) -> None:
    later = time.time() + 5
    telemetry = {"device_id": "b", "stream": "s", "seq": 1, "ts": TS, "cpu": {"percent": 5}}
    reported = {
        "device_id": "b",
        "agent_version": "0.1",
        "desired_counter": 1,
        "models": {},
        "ts": TS,
    }
    store.ingest(
        [
            Inbound("b", "telemetry", telemetry, later),
            Inbound("b", "reported", reported, later),
        ]
    )
    newest, older = store.device_documents(telemetry_for=1)
    assert (newest.device_id, older.device_id) == ("b", "a")
    assert newest.telemetry is not None and newest.telemetry["cpu"] == {"percent": 5}
    assert newest.reported is not None and newest.reported["desired_counter"] == 1
    assert older.telemetry is None and older.status is not None
    assert newest.admission == older.admission == "pending"
    assert [d.telemetry for d in store.device_documents(telemetry_for=0)] == [None, None]


def test_rollout_phase_counts_of_an_empty_store(store: SqliteFleetStore) -> None:
    assert store.rollout_phase_counts() == {}
