"""The demo's model client: drives the agents' local inference APIs like a real application.

Each ``step`` sends the same few held-out digits images (the committed eval split), one per
request, to every model device's TensorFlow Serving-compatible ``:predict`` endpoint, sends
each true label back
to ``:feedback`` with the prediction id the agent returned, and reads ``MODEL_DEVICE``'s
``/metrics`` (Prometheus text, parsed with prometheus_client's parser) for the status line:
predictions, p50 latency, accuracy from feedback, and drift of the outputs against the model
card. Every device gets the same inputs at the same time, so the rollout's gate compares a
canary and the devices still on the old version on equal traffic (``ROWS_PER_STEP`` a second
each: about 50 in a 5 s health window, which the controller reads from telemetry once a
second; the gate wants 20 requests and 20 feedbacks per group).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
MODEL_DEVICE = "pi-kitchen"
# The devices that serve the digits model and take part in the staged rollout.
MODEL_DEVICES = (MODEL_DEVICE, "pi-garage", "pi-porch")
MODEL_FILE = REPO / "models" / "digits" / "digits-int8.onnx"
EVAL_SPLIT = REPO / "models" / "digits" / "data" / "eval.npz"
ROWS_PER_STEP = 12
TIMEOUT_S = 2.0


class ModelClient:
    """REST client of the digits model on ``MODEL_DEVICES``; see the module docstring."""

    def __init__(self, ports: dict[str, int]) -> None:
        self.urls = {device: f"http://127.0.0.1:{port}" for device, port in ports.items()}
        self.url = self.urls[MODEL_DEVICE]
        data = np.load(EVAL_SPLIT)
        self._x: np.ndarray = data["x"]
        self._y: np.ndarray = data["y"]
        self._next = 0
        self.sent = 0
        self.failed = 0
        self.answered: set[str] = set()  # the devices that have answered a predict
        self._metrics: dict[str, float] = {}
        self.version = "?"

    def agent_env(self, device: str) -> dict[str, str]:
        """``device``'s settings: load the model and serve it on this client's port for it."""
        return {
            "EDGE_AGENT_MODELS": json.dumps([{"path": str(MODEL_FILE)}]),
            "EDGE_AGENT_INFERENCE__PORT": self.urls[device].rsplit(":", 1)[1],
        }

    def step(self) -> None:
        """The same batch of predictions with their feedback to every device, then a fresh
        read of ``MODEL_DEVICE``'s /metrics."""
        rows = [(self._next + i) % len(self._x) for i in range(ROWS_PER_STEP)]
        self._next = (rows[-1] + 1) % len(self._x)
        for device, url in self.urls.items():
            try:
                self._predict(url, rows)
                self.answered.add(device)
                if device == MODEL_DEVICE:
                    self.sent += len(rows)
                    self._metrics = self._read_metrics()
            except (OSError, ValueError, KeyError):
                # The agent is still starting, or was restarted: try again next step.
                self.failed += 1

    def _predict(self, url: str, rows: list[int]) -> None:
        # One row per request, as an application serving one user at a time: the agent's
        # latency quantiles are per batch, and the rollout's gate wants many in its window.
        for row in rows:
            answer = self._post(url, ":predict", {"instances": self._x[[row]].tolist()})
            (prediction_id,) = answer["prediction_ids"]
            self._post(
                url, ":feedback", {"prediction_id": prediction_id, "label": int(self._y[row])}
            )

    @property
    def serving_version(self) -> str | None:
        """The version that answered the last step's requests; None before the first answer."""
        return self.version if self._metrics else None

    def status_line(self) -> str:
        """One line, under 80 characters: predictions, p50, accuracy from feedback, drift."""
        m = self._metrics
        if not m:
            return f"{MODEL_DEVICE}: waiting for the digits model ..."
        return (
            f"{MODEL_DEVICE} digits v{self.version}: {m.get('requests', 0):.0f} predictions, "
            f"p50 {m.get('p50', 0) * 1e3:.2f} ms, accuracy {m.get('accuracy', 0):.1%}, "
            f"PSI {m.get('psi', 0):.3f}"
        )

    def _post(self, url: str, verb: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(  # noqa: S310 - http on loopback only
            f"{url}/v1/models/digits{verb}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310 - loopback
            return json.loads(response.read())

    def _read_metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=TIMEOUT_S) as response:  # noqa: S310
            text = response.read().decode()
        wanted = {
            "edge_model_requests": "requests",
            "edge_model_accuracy": "accuracy",
        }
        found: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.labels.get("model") != "digits":
                    continue
                key = wanted.get(sample.name.removesuffix("_total"))
                if key is not None:
                    found[key] = sample.value
                    self.version = sample.labels.get("version", "?")
                elif sample.name == "edge_model_latency_quantile_seconds":
                    if sample.labels.get("quantile") == "0.5":
                        found["p50"] = sample.value
                elif (
                    sample.name == "edge_model_drift_psi" and sample.labels.get("signal") == "class"
                ):
                    found["psi"] = sample.value
        return found
