"""Input checking: a model's inputs compiled once, and the feeds a check has already passed.

Every request is checked against its model's inputs (names, shapes, dtypes) before a runtime
sees it, and converted to the caller dtypes. Several layers need that guarantee: the REST
parser, the registry (on the event loop, so a bad request fails before it takes a worker)
and each backend (which must never hand a runtime unchecked memory). Checking three times
cost the large reference model a measurable share of its latency (bench/bench_models.py;
docs/benchmarks.md, "Models: serving overhead, int8 against fp32, hot swap"), so the check is
done once: ``InputContract.conform`` returns ``CheckedFeeds`` that remember which contract
passed them, and the same contract accepts them again without looking. Equal input specs share one
contract (``input_contract`` is cached), so a card that says what its file declares and the
backend for that file agree on it; a model swapped in meanwhile has another contract, and
its feeds are checked again.

Pure: numpy only, no runtime, no IO.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.errors import InvalidInputError
from edge_contract.card import DType, TensorSpec

# A tensor of any element type, batch first (float32 wherever the model is quantized).
Tensor = npt.NDArray[Any]
# Distinct (model, input specs) pairs kept compiled: far more than one agent loads at once.
CONTRACT_CACHE_SIZE = 256


def caller_dtype(spec: TensorSpec) -> DType:
    """The dtype callers use for ``spec``: float32 for a quantized tensor, else its own."""
    return "float32" if spec.quantization is not None else spec.dtype


class CheckedFeeds(dict[str, Tensor]):
    """Input arrays by name that ``contract`` checked and converted (not to be changed: the
    same contract hands them on without checking them again), and the batch size they share
    (the first dimension; 1 for a scalar; None if the inputs disagree)."""

    __slots__ = ("batch", "contract")
    # Set by the one maker, ``InputContract``, right after filling the dict (a constructor
    # of our own would cost every request a Python call).
    contract: InputContract
    batch: int | None


class InputContract:
    """The inputs of one model, compiled once for the check every request goes through."""

    def __init__(self, model: str, specs: tuple[TensorSpec, ...]) -> None:
        self.model = model
        self.specs = specs
        self._names = [spec.name for spec in specs]
        # Per input, in the model's order: name, caller dtype, rank and the dimensions of a
        # fixed size as (index, size): ``TensorSpec.accepts_shape`` unrolled, because this
        # runs on every request.
        self._plan = [
            (
                spec.name,
                np.dtype(caller_dtype(spec)),
                len(spec.shape),
                tuple((index, size) for index, size in enumerate(spec.shape) if size != -1),
            )
            for spec in specs
        ]

    def conform(self, feeds: Mapping[str, npt.ArrayLike]) -> CheckedFeeds:
        """``feeds`` checked and converted to each input's caller dtype.

        ``InvalidInputError`` naming the input, what was expected and what was given, for an
        unknown or missing name, a wrong rank or size, an empty batch, a dtype that does
        not convert without changing values (float for an integer input, out-of-range
        integers), or a value that is not finite in a float input's dtype once converted
        (NaN, Infinity, or a number beyond its range such as 1e39 for float32). Arrays that
        already have the input's dtype are taken as given.
        """
        if type(feeds) is CheckedFeeds and feeds.contract is self:
            return feeds
        as_given = self._as_given(feeds)
        return as_given if as_given is not None else self._converted(feeds)

    def _as_given(self, feeds: Mapping[str, npt.ArrayLike]) -> CheckedFeeds | None:
        """The common case at no cost: exactly the inputs, as arrays of the caller dtypes and
        of shapes that fit. None if anything is off; ``_converted`` then says what."""
        if len(feeds) != len(self._plan):
            return None
        checked = CheckedFeeds()
        batches: set[int] = set()
        for name, dtype, rank, fixed in self._plan:
            value = feeds.get(name)
            if type(value) is not np.ndarray or (value.dtype is not dtype and value.dtype != dtype):
                return None
            shape = value.shape
            if len(shape) != rank:
                return None
            for index, size in fixed:
                if shape[index] != size:
                    return None
            rows = shape[0] if shape else 1
            if rows == 0:
                return None
            batches.add(rows)
            checked[name] = value
        checked.contract = self
        checked.batch = _shared(batches)
        return checked

    def _converted(self, feeds: Mapping[str, npt.ArrayLike]) -> CheckedFeeds:
        model, names = self.model, self._names
        unknown = sorted(set(feeds) - set(names))
        if unknown:
            raise InvalidInputError(
                f"unknown input {unknown[0]!r}; the model takes {names}",
                model=model,
                detail=unknown[0],
            )
        missing = [name for name in names if name not in feeds]
        if missing:
            raise InvalidInputError(
                f"missing input {missing[0]!r}; the model takes {names}",
                model=model,
                detail=missing[0],
            )
        checked = CheckedFeeds(
            {spec.name: _conform(model, spec, feeds[spec.name]) for spec in self.specs}
        )
        checked.contract = self
        checked.batch = _shared(batch_sizes(checked.values()))
        return checked


@functools.lru_cache(maxsize=CONTRACT_CACHE_SIZE)
def input_contract(model: str, specs: tuple[TensorSpec, ...]) -> InputContract:
    """The one ``InputContract`` for ``specs`` (equal specs give the same object)."""
    return InputContract(model, specs)


def conform_feeds(
    model: str, specs: tuple[TensorSpec, ...], feeds: Mapping[str, npt.ArrayLike]
) -> CheckedFeeds:
    """``feeds`` checked against ``specs``: ``InputContract.conform`` of their contract."""
    return input_contract(model, specs).conform(feeds)


def conform_caller_feeds(
    model: str, specs: tuple[TensorSpec, ...], arrays: Mapping[str, Tensor]
) -> CheckedFeeds:
    """Arrays a caller sent (REST, v2, gRPC), checked as every front end checks them:
    ``conform_feeds``, and finiteness for a float array that already had its input's dtype
    (the conversion, which refuses values not finite in the input's dtype, passed it as
    given: a float32 NaN sent as binary bytes, or a float64 input)."""
    feeds = conform_feeds(model, specs, arrays)
    for name, array in feeds.items():
        if array is arrays[name] and array.dtype.kind == "f" and not np.isfinite(array).all():
            raise InvalidInputError(
                f"input {name!r} contains NaN or Infinity: non-finite inputs are refused",
                model=model,
                detail=name,
            )
    return feeds


def batch_sizes(arrays: Iterable[Tensor]) -> set[int]:
    """The batch size of each array: its first dimension, 1 for a scalar."""
    return {array.shape[0] if array.ndim else 1 for array in arrays}


def _shared(batches: set[int]) -> int | None:
    """The one batch size of all inputs (1 for a model without inputs); None if they differ."""
    if len(batches) > 1:
        return None
    return batches.pop() if batches else 1


def _conform(model: str, spec: TensorSpec, value: npt.ArrayLike) -> Tensor:
    array = np.asarray(value)
    shape = tuple(int(size) for size in array.shape)
    if not spec.accepts_shape(shape):
        raise InvalidInputError(
            f"input {spec.name!r} has shape {list(shape)}, expected {list(spec.shape)} "
            "(-1: any size)",
            model=model,
            detail=spec.name,
        )
    if shape and shape[0] == 0:
        raise InvalidInputError(
            f"input {spec.name!r} has an empty batch (shape {list(shape)})",
            model=model,
            detail=spec.name,
        )
    return _convert_dtype(model, spec, array)


def _convert_dtype(model: str, spec: TensorSpec, array: Tensor) -> Tensor:
    target = np.dtype(caller_dtype(spec))
    given = array.dtype
    if target.kind == "f" and given.kind in "fiu":
        # Integers are exact numbers for a float input (JSON [0, 1] parses as ints).
        with np.errstate(over="ignore"):  # an overflow is refused below, not warned about
            converted = array.astype(target, copy=False)
        # After the cast: 1e39 is finite in float64 and inf in float32. One vectorised pass.
        if converted.size and not np.isfinite(converted).all():
            raise _not_finite(model, spec, array, converted)
        return converted
    if target.kind in "iu" and given.kind in "iu":
        if not np.can_cast(given, target) and array.size and not _fits(array, target):
            raise InvalidInputError(
                f"input {spec.name!r} has {given} values outside the range of {target}",
                model=model,
                detail=spec.name,
            )
        return array.astype(target, copy=False)
    if target.kind == "b" and given.kind == "b":
        return array
    raise InvalidInputError(
        f"input {spec.name!r} has dtype {given}, expected {target}",
        model=model,
        detail=spec.name,
    )


def _not_finite(
    model: str, spec: TensorSpec, given: Tensor, converted: Tensor
) -> InvalidInputError:
    """The refusal of an input with a value that is not finite in the input's dtype: NaN or
    Infinity as given, or a number beyond the dtype's range (it would become Infinity)."""
    index = int(np.flatnonzero(~np.isfinite(converted))[0])
    value = given.reshape(-1)[index].item()
    where = [int(axis) for axis in np.unravel_index(index, given.shape)]
    if isinstance(value, float) and not np.isfinite(value):
        problem = f"contains NaN or Infinity ({value} at {where})"
    else:
        problem = f"has {value!r} at {where}, outside the range of {converted.dtype}"
    return InvalidInputError(
        f"input {spec.name!r} {problem}: non-finite inputs are refused",
        model=model,
        detail=spec.name,
    )


def _fits(array: Tensor, target: np.dtype[np.integer[Any]]) -> bool:
    limits = np.iinfo(target)
    return bool(array.min() >= limits.min and array.max() <= limits.max)
