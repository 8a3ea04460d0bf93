"""The OTA test bench: a TUF repository with the committed digits models published, the real
controller serving it (`fleet serve` with `[ota] repo`), a recorder on the device's topics, and
helpers to start the agent, deploy through the real `fleet` CLI and wait for OTA events."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from agent.ota.desired import DesiredState, sign_desired
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
    controller: ManagedProcess | None = None

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

    def cli(self, *args: str) -> Any:
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

    def deploy(self, release: str) -> None:
        """`fleet deploy RELEASE --device DEVICE`, checked to succeed."""
        result = self.cli("deploy", release, "--device", DEVICE, "--json")
        assert result.returncode == 0, result.stderr + result.stdout
        assert json.loads(result.stdout)["devices"] == [DEVICE]

    def wait_online(self) -> None:
        """Until the controller knows the device (deploy refuses unknown devices)."""

        def known() -> bool:
            listed = json.loads(self.cli("devices", "list", "--json").stdout or "[]")
            return any(d["device_id"] == DEVICE for d in listed)

        wait_until(known, 30, "device known to the controller")

    def forge(self, state: DesiredState, *, signer_repo: Repository) -> None:
        """Publish a desired state signed by ``signer_repo``'s online key straight to the broker."""
        payload = sign_desired(state, signer_repo.online_signer("timestamp"))
        self.publish_raw(f"fleet/{DEVICE}/desired", payload)

    def publish_raw(self, topic: str, payload: bytes, *, retain: bool = True) -> None:
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        client.connect("127.0.0.1", self.broker.port)
        client.loop_start()
        try:
            client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)
        finally:
            client.loop_stop()
            client.disconnect()


@contextlib.contextmanager
def ota_fleet(tmp_path: Path, broker: PrivateBroker) -> Iterator[Fleet]:
    """digits@1 (fp32) and digits@2 (int8) published; the controller serving the repository."""
    repo_dir = tmp_path / "repo"
    repo = Repository.init(repo_dir)
    publish_model(repo, DIGITS / "digits-fp32.onnx", name="digits", version="1", hardware=GENERIC)
    publish_model(repo, DIGITS / "digits-int8.onnx", name="digits", version="2", hardware=GENERIC)
    controller = start_controller(tmp_path, broker.port, OTA__REPO=str(repo_dir))
    recorder = Recorder(broker.port, f"fleet/{DEVICE}/#").start()
    state = Fleet(tmp_path, broker, repo_dir, recorder)
    state.controller = controller
    try:
        yield state
    finally:
        recorder.stop()
        if state.agent is not None:
            state.agent.stop()
        controller.stop()
