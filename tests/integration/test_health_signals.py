"""The health signals a rollout's gate relies on, end to end: real agent, broker, controller.

A real agent serves a model on its REST API, a real Mosquitto carries its telemetry and
events, and the real controller stores them:
- a model that answers NaN for some inputs raises ``model_output_nonfinite`` (with its model
  and version), which the controller stores and ``fleet devices show --json`` lists;
- predictions that drift from the card's reference raise ``model_drift`` once, and
  in-distribution predictions afterwards ``model_drift_recovered`` once;
- every telemetry message the agent sent on the way validates as the typed
  ``TelemetryMessage`` (its ``inference`` block as ``InferenceReport``) the controller
  decodes it with.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from devtools.localbroker import PrivateBroker, free_port
from edge_contract.messages import TelemetryMessage, decode_device_message
from edge_contract.topics import Channel
from tests.integration.harness import (
    ManagedProcess,
    Recorder,
    agent_process,
    fleet_cli,
    start_controller,
    wait_until,
)
from tests.integration.ota_harness import nan_model

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "models" / "digits"


def _call(port: int, verb: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """``POST /v1/models/digits:<verb>`` on the agent's REST API: (HTTP status, JSON body)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/models/digits:{verb}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _predict(port: int, rows: np.ndarray[Any, Any]) -> dict[str, Any]:
    status, body = _call(port, "predict", {"instances": rows.tolist()})
    assert status == 200, body
    return body


def _serving(port: int) -> bool:
    try:
        return _call(port, "predict", {"instances": [[1.0] * 64]})[0] == 200
    except OSError:
        return False


def _events(recorder: Recorder, kind: str) -> list[dict[str, Any]]:
    return [body for body in recorder.bodies("/events") if body.get("event") == kind]


def _telemetry_degraded(recorder: Recorder) -> list[dict[str, Any]]:
    """``health_changed`` of the telemetry subsystem: a section (inference) failed to build."""
    changes = _events(recorder, "health_changed")
    return [change for change in changes if change.get("subsystem") == "telemetry"]


def _typed_telemetry(recorder: Recorder, device_id: str) -> list[TelemetryMessage]:
    """Every telemetry message recorded, decoded as the controller decodes it."""
    typed = []
    for body in recorder.bodies("/telemetry"):
        message, _ = decode_device_message(Channel.TELEMETRY, device_id, json.dumps(body).encode())
        assert isinstance(message, TelemetryMessage)
        typed.append(message)
    return typed


def _stored_events(port: int, device_id: str, kind: str) -> list[dict[str, Any]]:
    shown = fleet_cli(port, "devices", "show", device_id, "--json", "--timeout", "3")
    if shown.returncode != 0:
        return []
    events: list[dict[str, Any]] = json.loads(shown.stdout).get("events") or []
    return [event for event in events if event.get("event") == kind]


def test_a_nan_output_is_an_event_the_controller_stores(
    tmp_path: Path, broker: PrivateBroker, processes: list[ManagedProcess]
) -> None:
    rest_port = free_port()
    model = nan_model(tmp_path / "nan")
    version = json.loads(Path(f"{model}.card.json").read_text())["version"]
    processes.append(start_controller(tmp_path, broker.port))
    recorder = Recorder(broker.port, "fleet/pi-nan/#").start()
    agent = agent_process(
        tmp_path,
        broker.port,
        "pi-nan",
        models=json.dumps([{"path": str(model)}]),
        inference__port=str(rest_port),
    )
    processes.append(agent.start())
    wait_until(lambda: _serving(rest_port), 60, "the NaN model serving")

    status, _ = _call(rest_port, "predict", {"instances": [[0.0] * 64, [0.0] * 64]})

    assert status == 500  # the NaN result is refused, never answered
    event = wait_until(lambda: _events(recorder, "model_output_nonfinite"), 20, "the event")[0]
    assert (event["model"], event["version"]) == ("digits", version)
    assert event["output"] == "probabilities" and event["count"] >= 1
    stored = wait_until(
        lambda: _stored_events(broker.port, "pi-nan", "model_output_nonfinite"),
        30,
        "the event in the controller's store",
    )
    assert (stored[0]["model"], stored[0]["version"]) == ("digits", version)

    # The monitor counted it, in telemetry typed as the controller reads it.
    def counted() -> bool:
        for message in _typed_telemetry(recorder, "pi-nan"):
            block = message.inference and message.inference.block("digits", version)
            if block and block.nonfinite_outputs and block.errors.get("NonFiniteOutputError"):
                return True
        return False

    wait_until(counted, 20, "telemetry counting the NaN outputs")
    assert _telemetry_degraded(recorder) == []
    assert agent.alive


