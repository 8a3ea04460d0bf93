"""Magnitude pruning: exact sparsity per tensor, largest weights kept, only weights touched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper, numpy_helper

from fleet.modelopt.errors import ModelFileError, OptimizeError
from fleet.modelopt.prune import gzip_size, magnitude_mask, prune_file, prune_model


def _mlp(seed: int = 0) -> onnx.ModelProto:
    """x[-1,8] -> MatMul(8x16) + bias -> Relu -> Gemm(16x4, bias) -> y."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.normal(size=(8, 16)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(size=(16,)).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.normal(size=(16, 4)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.normal(size=(4,)).astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.9])
def test_each_weight_reaches_the_requested_sparsity(sparsity: float) -> None:
    model = _mlp()
    result = prune_model(model, sparsity)
    arrays = _arrays(model)
    assert result.tensors == 2
    assert result.weights == 8 * 16 + 16 * 4
    for name in ("w1", "w2"):
        zeros = np.count_nonzero(arrays[name] == 0)
        assert zeros == round(sparsity * arrays[name].size)
    assert result.sparsity == pytest.approx(sparsity, abs=1 / 64)


def test_biases_are_not_pruned() -> None:
    model = _mlp()
    before = _arrays(model)
    prune_model(model, 0.75)
    after = _arrays(model)
    for name in ("b1", "b2"):
        np.testing.assert_array_equal(after[name], before[name])


def test_the_largest_magnitudes_survive() -> None:
    model = _mlp()
    before = _arrays(model)["w1"]
    prune_model(model, 0.5)
    after = _arrays(model)["w1"]
    kept = np.abs(before[after != 0])
    dropped = np.abs(before[after == 0])
    assert kept.min() >= dropped.max()
    np.testing.assert_array_equal(after[after != 0], before[after != 0])


@settings(max_examples=60, deadline=None)
@given(
    weights=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=1, max_dims=3, max_side=12),
        elements=st.sampled_from([-2.0, -1.0, 0.5, 1.0, 3.0]),  # many ties on purpose
    ),
    sparsity=st.floats(0.0, 0.99),
)
def test_mask_drops_exactly_the_rounded_count_even_with_ties(
    weights: np.ndarray, sparsity: float
) -> None:
    mask = magnitude_mask(weights, sparsity)
    assert mask.shape == weights.shape
    assert np.count_nonzero(~mask) == round(sparsity * weights.size)
    if mask.any() and (~mask).any():
        assert np.abs(weights[mask]).min() >= np.abs(weights[~mask]).max()


def test_conv_kernels_are_pruned() -> None:
    kernel = np.arange(1, 37, dtype=np.float32).reshape(4, 1, 3, 3)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "k"], ["y"])],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 3, 3])],
        initializer=[numpy_helper.from_array(kernel, "k")],
    )
    model = helper.make_model(graph)
    result = prune_model(model, 0.5)
    pruned = _arrays(model)["k"]
    assert result.tensors == 1
    assert result.sparsity == 0.5
    np.testing.assert_array_equal(pruned.ravel()[:18], 0)  # 1..18 are the smallest
    np.testing.assert_array_equal(pruned.ravel()[18:], kernel.ravel()[18:])


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5])
def test_mask_refuses_sparsity_outside_zero_to_one(sparsity: float) -> None:
    with pytest.raises(ValueError, match="sparsity"):
        magnitude_mask(np.ones(4, dtype=np.float32), sparsity)


def test_pruned_file_still_runs_and_compresses_better(tmp_path: Path) -> None:
    source, pruned = tmp_path / "mlp.onnx", tmp_path / "pruned.onnx"
    onnx.save(_mlp(), str(source))
    result = prune_file(source, pruned, 0.8)
    assert result.sparsity == pytest.approx(0.8, abs=0.01)
    # Dense storage: same size on disk; the zeros only show once compressed.
    assert abs(pruned.stat().st_size - source.stat().st_size) < 64
    assert gzip_size(pruned) < gzip_size(source)
    session = ort.InferenceSession(str(pruned), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {"x": np.ones((3, 8), dtype=np.float32)})
    assert output.shape == (3, 4)
    assert np.isfinite(output).all()


def test_a_model_without_weights_is_refused(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(OptimizeError, match="no MatMul/Gemm/Conv weight") as raised:
        prune_file(path, tmp_path / "out.onnx", 0.5)
    assert raised.value.path == str(path)


def test_a_file_that_is_not_onnx_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\x00not a protobuf\xff" * 10)
    with pytest.raises(ModelFileError, match="not a readable ONNX file"):
        prune_file(path, tmp_path / "out.onnx", 0.5)
