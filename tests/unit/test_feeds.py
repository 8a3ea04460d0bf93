"""InputContract: the per-request input check, its fast path and its one-check guarantee."""

from __future__ import annotations

import numpy as np
import pytest

from agent.errors import InvalidInputError
from agent.inference.backends import (
    CheckedFeeds,
    conform_caller_feeds,
    conform_feeds,
    input_contract,
)
from edge_contract.card import Quantization, TensorSpec

TOKENS = (
    TensorSpec(name="ids", dtype="int64", shape=(-1, -1)),
    TensorSpec(name="mask", dtype="int64", shape=(-1, -1)),
)
PIXELS = (TensorSpec(name="pixels", dtype="float32", shape=(-1, 64)),)
QUANTIZED = (
    TensorSpec(
        name="pixels",
        dtype="int8",
        shape=(-1, 64),
        quantization=Quantization(scale=0.5, zero_point=-3),
    ),
)


def _tokens(length: int = 5) -> dict[str, np.ndarray]:
    ids = np.arange(length, dtype=np.int64)[None, :]
    return {"ids": ids, "mask": np.ones_like(ids)}


class TestConform:
    def test_arrays_as_declared_pass_through_uncopied(self) -> None:
        feeds = _tokens()
        checked = input_contract("m", TOKENS).conform(feeds)
        assert isinstance(checked, CheckedFeeds)
        assert list(checked) == ["ids", "mask"]
        assert all(checked[name] is feeds[name] for name in feeds)

    def test_convertible_values_are_converted(self) -> None:
        checked = input_contract("m", PIXELS).conform({"pixels": [[1] * 64]})
        assert checked["pixels"].dtype == np.float32
        assert checked["pixels"].shape == (1, 64)
        float64 = input_contract("m", PIXELS).conform({"pixels": np.ones((2, 64))})
        assert float64["pixels"].dtype == np.float32

    def test_quantized_inputs_take_float32(self) -> None:
        checked = input_contract("m", QUANTIZED).conform({"pixels": np.zeros((1, 64), np.float32)})
        assert checked["pixels"].dtype == np.float32
        # Integers are numbers to a float input, even for a model that is int8 inside.
        as_int = input_contract("m", QUANTIZED).conform({"pixels": np.full((1, 64), 2, np.int8)})
        assert as_int["pixels"].dtype == np.float32
        assert as_int["pixels"][0, 0] == 2.0

    @pytest.mark.parametrize(
        ("feeds", "message"),
        [
            ({"pixels": np.zeros((2, 63), np.float32)}, r"shape \[2, 63\], expected \[-1, 64\]"),
            ({"pixels": np.zeros(64, np.float32)}, r"shape \[64\], expected \[-1, 64\]"),
            ({"pixels": np.zeros((0, 64), np.float32)}, "empty batch"),
            ({"pixels": np.zeros((1, 64), np.float32), "extra": np.zeros(1)}, "unknown input"),
            ({}, "missing input 'pixels'"),
            ({"pixels": np.full((1, 64), "a")}, "dtype <U1, expected float32"),
        ],
    )
    def test_bad_feeds_name_what_is_wrong(self, feeds: dict[str, np.ndarray], message: str) -> None:
        with pytest.raises(InvalidInputError, match=message) as caught:
            input_contract("digits", PIXELS).conform(feeds)
        assert caught.value.model == "digits"

    def test_out_of_range_integers_are_refused(self) -> None:
        specs = (TensorSpec(name="x", dtype="int8", shape=(-1,)),)
        with pytest.raises(InvalidInputError, match="outside the range of int8"):
            input_contract("m", specs).conform({"x": np.array([300], np.int64)})
        fits = input_contract("m", specs).conform({"x": np.array([-5, 100], np.int64)})
        assert fits["x"].dtype == np.int8
        assert fits["x"].tolist() == [-5, 100]


class TestCheckedOnce:
    def test_equal_specs_share_one_contract(self) -> None:
        copy = tuple(TensorSpec.model_validate(spec.model_dump()) for spec in TOKENS)
        assert input_contract("m", copy) is input_contract("m", TOKENS)
        assert input_contract("other", TOKENS) is not input_contract("m", TOKENS)

    def test_feeds_checked_by_the_same_contract_are_not_checked_again(self) -> None:
        contract = input_contract("m", TOKENS)
        checked = contract.conform(_tokens())
        assert contract.conform(checked) is checked
        assert conform_feeds("m", TOKENS, checked) is checked

    def test_another_contract_checks_them_again(self) -> None:
        checked = input_contract("m", TOKENS).conform(_tokens(length=7))
        fixed = (
            TensorSpec(name="ids", dtype="int64", shape=(-1, 5)),
            TensorSpec(name="mask", dtype="int64", shape=(-1, 5)),
        )
        with pytest.raises(InvalidInputError, match=r"shape \[1, 7\], expected \[-1, 5\]"):
            input_contract("m", fixed).conform(checked)


