"""Operator authentication and device admission on a real Mosquitto and the real controller.

The controller serves a TUF repository (the OTA bench, `ota_harness.py`) and trusts one
operator key, registered with the `--db` bootstrap. The devices are registered fakes: their
retained status (and, for OTA-enabled ones, reported state) is published with paho, which is
all the controller sees of a device before a deploy. Requests are sent the way an attacker on
the broker would: straight to `fleet-controller/rpc/deploy` with paho, unsigned, signed with
another key, signed long ago, or a signed request captured off the wire and sent again.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_contract import payloads
from fleet.operators import generate_key, load_private_key, sign_request
from tests.integration.harness import Recorder, fleet_cli, wait_until
from tests.integration.ota_harness import Fleet, free_port, release_cli

pytestmark = [pytest.mark.integration]

ACCEPTED, PENDING, NO_OTA = "pi-accepted", "pi-pending", "pi-nota"
DEPLOY = {"model": "digits", "version": "1", "devices": [ACCEPTED], "all": False}


class Rpc:
    """A paho client that sends raw requests to the controller and collects the replies."""

    def __init__(self, port: int) -> None:
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.replies: dict[bytes, dict[str, Any]] = {}
        self.captured: list[bytes] = []
        self._lock = threading.Lock()
        self._subacks: set[int] = set()
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda _c, _u, mid, _rc, _p: self._subacks.add(mid)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        mids = {
            self.client.subscribe(topic, qos=1)[1]
            for topic in ("test-inbox", "fleet-controller/rpc/deploy")
        }
        wait_until(lambda: mids <= self._subacks, 10, "SUBACKs")

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            if msg.topic == "test-inbox":
                correlation = msg.properties.CorrelationData  # type: ignore[union-attr]
                self.replies[correlation] = json.loads(msg.payload)
            else:
                self.captured.append(bytes(msg.payload))

    def send(self, method: str, payload: bytes) -> dict[str, Any]:
        correlation = os.urandom(8)
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "test-inbox"
        props.CorrelationData = correlation
        self.client.publish(f"fleet-controller/rpc/{method}", payload, qos=1, properties=props)
        return wait_until(lambda: self.replies.get(correlation), 10, f"reply to {method}")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def rpc(fleet: Fleet) -> Iterator[Rpc]:
    client = Rpc(fleet.broker.port)
    yield client
    client.close()


def _fake_device(fleet: Fleet, device_id: str, *, ota: bool) -> None:
    """What the controller knows of a device: its retained status (and reported state)."""
    now = payloads.utc_now()  # the controller refuses status and reported without a timestamp
    status = {"device_id": device_id, "state": "online", "agent_version": "0.0-test", "ts": now}
    fleet.publish_raw(f"fleet/{device_id}/status", json.dumps(status).encode())
    if ota:
        reported = {"device_id": device_id, "models": {}, "ts": now}
        fleet.publish_raw(f"fleet/{device_id}/reported", json.dumps(reported).encode())


def _shown(fleet: Fleet, device_id: str) -> dict[str, Any]:
    result = fleet.cli("devices", "show", device_id, "--json")
    assert result.returncode == 0, result.stderr
    shown: dict[str, Any] = json.loads(result.stdout)
    return shown


def _three_devices(fleet: Fleet) -> None:
    _fake_device(fleet, ACCEPTED, ota=True)
    _fake_device(fleet, PENDING, ota=True)
    _fake_device(fleet, NO_OTA, ota=False)

    def stored() -> bool:
        shown = {d: fleet.cli("devices", "show", d, "--json") for d in (ACCEPTED, PENDING, NO_OTA)}
        if any(r.returncode != 0 for r in shown.values()):
            return False
        return all(json.loads(shown[d].stdout)["reported"] for d in (ACCEPTED, PENDING))

    wait_until(stored, 20, "fake devices and their reported state stored")
    for device in (ACCEPTED, NO_OTA):
        result = fleet.cli("devices", "accept", device)
        assert result.returncode == 0, result.stderr


def _deploy_and_wait(fleet: Fleet, desired: Recorder, release: str, device: str) -> None:
    """A signed deploy through the CLI, and its directive seen on the broker."""
    before = len(desired.messages)
    result = fleet.cli("deploy", release, "--device", device)
    assert result.returncode == 0, result.stderr
    wait_until(lambda: len(desired.messages) > before, 10, f"directive for {release}")


def _signed(key: Any, when: float) -> bytes:
    return json.dumps(sign_request(key, "deploy", DEPLOY, now=when)).encode()


def _refusals(fleet: Fleet) -> list[str]:
    assert fleet.controller is not None
    lines = [json.loads(line) for line in fleet.controller.log().splitlines() if "{" in line]
    return [e["reason"] for e in lines if e.get("event") == "controller.operator_refused"]


@pytest.fixture
def desired(fleet: Fleet) -> Iterator[Recorder]:
    recorder = Recorder(fleet.broker.port, "fleet/+/desired", client_id="desired-recorder")
    yield recorder.start()
    recorder.stop()


def test_unsigned_foreign_expired_and_replayed_deploys_are_refused(
    fleet: Fleet, rpc: Rpc, desired: Recorder
) -> None:
    _three_devices(fleet)
    assert fleet.operator_key is not None
    ours = load_private_key(fleet.operator_key.read_bytes(), source="test")
    attempts = {
        "unsigned": json.dumps(DEPLOY).encode(),
        "unknown_key": _signed(generate_key(), time.time()),
        "expired": _signed(ours, time.time() - 600),
    }
    for reason, payload in attempts.items():
        reply = rpc.send("deploy", payload)
        assert reply["ok"] is False, reply
        assert (reply["kind"], reply["reason"]) == ("OperatorRefusedError", reason), reply
        assert "unauthorized" in reply["error"]
    assert desired.messages == []
    assert all(_shown(fleet, d)["desired"] is None for d in (ACCEPTED, PENDING, NO_OTA))

    # A real operator's deploy, captured off the wire, then sent again by the attacker.
    rpc.captured.clear()
    result = fleet.cli("deploy", "digits@1", "--device", ACCEPTED, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["operator"] == "tester"
    wait_until(lambda: desired.messages, 10, "the signed deploy's desired state")
    assert [t for t, _b, _r in desired.messages] == [f"fleet/{ACCEPTED}/desired"]
    before = _shown(fleet, ACCEPTED)["desired"]
    assert before["counter"] == 1
    captured = wait_until(lambda: rpc.captured, 5, "the CLI's request seen on the broker")[0]
    reply = rpc.send("deploy", captured)
    assert (reply["ok"], reply["reason"]) == (False, "replayed"), reply
    assert _shown(fleet, ACCEPTED)["desired"] == before
    assert _refusals(fleet) == ["unsigned", "unknown_key", "expired", "replayed"]
    # The controller publishes in order: once the next real deploy's directive is in, any
    # directive a refused request had caused would have arrived before it.
    _deploy_and_wait(fleet, desired, "digits@2", ACCEPTED)
    assert [b["signed"]["counter"] for _t, b, _r in desired.messages] == [1, 2]
    assert all(_shown(fleet, d)["desired"] is None for d in (PENDING, NO_OTA))


def test_only_accepted_devices_with_ota_are_deployed_to(fleet: Fleet, desired: Recorder) -> None:
    _three_devices(fleet)
    listed = {d["device_id"]: d for d in json.loads(fleet.cli("devices", "list", "--json").stdout)}
    assert listed[PENDING]["admission"] == "pending"
    assert listed[ACCEPTED]["admission"] == "accepted"

    table = fleet.cli("devices", "list").stdout
    assert f"pending, not deploy targets until `fleet devices accept ID`: {PENDING}" in table
    rollback = fleet.cli("rollback", "--device", PENDING)
    assert rollback.returncode == 65 and "is pending" in rollback.stderr, rollback.stderr
    refused = fleet.cli("deploy", "digits@1", "--device", PENDING)
    assert refused.returncode == 65, refused.stderr
    assert f"device '{PENDING}' is pending" in refused.stderr
    assert f"fleet devices accept {PENDING}" in refused.stderr
    no_ota = fleet.cli("deploy", "digits@1", "--device", NO_OTA)
    assert no_ota.returncode == 1 and "OTA disabled" in no_ota.stderr, no_ota.stderr

    every = fleet.cli("deploy", "digits@1", "--all")
    assert every.returncode == 0, every.stderr
    assert f"desired on: {ACCEPTED}" in every.stdout
    assert f"skipped {PENDING}: pending" in every.stdout
    assert f"skipped {NO_OTA}: OTA disabled (no reported state)" in every.stdout
    _deploy_and_wait(fleet, desired, "digits@2", ACCEPTED)  # everything before it is in
    topics = [topic for topic, _b, _r in desired.messages]
    assert topics == [f"fleet/{ACCEPTED}/desired"] * 2, topics
    assert _shown(fleet, PENDING)["desired"] is None


def test_operators_are_managed_with_signed_requests(fleet: Fleet, tmp_path: Path) -> None:
    new_key = tmp_path / "bob.pem"
    made = release_cli("operators", "keygen", "--out", str(new_key), "--json")
    assert made.returncode == 0, made.stderr
    assert new_key.stat().st_mode & 0o777 == 0o600
    info = json.loads(made.stdout)

    unsigned = fleet_cli(fleet.broker.port, "operators", "add", "bob", f"{new_key}.pub")
    assert unsigned.returncode == 78, unsigned.stderr
    assert "must be signed by an operator key" in unsigned.stderr
    added = fleet.cli("operators", "add", "bob", f"{new_key}.pub")
    assert added.returncode == 0, added.stderr
    listed = json.loads(fleet.cli("operators", "list", "--json").stdout)
    assert {o["name"]: o["key_id"] for o in listed}["bob"] == info["key_id"]

    # bob's key now signs; once removed, it no longer does.
    as_bob = ("--operator-key", str(new_key))
    assert fleet.cli("operators", "remove", "tester", *as_bob).returncode == 0
    refused = fleet.cli("operators", "add", "carol", f"{new_key}.pub")  # tester's key
    assert refused.returncode == 77, refused.stderr
    assert "unauthorized (unknown_key)" in refused.stderr


def test_cli_names_the_unknown_device(fleet: Fleet) -> None:
    result = fleet.cli("deploy", "digits@1", "--device", "nosuch")
    assert result.returncode == 2, result.stderr
    assert "unknown device 'nosuch'" in result.stderr


def test_cli_says_when_the_broker_cannot_be_reached() -> None:
    port = free_port()  # nothing listens there
    result = fleet_cli(port, "devices", "list", "--timeout", "2")
    assert result.returncode == 69, result.stderr
    assert f"cannot reach the broker at mqtt://127.0.0.1:{port}" in result.stderr
    assert "refused" in result.stderr.lower()
    assert "fleet serve" not in result.stderr
    # One line, not the link's reconnect warnings before it.
    assert result.stderr.strip().count("\n") == 0, result.stderr


def test_cli_says_when_the_broker_is_up_but_no_controller_answers(broker: Any) -> None:
    result = fleet_cli(broker.port, "devices", "list", "--timeout", "1")
    assert result.returncode == 69, result.stderr
    assert "is up, but no fleet controller answered" in result.stderr
    assert "cannot reach" not in result.stderr


def test_the_db_bootstrap_registers_operators_and_accepts_devices(tmp_path: Path) -> None:
    """On the controller's host, file access to the database is the authentication."""
    from fleet.store import Inbound, SqliteFleetStore

    db = tmp_path / "fleet.sqlite3"
    store = SqliteFleetStore(db)
    store.ingest([Inbound("pi-1", "status", {"state": "online"}, time.time())])
    store.close()
    key = tmp_path / "alice.pem"
    made = release_cli("operators", "keygen", "--out", str(key))
    assert made.returncode == 0 and "key id:" in made.stdout, made.stderr
    again = release_cli("operators", "keygen", "--out", str(key))
    assert again.returncode == 78 and "File exists" in again.stderr, again.stderr

    public = (tmp_path / "alice.pem.pub").read_text().strip()
    assert release_cli("operators", "add", "alice", public, "--db", str(db)).returncode == 0
    wrong = release_cli("operators", "add", "eve", str(key), "--db", str(db))
    assert wrong.returncode == 78 and "private key" in wrong.stderr, wrong.stderr
    listed = json.loads(release_cli("operators", "list", "--json", "--db", str(db)).stdout)
    assert [o["name"] for o in listed] == ["alice"]
    assert release_cli("devices", "accept", "pi-1", "--db", str(db)).returncode == 0
    shown = json.loads(release_cli("devices", "show", "pi-1", "--json", "--db", str(db)).stdout)
    assert shown["summary"]["admission"] == "accepted"
    assert release_cli("operators", "remove", "alice", "--db", str(db)).returncode == 0
    assert json.loads(release_cli("operators", "list", "--json", "--db", str(db)).stdout) == []
