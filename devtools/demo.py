"""``make demo``: a private broker, the controller and four agents, with a live device table.

Everything runs on this machine on embedded defaults: Mosquitto on a free loopback port with
a throw-away config and data dir, the controller on SQLite, four agents with their own
state dirs, and an emulated Arduino (the real firmware in simavr) on one agent's serial port.
The agents start only once the controller answers a request, so it is subscribed before any
device publishes (a device's first telemetry and its ``agent_started`` event are stored).
The light level on the board's A0 input swings up and down; the agent's pipeline turns pin B5
on above the threshold and off below it, and the line under the table shows both. The table
(80 columns; ``devtools.demo_display``) refreshes every second until Ctrl-C or ``DEMO_SECONDS``
elapse (a staged rollout still under way then gets up to ``ROLLOUT_GRACE_S`` more to end);
when stdout is not a terminal, a plain line per change is printed instead. Then every
process the demo started is stopped and its files removed (``DEMO_KEEP=1`` keeps them).
Part-way through, one agent is killed with SIGKILL so the table shows the Last Will turning
it offline, and it is started again.

Three agents (``MODEL_DEVICES``) serve the committed digits classifier (int8 ONNX). The demo
is their client: every second it sends each the same held-out images to its TensorFlow
Serving-compatible REST API, returns the true labels as feedback, and shows what
``pi-kitchen``'s model monitor reports on ``/metrics``: predictions, latency, accuracy from
feedback and drift. Part-way through, the model devices get digits@2 (the same int8 model as
a signed release) with a plain ``fleet deploy``, then digits@3 (fp32) in a staged rollout
gated on their health (``devtools.demo_ota``); each transition of the rollout is printed with
the gate's figures.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devtools.demo_display import BoardState, Display, Frame, make_display
from devtools.demo_model import MODEL_DEVICE, MODEL_DEVICES, ModelClient
from devtools.demo_ota import TICK_S, DemoRelease
from devtools.emulated_board import EmulatedBoard
from devtools.localbroker import PrivateBroker, free_port
from edge_contract.controller import DevicesListRequest, DevicesReply
from edge_runtime.log import configure_logging
from fleet.config import load_fleet_config
from fleet.errors import ControllerUnavailableError, FleetError
from fleet.http.auth import Role, new_token, token_line
from fleet.rpc import call
from fleet.store import SqliteFleetStore

DEVICES = ("pi-kitchen", "pi-garage", "pi-porch", "jetson-yard")
SERIAL_DEVICE = "pi-garage"
# After DEMO_SECONDS, a staged rollout under way gets this much longer to end.
ROLLOUT_GRACE_S = 60.0
# The controller's default HTTP port; the demo takes another when it is in use.
DASHBOARD_PORT = 8080
PIPELINE = [{"name": "light", "channel": 0, "threshold": 0.5, "hysteresis": 0.05, "actuator": 5}]


def _spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)


def _agent(
    workdir: Path,
    port: int,
    device_id: str,
    tty: Path | None = None,
    model: ModelClient | None = None,
    release: DemoRelease | None = None,
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    if model is not None:
        env.update(model.agent_env(device_id))
    if release is not None:
        env.update(release.agent_env())
    if tty is not None:
        env.update(
            {
                "EDGE_AGENT_SERIAL__PORT": str(tty),
                "EDGE_AGENT_SERIAL__RESET_WAIT_S": "0.05",
                "EDGE_AGENT_PIPELINES": json.dumps(PIPELINE),
            }
        )
    env.update(
        {
            "EDGE_AGENT_DEVICE_ID": device_id,
            "EDGE_AGENT_MQTT__HOST": "127.0.0.1",
            "EDGE_AGENT_MQTT__PORT": str(port),
            "EDGE_AGENT_STATE_DIR": str(workdir / device_id),
            "EDGE_AGENT_TELEMETRY__INTERVAL_S": "1",
            "EDGE_AGENT_MQTT__WILL_DELAY_S": "1",
            "EDGE_AGENT_LOG__FORMAT": "json",
        }
    )
    return _spawn([sys.executable, "-m", "agent", "run"], env, workdir / f"{device_id}.log")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _drive_board(board: EmulatedBoard, elapsed: float) -> BoardState:
    """Set the light level on A0; the state of pin B5, which the agent's pipeline drives."""
    millivolts = _light_level(elapsed)
    board.set_adc(0, millivolts)
    return BoardState(SERIAL_DEVICE, millivolts / 1000, bool(board.pin_state(5)))


