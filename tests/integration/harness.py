"""Real processes for integration tests: the agent, the controller, the fleet CLI, a recorder.

Everything talks to a private Mosquitto on 127.0.0.1 (``devtools.localbroker``). The recorder is
a real paho client with a persistent session, so it keeps receiving across broker restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_runtime.mqtt.link import MqttLink

REPO = Path(__file__).resolve().parents[2]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``.

    ``step`` is short because most predicates read what a recorder or a log already holds;
    one that runs a process (the fleet CLI) takes longer than a step anyway."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@contextlib.asynccontextmanager
async def running_link(link: MqttLink, timeout: float = 10) -> AsyncIterator[MqttLink]:
    """Run ``link`` for the block, connected and with its subscriptions acknowledged; close it
    cleanly after."""
    task = asyncio.create_task(link.run())
    try:
        await link.wait_connected(timeout)
        await link.wait_subscribed(timeout)
        yield link
    finally:
        await link.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_AGENT_", "FLEET_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class ManagedProcess:
    """A child process with its output in a log file."""

    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO
            )
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean-up code runs, as in a crash or power cut."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout: float = 15) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.alive:
            assert self.process is not None
            self.process.kill()
            self.process.wait(10)


def agent_process(
    tmp: Path, port: int, device_id: str, *, interval_s: float = 1.0, **env: str
) -> ManagedProcess:
    variables = {
        "EDGE_AGENT_DEVICE_ID": device_id,
        "EDGE_AGENT_MQTT__HOST": "127.0.0.1",
        "EDGE_AGENT_MQTT__PORT": str(port),
        "EDGE_AGENT_STATE_DIR": str(tmp / f"state-{device_id}"),
        "EDGE_AGENT_TELEMETRY__INTERVAL_S": str(interval_s),
        "EDGE_AGENT_MQTT__RECONNECT_MAX_S": "1",
        "EDGE_AGENT_LOG__FORMAT": "json",
        **{f"EDGE_AGENT_{k.upper()}": v for k, v in env.items()},
    }
    return ManagedProcess(
        [sys.executable, "-m", "agent", "run"],
        _child_env(variables),
        tmp / f"agent-{device_id}.log",
    )


def controller_process(tmp: Path, port: int, **env: str) -> ManagedProcess:
    return ManagedProcess(
        [
            sys.executable,
            "-m",
            "fleet",
            "serve",
            "--broker",
            f"mqtt://127.0.0.1:{port}",
            "--db",
            str(tmp / "fleet.sqlite3"),
            "--log-format",
            "json",
        ],
        # Any free port for the HTTP side (logged as http.listening): tests run controllers
        # side by side; one that needs the port gives HTTP__LISTEN itself.
        _child_env(
            {"FLEET_HTTP__LISTEN": "127.0.0.1:0"}
            | {f"FLEET_{k.upper()}": v for k, v in env.items()}
        ),
        tmp / "controller.log",
    )


def fleet_cli(
    port: int, *args: str, timeout: float = 30, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``fleet ARGS --broker ...``; ``env`` adds ``FLEET_*`` variables (e.g. the operator key)."""
    return subprocess.run(
        [sys.executable, "-m", "fleet", *args, "--broker", f"mqtt://127.0.0.1:{port}"],
        env=_child_env(env or {}),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


def model_optimize(*args: str | Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``fleet model optimize ARGS`` as a user runs it, from the repository root."""
    argv = [sys.executable, "-m", "fleet", "model", "optimize", *map(str, args)]
    return subprocess.run(
        argv,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "300", "PYTHONPATH": str(REPO)},
        check=False,
    )


def start_controller(tmp: Path, port: int, **env: str) -> ManagedProcess:
    """Start the controller and wait until it answers, so its session exists before devices
    publish anything (messages sent before a subscriber's first connect cannot be queued)."""
    controller = controller_process(tmp, port, **env)
    log_start = controller.log_path.stat().st_size if controller.log_path.exists() else 0
    controller.start()
    # The link logs its CONNACK just before it subscribes. A request sent before that is lost
    # and costs the CLI its whole --timeout, so the first one waits for the line (a restart
    # appends to the same log: only what this process wrote counts).
    wait_until(
        lambda: (
            not controller.alive
            or b'"mqtt.connected"' in controller.log_path.read_bytes()[log_start:]
        ),
        30,
        "controller connected to the broker",
    )
    wait_until(
        lambda: fleet_cli(port, "devices", "list", "--timeout", "2").returncode == 0,
        30,
        "controller answering",
    )
    return controller


def register_operator(tmp: Path, db: Path, name: str = "tester") -> Path:
    """An operator key in ``tmp`` registered straight in the controller's database ``db``
    (the ``--db`` bootstrap); returns the private key file."""
    from fleet.operators import generate_key, private_key_pem, public_key_text
    from fleet.store import SqliteFleetStore

    key = generate_key()
    key_file = tmp / f"operator-{name}.pem"
    key_file.write_bytes(private_key_pem(key))
    key_file.chmod(0o600)
    store = SqliteFleetStore(db)
    try:
        store.add_operator(name, public_key_text(key.public_key()), now=time.time())
    finally:
        store.close()
    return key_file


def fleet_devices(port: int) -> list[dict[str, Any]]:
    result = fleet_cli(port, "devices", "list", "--json", "--timeout", "3")
    if result.returncode != 0:
        return []
    devices: list[dict[str, Any]] = json.loads(result.stdout)
    return devices


@dataclass
class Recorder:
    """A real MQTT v5 subscriber with a persistent session that records what it receives."""

    port: int
    topic_filter: str
    client_id: str = "test-recorder"
    messages: list[tuple[str, dict[str, Any], bool]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=paho.MQTTv5,
        )
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        # The SUBACK itself, not a pause after CONNACK: from then on the broker routes (and,
        # the session being persistent, queues) every matching message for the recorder.
        self.client.on_subscribe = self._on_subscribe
        self.client.reconnect_delay_set(0.1, 0.5)
        self._subscribed = threading.Event()

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            client.subscribe(self.topic_filter, qos=1)

    def _on_subscribe(self, _c: paho.Client, _u: Any, _mid: int, codes: list[Any], _p: Any) -> None:
        if not any(code.is_failure for code in codes):
            self._subscribed.set()

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        try:
            body = json.loads(msg.payload)
        except ValueError:
            body = {"_raw": msg.payload.decode(errors="replace")}
        with self._lock:
            self.messages.append((msg.topic, body, bool(msg.retain)))

    def start(self) -> Recorder:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect(
            "127.0.0.1", self.port, keepalive=10, clean_start=False, properties=props
        )
        self.client.loop_start()
        assert self._subscribed.wait(10), "recorder did not connect and subscribe"
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def bodies(self, suffix: str) -> list[dict[str, Any]]:
        with self._lock:
            return [body for topic, body, _r in self.messages if topic.endswith(suffix)]