def test_drift_is_one_event_and_its_recovery_another(
    tmp_path: Path, broker: PrivateBroker, processes: list[ManagedProcess]
) -> None:
    rest_port = free_port()
    processes.append(start_controller(tmp_path, broker.port))
    recorder = Recorder(broker.port, "fleet/pi-drift/#").start()
    agent = agent_process(
        tmp_path,
        broker.port,
        "pi-drift",
        models=json.dumps([{"path": str(DIGITS / "digits-int8.onnx")}]),
        inference__port=str(rest_port),
        # Capture on too, so that its block is in the telemetry checked below.
        inference__low_confidence_threshold="0.5",
    )
    processes.append(agent.start())
    wait_until(lambda: _serving(rest_port), 60, "the digits model serving")
    data = np.load(DIGITS / "data" / "eval.npz")
    x, y = data["x"], data["y"]

    # 120 predictions, all of one class: the class PSI against the card's reference is ~8.
    zeros = np.resize(x[y == 0], (120, 64))
    body = _predict(rest_port, zeros)
    for prediction_id in body["prediction_ids"][:30]:  # labelled feedback: accuracy reported
        assert _call(rest_port, "feedback", {"prediction_id": prediction_id, "label": 0})[0] == 200

    drift = wait_until(lambda: _events(recorder, "model_drift"), 20, "the model_drift event")[0]
    assert (drift["model"], drift["version"], drift["signal"]) == ("digits", "2", "class")
    assert drift["psi"] > drift["threshold"] == 0.25

    # In-distribution predictions (the held-out split) push the skewed ones out of the
    # 1000-prediction window; the score falls through the band between 0.25 and 0.1 (no
    # event there) to under 0.1: one recovery.
    for _ in range(3):
        _predict(rest_port, x)
    recovered = wait_until(
        lambda: _events(recorder, "model_drift_recovered"), 20, "model_drift_recovered"
    )[0]
    assert (recovered["model"], recovered["signal"]) == ("digits", "class")
    assert recovered["psi"] < 0.1

    # A few more telemetry messages: the score stays low and nothing more is sent.
    seen = len(recorder.bodies("/telemetry"))
    wait_until(lambda: len(recorder.bodies("/telemetry")) >= seen + 3, 20, "3 more telemetry")
    assert len(_events(recorder, "model_drift")) == 1
    assert len(_events(recorder, "model_drift_recovered")) == 1
    assert wait_until(
        lambda: _stored_events(broker.port, "pi-drift", "model_drift_recovered"),
        30,
        "the recovery in the controller's store",
    )
    assert _stored_events(broker.port, "pi-drift", "model_drift")

    # Every telemetry message on the way validates; they reported what the events said.
    typed = _typed_telemetry(recorder, "pi-drift")
    blocks = [m.inference.block("digits", "2") for m in typed if m.inference is not None]
    reported = [block for block in blocks if block is not None]
    assert any(block.drift_level == "significant" for block in reported)
    assert reported[-1].drift is not None and reported[-1].drift < 0.1
    assert reported[-1].requests >= 120 + 3 * len(x)
    assert reported[-1].feedback == 30 and reported[-1].accuracy is not None
    assert reported[-1].quantile("0.95") is not None
    assert any(m.inference and "capture" in (m.inference.model_extra or {}) for m in typed)
    assert _telemetry_degraded(recorder) == []  # the drift check never broke a snapshot
    assert agent.alive
