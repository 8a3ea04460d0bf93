"""SIGTERM of an agent that serves a model: the last events reach the outbox, nothing after.

Issue 21: every such stop ended with ``Task exception was never retrieved ...
ProgrammingError('Cannot operate on a closed database.')``: unloading the model emitted
``model_unloaded`` from a task that ran after the outbox had closed, and the event was lost.
Now the agent unloads its models, waits for every event emitted to reach the outbox, and
only then closes it; the event is on disk and goes out at the next start.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from devtools.localbroker import PrivateBroker
from tests.integration.harness import ManagedProcess, Recorder, agent_process, wait_until

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "models" / "digits"
DEVICE = "pi-stop"


def _queued_events(state_dir: Path) -> list[str]:
    with sqlite3.connect(state_dir / "outbox.sqlite3") as db:
        rows = db.execute(
            "SELECT payload FROM outbox WHERE topic = ? ORDER BY id", (f"fleet/{DEVICE}/events",)
        ).fetchall()
    return [json.loads(payload)["event"] for (payload,) in rows]


def test_sigterm_keeps_model_unloaded_and_logs_no_closed_database(
    tmp_path: Path, broker: PrivateBroker, processes: list[ManagedProcess]
) -> None:
    events = Recorder(broker.port, f"fleet/{DEVICE}/events").start()
    models = json.dumps([{"path": str(DIGITS / "digits-int8.onnx")}])

    def start() -> ManagedProcess:
        agent = agent_process(
            tmp_path, broker.port, DEVICE, models=models, inference__rest="false"
        ).start()
        processes.append(agent)
        return agent

    agent = start()
    wait_until(
        lambda: any(b["event"] == "model_loaded" for b in events.bodies("/events")),
        30,
        "the model serving",
    )
    assert agent.terminate() == 0
    log = agent.log()
    assert "never retrieved" not in log, log[-3000:]
    assert "closed database" not in log, log[-3000:]
    assert "event.after_close" not in log  # nothing was emitted after the outbox closed
    # The link was already closed when the model was unloaded: the event waits on disk.
    assert "model_unloaded" in _queued_events(tmp_path / f"state-{DEVICE}")

    start()  # and goes out at the next start
    wait_until(
        lambda: any(b["event"] == "model_unloaded" for b in events.bodies("/events")),
        30,
        "model_unloaded delivered after the restart",
    )
    events.stop()
