"""Signed OTA end to end: the real agent, a real Mosquitto, the real controller and `fleet` CLI.

A TUF repository is made with the release code (`fleet.release`), the committed digits
models are published into it, `fleet serve --repo` serves it over MQTT, and the agent follows
`fleet deploy` / `fleet rollback`. Attacks are made the way an attacker would: changing files
in the repository dir or publishing forged messages to the broker. Each must be refused with
the right reason while the device keeps serving the version it had.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from agent.ota.desired import DesiredModel, DesiredState, sign_desired
from agent.ota.reasons import Reason
from fleet.localbroker import PrivateBroker
from fleet.release.publish import publish_model
from fleet.release.repo import Repository
from tests.integration.harness import (
    REPO,
    ManagedProcess,
    Recorder,
    agent_process,
    fleet_cli,
    start_controller,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DIGITS = REPO / "models" / "digits"
DEVICE = "ota-dev"
GENERIC = ["generic"]


@dataclass
class Fleet:
    tmp: Path
    broker: PrivateBroker
    repo_dir: Path
    recorder: Recorder
    agent: ManagedProcess | None = None

    def start_agent(self, **env: str) -> ManagedProcess:
        settings = {
            "OTA__ENABLED": "true",
            "OTA__TRUSTED_ROOT": str(self.repo_dir / "metadata" / "1.root.json"),
            "OTA__HEALTH__DURATION_S": "1",
            "OTA__HEALTH__MIN_INFERENCES": "0",
            "OTA__RETRY_S": "2",
            "INFERENCE__REST": "false",
            **env,
        }
        self.agent = agent_process(self.tmp, self.broker.port, DEVICE, **settings).start()
        return self.agent

    def cli(self, *args: str) -> subprocess_result:
        return fleet_cli(self.broker.port, *args)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.recorder.bodies("/events") if e.get("event") == name]

    def wait_event(self, name: str, timeout: float = 40, **match: Any) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            for event in self.events(name):
                if all(event.get(k) == v for k, v in match.items()):
                    return event
            return None

        return wait_until(found, timeout, f"event {name} {match}")

    def reported(self) -> dict[str, Any]:
        bodies = self.recorder.bodies("/reported")
        return bodies[-1] if bodies else {}

    def active_version(self) -> str | None:
        model = (self.reported().get("models") or {}).get("digits") or {}
        return (model.get("active") or {}).get("version")


subprocess_result = Any


@pytest.fixture
def fleet(tmp_path: Path, broker: PrivateBroker) -> Iterator[Fleet]:
    repo_dir = tmp_path / "repo"
    repo = Repository.init(repo_dir)
    publish_model(
        repo, DIGITS / "digits-fp32.onnx", name="digits", version="1", hardware=["generic"]
    )
    publish_model(
        repo, DIGITS / "digits-int8.onnx", name="digits", version="2", hardware=["generic"]
    )
    controller = start_controller(tmp_path, broker.port, OTA__REPO=str(repo_dir))
    recorder = Recorder(broker.port, f"fleet/{DEVICE}/#").start()
    state = Fleet(tmp_path, broker, repo_dir, recorder)
    try:
        yield state
    finally:
        recorder.stop()
        if state.agent is not None:
            state.agent.stop()
        controller.stop()


def _deploy(fleet: Fleet, release: str) -> None:
    result = fleet.cli("deploy", release, "--device", DEVICE, "--json")
    assert result.returncode == 0, result.stderr + result.stdout
    assert json.loads(result.stdout)["devices"] == [DEVICE]


def _wait_online(fleet: Fleet) -> None:
    wait_until(
        lambda: any(
            d["device_id"] == DEVICE
            for d in json.loads(fleet.cli("devices", "list", "--json").stdout or "[]")
        ),
        30,
        "device known to the controller",
    )


def test_deploy_update_and_operator_rollback(fleet: Fleet) -> None:
    fleet.start_agent()
    _wait_online(fleet)
    _deploy(fleet, "digits@1")
    fleet.wait_event("ota_committed", version="1")
    steps = [e["event"] for e in fleet.recorder.bodies("/events") if e["event"].startswith("ota_")]
    for step in ("ota_downloading", "ota_verifying", "ota_installed", "ota_activating"):
        assert step in steps, steps

    _deploy(fleet, "digits@2")
    fleet.wait_event("ota_committed", version="2")
    wait_until(lambda: fleet.active_version() == "2", 10, "reported active 2")
    model = fleet.reported()["models"]["digits"]
    assert model["previous"]["version"] == "1"

    shown = json.loads(fleet.cli("devices", "show", DEVICE, "--json").stdout)
    assert shown["reported"]["models"]["digits"]["active"]["version"] == "2"

    result = fleet.cli("rollback", "--device", DEVICE, "--json")
    assert result.returncode == 0, result.stderr
    fleet.wait_event("ota_rolled_back", reason=Reason.OPERATOR_ROLLBACK)
    wait_until(lambda: fleet.active_version() == "1", 10, "reported active 1 after rollback")


def test_tampered_model_bytes_are_refused(fleet: Fleet) -> None:
    fleet.start_agent()
    _wait_online(fleet)
    _deploy(fleet, "digits@1")
    fleet.wait_event("ota_committed", version="1")
    repo = Repository.open(fleet.repo_dir)
    target = next(t for p, t in repo.targets().items() if "/2/" in p)
    stored = repo.target_file_path(target)
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same length
    stored.write_bytes(bytes(data))
    _deploy(fleet, "digits@2")
    event = fleet.wait_event("ota_rejected", version="2")
    assert event["reason"] == Reason.TAMPERED
    assert fleet.active_version() == "1"


def _forge(fleet: Fleet, state: DesiredState, *, signer_repo: Repository) -> None:
    payload = sign_desired(state, signer_repo.online_signer("timestamp"))
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.connect("127.0.0.1", fleet.broker.port)
    client.loop_start()
    try:
        client.publish(f"fleet/{DEVICE}/desired", payload, qos=1, retain=True).wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()


def test_forged_replayed_and_other_device_desired_states_are_refused(
    fleet: Fleet, tmp_path: Path
) -> None:
    fleet.start_agent()
    _wait_online(fleet)
    _deploy(fleet, "digits@1")
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
        _forge(fleet, state, signer_repo=signer)
        fleet.wait_event("ota_rejected", reason=reason)
    time.sleep(1)
    assert fleet.active_version() == "1"
    assert not fleet.events("ota_committed")[1:], "nothing but v1 was ever committed"
    shutil.rmtree(tmp_path / "attacker")
