"""Calibration/eval ``.npz`` files: arrays matched to model inputs, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from fleet.modelopt.data import load_dataset
from fleet.modelopt.errors import DatasetError, OptionsError
from fleet.modelopt.pipeline import OptimizeOptions, choose_mode, optimize


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def test_single_input_model_takes_x_and_labels_y(tmp_path: Path) -> None:
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    path = _npz(tmp_path / "d.npz", x=x, y=np.arange(6, dtype=np.int64))
    data = load_dataset(path, ["pixels"])
    assert data.size == 6
    np.testing.assert_array_equal(data.feeds["pixels"], x)
    assert data.labels is not None
    assert [len(batch["pixels"]) for batch in data.batches(4)] == [4, 2]
    np.testing.assert_array_equal(data.rows(1, 2)["pixels"], x[1:2])


def test_multi_input_model_takes_arrays_by_name_and_may_be_unlabelled(tmp_path: Path) -> None:
    ids = np.ones((3, 5), dtype=np.int64)
    path = _npz(tmp_path / "t.npz", input_ids=ids, attention_mask=ids)
    data = load_dataset(path, ["input_ids", "attention_mask"])
    assert set(data.feeds) == {"input_ids", "attention_mask"}
    assert data.labels is None


def test_missing_input_array_names_what_is_there(tmp_path: Path) -> None:
    path = _npz(tmp_path / "t.npz", input_ids=np.ones((3, 5), dtype=np.int64))
    with pytest.raises(DatasetError, match=r"attention_mask.*arrays: \['input_ids'\]"):
        load_dataset(path, ["input_ids", "attention_mask"])


def test_lengths_must_agree(tmp_path: Path) -> None:
    path = _npz(tmp_path / "d.npz", x=np.zeros((4, 2), np.float32), y=np.zeros(3, np.int64))
    with pytest.raises(DatasetError, match="differ in length"):
        load_dataset(path, ["pixels"])


def test_labels_must_be_integers(tmp_path: Path) -> None:
    path = _npz(tmp_path / "d.npz", x=np.zeros((4, 2), np.float32), y=np.zeros(4, np.float32))
    with pytest.raises(DatasetError, match="1-D integers"):
        load_dataset(path, ["pixels"])


def test_missing_and_corrupt_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such data file") as raised:
        load_dataset(tmp_path / "absent.npz", ["pixels"])
    assert raised.value.path == str(tmp_path / "absent.npz")
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(DatasetError, match=r"not a readable \.npz"):
        load_dataset(corrupt, ["pixels"])
    text = tmp_path / "text.npz"
    text.write_text("x,y\n1,2\n")
    with pytest.raises(DatasetError, match=r"not a readable \.npz"):
        load_dataset(text, ["pixels"])
    single = tmp_path / "single.npz"
    with single.open("wb") as handle:
        np.save(handle, np.zeros(3))
    with pytest.raises(DatasetError, match=r"not an \.npz archive"):
        load_dataset(single, ["pixels"])


def _session(tmp_path: Path, elem_type: int) -> ort.InferenceSession:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", elem_type, ["n", 4])],
        [helper.make_tensor_value_info("y", elem_type, ["n", 4])],
    )
    path = tmp_path / "identity.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_auto_mode_is_dynamic_for_token_ids_or_unlabelled_data(tmp_path: Path) -> None:
    floats = _session(tmp_path, TensorProto.FLOAT)
    tokens = _session(tmp_path, TensorProto.INT64)
    assert choose_mode(floats, labelled=True, requested="auto") == "static"
    assert choose_mode(floats, labelled=False, requested="auto") == "dynamic"
    assert choose_mode(tokens, labelled=True, requested="auto") == "dynamic"
    assert choose_mode(tokens, labelled=True, requested="static") == "static"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sparsity": 1.5}, "--sparsity must be in"),
        ({"runs": 0}, "--runs and --threads must be at least 1"),
        ({"calibration": None}, "--calibration DATA.npz is needed for static"),
    ],
)
def test_options_are_checked_before_anything_is_written(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    digits = Path(__file__).resolve().parents[2] / "models" / "digits"
    settings: dict[str, object] = {
        "model": digits / "digits-fp32.onnx",
        "eval_data": digits / "data" / "eval.npz",
        "calibration": digits / "data" / "calibration.npz",
        "out": tmp_path / "out",
        **change,
    }
    with pytest.raises(OptionsError, match=message):
        optimize(OptimizeOptions(**settings))  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()
