"""Affine quantization of tensors at a model's edge: float to int8/uint8 and back.

Quantized models take and return integer tensors with a scale and zero point
(``real = scale * (q - zero_point)``); callers of the agent always speak float, so the
backends convert at the model's boundary with these two functions and the tensor's own
parameters. Pure numpy: no runtime.

Rounding follows TFLite's own QUANTIZE kernel (``std::round``: halves away from zero) with the
division done in float32, so a float input quantized here gives the same integers as the same
input quantized inside a TFLite graph.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def quantize(
    values: npt.NDArray[np.floating], *, scale: float, zero_point: int, dtype: npt.DTypeLike
) -> npt.NDArray[np.integer]:
    """``values`` as integers of ``dtype``: round(values / scale) + zero_point, saturated.

    Values beyond the representable range saturate at the dtype's limits, as TFLite does;
    NaN has no integer value, so the caller must reject it first (``ValueError`` here).
    """
    target = np.dtype(dtype)
    limits = np.iinfo(target)
    real = np.asarray(values, dtype=np.float32)
    if np.isnan(real).any():
        raise ValueError("NaN cannot be quantized")
    steps = real / np.float32(scale)
    rounded = np.sign(steps) * np.floor(np.abs(steps) + np.float32(0.5))
    shifted = rounded.astype(np.float64) + zero_point
    saturated: npt.NDArray[np.integer] = np.clip(shifted, limits.min, limits.max).astype(target)
    return saturated


def dequantize(
    values: npt.NDArray[np.integer], *, scale: float, zero_point: int
) -> npt.NDArray[np.float32]:
    """Integer ``values`` as float32: scale * (values - zero_point)."""
    steps = np.asarray(values).astype(np.int32) - np.int32(zero_point)
    return steps.astype(np.float32) * np.float32(scale)
