"""One staged rollout of a release with a variant per board, end to end: a real Mosquitto, the
real controller (``fleet serve`` with OTA, its rollout driver ticking every 0.5 s), a real
signed release published with ``fleet model publish NAME@VERSION --variant ...``, and three
real agents that differ in their ``[device] hardware_id`` (pi4, generic, jetson-orin).

The pi4 and the generic agent each install their own variant (their reported state, the
rollout's per-member status and ``fleet devices show`` all name it); the jetson-orin agent,
whose onnxruntime here has neither the TensorRT nor the CUDA provider its only variant asks
for, refuses with ``wrong_hardware``, keeps its version, and the rollout reports it as a
failed member naming that reason. Traffic to every agent's REST API gives the gate inference
counters on both sides (the candidates on the new version, the refuser still on the old one).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.localbroker import PrivateBroker
from edge_contract.reasons import Reason
from fleet.rollouts.model import Outcome, Phase, RolloutState
from fleet.store import SqliteFleetStore
from tests.integration.harness import wait_until
from tests.integration.ota_harness import DIGITS, Fleet, free_port, ota_fleet, release_cli
from tests.integration.test_rollouts import LENIENT, Traffic

pytestmark = pytest.mark.slow

PI, GENERIC, ORIN = "rv-pi4", "rv-generic", "rv-orin"
BOARDS = {PI: "pi4", GENERIC: "generic", ORIN: "jetson-orin"}
INT8, FP32 = DIGITS / "digits-int8.onnx", DIGITS / "digits-fp32.onnx"
# Every agent accepts the ids ``generic`` and its CPU arch after its own (``[ota]
# hardware_ids``), so a Jetson would fall back to the generic-fp32 variant on its CPU; this
# Orin is provisioned to accept only its own id (``hardware_ids = []``), so nothing but the
# TensorRT/CUDA variant is for it, and this machine's onnxruntime has neither provider.
# The Orin variant's file: any other committed digits model with its own file name (a release
# takes each file name once); nothing here can run it anyway.
ORIN_FILE = DIGITS / "digits-student-fp32.onnx"


@pytest.fixture
def boards(tmp_path: Path) -> Iterator[tuple[Fleet, SqliteFleetStore]]:
    """Three agents, pi4, generic and jetson-orin, all on digits@3 (one file for any board),
    accepted, with traffic to each; the controller's store read in process."""
    broker = PrivateBroker(tmp_path / "broker")
    broker.start()
    try:
        with ota_fleet(tmp_path, broker, record="fleet/#", ROLLOUTS__TICK_S="0.5") as fleet:
            # ota_fleet's digits@1 and @2 are for hardware "generic" only: the previous
            # version here is a plain single-file release every board takes.
            _publish(fleet, "digits@3", f"{FP32}")
            ports = {device: free_port() for device in BOARDS}
            for device, hardware_id in BOARDS.items():
                fleet.start_agent_as(
                    device,
                    INFERENCE__REST="true",
                    INFERENCE__PORT=str(ports[device]),
                    OTA__HEALTH__LATENCY_FACTOR="1000",
                    DEVICE__HARDWARE_ID=hardware_id,
                    **({"OTA__HARDWARE_IDS": "[]"} if device == ORIN else {}),
                )
            for device in BOARDS:
                _accept(fleet, device)
            _cli(fleet, "deploy", "digits@3", "--all", "--json")
            _wait_versions(fleet, "3", list(BOARDS), timeout=60)
            store = SqliteFleetStore(tmp_path / "fleet.sqlite3")
            traffic = Traffic(ports, max_s=120).start()
            try:
                yield fleet, store
            finally:
                traffic.stop()
                store.close()
    finally:
        broker.stop()


