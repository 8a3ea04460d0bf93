"""Model card parts computed from a model file and its outputs on the held-out split.

The build scripts in ``models/`` use these so that every card describes its exact file: the
tensor specs as the ONNX file declares them, and the reference statistics of that file's own
outputs (the baseline drift is measured against).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from edge_contract.card import DType, ReferenceStats, TensorSpec
from fleet.modelopt.errors import ModelFileError

CONFIDENCE_BINS = 10

_ONNX_DTYPES: dict[int, DType] = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.BOOL: "bool",
}


def onnx_tensor_specs(path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The (inputs, outputs) an ONNX file declares; symbolic dimensions become -1."""
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # protobuf DecodeError, OSError
        raise ModelFileError(f"not a readable ONNX file ({exc})", path=str(path)) from exc
    initializers = {init.name for init in graph.initializer}
    inputs = tuple(_spec(value, path) for value in graph.input if value.name not in initializers)
    return inputs, tuple(_spec(value, path) for value in graph.output)


def _spec(value: onnx.ValueInfoProto, path: Path) -> TensorSpec:
    tensor_type = value.type.tensor_type
    dtype = _ONNX_DTYPES.get(tensor_type.elem_type)
    if dtype is None:
        raise ModelFileError(
            f"tensor {value.name!r} has unsupported element type {tensor_type.elem_type}",
            path=str(path),
        )
    shape = tuple(
        dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor_type.shape.dim
    )
    return TensorSpec(name=value.name, dtype=dtype, shape=shape)


def classification_reference(probabilities: np.ndarray, labels: np.ndarray) -> ReferenceStats:
    """Prediction frequency per class, top-1 confidence summary and accuracy on a split."""
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1).astype(np.float64)
    classes = probabilities.shape[1]
    frequency = np.bincount(predicted, minlength=classes) / len(predicted)
    edges = np.linspace(0.0, 1.0, CONFIDENCE_BINS + 1)
    # Confidence 1.0 belongs in the last bin; np.histogram closes the last bin on the right.
    counts, _ = np.histogram(np.clip(confidence, 0.0, 1.0), bins=edges)
    return ReferenceStats(
        samples=len(predicted),
        class_frequency=tuple(round(float(f), 6) for f in frequency),
        confidence_mean=round(float(confidence.mean()), 6),
        confidence_std=round(float(confidence.std()), 6),
        confidence_edges=tuple(round(float(e), 6) for e in edges),
        confidence_fractions=tuple(round(float(c / len(predicted)), 6) for c in counts),
        accuracy=round(float((predicted == labels).mean()), 6),
    )
