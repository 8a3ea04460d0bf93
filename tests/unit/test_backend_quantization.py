"""Quantize/dequantize at a model's edge: TFLite's rounding, saturation, round trips."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.inference.quantize import dequantize, quantize

# The digits int8 model's input parameters: pixels in [0, 1] over the full int8 range.
PIXEL_SCALE = 1 / 255
PIXEL_ZERO_POINT = -128


class TestQuantize:
    def test_rounds_halves_away_from_zero_like_tflite(self) -> None:
        """x / scale = k + 0.5 rounds to k + 1 above zero and -(k + 1) below, not to even."""
        values = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5], np.float32)
        quantized = quantize(values, scale=1.0, zero_point=0, dtype=np.int8)
        assert quantized.tolist() == [1, 2, 3, -1, -2, -3]

    def test_saturates_at_the_dtype_limits(self) -> None:
        """Values beyond the representable range (infinities too) clip instead of wrapping."""
        values = np.array([-100.0, -np.inf, 100.0, np.inf], np.float32)
        as_int8 = quantize(values, scale=0.1, zero_point=0, dtype=np.int8)
        as_uint8 = quantize(values, scale=0.1, zero_point=128, dtype=np.uint8)
        assert as_int8.dtype == np.int8
        assert as_int8.tolist() == [-128, -128, 127, 127]
        assert as_uint8.dtype == np.uint8
        assert as_uint8.tolist() == [0, 0, 255, 255]

    def test_zero_point_shifts_real_zero(self) -> None:
        """Real 0 lands on the zero point; real 1 on the far end of the pixel range."""
        values = np.array([0.0, 1.0], np.float32)
        quantized = quantize(values, scale=PIXEL_SCALE, zero_point=PIXEL_ZERO_POINT, dtype=np.int8)
        assert quantized.tolist() == [-128, 127]

    def test_nan_is_refused(self) -> None:
        """NaN has no integer value: quantizing it is an error, not an arbitrary integer."""
        with pytest.raises(ValueError, match="NaN"):
            quantize(np.array([0.2, np.nan]), scale=0.1, zero_point=0, dtype=np.int8)


class TestDequantize:
    def test_is_float32_scale_times_offset(self) -> None:
        """(q - zero_point) * scale, in float32, with no int8 overflow on the subtraction."""
        values = np.array([-128, 0, 127], np.int8)
        real = dequantize(values, scale=0.5, zero_point=-128)
        assert real.dtype == np.float32
        assert real.tolist() == [0.0, 64.0, 127.5]


@given(
    st.lists(st.floats(min_value=0.0, max_value=1.0, width=32), min_size=1, max_size=64),
)
def test_round_trip_is_within_half_a_step(pixels: list[float]) -> None:
    """Inside the representable range, dequantize(quantize(x)) is x within scale / 2."""
    values = np.array(pixels, np.float32)
    quantized = quantize(values, scale=PIXEL_SCALE, zero_point=PIXEL_ZERO_POINT, dtype=np.int8)
    restored = dequantize(quantized, scale=PIXEL_SCALE, zero_point=PIXEL_ZERO_POINT)
    assert np.abs(restored - values).max() <= PIXEL_SCALE / 2 + 1e-6


@given(st.integers(min_value=0, max_value=255))
def test_integers_survive_dequantize_then_quantize(level: int) -> None:
    """Every uint8 level maps back to itself: the two functions are inverse on the grid."""
    quantized = np.array([level], np.uint8)
    real = dequantize(quantized, scale=0.02, zero_point=100)
    assert quantize(real, scale=0.02, zero_point=100, dtype=np.uint8).tolist() == [level]
