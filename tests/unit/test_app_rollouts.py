"""The rollout use cases (``fleet.app.rollouts``) on a real store and a real signed repository,
with a clock the test moves: start, conflicts, ticks through install, window and gate, the
operator events, and the re-publish after a crash. Pure: files in tmp_path, no broker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import JsonValue

from edge_contract.controller import (
    RolloutListRequest,
    RolloutRequest,
    RolloutStartRequest,
    RolloutStatusRequest,
)
from edge_runtime.mqtt.link import MqttLink
from fleet.app.rollouts import RolloutApp
from fleet.broker import link_settings_for
from fleet.config import FleetConfig, OtaOptions
from fleet.errors import FleetError, RolloutError, SelectorError
from fleet.ota import ReleaseService
from fleet.release.publish import publish_model
from fleet.release.repo import Repository
from fleet.store import Inbound, SqliteFleetStore

MODEL = Path(__file__).resolve().parents[2] / "models" / "digits" / "digits-int8.onnx"
T0 = 1_800_000_000.0
DEVICES = [f"pi-{n}" for n in range(1, 5)]


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def repo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = Repository.init(tmp_path_factory.mktemp("repo") / "repo")
    for version in ("1", "2"):
        publish_model(repo, MODEL, name="digits", version=version, hardware=["generic"])
    return repo.directory


@pytest.fixture
def bench(tmp_path: Path, repo_dir: Path) -> Iterator[tuple[RolloutApp, SqliteFleetStore, Clock]]:
    store = SqliteFleetStore(tmp_path / "fleet.db")
    for device in DEVICES:
        _report(store, device, "1", T0)
        store.accept_device(device, operator="t", now=T0)
    config = FleetConfig(db=tmp_path / "fleet.db", broker="mqtt://127.0.0.1:1")
    link = MqttLink(link_settings_for(config, client_id="t", persistent=True))
    releases = ReleaseService(OtaOptions(repo=repo_dir), link, store)
    clock = Clock()
    yield RolloutApp(store, releases=releases, clock=clock), store, clock
    releases.close()
    store.close()


def _report(store: SqliteFleetStore, device: str, version: str, at: float) -> None:
    reported: dict[str, JsonValue] = {"models": {"digits": {"active": {"version": version}}}}
    store.ingest(
        [
            Inbound(device, "status", {"state": "online"}, at),
            Inbound(device, "reported", reported, at),
        ]
    )


def _telemetry(store: SqliteFleetStore, device: str, seq: int, at: float, **block: Any) -> None:
    iso = f"{datetime.fromtimestamp(at, UTC):%Y-%m-%dT%H:%M:%S}Z"
    body: dict[str, JsonValue] = {
        "seq": seq,
        "ts": iso,
        "inference": {"models": [{"model": "digits", **block}]},
    }
    store.ingest([Inbound(device, "telemetry", body, at)])


def _start(app: RolloutApp, **fields: Any) -> Any:
    request = RolloutStartRequest(
        **{"model": "digits", "version": "2", "select": "*", "stages": "1,100%"} | fields
    )
    return app.start(request, operator="alice")


def _signed(message: tuple[str, bytes]) -> dict[str, Any]:
    signed: dict[str, Any] = json.loads(message[1])["signed"]
    return signed


def test_start_deploys_the_canary_and_refuses_a_conflict(
    bench: tuple[RolloutApp, SqliteFleetStore, Clock],
) -> None:
    app, store, _clock = bench
    reply, messages = _start(app, health_window_s=60.0)
    rollout = reply.rollout
    assert (rollout.summary.phase, rollout.summary.stage, rollout.summary.members) == (
        "installing",
        0,
        1,
    )
    [(topic, _payload)] = messages
    canary = rollout.members[0].device_id
    assert topic == f"fleet/{canary}/desired"
    assert _signed(messages[0])["model"]["version"] == "2"
    assert _signed(messages[0])["action"] == "deploy"
    # Persisted with its transition, and the signed payload kept for a re-publish.
    assert [t.to_phase for t in store.rollout_history(rollout.summary.rollout_id)] == ["installing"]
    assert store.desired_payloads("digits", [canary]) == {canary: messages[0][1]}
    with pytest.raises(RolloutError, match=rollout.summary.rollout_id):
        _start(app, select="device=pi-1|pi-2")
    with pytest.raises(SelectorError, match="'Bad=1'"):
        _start(app, select="Bad=1")
    with pytest.raises(FleetError, match="no signed release digits@9"):
        _start(app, version="9", select="device=nobody")
    with pytest.raises(RolloutError, match="no accepted device"):
        _start(app, select="site=mars")


def test_a_good_version_goes_through_every_stage(
    bench: tuple[RolloutApp, SqliteFleetStore, Clock],
) -> None:
    app, store, clock = bench
    reply, _ = _start(app, health_window_s=60.0, offline_timeout_s=600.0)
    rid = reply.rollout.summary.rollout_id
    canary = reply.rollout.members[0].device_id
    clock.now += 5
    assert app.tick() == []  # not committed yet: nothing changes
    _report(store, canary, "2", clock.now)
    assert app.tick() == []
    state = store.rollout(rid)
    assert state is not None and state.phase == "watching"
    window = state.window_started_at
    assert window is not None
    # Both sides serve requests in the window: the canary on 2, the others on 1.
    for seq, at in enumerate((window - 1, window + 30, window + 61), start=1):
        n = seq * 100
        for device in DEVICES:
            version = "2" if device == canary else "1"
            p95 = {"0.95": 0.010}
            _telemetry(store, device, seq, at, version=version, requests=n, batches=n,
                       latency_quantile_seconds=p95)  # fmt: skip
    clock.now = window + 62
    messages = app.tick()
    state = store.rollout(rid)
    assert state is not None and state.phase == "installing" and state.stage == 1
    assert state.last_gate is not None and state.last_gate.outcome == "pass"
    assert sorted(topic.split("/")[1] for topic, _ in messages) == sorted(
        d for d in DEVICES if d != canary
    )
    assert app.list_rollouts(RolloutListRequest()).rollouts[0].rollout_id == rid
    status = app.status(RolloutStatusRequest()).rollout
    assert [(s.size, s.members) for s in status.stages] == [("1", 1), ("100%", 3)]
    # A controller that died after this commit sends the same signed messages again.
    assert sorted(app.republish()) == sorted(messages)


def test_abort_reverts_with_signed_rollbacks(
    bench: tuple[RolloutApp, SqliteFleetStore, Clock],
) -> None:
    app, _store, clock = bench
    reply, _ = _start(app)
    rid = reply.rollout.summary.rollout_id
    canary = reply.rollout.members[0].device_id
    clock.now += 1
    paused, messages = app.event("pause", RolloutRequest(rollout_id=rid), operator="bob")
    assert paused.rollout.summary.phase == "paused" and messages == []
    assert app.tick() == []  # a paused rollout does not move
    with pytest.raises(RolloutError, match="nothing to approve"):
        app.event("approve", RolloutRequest(rollout_id=rid), operator="bob")
    aborted, messages = app.event("abort", RolloutRequest(rollout_id=rid), operator="bob")
    assert aborted.rollout.summary.phase == "aborted"
    [message] = messages
    assert message[0] == f"fleet/{canary}/desired"
    assert (_signed(message)["action"], _signed(message)["model"]["version"]) == ("rollback", "1")
    history = app.history(RolloutRequest(rollout_id=rid)).transitions
    assert [t.to_phase for t in history] == ["installing", "paused", "aborted"]
    assert app.republish() == []  # nothing active any more
    with pytest.raises(RolloutError, match="unknown rollout r-00000000"):
        app.history(RolloutRequest(rollout_id="r-00000000"))


def test_changes_are_handed_over_once_for_the_live_feed(
    bench: tuple[RolloutApp, SqliteFleetStore, Clock],
) -> None:
    """What the driver publishes as ``rollout`` live events: each changed rollout once, with
    its newest summary, whoever changed it (a start, an operator event, a tick)."""
    app, _store, clock = bench
    assert app.take_changed() == []
    reply, _messages = _start(app, health_window_s=60.0)
    rollout_id = reply.rollout.summary.rollout_id
    [started] = app.take_changed()
    assert (started.rollout_id, started.phase, started.stage) == (rollout_id, "installing", 0)
    assert app.take_changed() == []
    clock.now += 1
    app.tick()  # the canary has not reported the version yet: nothing changed
    assert app.take_changed() == []
    app.event("pause", RolloutRequest(rollout_id=rollout_id), operator="alice")
    app.event("resume", RolloutRequest(rollout_id=rollout_id), operator="alice")
    [latest] = app.take_changed()
    assert latest.rollout_id == rollout_id and latest.phase == "installing"