def _light_level(elapsed: float) -> int:
    """Millivolts on A0: a slow swing between 0.3 V and 4.7 V."""
    return int(2500 + 2200 * math.sin(elapsed / 3))


def wait_for_controller(
    broker_url: str, controller: subprocess.Popen[bytes], timeout_s: float = 60.0
) -> None:
    """Return once the controller answers a request over the broker.

    Its requests arrive through a subscription made in the same SUBSCRIBE as the devices'
    topics, so an answer proves its session and subscriptions are in place: telemetry and
    events published from now on are queued for it, none is lost before its first start.
    """
    config = load_fleet_config(None, broker=broker_url, rpc_timeout_s=2.0)
    deadline = time.monotonic() + timeout_s
    while True:
        if controller.poll() is not None:
            raise FleetError(f"the controller exited with {controller.returncode}")
        try:
            asyncio.run(call(config, "devices-list", DevicesListRequest(), DevicesReply))
        except ControllerUnavailableError:
            if time.monotonic() > deadline:
                raise FleetError(f"the controller did not answer within {timeout_s:g} s") from None
            time.sleep(0.2)
            continue
        except FleetError:
            pass  # it answered, with an error: it is subscribed all the same
        return


def run(seconds: float | None, workdir: Path) -> None:
    # Library logs (the release repository, the link) go to stderr, and only warnings.
    configure_logging("warning", "console")
    display = make_display()
    processes: list[subprocess.Popen[bytes]] = []
    board = EmulatedBoard(log_path=workdir / "sim.log")
    broker = PrivateBroker(workdir / "broker")
    try:
        board.start()
        broker.start()
        _run(seconds, workdir, display, board, broker, processes)
    except KeyboardInterrupt:
        pass
    finally:
        display.close()
        for process in processes:
            _stop(process)
        broker.stop()
        board.stop()


