"""Post-training int8 quantization of ONNX models with ONNX Runtime.

Static quantization (QDQ format, per-channel weights, activations calibrated with MinMax on a
calibration split) suits models whose activations have a stable range: the digits classifier.
Dynamic quantization (int8 weights, activation ranges computed per batch at run time) suits
transformer-style models, whose activation ranges vary with the input; it needs no data.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
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
from fleet.modelopt.errors import OptimizeError

QuantMode = Literal["static", "dynamic"]
CALIBRATION_BATCH = 32


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
    """Dynamic int8 of ``model`` into ``out``: int8 weights, per-channel, no calibration."""
    with tempfile.TemporaryDirectory(prefix="fleet-quant-") as scratch:
        prepared = _pre_process(model, Path(scratch) / "prepared.onnx")
        try:
            quantize_dynamic(prepared, out, per_channel=True, weight_type=QuantType.QInt8)
        except Exception as exc:
            raise OptimizeError(f"dynamic quantization failed ({exc})", path=str(model)) from exc
    return out


def _pre_process(model: Path, prepared: Path) -> Path:
    """Shape inference and graph clean-up, which the quantizer recommends before it runs.

    ONNX's own shape inference only: the symbolic one needs sympy, which the optimize extra
    does not pull in, and the result would then differ between environments.
    """
    try:
        quant_pre_process(str(model), str(prepared), skip_symbolic_shape=True)
    except Exception as exc:
        raise OptimizeError(
            f"cannot prepare the model for quantization ({exc})", path=str(model)
        ) from exc
    return prepared
