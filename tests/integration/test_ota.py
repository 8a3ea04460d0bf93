"""Signed OTA end to end: the real agent, a real Mosquitto, the real controller and `fleet` CLI.

A TUF repository is made with the release code (`fleet.release`), the committed digits
models are published into it, `fleet serve --repo` serves it over MQTT, and the agent follows
`fleet deploy` / `fleet rollback`. Attacks are made the way an attacker would: changing files
in the repository dir or publishing forged messages to the broker. Each must be refused with
the right reason while the device keeps serving the version it had.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge_contract.desired import DesiredModel, DesiredState
from edge_contract.reasons import Reason
from fleet.release.repo import Repository
from tests.integration.harness import wait_until
from tests.integration.ota_harness import DEVICE, Fleet

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_deploy_update_and_operator_rollback(fleet: Fleet) -> None:
    fleet.start_agent()
    fleet.wait_online()
    fleet.deploy("digits@1")
    fleet.wait_event("ota_committed", version="1")
    steps = [e["event"] for e in fleet.recorder.bodies("/events") if e["event"].startswith("ota_")]
    for step in ("ota_downloading", "ota_verifying", "ota_installed", "ota_activating"):
        assert step in steps, steps

    fleet.deploy("digits@2")
    fleet.wait_event("ota_committed", version="2")
    wait_until(lambda: fleet.active_version() == "2", 10, "reported active 2")
    model = fleet.reported()["models"]["digits"]
    assert model["previous"]["version"] == "1"

    shown = json.loads(fleet.cli("devices", "show", DEVICE, "--json").stdout)
    assert shown["reported"]["models"]["digits"]["active"]["version"] == "2"
    assert shown["desired"]["version"] == "2"
    table = fleet.cli("devices", "show", DEVICE).stdout
    assert "digits: active 2 (slot" in table
    assert "previous 1 (slot" in table  # the previous version, kept for a rollback
    assert "desired    digits@2 (deploy" in table

    result = fleet.cli("rollback", "--device", DEVICE, "--json")
    assert result.returncode == 0, result.stderr
    fleet.wait_event("ota_rolled_back", reason=Reason.OPERATOR_ROLLBACK)
    wait_until(lambda: fleet.active_version() == "1", 10, "reported active 1 after rollback")


def test_tampered_model_bytes_are_refused(fleet: Fleet) -> None:
    fleet.start_agent()
    fleet.wait_online()
    fleet.deploy("digits@1")
    fleet.wait_event("ota_committed", version="1")
    repo = Repository.open(fleet.repo_dir)
    target = next(t for p, t in repo.targets().items() if "/2/" in p)
    stored = repo.target_file_path(target)
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same length
    stored.write_bytes(bytes(data))
    fleet.deploy("digits@2")
    event = fleet.wait_event("ota_rejected", version="2")
    assert event["reason"] == Reason.TAMPERED
    assert fleet.active_version() == "1"


def test_forged_replayed_and_other_device_desired_states_are_refused(
    fleet: Fleet, tmp_path: Path
) -> None:
    fleet.start_agent()
    fleet.wait_online()
    fleet.deploy("digits@1")
    fleet.wait_event("ota_committed", version="1")
    model = DesiredModel(name="digits", version="2", target="models/digits/2/digits-int8.onnx")
    later = datetime.now(UTC) + timedelta(hours=1)
    attacker = Repository.init(tmp_path / "attacker")
    real = Repository.open(fleet.repo_dir)
    cases = [
        (
            attacker,
            DesiredState(device_id=DEVICE, counter=99, expires=later, action="deploy", model=model),
            Reason.DESIRED_UNSIGNED,
        ),
        (
            real,
            DesiredState(
                device_id="someone-else", counter=99, expires=later, action="deploy", model=model
            ),
            Reason.DESIRED_OTHER_DEVICE,
        ),
        (
            real,
            DesiredState(device_id=DEVICE, counter=1, expires=later, action="deploy", model=model),
            Reason.DESIRED_REPLAYED,
        ),
        (
            real,
            DesiredState(
                device_id=DEVICE,
                counter=98,
                expires=datetime.now(UTC) - timedelta(minutes=1),
                action="deploy",
                model=model,
            ),
            Reason.DESIRED_EXPIRED,
        ),
    ]
    for signer, state, reason in cases:
        fleet.forge(state, signer_repo=signer)
        fleet.wait_event("ota_rejected", reason=reason)
    time.sleep(1)
    assert fleet.active_version() == "1"
    assert not fleet.events("ota_committed")[1:], "nothing but v1 was ever committed"
