"""The demo's model client: drives one agent's local inference API like a real application.

Each ``step`` sends a few held-out digits images (the committed eval split) to the agent's
TensorFlow Serving-compatible ``:predict`` endpoint, sends each true label back to
``:feedback`` with the prediction id the agent returned, and reads the agent's ``/metrics``
(Prometheus text, parsed with prometheus_client's parser) for the status line: predictions,
p50 latency, accuracy from feedback, and drift of the outputs against the model card.
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
MODEL_FILE = REPO / "models" / "digits" / "digits-int8.onnx"
EVAL_SPLIT = REPO / "models" / "digits" / "data" / "eval.npz"
ROWS_PER_STEP = 8
TIMEOUT_S = 2.0


class ModelClient:
    """REST client of the digits model on ``MODEL_DEVICE``; see the module docstring."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        data = np.load(EVAL_SPLIT)
        self._x: np.ndarray = data["x"]
        self._y: np.ndarray = data["y"]
        self._next = 0
        self.sent = 0
        self.failed = 0
        self._metrics: dict[str, float] = {}
        self.version = "?"

    def agent_env(self) -> dict[str, str]:
        """The agent's settings: load the model and serve it on this client's port."""
        return {
            "EDGE_AGENT_MODELS": json.dumps([{"path": str(MODEL_FILE)}]),
            "EDGE_AGENT_INFERENCE__PORT": self.url.rsplit(":", 1)[1],
        }

    def step(self) -> None:
        """One batch of predictions with their feedback, then a fresh read of /metrics."""
        rows = [(self._next + i) % len(self._x) for i in range(ROWS_PER_STEP)]
        self._next = (rows[-1] + 1) % len(self._x)
        try:
            answer = self._post(":predict", {"instances": self._x[rows].tolist()})
            for row, prediction_id in zip(rows, answer["prediction_ids"], strict=True):
                self._post(
                    ":feedback", {"prediction_id": prediction_id, "label": int(self._y[row])}
                )
            self.sent += len(rows)
            self._metrics = self._read_metrics()
        except (OSError, ValueError, KeyError):
            # The agent is still starting, or was restarted: try again next step.
            self.failed += 1

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

    def _post(self, verb: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(  # noqa: S310 - http on loopback only
            f"{self.url}/v1/models/digits{verb}",
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
