"""Magnitude pruning of ONNX weights: zero the smallest-magnitude entries of each weight.

Only the weight operand of MatMul, Gemm and Conv is pruned (biases and norms stay dense), each
tensor to the same sparsity. ONNX stores tensors densely, so a pruned file is as large as the
original; only compression (gzip, a sparse format, or a runtime with sparse kernels) turns the
zeros into bytes saved. The report therefore gives the gzip size beside the file size.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from fleet.modelopt.errors import ModelFileError, OptimizeError

WEIGHT_OPERAND = {"MatMul": 1, "Gemm": 1, "Conv": 1}
MIN_PRUNED_ELEMENTS = 16  # tiny tensors (scalars, shape constants) are not weights


@dataclass(frozen=True)
class PruneResult:
    """What pruning did: tensors touched and the sparsity they reached together."""

    tensors: int
    weights: int
    zeros: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.weights if self.weights else 0.0


def magnitude_mask(weights: np.ndarray, sparsity: float) -> np.ndarray:
    """Boolean mask keeping all but the ``round(sparsity * size)`` smallest-magnitude entries.

    Exactly that many entries are dropped even when magnitudes tie, so the achieved sparsity
    is the requested one to within one element per tensor.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), not {sparsity}")
    flat = np.abs(weights).ravel()
    drop = round(sparsity * flat.size)
    keep = np.ones(flat.size, dtype=bool)
    if drop:
        keep[np.argpartition(flat, drop - 1)[:drop]] = False
    return keep.reshape(weights.shape)


def prune_model(model: onnx.ModelProto, sparsity: float) -> PruneResult:
    """Prune ``model``'s weight initializers in place to ``sparsity``."""
    initializers = {init.name: init for init in model.graph.initializer}
    names = {
        node.input[WEIGHT_OPERAND[node.op_type]]
        for node in model.graph.node
        if node.op_type in WEIGHT_OPERAND and len(node.input) > WEIGHT_OPERAND[node.op_type]
    }
    tensors = weights = zeros = 0
    for name in sorted(names & initializers.keys()):
        array = numpy_helper.to_array(initializers[name])
        if not np.issubdtype(array.dtype, np.floating) or array.size < MIN_PRUNED_ELEMENTS:
            continue
        pruned = np.where(magnitude_mask(array, sparsity), array, 0).astype(array.dtype)
        initializers[name].CopyFrom(numpy_helper.from_array(pruned, name))
        tensors += 1
        weights += pruned.size
        zeros += int(np.count_nonzero(pruned == 0))
    return PruneResult(tensors=tensors, weights=weights, zeros=zeros)


def prune_file(model_path: Path, out: Path, sparsity: float) -> PruneResult:
    """Prune the ONNX file ``model_path`` into ``out``; ``OptimizeError`` if nothing to prune."""
    try:
        model = onnx.load(str(model_path))
    except Exception as exc:  # protobuf DecodeError, OSError
        raise ModelFileError(f"not a readable ONNX file ({exc})", path=str(model_path)) from exc
    result = prune_model(model, sparsity)
    if result.tensors == 0:
        raise OptimizeError(
            "no MatMul/Gemm/Conv weight initializers to prune", path=str(model_path)
        )
    onnx.save(model, str(out))
    return result


def gzip_size(path: Path) -> int:
    """Bytes of ``path`` after gzip -9: what zeros save in transfer and compressed storage."""
    return len(gzip.compress(path.read_bytes(), compresslevel=9, mtime=0))
