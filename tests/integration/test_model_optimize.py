"""``fleet model optimize`` as a user runs it: the real CLI on the committed digits model.

Checks the promises of the report (int8 within 1 point of fp32 and smaller, pruning at the
requested sparsity, JSON and PNG written and consistent) and that bad inputs end with one
clear line and a non-zero exit, not a traceback.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from agent.inference.cardfile import load_card
from edge_contract.card import card_path_for
from tests.integration.harness import model_optimize

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "models" / "digits"
FP32, INT8 = DIGITS / "digits-fp32.onnx", DIGITS / "digits-int8.onnx"
CALIBRATION, EVAL = DIGITS / "data" / "calibration.npz", DIGITS / "data" / "eval.npz"
SPARSITY = 0.6
EXIT_BAD_INPUT = 65


@pytest.fixture(scope="module")
def optimized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("optimize") / "out"
    done = model_optimize(
        FP32,
        "--calibration", CALIBRATION,
        "--eval", EVAL,
        "--out", out,
        "--sparsity", str(SPARSITY),
        "--compare", INT8,
        "--runs", "20",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out, done.stdout


def _variants(out: Path) -> dict[str, dict[str, object]]:
    record = json.loads((out / "report.json").read_text())
    return {variant["name"]: variant for variant in record["variants"]}


def test_static_int8_is_within_one_point_of_fp32_and_smaller(optimized: tuple[Path, str]) -> None:
    out, _ = optimized
    variants = _variants(out)
    fp32, int8 = variants["fp32"], variants["int8-static"]
    assert fp32["quality"] - int8["quality"] <= 0.01  # type: ignore[operator]
    assert int8["size_bytes"] < 0.5 * fp32["size_bytes"]  # type: ignore[operator]
    assert Path(str(int8["path"])).parent == out
    assert Path(str(int8["path"])).stat().st_size == int8["size_bytes"]


def test_pruned_variant_reaches_the_requested_sparsity(optimized: tuple[Path, str]) -> None:
    out, _ = optimized
    pruned = _variants(out)["pruned-60"]
    assert abs(pruned["sparsity"] - SPARSITY) <= 0.01  # type: ignore[operator]
    assert Path(str(pruned["path"])).is_file()
    # Dense ONNX storage: the file does not shrink, gzip does.
    assert pruned["gzip_bytes"] < 0.8 * pruned["size_bytes"]  # type: ignore[operator]


def test_compared_model_is_measured_like_its_card_says(optimized: tuple[Path, str]) -> None:
    out, _ = optimized
    committed = _variants(out)["digits-int8"]
    reference = load_card(card_path_for(INT8)).reference
    assert reference is not None
    assert reference.accuracy is not None
    assert committed["quality"] == pytest.approx(reference.accuracy, abs=0.003)
    assert committed["kind"] == "compare"


def test_report_json_png_and_table_agree(optimized: tuple[Path, str]) -> None:
    out, stdout = optimized
    record = json.loads((out / "report.json").read_text())
    assert record["metric"] == "accuracy"
    assert record["quantization"] == "static"
    assert record["runs"] == 20
    names = [variant["name"] for variant in record["variants"]]
    assert names == ["fp32", "int8-static", "pruned-60", "digits-int8"]
    for variant in record["variants"]:
        assert variant["name"] in stdout
        assert 0 < variant["p50_ms"] <= variant["p99_ms"]
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(out / "report.json") in stdout


def test_tflite_variant_is_explained_when_it_cannot_be_made(optimized: tuple[Path, str]) -> None:
    out, stdout = optimized
    notes = json.loads((out / "report.json").read_text())["notes"]
    if importlib.util.find_spec("tensorflow") is None:
        expected = "TensorFlow is not installed (install the `models` extra"
    else:
        expected = "pass --tf-model PATH"
    assert any(expected in note for note in notes)
    assert expected in stdout


@pytest.mark.parametrize(
    ("problem", "message"),
    [
        ("missing-model", "no such model file"),
        ("corrupt-model", "ONNX Runtime cannot load the model"),
        ("corrupt-eval", "not a readable .npz"),
        ("wrong-arrays", "no array 'pixels'"),
        ("wrong-shape", "digits-fp32.onnx rejects this data"),
    ],
)
def test_bad_input_is_one_clear_line_and_a_failing_exit(
    tmp_path: Path, problem: str, message: str
) -> None:
    model, eval_data = FP32, EVAL
    if problem == "missing-model":
        model = tmp_path / "absent.onnx"
    elif problem == "corrupt-model":
        model = tmp_path / "corrupt.onnx"
        model.write_bytes(FP32.read_bytes()[:1000])  # truncated
    elif problem == "corrupt-eval":
        eval_data = tmp_path / "corrupt.npz"
        eval_data.write_bytes(EVAL.read_bytes()[:100])
    else:
        import numpy as np

        eval_data = tmp_path / "wrong.npz"
        if problem == "wrong-arrays":
            np.savez(eval_data, images=np.zeros((2, 64), dtype=np.float32))
        else:
            np.savez(eval_data, x=np.zeros((2, 63), dtype=np.float32), y=np.zeros(2, np.int64))
    out = tmp_path / "out"
    done = model_optimize(model, "--calibration", CALIBRATION, "--eval", eval_data, "--out", out)
    assert done.returncode == EXIT_BAD_INPUT
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert message in line
    assert not out.exists()  # inputs are checked before anything is written
