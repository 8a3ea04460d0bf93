"""The store's rollout side: tags, rollout state with its transitions and desired states in
one transaction, install views and telemetry samples. Pure: a SQLite file in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import JsonValue

from fleet.errors import StoreError, UnknownDeviceError
from fleet.records import Directive
from fleet.rollouts.model import (
    Member,
    Phase,
    RolloutSpec,
    RolloutState,
    StageSize,
    Transition,
)
from fleet.store import Inbound, SqliteFleetStore


@pytest.fixture
def store(tmp_path: Path) -> SqliteFleetStore:
    s = SqliteFleetStore(tmp_path / "f.db")
    s.ingest(
        [
            Inbound(
                "pi-1",
                "status",
                {"state": "online", "hardware_id": "pi4", "tags": {"site": "lab", "rack": "1"}},
                100.0,
            ),
            Inbound("pi-2", "status", {"state": "online", "tags": {"site": 5}}, 100.0),
            Inbound("pi-2", "reported", {"models": {"digits": {"active": {"version": "1"}}}}, 100),
        ]
    )
    s.accept_device("pi-1", operator="t", now=1)
    return s


def _state(phase: Phase = Phase.INSTALLING, at: float = 10.0) -> RolloutState:
    spec = RolloutSpec(
        rollout_id="r-0000abcd",
        model="digits",
        version="2",
        selector="*",
        stages=(StageSize(percent=100.0),),
        created_at=5.0,
    )
    return RolloutState(
        spec=spec,
        phase=phase,
        stage_started_at=at,
        members={"pi-1": Member(stage=0, previous_version="1", sent_at=at)},
        updated_at=at,
    )


def test_merged_tags_operator_wins(store: SqliteFleetStore) -> None:
    store.set_tags("pi-1", {"site": "home", "board": "pi4"})
    by_id = {d.device_id: d for d in store.tagged_devices()}
    assert by_id["pi-1"].tags == {
        "device": "pi-1",
        "hardware": "pi4",
        "site": "home",
        "rack": "1",
        "board": "pi4",
    }
    assert by_id["pi-1"].operator_tags == {"site": "home", "board": "pi4"}
    assert by_id["pi-1"].admission == "accepted" and not by_id["pi-1"].ota
    # A tag value that is not text is the device's mistake: left out, never an error.
    assert by_id["pi-2"].tags == {"device": "pi-2"} and by_id["pi-2"].ota
    assert store.remove_tags("pi-1", ["site", "nope"]) == ["site"]
    assert store.device_tags("pi-1") == {"board": "pi4"}
    with pytest.raises(UnknownDeviceError):
        store.set_tags("ghost", {"a": "b"})


def test_rollout_state_transitions_and_desired_in_one_transaction(
    store: SqliteFleetStore,
) -> None:
    state = _state()
    start = Transition(at=10, from_phase=None, to_phase=Phase.INSTALLING, stage=0, reason="s1")
    directive = Directive("pi-1", "digits", "2", "deploy")
    sent = store.save_rollout(
        state, [start], [directive], lambda d, n: f"{d.device_id}:{n}".encode()
    )
    assert sent == [("pi-1", b"pi-1:1")]
    assert store.rollout("r-0000abcd") == state
    assert store.desired_payloads("digits", ["pi-1", "pi-2"]) == {"pi-1": b"pi-1:1"}
    assert [r.model for r in store.desired_states("pi-1")] == ["digits"]

    def broken(_d: Directive, _n: int) -> bytes:
        raise StoreError("signing failed", path="x")

    later = _state(Phase.WATCHING, at=20)
    watch = Transition(
        at=20, from_phase=Phase.INSTALLING, to_phase=Phase.WATCHING, stage=0, reason="w"
    )
    with pytest.raises(StoreError):
        store.save_rollout(later, [watch], [directive], broken)
    # Nothing of the failed save is kept: state, transition and counter are as before.
    assert store.rollout("r-0000abcd") == state
    assert store.rollout_history("r-0000abcd") == [start]
    assert store.save_rollout(later, [watch], [directive], lambda d, n: str(n).encode()) == [
        ("pi-1", b"2")
    ]
    assert store.rollout_history("r-0000abcd") == [start, watch]
    assert [r.rollout_id for r in [s.spec for s in store.rollouts(active=True)]] == ["r-0000abcd"]
    store.save_rollout(_state(Phase.COMPLETED, at=30), [])
    assert store.rollouts(active=True) == [] and len(store.rollouts()) == 1
    assert store.rollout("r-ffffffff") is None


def test_installs_read_reported_events_and_presence(store: SqliteFleetStore) -> None:
    store.ingest(
        [
            Inbound(
                "pi-1",
                "reported",
                {"models": {"digits": {"active": {"version": "2", "variant": "int8"}}}},
                110.0,
            ),
            Inbound("pi-2", "events", {"event": "ota_failed", "version": "2", "reason": "old"}, 90),
            Inbound(
                "pi-2",
                "events",
                {"event": "ota_rejected", "version": "2", "reason": "wrong_hardware"},
                120.0,
            ),
            Inbound("pi-2", "events", {"event": "ota_failed", "version": "3"}, 121.0),
            # The agent's own health window refused it: a failure of that version.
            Inbound(
                "pi-3",
                "events",
                {"event": "ota_rolled_back", "version": "2", "reason": "health_latency"},
                120.0,
            ),
            # An operator's rollback names the version it went back to: no failure of it.
            Inbound(
                "pi-4",
                "events",
                {"event": "ota_rolled_back", "version": "2", "reason": "operator_rollback"},
                120.0,
            ),
        ]
    )
    since = {"pi-1": 100.0, "pi-2": 100.0, "pi-3": 100.0, "pi-4": 100.0, "ghost": 100.0}
    views = store.installs("digits", "2", since)
    assert views["pi-3"].failed_reason == "ota_rolled_back: health_latency"
    assert views["pi-4"].failed_reason is None
    assert views["pi-1"].active_version == "2" and views["pi-1"].variant == "int8"
    assert views["pi-1"].failed_reason is None and views["pi-1"].last_seen == 110.0
    assert views["pi-2"].active_version == "1"
    assert views["pi-2"].failed_reason == "ota_rejected: wrong_hardware"
    assert views["ghost"].active_version is None and views["ghost"].last_seen is None


def test_telemetry_samples_in_the_window(store: SqliteFleetStore) -> None:
    def tele(seq: int, ts: str, inference: JsonValue) -> Inbound:
        body: dict[str, JsonValue] = {"seq": seq, "ts": ts, "inference": inference}
        return Inbound("pi-1", "telemetry", body, 0.0)

    store.ingest(
        [
            tele(1, "2026-01-01T00:00:00Z", {"models": []}),
            tele(2, "2026-01-01T00:00:10Z", "odd"),
            tele(3, "2026-01-01T00:00:20Z", {"models": [{"model": "digits"}]}),
        ]
    )
    base = 1767225600.0  # 2026-01-01T00:00:00Z
    samples = store.telemetry_samples(["pi-1", "pi-2"], base + 5, base + 15)["pi-1"]
    assert [(s.ts - base, s.inference) for s in samples] == [(0.0, {"models": []}), (10.0, None)]
    assert store.telemetry_samples(["pi-2"], base, base + 30) == {"pi-2": []}
