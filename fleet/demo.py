"""``make demo``: a private broker, the controller and three agents, with a live device table.

Everything runs on this machine on embedded defaults: Mosquitto on a free loopback port with
a throw-away config and data dir, the controller on SQLite, three agents with their own
state dirs, and an emulated Arduino (the real firmware in simavr) on one agent's serial port.
The light level on the board's A0 input swings up and down; the agent's pipeline turns pin B5
on above the threshold and off below it, and the line under the table shows both. The table
refreshes every second until Ctrl-C or ``DEMO_SECONDS`` elapse; then every process the demo
started is stopped and its files removed (``DEMO_KEEP=1`` keeps them). Part-way through, one
agent is killed with SIGKILL so the table shows the Last Will turning it offline, and it is
started again.

Another agent (``pi-kitchen``) serves the committed digits classifier (int8 ONNX), and part-way
through gets a signed OTA update to digits@3 (``fleet.demo_ota``). The demo is its client:
every second it sends a few held-out images to the agent's TensorFlow Serving-compatible REST
API, returns the true labels as feedback, and shows what the agent's model monitor reports on
``/metrics``: predictions, latency, accuracy from feedback and drift.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from fleet.demo_model import MODEL_DEVICE, ModelClient
from fleet.demo_ota import DemoRelease
from fleet.emulated_board import EmulatedBoard
from fleet.errors import FleetError
from fleet.localbroker import PrivateBroker, free_port
from fleet.store import SqliteFleetStore
from fleet.view import devices_table

DEVICES = ("pi-kitchen", "pi-garage", "jetson-yard")
SERIAL_DEVICE = "pi-garage"
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
        env.update(model.agent_env())
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


def _drive_board(board: EmulatedBoard, elapsed: float) -> str:
    """Set the light level on A0 and describe what the pipeline did with it."""
    millivolts = _light_level(elapsed)
    board.set_adc(0, millivolts)
    pin = "ON" if board.pin_state(5) else "off"
    return (
        f"emulated Arduino on {SERIAL_DEVICE}: A0 = {millivolts / 1000:.2f} V -> "
        f"pipeline 'light' (on above 2.75 V, off below 2.25 V) -> pin B5 {pin}"
    )


def _light_level(elapsed: float) -> int:
    """Millivolts on A0: a slow swing between 0.3 V and 4.7 V."""
    return int(2500 + 2200 * math.sin(elapsed / 3))


def run(seconds: float | None, workdir: Path) -> None:
    console = Console()
    board = EmulatedBoard(log_path=workdir / "sim.log")
    board.start()
    tty = workdir / "ttyEMU0"
    tty.symlink_to(board.pty_path)
    broker = PrivateBroker(workdir / "broker")
    broker.start()
    db = workdir / "fleet.sqlite3"
    release = DemoRelease(workdir)
    controller = _controller(broker, db, release, workdir)
    model = ModelClient(free_port())
    agents = {
        device: _agent(
            workdir,
            broker.port,
            device,
            tty if device == SERIAL_DEVICE else None,
            model if device == MODEL_DEVICE else None,
            release if device == MODEL_DEVICE else None,
        )
        for device in DEVICES
    }
    console.print(f"broker {broker.url}, controller db {db}, logs in {workdir}")
    console.print(f"{MODEL_DEVICE} serves the digits model at {model.url}/v1/models/digits")
    console.print(f"try it: .venv/bin/fleet devices list --broker {broker.url}")
    started = time.monotonic()
    victim = DEVICES[-1]
    killed_at: float | None = None
    try:
        while not db.exists():
            time.sleep(0.1)
        store = SqliteFleetStore(db)
        with Live(console=console, refresh_per_second=2, auto_refresh=False) as live:
            while seconds is None or time.monotonic() - started < seconds:
                elapsed = time.monotonic() - started
                note = ""
                if killed_at is None and elapsed > _kill_after(seconds):
                    agents[victim].kill()
                    killed_at = elapsed
                elif killed_at is not None and elapsed - killed_at > 8 and agents[victim].poll():
                    agents[victim] = _agent(workdir, broker.port, victim)
                if killed_at is not None and agents[victim].poll() is not None:
                    note = f"{victim} was killed with SIGKILL: its Last Will marks it offline"
                serial = _drive_board(board, elapsed)
                table = devices_table(store.list_devices(), title=f"Fleet ({elapsed:.0f}s)")
                model.step()
                if not release.deployed and elapsed > _deploy_after(seconds):
                    release.deploy(broker.url)
                ota = release.status_line(_reported(store, MODEL_DEVICE))
                live.update(
                    Group(
                        table,
                        Text(serial, style="cyan"),
                        Text(model.status_line(), style="magenta"),
                        Text(ota, style="green"),
                        Text(note, style="yellow"),
                    ),
                    refresh=True,
                )
                time.sleep(1)
        store.close()
        console.print(devices_table(SqliteFleetStore(db).list_devices(), title="Fleet at the end"))
    except KeyboardInterrupt:
        pass
    finally:
        for process in [*agents.values(), controller]:
            _stop(process)
        broker.stop()
        board.stop()


def _controller(
    broker: PrivateBroker, db: Path, release: DemoRelease, workdir: Path
) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "fleet", "serve", "--broker", broker.url, "--db", str(db)]
    argv += ["--repo", str(release.repo_dir), "--log-format", "json"]
    return _spawn(argv, dict(os.environ), workdir / "controller.log")


def _deploy_after(seconds: float | None) -> float:
    return max(3.0, (seconds or 40.0) * 0.2)


def _reported(store: SqliteFleetStore, device_id: str) -> dict[str, Any] | None:
    try:
        reported: dict[str, Any] | None = store.device_detail(device_id, events=0)["reported"]
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
