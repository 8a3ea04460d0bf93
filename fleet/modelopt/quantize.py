"""Post-training int8 quantization of ONNX models with ONNX Runtime (its tools reached through
``fleet.modelopt.session``, the package's only importer of ``onnxruntime``).

Static quantization (QDQ format, per-channel weights, activations calibrated with MinMax on a
calibration split) suits models whose activations have a stable range: the digits classifier.
Dynamic quantization (int8 weights, activation ranges computed per batch at run time) suits
transformer-style models, whose activation ranges vary with the input; it needs no data.

Given the attention shape (heads, hidden size), a transformer is first rewritten with ONNX
Runtime's BERT fusions (``onnxruntime.transformers.optimizer``): each layer's attention
becomes one ``Attention`` node (``QAttention`` once quantized), and layer norms, GELUs and the
embeddings become single nodes too. On a short input most of an unfused int8 model's time is
in the small operators between the matrix products, which int8 does not speed up, so on
all-MiniLM-L6-v2 the fused int8 model gains clearly more over fp32 than the unfused one
(docs/benchmarks.md, "Models: serving overhead, int8 against fp32, hot swap"). ONNX Runtime
recognises the attention pattern of the TorchScript exporter (``torch.onnx.export(...,
dynamo=False)``); a graph it does not recognise is an error here rather than a silently
unfused model.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fleet.modelopt import session
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


def quantize_int8_static(model: Path, out: Path, calibration: Dataset) -> Path:
    """QDQ int8 (signed activations and per-channel weights) of ``model`` into ``out``."""
    with tempfile.TemporaryDirectory(prefix="fleet-quant-") as scratch:
        prepared = _pre_process(model, Path(scratch) / "prepared.onnx")
        try:
            # The calibrator is fed the dataset in fixed-size batches.
            batches = calibration.batches(CALIBRATION_BATCH)
            session.quantize_static_qdq_int8(prepared, out, batches)
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
            session.quantize_dynamic_int8(prepared, out)
        except Exception as exc:
            raise OptimizeError(f"dynamic quantization failed ({exc})", path=str(model)) from exc
    return out


def fuse_transformer(model: Path, out: Path, attention: AttentionShape) -> dict[str, int]:
    """``model`` with ONNX Runtime's BERT fusions into ``out``; the fused node counts.

    Graph rewrites only (``opt_level=0``): the file stays free of hardware-specific layouts and
    loads on any CPU. ``OptimizeError`` if no attention was fused.
    """
    try:
        optimized = session.fuse_bert(
            model, heads=attention.heads, hidden_size=attention.hidden_size
        )
    except Exception as exc:  # the optimizer raises assorted types from deep inside
        raise OptimizeError(f"transformer fusion failed ({exc})", path=str(model)) from exc
    fused = optimized.fused
    if not fused.get("Attention"):
        raise OptimizeError(
            f"ONNX Runtime fused no attention in this graph (fused: {fused or 'nothing'}); "
            "export it with torch.onnx.export(..., dynamo=False), or leave out the attention "
            "shape to quantize it unfused",
            path=str(model),
        )
    optimized.save(out)
    return fused


def _pre_process(model: Path, prepared: Path) -> Path:
    """Shape inference and graph clean-up, which the quantizer recommends before it runs.

    ONNX's own shape inference only, as the committed int8 models were made: the symbolic one
    (sympy) is for the transformer fusions, which ``fuse_transformer`` runs before this.
    """
    try:
        session.pre_process(model, prepared)
    except Exception as exc:
        raise OptimizeError(
            f"cannot prepare the model for quantization ({exc})", path=str(model)
        ) from exc
    return prepared
