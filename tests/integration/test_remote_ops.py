"""Remote operations on a real Mosquitto and a real agent process.

An expired command (retained with a deadline in the past) is answered ``expired`` and not
run; a bad ``config-set`` is refused and the old config serves on; a good one is written and
applied by the agent re-executing itself (the same pid, a second ``agent.starting``); one that
cuts the agent off from the broker is rolled back by the restarted agent on its own.
"""

from __future__ import annotations

import itertools
import json
import socket
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from devtools.localbroker import PrivateBroker
from tests.integration.harness import (
    ManagedProcess,
    Recorder,
    agent_process,
    fleet_cli,
    fleet_devices,
    start_controller,
    wait_until,
)

DEVICE = "ops-01"


class Operator:
    """Sends commands as the controller does (response topic, correlation data)."""

    def __init__(self, port: int) -> None:
        self._ids = itertools.count(1)
        self.replies = Recorder(port, "test/replies/#", client_id=f"test-replies-{port}").start()
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"test-operator-{port}",
            protocol=paho.MQTTv5,
        )
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.status = Recorder(port, f"fleet/{DEVICE}/status", client_id=f"test-st-{port}").start()

    def wait_online(self) -> None:
        """The agent's retained ``online``: it is subscribed to its commands from then on."""
        online = lambda: [b for b in self.status.bodies("/status") if b.get("state") == "online"]  # noqa: E731
        wait_until(online, 30, "the agent online")

    def send(self, name: str, body: dict[str, Any], *, retain: bool = False) -> str:
        n = f"{name}-{next(self._ids)}"
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = f"test/replies/{n}"
        props.CorrelationData = n.encode()
        topic = f"fleet/{DEVICE}/cmd/{name}"
        payload = json.dumps(body).encode()
        self.client.publish(
            topic, payload, qos=1, retain=retain, properties=props
        ).wait_for_publish(10)
        return n

    def reply(self, n: str, timeout: float = 30) -> dict[str, Any]:
        got = wait_until(lambda: self.replies.bodies(f"/{n}"), timeout, f"reply {n}")
        reply: dict[str, Any] = got[0]
        return reply

    def command(self, name: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.reply(self.send(name, body or {}))

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.replies.stop()
        self.status.stop()


@pytest.fixture
def operator(broker: PrivateBroker) -> Iterator[Operator]:
    client = Operator(broker.port)
    yield client
    client.stop()


def _agent(tmp: Path, port: int, config: Path | None = None) -> ManagedProcess:
    process = agent_process(tmp, port, DEVICE)
    if config is not None:
        process.argv += ["--config", str(config)]
    return process


def _starts(process: ManagedProcess) -> int:
    return process.log().count('"agent.starting"')


def test_an_expired_command_is_not_run_and_is_reported(
    tmp_path: Path, broker: PrivateBroker, operator: Operator, processes: list[ManagedProcess]
) -> None:
    # Retained, as a request left behind while the device was away: it arrives on subscribe.
    expired = operator.send("restart", {"expires_at": time.time() - 3600}, retain=True)
    agent = _agent(tmp_path, broker.port)
    processes.append(agent.start())

    reply = operator.reply(expired)

    assert reply["ok"] is False
    assert reply["error"].startswith("expired"), reply
    health = operator.command("health")  # answered after the refusal: the order is kept
    assert health["rejected"]["by_reason"].get("expired") == 1
    assert "agent.restart_requested" not in agent.log()
    assert agent.alive and _starts(agent) == 1
    lines = operator.command("logs", {"lines": 1000})["lines"]
    assert any('"agent.starting"' in line for line in lines)  # its own log, from memory
    assert len(operator.command("logs", {"lines": 2})["lines"]) == 2


def test_a_command_sent_while_the_device_is_away_expires_in_the_broker(
    tmp_path: Path, broker: PrivateBroker, operator: Operator, processes: list[ManagedProcess]
) -> None:
    agent = _agent(tmp_path, broker.port)
    processes.append(agent.start())
    operator.wait_online()
    assert operator.command("ping")["ok"] is True
    # A clean stop: the broker keeps the agent's session (clean start false, a session
    # expiry), so QoS 1 commands sent meanwhile are queued for it.
    assert agent.terminate() == 0

    # `fleet devices cmd` gives its command the wait as the MQTT Message Expiry Interval
    # (1 s here) as well as the deadline in the body.
    sent = fleet_cli(broker.port, "devices", "cmd", DEVICE, "ping", "--timeout", "1")
    assert sent.returncode == 1 and f"no answer in time: {DEVICE}" in sent.stdout, sent
    # The control: a deadline in the body only, no expiry: the broker keeps it.
    control = operator.send("ping", {"expires_at": time.time() - 1})
    time.sleep(2.5)  # past the 1 s expiry (Mosquitto counts whole seconds)
    agent.start()

    reply = operator.reply(control)
    assert reply["ok"] is False and reply["error"].startswith("expired"), reply
    # The CLI's command was queued before the control; had the broker delivered it, the agent
    # would have refused it as expired too and counted two.
    health = operator.command("health")
    assert health["rejected"]["by_reason"].get("expired") == 1, health["rejected"]


def test_restart_reexecutes_the_agent_and_a_retained_one_is_not_run(
    tmp_path: Path, broker: PrivateBroker, operator: Operator, processes: list[ManagedProcess]
) -> None:
    # Retained without a deadline: it would restart the agent at every start if it ran.
    left_behind = operator.send("restart", {}, retain=True)
    agent = _agent(tmp_path, broker.port)
    # systemd's side of it, through a real notify socket: the unit must stay active.
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(30)
    agent.env["NOTIFY_SOCKET"] = str(tmp_path / "notify")
    with notify:
        processes.append(agent.start())
        assert notify.recv(256) == b"READY=1"
        assert operator.reply(left_behind)["error"].startswith("retained")
        assert agent.process is not None
        pid = agent.process.pid
        assert _starts(agent) == 1

        reply = operator.command("restart")

        assert reply["ok"] is True and reply["restarting"] is True
        reloading = notify.recv(256).decode()
        assert reloading.startswith("RELOADING=1\nMONOTONIC_USEC="), reloading  # not STOPPING=1
        assert "STATUS=restarting: " in reloading
        assert notify.recv(256) == b"READY=1"  # the new image, in the same process
    wait_until(lambda: _starts(agent) == 2, 30, "the agent to start again")
    assert agent.alive and agent.process.pid == pid  # re-executed in place
    assert operator.command("ping")["pong"] is True
    assert _starts(agent) == 2  # and the retained one, delivered again, still not run


def test_config_set_refused_then_applied_by_a_restart(
    tmp_path: Path, broker: PrivateBroker, operator: Operator, processes: list[ManagedProcess]
) -> None:
    config = tmp_path / "agent.toml"
    original = '[log]\nlevel = "info"\n'
    config.write_text(original)
    agent = _agent(tmp_path, broker.port, config)
    processes.append(agent.start())
    operator.wait_online()
    assert operator.command("config-get")["config"]["log"]["level"] == "info"
    assert agent.process is not None
    pid = agent.process.pid

    refused = operator.command("config-set", {"patch": {"log": {"level": "loud"}}})

    assert refused["ok"] is False
    assert "log.level" in refused["error"]
    assert config.read_text() == original
    after_refusal = operator.command("config-get")
    assert after_refusal["config"]["log"]["level"] == "info"
    assert after_refusal["pending"] is False

    applied = operator.command("config-set", {"patch": {"log": {"level": "debug"}}})

    assert applied["ok"] is True and applied["restarting"] is True
    wait_until(lambda: _starts(agent) == 2, 30, "the agent to start again")
    assert agent.alive and agent.process.pid == pid  # re-executed in place
    assert operator.command("config-get")["config"]["log"]["level"] == "debug"
    wait_until(lambda: not Path(f"{config}.pending").exists(), 30, "the config confirmed")
    assert Path(f"{config}.previous").read_text() == original


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens there once the socket is closed


def test_a_config_set_that_cuts_the_agent_off_is_rolled_back(
    tmp_path: Path, broker: PrivateBroker, operator: Operator, processes: list[ManagedProcess]
) -> None:
    config = tmp_path / "agent.toml"
    original = f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\nconfirm_config_s = 3.0\n'
    config.write_text(original)
    agent = _agent(tmp_path, broker.port, config)
    del agent.env["EDGE_AGENT_MQTT__PORT"]  # the file's port, which the patch changes
    processes.append(agent.start())
    operator.wait_online()
    assert operator.command("ping")["pong"] is True

    applied = operator.command("config-set", {"patch": {"mqtt": {"port": _dead_port()}}})

    assert applied["ok"] is True
    wait_until(lambda: "config.rolled_back" in agent.log(), 30, "the rollback")
    wait_until(lambda: _starts(agent) == 3, 30, "the agent on its old config")
    assert operator.command("ping")["pong"] is True
    assert tomllib.loads(config.read_text())["mqtt"]["port"] == broker.port
    assert not Path(f"{config}.pending").exists()


def test_fleet_devices_cmd_over_a_selection_names_the_device_that_did_not_answer(
    tmp_path: Path, broker: PrivateBroker, processes: list[ManagedProcess]
) -> None:
    processes.append(start_controller(tmp_path, broker.port))
    agents = {d: agent_process(tmp_path, broker.port, d) for d in ("cmd-a", "cmd-b", "cmd-c")}
    for agent in agents.values():
        processes.append(agent.start())
    wait_until(lambda: len(fleet_devices(broker.port)) == 3, 30, "three devices seen")
    agents["cmd-c"].terminate()  # seen, selected, and not there to answer

    result = fleet_cli(broker.port, "devices", "cmd", "--select", "*", "ping", "--timeout", "5")

    assert result.returncode == 1, result.stderr  # not every device answered
    rows = {line.split()[1]: line for line in result.stdout.splitlines() if "cmd-" in line}
    assert "yes" in rows["cmd-a"] and "pong" in rows["cmd-a"]
    assert "yes" in rows["cmd-b"] and "pong" in rows["cmd-b"]
    assert "no answer in time: cmd-c" in result.stdout

    one = fleet_cli(broker.port, "devices", "cmd", "cmd-a", "health-check", "--json")

    assert one.returncode == 0, one.stderr
    [answer] = json.loads(one.stdout)
    assert answer["ok"] is True and answer["reply"]["health"]["status"] in ("ok", "degraded")


def test_a_pending_config_that_does_not_load_is_rolled_back_at_start(
    tmp_path: Path, broker: PrivateBroker, operator: Operator, processes: list[ManagedProcess]
) -> None:
    """As after a config-set whose file stops loading (an environment that changed since)."""
    config = tmp_path / "agent.toml"
    good = '[log]\nlevel = "info"\n'
    config.write_text('[log]\nlevel = "loud"\n')
    Path(f"{config}.previous").write_text(good)
    Path(f"{config}.pending").write_text("")
    agent = _agent(tmp_path, broker.port, config)
    processes.append(agent.start())

    operator.wait_online()

    assert "restored" in agent.log()
    assert config.read_text() == good
    assert operator.command("config-get")["config"]["log"]["level"] == "info"
    assert not Path(f"{config}.pending").exists()
