"""Post-training int8 quantization of ONNX models with ONNX Runtime.

Static quantization (QDQ format, per-channel weights, activations calibrated with MinMax on a
calibration split) suits models whose activations have a stable range: the digits classifier.
Dynamic quantization (int8 weights, activation ranges computed per batch at run time) suits
transformer-style models, whose activation ranges vary with the input; it needs no data.

Given the attention shape (heads, hidden size), a transformer is first rewritten with ONNX
Runtime's BERT fusions (``onnxruntime.transformers.optimizer``): each layer's attention
becomes one ``Attention`` node (``QAttention`` once quantized), and layer norms, GELUs and the
embeddings become single nodes too. On a short input most of an unfused int8 model's time is
in the small operators between the matrix products, which int8 does not speed up:
all-MiniLM-L6-v2 at 17 tokens ran at 0.68 x fp32 unfused and 0.53-0.59 x fused
(docs/benchmarks.md). ONNX Runtime recognises the attention pattern of the TorchScript
exporter (``torch.onnx.export(..., dynamo=False)``); a graph it does not recognise is an error
here rather than a silently unfused model.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_dynamic,
    quantize_static,
)

from fleet.modelopt.data import Dataset
from fleet.modelopt.errors import OptimizeError, OptionsError

QuantMode = Literal["static", "dynamic"]
CALIBRATION_BATCH = 32


@dataclass(frozen=True)
class AttentionShape:
    """What ONNX Runtime's attention fusion needs to know and cannot reliably detect."""

    heads: int
    hidden_size: int

    def __post_init__(self) -> None:
        if self.heads < 1 or self.hidden_size < 1 or self.hidden_size % self.heads:
            raise OptionsError(
                f"attention of {self.heads} heads over a hidden size of {self.hidden_size}: "
                "both must be positive and the hidden size a multiple of the heads"
            )


class DatasetReader(CalibrationDataReader):  # type: ignore[misc]  # untyped base class
    """Feeds a :class:`Dataset` to the calibrator in fixed-size batches."""

    def __init__(self, dataset: Dataset, batch_size: int = CALIBRATION_BATCH) -> None:
        self._batches = iter(list(dataset.batches(batch_size)))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_int8_static(model: Path, out: Path, calibration: Dataset) -> Path:
    """QDQ int8 (signed activations and per-channel weights) of ``model`` into ``out``."""
    with tempfile.TemporaryDirectory(prefix="fleet-quant-") as scratch:
        prepared = _pre_process(model, Path(scratch) / "prepared.onnx")
        try:
            quantize_static(
                prepared,
                out,
                DatasetReader(calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
        except Exception as exc:  # ORT raises assorted types from deep inside the quantizer
            raise OptimizeError(f"static quantization failed ({exc})", path=str(model)) from exc
    return out


def quantize_int8_dynamic(model: Path, out: Path) -> Path:
    """Dynamic int8 of ``model`` into ``out``: int8 weights, per-channel, no calibration.

    A model already fused (``fuse_transformer``) keeps its fused nodes: ``Attention`` becomes
    ``QAttention``.
    """
    with tempfile.TemporaryDirectory(prefix="fleet-quant-") as scratch:
        prepared = _pre_process(model, Path(scratch) / "prepared.onnx")
        try:
            quantize_dynamic(
                prepared,
                out,
                per_channel=True,
                weight_type=QuantType.QInt8,
                # ONNX shape inference cannot type the outputs of ONNX Runtime's fused nodes.
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
        except Exception as exc:
            raise OptimizeError(f"dynamic quantization failed ({exc})", path=str(model)) from exc
    return out


def fuse_transformer(model: Path, out: Path, attention: AttentionShape) -> dict[str, int]:
    """``model`` with ONNX Runtime's BERT fusions into ``out``; the fused node counts.

    Graph rewrites only (``opt_level=0``): the file stays free of hardware-specific layouts and
    loads on any CPU. ``OptimizeError`` if no attention was fused.
    """
    from onnxruntime.transformers.optimizer import optimize_model  # noqa: PLC0415  # slow import

    try:
        optimized = optimize_model(
            str(model),
            model_type="bert",
            num_heads=attention.heads,
            hidden_size=attention.hidden_size,
            opt_level=0,
        )
    except Exception as exc:  # the optimizer raises assorted types from deep inside
        raise OptimizeError(f"transformer fusion failed ({exc})", path=str(model)) from exc
    fused = {op: count for op, count in optimized.get_fused_operator_statistics().items() if count}
    if not fused.get("Attention"):
        raise OptimizeError(
            f"ONNX Runtime fused no attention in this graph (fused: {fused or 'nothing'}); "
            "export it with torch.onnx.export(..., dynamo=False), or leave out the attention "
            "shape to quantize it unfused",
            path=str(model),
        )
    optimized.save_model_to_file(str(out))
    return fused


def _pre_process(model: Path, prepared: Path) -> Path:
    """Shape inference and graph clean-up, which the quantizer recommends before it runs.

    ONNX's own shape inference only, as the committed int8 models were made: the symbolic one
    (sympy) is for the transformer fusions, which ``fuse_transformer`` runs before this.
    """
    try:
        quant_pre_process(str(model), str(prepared), skip_symbolic_shape=True)
    except Exception as exc:
        raise OptimizeError(
            f"cannot prepare the model for quantization ({exc})", path=str(model)
        ) from exc
    return prepared
