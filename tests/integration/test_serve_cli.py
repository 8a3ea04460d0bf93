"""``edge-agent serve`` as a user runs it: a real process, real HTTP, signals and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton

from agent.errors import EXIT_CONFIG
from tests.integration.harness import ManagedProcess, wait_until
from tests.integration.test_registry import DIGITS, FP32, INT8, eval_split

TFLITE = DIGITS / "digits-fp32.tflite"
ENV = dict(os.environ, PYTHONUNBUFFERED="1")


def serve_process(tmp_path: Path, *args: str) -> ManagedProcess:
    argv = [sys.executable, "-m", "agent", "serve", *args]
    return ManagedProcess(argv, ENV, tmp_path / "serve.log")


def log_event(process: ManagedProcess, event: str) -> dict[str, Any] | None:
    """The first log line of ``event`` (JSON: stderr is not a terminal)."""
    for line in process.log().splitlines():
        if line.startswith("{") and (entry := json.loads(line)).get("event") == event:
            return dict(entry)
    return None


def listening_url(process: ManagedProcess) -> str | None:
    """The URL from the one ``serve.listening`` log line."""
    listening = log_event(process, "serve.listening")
    if listening is not None:
        return str(listening["url"])
    assert process.alive, process.log()
    return None


def get_json(url: str, body: object = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=30) as response:
        return json.loads(response.read())


# uvloop comes with the inference extra (make test installs it), so auto must pick it.
@pytest.mark.parametrize(
    ("choice", "loop", "pools"),
    [("auto", "uvloop", "shared"), ("asyncio", "asyncio", "per-model")],
)
def test_serve_answers_predict_and_exits_0_on_sigterm(
    tmp_path: Path, processes: list[ManagedProcess], choice: str, loop: str, pools: str
) -> None:
    process = serve_process(
        tmp_path,
        *("--model", f"digits={FP32}", "--model", f"digits={INT8}"),
        *("--model", f"lite={TFLITE}", "--port", "0", "--threads", "1"),
        *("--event-loop", choice, "--onnx-thread-pools", pools),
    )
    processes.append(process.start())
    url = wait_until(lambda: listening_url(process), 60, "the serve.listening log line")
    selected = log_event(process, "event_loop.selected")
    assert selected is not None, process.log()
    assert (selected["loop"], selected["setting"]) == (loop, choice)
    shared = log_event(process, "inference.thread_pools")
    if pools == "shared":
        assert shared is not None, process.log()
        assert (shared["mode"], shared["intra_op_threads"]) == ("shared", 1)
    else:
        assert shared is None, process.log()
    rows, labels = eval_split()

    status = get_json(f"{url}/v1/models/digits")
    assert [entry["version"] for entry in status["model_version_status"]] == ["2", "1"]
    for path in ("digits", "digits/versions/1", "lite"):
        body = get_json(f"{url}/v1/models/{path}:predict", {"instances": rows.tolist()})
        assert np.mean(np.argmax(body["predictions"], axis=1) == labels) > 0.9
        assert len(body["prediction_ids"]) == len(rows)
    assert "edge_model_requests_total" in urllib.request.urlopen(f"{url}/metrics").read().decode()
    # The same port speaks the Open Inference Protocol (v2), binary tensors included.
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    pixels = triton.InferInput("pixels", list(rows.shape), "FP32")
    pixels.set_data_from_numpy(rows, binary_data=True)
    answer = client.infer("lite", [pixels]).as_numpy("probabilities")
    assert np.mean(np.argmax(answer, axis=1) == labels) > 0.9
    assert client.get_model_metadata("lite")["platform"] == "tflite"
    client.close()

    assert process.terminate() == 0
    assert "serve.stopping" in process.log()


def test_a_model_that_cannot_load_is_a_config_error(tmp_path: Path) -> None:
    corrupt = tmp_path / "digits-int8.onnx"
    corrupt.write_bytes(INT8.read_bytes()[:100])
    corrupt.with_name(corrupt.name + ".card.json").write_bytes(
        INT8.with_name(INT8.name + ".card.json").read_bytes()
    )
    argv = [sys.executable, "-m", "agent", "serve", "--model", f"digits={corrupt}", "--port", "0"]
    result = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == EXIT_CONFIG, result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("edge-agent: config error: model 'digits' cannot be served")
    assert str(corrupt) in message


def test_a_malformed_model_argument_is_a_config_error() -> None:
    argv = [sys.executable, "-m", "agent", "serve", "--model", str(FP32)]
    result = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == EXIT_CONFIG
    assert "--model takes NAME=PATH" in result.stderr