def test_each_board_installs_its_variant_in_a_rollout_and_a_misfit_is_reported(
    boards: tuple[Fleet, SqliteFleetStore],
) -> None:
    fleet, store = boards
    _publish(
        fleet,
        "digits@4",
        f"{INT8}:hardware=pi4,pi5:runtime=onnxruntime:precision=int8:name=pi-int8",
        f"{FP32}:hardware=generic:runtime=onnxruntime:precision=fp32:name=generic-fp32",
        f"{ORIN_FILE}:hardware=jetson-orin:runtime=onnxruntime:providers=tensorrt,cuda"
        ":name=orin-fp16",
    )
    # Stages of 2 then the rest, and --max-install-failures 100%, so that where the Orin
    # lands does not matter: stage membership hashes the (random) rollout id. The gate's
    # baseline is the selected devices that are not members yet and run the previous
    # version, and the last stage borrows the one before's; a refused member is neither.
    # - The Orin among the 2 first: 1 refusal of 2 (50%); the stage's gate has the third
    #   device, still on digits@3, as its baseline; the last stage adds it.
    # - The Orin alone in the last stage: 1 refusal of 1 (100%), after the first stage's gate
    #   compared the two candidates with it while it was still outside the rollout.
    # Either way no stage's failures exceed 100% and both gates pass (latency and drift made
    # lenient: they are not the point here), so the rollout ends COMPLETED with the Orin a
    # failed member. Any lower limit would halt it in the second case (a refusal counts as
    # an install failure: fleet.rollouts.machine, tests/unit) and complete it in the first.
    started = _cli(
        fleet,
        "rollout", "start", "digits@4", "--all", "--stages", "2,100%",
        "--health-window", "3s", "--max-install-failures", "100%", *LENIENT, "--json",
    )  # fmt: skip
    rid: str = json.loads(started.stdout)["summary"]["rollout_id"]

    refused = wait_until(
        lambda: _event(fleet, ORIN, "ota_rejected", version="4"), 60, "the Orin refusing 4"
    )
    assert refused["reason"] == Reason.WRONG_HARDWARE, refused
    assert refused["hardware_id"] == "jetson-orin"
    assert "onnxruntime:CPUExecutionProvider" in refused["runtimes"], refused
    assert not any(r.endswith(("TensorrtExecutionProvider", "CUDAExecutionProvider"))
                   for r in refused["runtimes"]), refused  # fmt: skip

    state = _wait_phase(store, rid, {Phase.COMPLETED, Phase.HALTED, Phase.AWAITING_APPROVAL})
    assert state.phase is Phase.COMPLETED, state.reason
    _wait_versions(fleet, "4", [PI, GENERIC])
    assert fleet.active_version_of(ORIN) == "3"
    assert not [e for e in _events(fleet, ORIN, "ota_downloading") if e["version"] == "4"]

    expected = {PI: "pi-int8", GENERIC: "generic-fp32"}
    for device, variant in expected.items():
        assert _reported(fleet, device)["variant"] == variant
        assert _reported(fleet, device)["active"]["variant"] == variant
        shown = json.loads(_cli(fleet, "devices", "show", device, "--json").stdout)
        assert shown["reported"]["models"]["digits"]["variant"] == variant, shown
        assert state.members[device].outcome is Outcome.COMMITTED
        assert state.members[device].variant == variant
    assert state.members[ORIN].outcome is Outcome.FAILED
    assert Reason.WRONG_HARDWARE in (state.members[ORIN].reason or "")

    status = json.loads(_cli(fleet, "rollout", "status", rid, "--json").stdout)
    assert status["summary"]["phase"] == "completed"
    members = {m["device_id"]: m for m in status["members"]}
    for device, variant in expected.items():
        assert (members[device]["outcome"], members[device]["variant"]) == ("committed", variant)
    orin = members[ORIN]
    assert orin["outcome"] == "failed" and orin["variant"] is None, orin
    assert "ota_rejected" in orin["reason"] and Reason.WRONG_HARDWARE in orin["reason"], orin
    stages = status["stages"]
    assert sum(s["committed"] for s in stages) == 2 and sum(s["failed"] for s in stages) == 1
    # The human view names the variants and the refusal too.
    table = " ".join(_cli(fleet, "rollout", "status", rid).stdout.split())
    assert "pi-int8" in table and "generic-fp32" in table and "wrong_hardware" in table, table


def _cli(fleet: Fleet, *args: str) -> Any:
    result = fleet.cli(*args)
    assert result.returncode == 0, result.stderr + result.stdout
    return result


def _publish(fleet: Fleet, release: str, *variants: str) -> dict[str, Any]:
    args = [arg for variant in variants for arg in ("--variant", variant)]
    result = release_cli(
        "model", "publish", release, "--repo", str(fleet.repo_dir), "--json", *args
    )
    assert result.returncode == 0, result.stderr + result.stdout
    published: dict[str, Any] = json.loads(result.stdout)
    return published


def _accept(fleet: Fleet, device_id: str) -> None:
    def known() -> bool:
        shown = fleet.cli("devices", "show", device_id, "--json")
        return shown.returncode == 0 and json.loads(shown.stdout).get("reported") is not None

    wait_until(known, 30, f"{device_id} and its reported state known to the controller")
    _cli(fleet, "devices", "accept", device_id)


def _wait_versions(fleet: Fleet, version: str, devices: list[str], timeout: float = 60) -> None:
    wait_until(
        lambda: all(fleet.active_version_of(d) == version for d in devices),
        timeout,
        f"{devices} report digits@{version} active",
        step=0.2,
    )


def _wait_phase(
    store: SqliteFleetStore, rollout_id: str, phases: set[Phase], timeout: float = 60
) -> RolloutState:
    def reached() -> RolloutState | None:
        state = store.rollout(rollout_id)
        return state if state is not None and state.phase in phases else None

    found: RolloutState = wait_until(reached, timeout, f"{rollout_id} in {phases}", step=0.2)
    return found


def _reported(fleet: Fleet, device_id: str) -> dict[str, Any]:
    bodies = fleet.recorder.bodies(f"fleet/{device_id}/reported")
    entry: dict[str, Any] = ((bodies[-1] if bodies else {}).get("models") or {}).get("digits") or {}
    return entry


def _events(fleet: Fleet, device_id: str, name: str) -> list[dict[str, Any]]:
    return [e for e in fleet.recorder.bodies(f"fleet/{device_id}/events") if e.get("event") == name]


def _event(fleet: Fleet, device_id: str, name: str, **match: Any) -> dict[str, Any] | None:
    for event in _events(fleet, device_id, name):
        if all(event.get(k) == v for k, v in match.items()):
            return event
    return None
