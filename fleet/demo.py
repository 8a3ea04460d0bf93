"""``make demo``: a private broker, the controller and three agents, with a live device table.

Everything runs on this machine on embedded defaults: Mosquitto on a free loopback port with
a throw-away config and data dir, the controller on SQLite, three agents with their own
state dirs. The table refreshes every second until Ctrl-C or ``DEMO_SECONDS`` elapse; then
every process the demo started is stopped and its files removed (``DEMO_KEEP=1`` keeps them).
Half-way through, one agent is killed with SIGKILL so the table shows the Last Will turning
it offline, and is started again.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from fleet.localbroker import PrivateBroker
from fleet.store import SqliteFleetStore
from fleet.view import devices_table

DEVICES = ("pi-kitchen", "pi-garage", "jetson-yard")


def _spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)


def _agent(workdir: Path, port: int, device_id: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
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


def run(seconds: float | None, workdir: Path) -> None:
    console = Console()
    broker = PrivateBroker(workdir / "broker")
    broker.start()
    db = workdir / "fleet.sqlite3"
    controller = _spawn(
        [
            sys.executable,
            "-m",
            "fleet",
            "serve",
            "--broker",
            broker.url,
            "--db",
            str(db),
            "--log-format",
            "json",
        ],
        dict(os.environ),
        workdir / "controller.log",
    )
    agents = {device: _agent(workdir, broker.port, device) for device in DEVICES}
    console.print(f"broker {broker.url}, controller db {db}, logs in {workdir}")
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
                table = devices_table(store.list_devices(), title=f"Fleet ({elapsed:.0f}s)")
                live.update(Group(table, Text(note, style="yellow")), refresh=True)
                time.sleep(1)
        store.close()
        console.print(devices_table(SqliteFleetStore(db).list_devices(), title="Fleet at the end"))
    except KeyboardInterrupt:
        pass
    finally:
        for process in [*agents.values(), controller]:
            _stop(process)
        broker.stop()


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
