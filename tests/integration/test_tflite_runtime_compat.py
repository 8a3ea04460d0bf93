"""The TFLite backend on tflite-runtime 2.14 under numpy<2, as older Jetson images ship it.

tflite-runtime's last release crashes with NumPy 2, so this file runs only in its own
environment, ``.venv-tflite`` (numpy<2, tflite-runtime, no LiteRT), which ``make test``
builds and runs after the main suite; the main run leaves it out. Run it alone with
``.venv-tflite/bin/python -m pytest -q -p no:cacheprovider --noconftest`` and this path.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from agent.errors import ModelLoadError
from agent.inference.backends import Backend, BackendOptions, check_signature, open_backend
from agent.inference.cardfile import load_card
from edge_contract.card import card_path_for

pytestmark = pytest.mark.integration

DIGITS = Path(__file__).resolve().parents[2] / "models" / "digits"
TFLITE_RUNTIME = BackendOptions(tflite_runtime="tflite-runtime")
FILES = ["digits-fp32.tflite", "digits-int8.tflite"]

EvalSplit = tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]


@pytest.fixture(scope="module")
def eval_split() -> EvalSplit:
    with np.load(DIGITS / "data" / "eval.npz") as data:
        return data["x"], data["y"]


def open_digits(file: str, options: BackendOptions = TFLITE_RUNTIME) -> Backend:
    return open_backend(DIGITS / file, "tflite", options, model="digits")


def accuracy(backend: Backend, split: EvalSplit) -> float:
    x, y = split
    return float((backend.run({"pixels": x})["probabilities"].argmax(axis=1) == y).mean())


def test_this_is_the_numpy_1_environment() -> None:
    """The point of the file: tflite-runtime itself, with numpy<2, and no LiteRT to hide it."""
    assert int(np.__version__.split(".")[0]) < 2, f"numpy {np.__version__} in this environment"
    assert importlib.util.find_spec("ai_edge_litert") is None, "LiteRT would take the place"
    assert open_digits("digits-fp32.tflite").runtime.startswith("tflite-runtime 2.14")
    assert open_digits("digits-fp32.tflite", BackendOptions()).runtime.startswith("tflite-runtime")


def test_forcing_litert_where_it_is_missing_names_it() -> None:
    with pytest.raises(ModelLoadError, match="litert"):
        open_digits("digits-fp32.tflite", BackendOptions(tflite_runtime="litert"))


@pytest.mark.parametrize("file", FILES)
def test_matches_its_card(file: str, eval_split: EvalSplit) -> None:
    """Signature, golden output and held-out accuracy as the card records them."""
    card = load_card(card_path_for(DIGITS / file))
    backend = open_digits(file)
    check_signature(card, backend)
    assert card.golden is not None
    assert card.reference is not None
    assert card.reference.accuracy is not None
    golden_in = {name: np.array(value, np.float32) for name, value in card.golden.inputs.items()}
    outputs = backend.run(golden_in)
    for name, expected in card.golden.outputs.items():
        assert outputs[name].dtype == np.float32
        np.testing.assert_allclose(outputs[name], np.array(expected), rtol=0, atol=card.golden.atol)
    # int8 kernels may round differently on another CPU: one example may flip there.
    tolerance = 1e-6 if "fp32" in file else 1 / len(eval_split[1]) + 1e-6
    assert accuracy(backend, eval_split) == pytest.approx(card.reference.accuracy, abs=tolerance)


def test_int8_is_within_one_point_of_fp32(eval_split: EvalSplit) -> None:
    fp32 = accuracy(open_digits("digits-fp32.tflite"), eval_split)
    int8 = accuracy(open_digits("digits-int8.tflite"), eval_split)
    assert fp32 - int8 <= 0.01


@pytest.mark.parametrize("file", FILES)
def test_batches_equal_single_rows(file: str, eval_split: EvalSplit) -> None:
    """Float in, float out, for a batch of N as for N batches of one."""
    backend = open_digits(file)
    x = eval_split[0][:6]
    singles = [backend.run({"pixels": x[i : i + 1]})["probabilities"] for i in range(6)]
    batch = backend.run({"pixels": x.astype(np.float64)})["probabilities"]
    assert batch.dtype == np.float32
    np.testing.assert_allclose(batch, np.concatenate(singles), rtol=0, atol=1e-6)
