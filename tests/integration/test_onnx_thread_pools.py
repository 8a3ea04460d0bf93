"""Shared ONNX Runtime thread pools: a hot swap starts and stops no threads.

ONNX Runtime's global thread pools are process state (once made, a session with pools of its
own is refused), so each case runs the registry in a process of its own and reads that
process's threads from ``/proc/self/task``. The per-model case is the counter-check: there,
each model brings its own pool threads and a swap replaces them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.integration.test_registry import FP32, INT8, REPO

pytestmark = pytest.mark.integration

INTRA_OP_THREADS = 3  # two pool threads per pool (the caller is the third)

# Loads digits v1, then v2 beside it (keep_others), then v1 again in place of both: a swap.
# Prints the thread ids after each step and the answers of each version.
SCRIPT = """
import asyncio, gc, json, os, sys
from pathlib import Path
import numpy as np
from agent.inference.backends import BackendOptions
from agent.inference.backends.onnx import shared_thread_pools
from edge_contract.card import card_path_for
from agent.inference.cardfile import load_card
from agent.inference.registry import ModelRegistry

fp32, int8, mode, intra = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])

def threads():
    gc.collect()
    return sorted(int(tid) for tid in os.listdir("/proc/self/task"))

async def main():
    options = BackendOptions(intra_op_threads=intra, inter_op_threads=1, onnx_thread_pools=mode)
    registry = ModelRegistry(options, workers=1)
    rows = np.load(fp32.parent / "data" / "eval.npz")["x"][:8]
    feeds = {"pixels": rows.astype(np.float32)}
    report = {}
    try:
        await registry.load(fp32)
        report["pools"] = shared_thread_pools()
        await registry.predict("digits", feeds)  # the worker thread exists from here on
        report["one_model"] = threads()
        await registry.load(int8, keep_others=True)
        report["two_models"] = threads()
        answers = {}
        for version in ("1", "2"):
            prediction = await registry.predict("digits", feeds, version=version)
            answers[version] = np.argmax(prediction.outputs["probabilities"], axis=1).tolist()
        card = load_card(card_path_for(fp32)).model_copy(update={"version": "3"})
        await registry.load(fp32, card=card)
        await asyncio.sleep(0.2)  # the retired versions close once idle
        report["after_swap"] = threads()
        report["serving"] = registry.serving()
        report["answers"] = answers
    finally:
        await registry.close()
    print(json.dumps(report))

asyncio.run(main())
"""


def run_registry(mode: str) -> dict[str, Any]:
    argv = [sys.executable, "-c", SCRIPT, str(FP32), str(INT8), mode, str(INTRA_OP_THREADS)]
    result = subprocess.run(
        argv, cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def test_shared_pools_a_second_model_and_a_swap_start_no_threads() -> None:
    report = run_registry("shared")
    assert report["pools"] == [INTRA_OP_THREADS, 1]
    assert report["two_models"] == report["one_model"]
    assert report["after_swap"] == report["one_model"]
    assert report["serving"] == {"digits": "3"}
    # Both versions answered on the shared pools, and they agree on the digits.
    first, second = report["answers"]["1"], report["answers"]["2"]
    assert len(first) == 8
    assert sum(a == b for a, b in zip(first, second, strict=True)) >= 7


def test_per_model_pools_bring_threads_of_their_own() -> None:
    report = run_registry("per-model")
    assert report["pools"] is None
    # The second model's pool: intra-op threads less the caller.
    added = set(report["two_models"]) - set(report["one_model"])
    assert len(added) == INTRA_OP_THREADS - 1
    # The swap stopped the old pools' threads and started the new one's.
    assert set(report["after_swap"]) != set(report["one_model"])
    assert report["serving"] == {"digits": "3"}