def _run(
    seconds: float | None,
    workdir: Path,
    display: Display,
    board: EmulatedBoard,
    broker: PrivateBroker,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    tty = workdir / "ttyEMU0"
    tty.symlink_to(board.pty_path)
    db = workdir / "fleet.sqlite3"
    release = DemoRelease(workdir)
    dashboard, _tokens = _dashboard(workdir)
    controller = _controller(broker, db, release, workdir, dashboard)
    processes.append(controller)
    display.message(f"broker {broker.url}, controller db {db}, logs in {workdir}")
    display.message(
        "the demo's broker is on loopback with no TLS and no client certificates; a real "
        "fleet's locked-down broker: fleet broker config (docs/provisioning.md)"
    )
    # The URL on a line of its own: 76 characters, never wrapped.
    display.message("dashboard, signed in as operator 'demo' by its token:")
    display.message(dashboard.url)
    # Agents start only once the controller is subscribed: their first telemetry and their
    # agent_started events would otherwise reach no subscriber and be lost.
    wait_for_controller(broker.url, controller)
    model = ModelClient({device: free_port() for device in MODEL_DEVICES})
    agents = {
        device: _agent(
            workdir,
            broker.port,
            device,
            tty if device == SERIAL_DEVICE else None,
            model if device in MODEL_DEVICES else None,
            release if device in MODEL_DEVICES else None,
        )
        for device in DEVICES
    }
    store = SqliteFleetStore(db)
    try:
        display.message(f"{MODEL_DEVICE} serves the digits model at {model.url}/v1/models/digits")
        display.message(f"try it: .venv/bin/fleet devices list --broker {broker.url}")
        frame = _loop(seconds, workdir, display, board, broker, store, model, release, agents)
        display.finish(frame)
    finally:
        # The victim may have been restarted: the processes to stop are the current ones.
        processes.extend(agents.values())
        store.close()


def _loop(
    seconds: float | None,
    workdir: Path,
    display: Display,
    board: EmulatedBoard,
    broker: PrivateBroker,
    store: SqliteFleetStore,
    model: ModelClient,
    release: DemoRelease,
    agents: dict[str, subprocess.Popen[bytes]],
) -> Frame:
    """One frame a second until ``seconds`` have passed (or Ctrl-C); returns the last one."""
    started = time.monotonic()
    victim = DEVICES[-1]
    killed_at: float | None = None
    overtime = False
    while True:
        elapsed = time.monotonic() - started
        notes = []
        if killed_at is None and elapsed > _kill_after(seconds):
            agents[victim].kill()
            killed_at = elapsed
            notes.append(f"{victim} killed with SIGKILL: its Last Will marks it offline")
        elif killed_at is not None and elapsed - killed_at > 8 and agents[victim].poll():
            agents[victim] = _agent(workdir, broker.port, victim)
            notes.append(f"{victim} started again")
        board_state = _drive_board(board, elapsed)
        model.step()
        reported = {device: _reported(store, device) for device in MODEL_DEVICES}
        if not release.deployed and elapsed > _deploy_after(seconds) and all(reported.values()):
            release.deploy(broker.url)
        notes += release.transitions(store)
        if seconds is not None and elapsed >= seconds and not overtime:
            overtime = _rollout_running(release)
            if overtime:
                notes.append("time is up: waiting for the staged rollout to end")
        frame = Frame(
            elapsed=elapsed,
            devices=store.list_devices(),
            board=board_state,
            model_line=model.status_line(),
            model_version=model.serving_version,
            ota_line=release.status_line({d: _active(r) for d, r in reported.items()}),
            notes=notes,
        )
        display.update(frame)
        if _over(seconds, elapsed, release):
            return frame
        time.sleep(1)


@dataclass(frozen=True)
class Dashboard:
    """Where the demo's controller serves HTTP, and the operator token it was given."""

    port: int
    token: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/?token={self.token}"


def _dashboard(workdir: Path) -> tuple[Dashboard, Path]:
    """A fresh operator token in a tokens file of the demo's own; port 8080 when it is free
    (the controller's default), else any free one."""
    token = new_token()
    tokens = workdir / "http-tokens"
    tokens.write_text(token_line("demo", Role.OPERATOR, token) + "\n", encoding="utf-8")
    tokens.chmod(0o600)
    return Dashboard(_port_or_free(DASHBOARD_PORT), token), tokens


def _port_or_free(port: int) -> int:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return free_port()
    return port


def _controller(
    broker: PrivateBroker, db: Path, release: DemoRelease, workdir: Path, dashboard: Dashboard
) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "fleet", "serve", "--broker", broker.url, "--db", str(db)]
    argv += ["--repo", str(release.repo_dir), "--log-format", "json"]
    env = {
        **os.environ,
        "FLEET_ROLLOUTS__TICK_S": str(TICK_S),
        "FLEET_HTTP__LISTEN": f"127.0.0.1:{dashboard.port}",
        "FLEET_HTTP__TOKENS_FILE": str(workdir / "http-tokens"),
    }
    return _spawn(argv, env, workdir / "controller.log")


def _deploy_after(seconds: float | None) -> float:
    return max(3.0, (seconds or 40.0) * 0.1)


def _over(seconds: float | None, elapsed: float, release: DemoRelease) -> bool:
    """``seconds`` have passed; a rollout under way gets up to ROLLOUT_GRACE_S more to end."""
    if seconds is None or elapsed < seconds:
        return False
    return not _rollout_running(release) or elapsed >= seconds + ROLLOUT_GRACE_S


def _rollout_running(release: DemoRelease) -> bool:
    """Started (its thread runs) and not ended yet."""
    return release.deployed and not release.finished


def _active(reported: dict[str, Any] | None) -> str | None:
    """The digits version a device's reported state names active (its OTA slot)."""
    model = ((reported or {}).get("models") or {}).get("digits") or {}
    version = (model.get("active") or {}).get("version")
    return version if isinstance(version, str) else None


def _reported(store: SqliteFleetStore, device_id: str) -> dict[str, Any] | None:
    try:
        reported = store.device_detail(device_id, events=0).reported
    except FleetError:
        return None
    return reported


def _kill_after(seconds: float | None) -> float:
    return max(6.0, (seconds or 40.0) * 0.4)


def main() -> None:
    raw = os.environ.get("DEMO_SECONDS")
    seconds = float(raw) if raw else None
    workdir = Path(tempfile.mkdtemp(prefix="edge-fleet-demo-"))
    try:
        run(seconds, workdir)
    finally:
        if os.environ.get("DEMO_KEEP") != "1":
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