class TestBatch:
    """The batch size the inputs share, found by the same check (fast path or not)."""

    @pytest.mark.parametrize("convert", [False, True], ids=["as declared", "converted"])
    def test_inputs_of_one_batch_size_give_it(self, convert: bool) -> None:
        feeds = {"ids": np.zeros((3, 5), np.int64), "mask": np.ones((3, 5), np.int64)}
        if convert:  # int32 takes the path that converts
            feeds = {name: array.astype(np.int32) for name, array in feeds.items()}
        assert input_contract("m", TOKENS).conform(feeds).batch == 3

    @pytest.mark.parametrize("convert", [False, True], ids=["as declared", "converted"])
    def test_inputs_of_different_batch_sizes_give_none(self, convert: bool) -> None:
        dtype = np.int32 if convert else np.int64
        feeds = {"ids": np.zeros((3, 5), dtype), "mask": np.ones((2, 5), dtype)}
        assert input_contract("m", TOKENS).conform(feeds).batch is None

    def test_a_scalar_input_is_a_batch_of_one(self) -> None:
        scalar = (TensorSpec(name="t", dtype="float32", shape=()),)
        checked = input_contract("m", scalar).conform({"t": np.float32(0.5) * np.ones(())})
        assert checked.batch == 1


class TestNonFinite:
    """A value that is finite as given but not in the input's dtype is refused, naming it."""

    @pytest.mark.parametrize("value", [1e39, 1e308, -1e39, 3.5e38])
    def test_floats_beyond_float32_are_refused(self, value: float) -> None:
        rows = np.zeros((2, 64))
        rows[1, 5] = value
        with pytest.raises(InvalidInputError) as refused:
            conform_feeds("digits", PIXELS, {"pixels": rows})
        message = str(refused.value)
        assert "'pixels'" in message and "float32" in message and "[1, 5]" in message
        assert refused.value.detail == "pixels"

    def test_nan_and_infinity_are_refused(self) -> None:
        for value in (np.nan, np.inf, -np.inf):
            rows = np.zeros((1, 64))
            rows[0, 0] = value
            with pytest.raises(InvalidInputError, match="'pixels' contains NaN or Infinity"):
                conform_feeds("digits", PIXELS, {"pixels": rows})

    def test_integers_beyond_float16_are_refused(self) -> None:
        spec = (TensorSpec(name="x", dtype="float16", shape=(-1,)),)
        with pytest.raises(InvalidInputError, match="70000"):
            conform_feeds("m", spec, {"x": np.array([1, 70000])})

    def test_the_largest_float32_passes(self) -> None:
        rows = np.full((1, 64), float(np.finfo(np.float32).max))
        checked = conform_feeds("digits", PIXELS, {"pixels": rows})
        assert checked["pixels"].dtype == np.float32
        assert np.isfinite(checked["pixels"]).all()


class TestCallerFeeds:
    """``conform_caller_feeds``: what every front end (REST, v2, gRPC) applies."""

    @pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
    def test_a_non_finite_float32_array_given_as_is_is_refused(self, bad: float) -> None:
        pixels = np.zeros((1, 64), dtype=np.float32)
        pixels[0, 3] = bad
        with pytest.raises(InvalidInputError, match="'pixels' contains NaN or Infinity"):
            conform_caller_feeds("digits", PIXELS, {"pixels": pixels})

    def test_a_float64_value_beyond_float32_is_refused_by_the_conversion(self) -> None:
        pixels = np.zeros((1, 64), dtype=np.float64)
        pixels[0, 0] = 1e39
        with pytest.raises(InvalidInputError, match="pixels"):
            conform_caller_feeds("digits", PIXELS, {"pixels": pixels})

    def test_finite_inputs_pass_unchanged(self) -> None:
        pixels = np.ones((2, 64), dtype=np.float32)
        feeds = conform_caller_feeds("digits", PIXELS, {"pixels": pixels})
        assert feeds["pixels"] is pixels
