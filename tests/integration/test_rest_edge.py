"""The REST edge of a real ``edge-agent serve``: refusals counted on /metrics, an exposition
``promtool check metrics`` accepts, and memory bounded under concurrent large bodies.

Real processes and real HTTP on loopback: the server is ``python -m agent serve``, the
clients ``http.client``, the linter Debian's ``promtool`` (package ``prometheus``, which
``make test`` installs when missing).
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.errors import EXIT_CONFIG
from tests.integration.harness import ManagedProcess, wait_until
from tests.integration.test_registry import FP32, INT8, eval_split
from tests.integration.test_serve_cli import ENV, TFLITE, listening_url, serve_process

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
PIXELS_0 = [0.0] * 63


class Client:
    """Plain HTTP/1.1 requests to one server: (status, headers, body)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        self.host, self.port = parts.hostname, parts.port

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            connection.request(method, path, body, headers or {})
            response = connection.getresponse()
            return response.status, dict(response.headers), response.read()
        finally:
            connection.close()

    def predict(self, model: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        return self.request("POST", f"/v1/models/{model}:predict", body)

    def metrics(self) -> str:
        status, _, text = self.request("GET", "/metrics")
        assert status == 200
        return text.decode()


def rest_errors(text: str) -> Counter[str]:
    """``edge_rest_errors_total`` by reason."""
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "edge_rest_errors_total":
                counts[sample.labels["reason"]] += int(sample.value)
    return counts


def start_serve(tmp_path: Path, processes: list[ManagedProcess], *args: str) -> Client:
    process = serve_process(tmp_path, "--port", "0", "--threads", "1", *args)
    processes.append(process.start())
    return Client(wait_until(lambda: listening_url(process), 60, "the serve.listening line"))


def rows_body(rows: np.ndarray) -> bytes:
    return json.dumps({"instances": rows.tolist()}).encode()


def test_metrics_are_promtool_clean_and_count_every_refusal(
    tmp_path: Path, processes: list[ManagedProcess]
) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make test` installs Debian's prometheus package"
    client = start_serve(
        tmp_path,
        processes,
        *("--model", f"digits={FP32}", "--model", f"digits={INT8}"),
        *("--model", f"lite={TFLITE}", "--max-body-mb", "1"),
    )
    rows, _ = eval_split()
    before = rest_errors(client.metrics())
    for model in ("digits", "lite"):
        assert client.predict(model, rows_body(rows[:120]))[0] == 200  # enough for drift
    status, _, answer = client.predict("digits", rows_body(rows[:3]))
    assert status == 200
    prediction_id = json.loads(answer)["prediction_ids"][0]
    feedback = json.dumps({"prediction_id": prediction_id, "label": 1}).encode()
    assert client.request("POST", "/v1/models/digits:feedback", feedback)[0] == 200

    refusals = [
        ("digits", b'{"instances": [[0.1, ', 400, "bad_json"),
        ("digits", b'{"instances": [[NaN, 1]]}', 400, "bad_json"),
        ("digits", b"[1, 2]", 400, "bad_json"),
        ("digits", b'{"instances": [[0.5]]}', 400, "bad_input"),
        ("digits", json.dumps({"instances": [[1e39, *PIXELS_0]]}).encode(), 400, "bad_input"),
        ("lite", json.dumps({"instances": [[-1e308, *PIXELS_0]]}).encode(), 400, "bad_input"),
        ("letters", rows_body(rows[:1]), 404, "unknown_model"),
        ("digits", b" " * (MIB + 1), 413, "too_large"),
    ]
    for model, body, expected, _ in refusals:
        assert client.predict(model, body)[0] == expected, (model, body[:40])
    assert client.request("POST", "/v1/models/digits:feedback", feedback)[0] == 404  # answered
    assert client.request("GET", "/v2/nothing")[0] == 404
    assert client.request("DELETE", "/v1/models/digits")[0] == 405

    text = client.metrics()
    after = rest_errors(text)
    expected_counts = Counter(reason for *_, reason in refusals)
    expected_counts.update(["unknown_prediction", "unknown_route", "method_not_allowed"])
    assert after - before == expected_counts
    # Every kind of family is in what promtool checks: counters, gauges, the histogram, the
    # latency summary, drift and feedback scores, the REST families.
    for family in ("edge_model_drift_psi", "edge_model_accuracy", "edge_rest_body_bytes"):
        assert family in text
    assert "# TYPE edge_model_latency_quantile_seconds summary" in text
    lint = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert (lint.returncode, lint.stdout, lint.stderr) == (0, "", "")


def test_memory_levels_off_under_concurrent_large_bodies(
    tmp_path: Path, processes: list[ManagedProcess]
) -> None:
    """Rounds of 16 concurrent 3 MiB bodies against a budget of two bodies: the requests
    beyond the budget are refused before their body is read (503, Retry-After), and the
    server's RSS levels off instead of growing round after round."""
    client = start_serve(
        tmp_path,
        processes,
        *("--model", f"digits={FP32}", "--max-body-mb", "4", "--body-budget-mb", "8"),
    )
    process = processes[-1].process
    assert process is not None
    rng = np.random.default_rng(3)
    body = rows_body(rng.random((8000, 64)).round(3))
    assert 2.5 * MIB < len(body) < 4 * MIB
    idle = rss_mib(process.pid)
    after_round, answers = [], Counter[int]()
    with ThreadPoolExecutor(16) as pool:
        for _ in range(5):
            results = list(pool.map(lambda _: client.predict("digits", body), range(16)))
            answers.update(status for status, _, _ in results)
            refused = [headers for status, headers, _ in results if status == 503]
            assert all(headers.get("Retry-After") == "1" for headers in refused)
            after_round.append(rss_mib(process.pid))
    assert set(answers) == {200, 503}, answers
    assert rest_errors(client.metrics())["body_budget"] == answers[503]
    # Structural, not timing: whatever the first rounds allocated for good, the last three
    # rounds add little, and the peak stays within what the budget lets be parsed at once
    # (two bodies of 3 MiB, about 8x that while they become arrays, and the answers). Without
    # the budget all 16 are parsed at once: about 200 MiB over idle on this load.
    peak = peak_mib(process.pid)
    assert max(after_round[2:]) - min(after_round[2:]) < 40, (idle, after_round)
    assert peak - idle < 150, (idle, after_round, peak)


def rss_mib(pid: int) -> float:
    return _status_field(pid, "VmRSS")


def peak_mib(pid: int) -> float:
    return _status_field(pid, "VmHWM")


def _status_field(pid: int, name: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {name} for process {pid}")


def test_a_budget_smaller_than_one_body_is_a_config_error() -> None:
    argv = [sys.executable, "-m", "agent", "serve", "--model", f"digits={FP32}"]
    argv += ["--max-body-mb", "2", "--body-budget-mb", "1"]
    result = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert "must hold one body of the largest size" in result.stderr
