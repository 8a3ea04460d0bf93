"""The committed digits reference models: cards, data splits and the int8 accuracy promise.

Built by ``models/digits/build.py``; running the files through the agent's backends is the
backends' tests' job. Here: every card loads and matches its file and the documented contract,
the splits have the documented shapes and do not overlap, int8 stays within 1 point of fp32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.inference.cardfile import load_card
from edge_contract.card import ModelCard, card_path_for

DIGITS = Path(__file__).resolve().parents[2] / "models" / "digits"
FILES = ("digits-fp32.onnx", "digits-int8.onnx", "digits-fp32.tflite", "digits-int8.tflite")
INT8_OF = {"digits-fp32.onnx": "digits-int8.onnx", "digits-fp32.tflite": "digits-int8.tflite"}
EVAL_SIZE, CALIBRATION_SIZE = 360, 200


def _card(name: str) -> ModelCard:
    return load_card(card_path_for(DIGITS / name))


def _split(name: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(DIGITS / "data" / f"{name}.npz", allow_pickle=False) as npz:
        return npz["x"], npz["y"]


@pytest.mark.parametrize("name", FILES)
def test_card_describes_its_file(name: str) -> None:
    card = _card(name)
    assert card.name == "digits"
    assert card.version == ("2" if "int8" in name else "1")
    assert card.runtime == ("onnx" if name.endswith(".onnx") else "tflite")
    assert card.task == "classification"
    assert card.labels == tuple(str(digit) for digit in range(10))
    assert [spec.name for spec in card.inputs] == ["pixels"]
    assert [spec.name for spec in card.outputs] == ["probabilities"]
    assert card.inputs[0].shape == (-1, 64)
    assert card.outputs[0].shape == (-1, 10)
    assert (DIGITS / name).stat().st_size > 0


@pytest.mark.parametrize("name", FILES)
def test_quantization_is_declared_only_where_the_file_is_integer(name: str) -> None:
    card = _card(name)
    integer_io = name == "digits-int8.tflite"  # the QDQ ONNX model keeps float32 I/O
    for spec in (*card.inputs, *card.outputs):
        assert spec.dtype == ("int8" if integer_io else "float32")
        assert (spec.quantization is not None) == integer_io


@pytest.mark.parametrize("name", FILES)
def test_golden_is_the_first_eval_example_with_a_probability_row(name: str) -> None:
    golden = _card(name).golden
    assert golden is not None
    x_eval, y_eval = _split("eval")
    golden_input = np.asarray(golden.inputs["pixels"], dtype=np.float32)
    np.testing.assert_array_equal(golden_input, x_eval[:1])
    output = np.asarray(golden.outputs["probabilities"], dtype=np.float64)
    assert output.shape == (1, 10)
    assert abs(output.sum() - 1.0) < 0.05
    assert int(output.argmax()) == int(y_eval[0])
    assert 0 < golden.atol <= (1e-4 if "fp32" in name else 0.02)


@pytest.mark.parametrize("name", FILES)
def test_reference_stats_are_a_distribution_over_the_eval_split(name: str) -> None:
    reference = _card(name).reference
    assert reference is not None
    assert reference.samples == EVAL_SIZE
    assert reference.class_frequency is not None
    assert reference.confidence_fractions is not None
    assert sum(reference.class_frequency) == pytest.approx(1.0, abs=1e-4)
    assert sum(reference.confidence_fractions) == pytest.approx(1.0, abs=1e-4)
    assert reference.confidence_edges == pytest.approx(tuple(i / 10 for i in range(11)))
    assert reference.accuracy is not None
    assert reference.accuracy >= 0.95


@pytest.mark.parametrize(("fp32", "int8"), INT8_OF.items())
def test_int8_is_within_one_point_of_fp32_and_smaller(fp32: str, int8: str) -> None:
    fp32_accuracy = _card(fp32).reference.accuracy  # type: ignore[union-attr]
    int8_accuracy = _card(int8).reference.accuracy  # type: ignore[union-attr]
    assert fp32_accuracy is not None
    assert int8_accuracy is not None
    assert fp32_accuracy - int8_accuracy <= 0.01
    assert (DIGITS / int8).stat().st_size < 0.5 * (DIGITS / fp32).stat().st_size


@pytest.mark.parametrize(("name", "size"), [("eval", EVAL_SIZE), ("calibration", CALIBRATION_SIZE)])
def test_split_has_the_documented_shape(name: str, size: int) -> None:
    x, y = _split(name)
    assert x.shape == (size, 64)
    assert x.dtype == np.float32
    assert y.shape == (size,)
    assert y.dtype == np.int64
    assert x.min() >= 0.0
    assert x.max() <= 1.0
    assert set(np.unique(y).tolist()) == set(range(10))


def test_distilled_student_is_much_smaller_and_close_to_its_teacher() -> None:
    student, teacher = _card("digits-student-fp32.onnx"), _card("digits-fp32.onnx")
    assert (student.name, student.version, student.runtime) == ("digits", "3", "onnx")
    assert student.inputs == teacher.inputs
    assert student.outputs == teacher.outputs
    assert student.golden is not None
    assert student.golden.atol == 1e-4
    student_size = (DIGITS / "digits-student-fp32.onnx").stat().st_size
    assert student_size < 0.2 * (DIGITS / "digits-fp32.onnx").stat().st_size
    assert student.reference is not None
    assert teacher.reference is not None
    assert student.reference.accuracy is not None
    assert teacher.reference.accuracy is not None
    assert teacher.reference.accuracy - student.reference.accuracy <= 0.01


def test_calibration_and_eval_do_not_overlap() -> None:
    x_cal, _ = _split("calibration")
    x_eval, _ = _split("eval")
    calibration_rows = {row.tobytes() for row in x_cal}
    shared = [index for index, row in enumerate(x_eval) if row.tobytes() in calibration_rows]
    assert shared == []
