"""fleet/modelopt's LiteRT door gives what the agent's TFLite backend gives on the same file.

``fleet model optimize`` times and scores a full-integer TFLite candidate through
fleet/modelopt/litert_session.py (fleet/ never imports agent/); its figures are only worth
having if the door quantizes, runs and dequantizes exactly as the device will. Pure: loads the
committed reference models, no processes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.inference.backends import BackendOptions, open_backend
from fleet.modelopt.errors import ModelFileError
from fleet.modelopt.litert_session import open_litert

DIGITS = Path(__file__).resolve().parents[2] / "models" / "digits"


@pytest.mark.parametrize("name", ["digits-int8.tflite", "digits-fp32.tflite"])
def test_the_door_matches_the_agent_backend(name: str) -> None:
    path = DIGITS / name
    rows = np.random.default_rng(7).uniform(0.0, 1.0, size=(16, 64)).astype(np.float32)
    rows[0, :2] = [1.5, -0.2]  # saturation both ways
    # Exact half steps of the int8 file's input scale: TFLite rounds them away from zero.
    scale = np.float32(0.003921568859368563)
    steps = 2 * np.random.default_rng(8).integers(0, 128, size=(8, 64)) + 0.5
    rows[1:9] = steps.astype(np.float32) * scale
    agent = open_backend(path, "tflite", BackendOptions(tflite_threads=1), model="digits")
    (input_spec,), (output_spec,) = agent.inputs, agent.outputs
    session = open_litert(path, threads=1)
    for row in rows:
        expected = agent.run({input_spec.name: row[None, :]})[output_spec.name]
        got = session.run(row[None, :])
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)


def test_a_file_that_is_not_a_model_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer")
    with pytest.raises(ModelFileError, match="cannot load"):
        open_litert(bad)
    with pytest.raises(ModelFileError, match="no such model file"):
        open_litert(tmp_path / "missing.tflite")
