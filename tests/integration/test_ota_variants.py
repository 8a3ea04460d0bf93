"""One release, a variant per board, end to end: a real controller and broker, real signed
releases published with ``fleet model publish NAME@VERSION --variant ...``, and real agents
that differ only in their ``[device] hardware_id``. Each installs its own variant (the
reported ``variant`` and the installed file's sha256 say which); an agent whose hardware fits
no variant refuses with ``wrong_hardware``, says so in an event, and keeps its version."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_contract.reasons import Reason
from tests.integration.harness import ManagedProcess, Recorder, agent_process, wait_until
from tests.integration.ota_harness import DIGITS, Fleet, release_cli

PI, GENERIC = "var-pi4", "var-generic"
INT8, FP32 = DIGITS / "digits-int8.onnx", DIGITS / "digits-fp32.onnx"


@pytest.fixture
def two_boards(fleet: Fleet) -> Iterator[tuple[Fleet, Recorder]]:
    """Two agents, one a pi4 and one generic, on digits@1, accepted by the controller."""
    recorder = Recorder(fleet.broker.port, "fleet/+/#", client_id="variants-recorder").start()
    agents: list[ManagedProcess] = []
    try:
        for device_id, hardware_id in ((PI, "pi4"), (GENERIC, "generic")):
            agents.append(
                agent_process(
                    fleet.tmp,
                    fleet.broker.port,
                    device_id,
                    OTA__ENABLED="true",
                    OTA__TRUSTED_ROOT=str(fleet.repo_dir / "metadata" / "1.root.json"),
                    OTA__HEALTH__DURATION_S="1",
                    OTA__HEALTH__MIN_INFERENCES="0",
                    OTA__RETRY_S="2",
                    INFERENCE__REST="false",
                    DEVICE__HARDWARE_ID=hardware_id,
                ).start()
            )
        for device_id in (PI, GENERIC):
            _accept(fleet, device_id)
        _deploy(fleet, "digits@1", PI, GENERIC)
        for device_id in (PI, GENERIC):
            wait_until(lambda d=device_id: _active(recorder, d) == "1", 40, f"{device_id} on 1")
        yield fleet, recorder
    finally:
        for agent in agents:
            agent.stop()
        recorder.stop()


def test_each_board_installs_its_own_variant_and_a_misfit_refuses(
    two_boards: tuple[Fleet, Recorder],
) -> None:
    fleet, recorder = two_boards
    published = _publish(
        fleet,
        "digits@3",
        f"{INT8}:hardware=pi4,pi5:runtime=onnxruntime:precision=int8:name=pi-int8",
        f"{FP32}:precision=fp32:name=any-fp32",
    )
    assert [(v["variant"], v["hardware"]) for v in published["variants"]] == [
        ("pi-int8", ["pi4", "pi5"]),
        ("any-fp32", ["*"]),
    ]
    # The controller names the release, not a file: each device picks.
    reply = _deploy(fleet, "digits@3", PI, GENERIC)
    assert reply["target"] is None

    for device_id, variant, source in ((PI, "pi-int8", INT8), (GENERIC, "any-fp32", FP32)):
        wait_until(lambda d=device_id: _active(recorder, d) == "3", 60, f"{device_id} on 3")
        entry = _reported(recorder, device_id)
        assert entry["variant"] == variant, entry
        assert entry["active"]["variant"] == variant
        installed = _slot_file(fleet.tmp, device_id, entry["active"]["slot"], source.name)
        assert _sha256(installed) == _sha256(source)
        shown = json.loads(fleet.cli("devices", "show", device_id, "--json").stdout)
        assert shown["reported"]["models"]["digits"]["variant"] == variant

    # A release for Jetson Orin only: the generic board fits none of it.
    _publish(fleet, "digits@4", f"{FP32}:hardware=jetson-orin:providers=cuda,cpu")
    _deploy(fleet, "digits@4", GENERIC)
    refused = wait_until(
        lambda: _event(recorder, GENERIC, "ota_rejected", version="4"), 40, "wrong_hardware"
    )
    assert refused["reason"] == Reason.WRONG_HARDWARE, refused
    assert refused["hardware_id"] == "generic"
    assert "onnxruntime:CPUExecutionProvider" in refused["runtimes"]
    assert not [e for e in _events(recorder, GENERIC, "ota_downloading") if e["version"] == "4"]
    assert _active(recorder, GENERIC) == "3"
    assert _reported(recorder, GENERIC)["variant"] == "any-fp32"


def test_the_publish_cli_refuses_a_bad_variant_and_signs_nothing(fleet: Fleet) -> None:
    before = sorted(p.name for p in (fleet.repo_dir / "metadata").iterdir())
    bad = release_cli(
        "model", "publish", "digits@5", "--repo", str(fleet.repo_dir),
        "--variant", f"{INT8}:hardware=pi4:runtime=litert",
    )  # fmt: skip
    assert bad.returncode != 0
    assert "runtime litert cannot run digits-int8.onnx" in " ".join(bad.stderr.split())
    assert sorted(p.name for p in (fleet.repo_dir / "metadata").iterdir()) == before


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
    accepted = fleet.cli("devices", "accept", device_id)
    assert accepted.returncode == 0, accepted.stderr + accepted.stdout


def _deploy(fleet: Fleet, release: str, *devices: str) -> dict[str, Any]:
    args = [arg for device_id in devices for arg in ("--device", device_id)]
    result = fleet.cli("deploy", release, *args, "--json")
    assert result.returncode == 0, result.stderr + result.stdout
    reply: dict[str, Any] = json.loads(result.stdout)
    return reply


def _reported(recorder: Recorder, device_id: str) -> dict[str, Any]:
    bodies = recorder.bodies(f"fleet/{device_id}/reported")
    entry: dict[str, Any] = ((bodies[-1] if bodies else {}).get("models") or {}).get("digits") or {}
    return entry


def _active(recorder: Recorder, device_id: str) -> str | None:
    active = _reported(recorder, device_id).get("active") or {}
    return active.get("version")


def _events(recorder: Recorder, device_id: str, name: str) -> list[dict[str, Any]]:
    return [e for e in recorder.bodies(f"fleet/{device_id}/events") if e.get("event") == name]


def _event(recorder: Recorder, device_id: str, name: str, **match: Any) -> dict[str, Any] | None:
    for event in _events(recorder, device_id, name):
        if all(event.get(k) == v for k, v in match.items()):
            return event
    return None


def _slot_file(tmp: Path, device_id: str, slot: str, name: str) -> Path:
    return tmp / f"state-{device_id}" / "ota" / "models" / "digits" / slot / name


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
