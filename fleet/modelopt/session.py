"""``fleet.modelopt``'s one door to ONNX Runtime: sessions, and its quantization and fusion tools.

No other module of the package imports ``onnxruntime`` (ruff's banned-api enforces it).

Sessions for measuring models are opened on the CPU with fixed thread counts: fixed threads
make latency figures comparable between variants and between runs. The quantizer and the
transformer optimizer are called here as thin wrappers, with the settings the callers pass;
``fleet.modelopt.quantize`` chooses those settings and turns failures into ``OptimizeError``
(these wrappers let ONNX Runtime's own exceptions through).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_dynamic,
    quantize_static,
)

from fleet.modelopt.errors import ModelFileError

CPU = "CPUExecutionProvider"

Session: TypeAlias = ort.InferenceSession
"""An ONNX Runtime inference session (``open_session``)."""


def runtime_version() -> str:
    """ONNX Runtime's version, for the report's machine description."""
    return str(ort.__version__)


def open_session(path: Path, *, threads: int = 1) -> Session:
    """A CPU session on ``path``; ``ModelFileError`` if the file is missing or does not load."""
    if not path.is_file():
        raise ModelFileError("no such model file", path=str(path))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: ORT's warnings are not the user's problem
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=[CPU])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types, all Exceptions
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(
            f"ONNX Runtime cannot load the model ({first_line})", path=str(path)
        ) from exc


def input_names(session: Session) -> list[str]:
    return [node.name for node in session.get_inputs()]


def run_first_output(session: Session, batches: Iterable[Mapping[str, np.ndarray]]) -> np.ndarray:
    """The model's first output over all ``batches``, concatenated along the batch axis."""
    output_name = session.get_outputs()[0].name
    parts = [np.asarray(session.run([output_name], dict(batch))[0]) for batch in batches]
    return np.concatenate(parts, axis=0)


# -- quantization and fusion tools -------------------------------------------------------------


class _BatchReader(CalibrationDataReader):  # type: ignore[misc]  # untyped base class
    """Feeds prepared batches to the calibrator, one per ``get_next``."""

    def __init__(self, batches: Iterable[dict[str, np.ndarray]]) -> None:
        self._batches: Iterator[dict[str, np.ndarray]] = iter(list(batches))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def pre_process(model: Path, prepared: Path) -> None:
    """The quantizer's recommended preparation (ONNX shape inference and graph clean-up) of
    ``model`` into ``prepared``: ONNX's own shape inference only, not the symbolic one."""
    quant_pre_process(str(model), str(prepared), skip_symbolic_shape=True)


def quantize_static_qdq_int8(
    model: Path, out: Path, calibration: Iterable[dict[str, np.ndarray]]
) -> None:
    """QDQ int8 of ``model`` into ``out``: signed activations calibrated with MinMax on the
    ``calibration`` batches, per-channel int8 weights."""
    quantize_static(
        model,
        out,
        _BatchReader(calibration),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )


def quantize_dynamic_int8(model: Path, out: Path) -> None:
    """Dynamic int8 of ``model`` into ``out``: per-channel int8 weights, no calibration."""
    quantize_dynamic(
        model,
        out,
        per_channel=True,
        weight_type=QuantType.QInt8,
        # ONNX shape inference cannot type the outputs of ONNX Runtime's fused nodes.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


@dataclass(frozen=True)
class FusedModel:
    """A graph rewritten by ONNX Runtime's transformer optimizer, not yet written out."""

    fused: dict[str, int]  # fused operator -> count, only those fused at least once
    _optimized: Any  # onnxruntime.transformers.onnx_model.OnnxModel (untyped)

    def save(self, out: Path) -> None:
        self._optimized.save_model_to_file(str(out))


def fuse_bert(model: Path, *, heads: int, hidden_size: int) -> FusedModel:
    """``model`` with ONNX Runtime's BERT fusions, graph rewrites only (``opt_level=0``)."""
    from onnxruntime.transformers.optimizer import optimize_model  # noqa: PLC0415  # slow import

    optimized = optimize_model(
        str(model), model_type="bert", num_heads=heads, hidden_size=hidden_size, opt_level=0
    )
    stats = optimized.get_fused_operator_statistics().items()
    return FusedModel({op: count for op, count in stats if count}, optimized)
