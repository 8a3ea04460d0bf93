"""Calibration and evaluation data for ``fleet model optimize``: ``.npz`` files.

An ``.npz`` holds one array per model input, named like the input, plus an optional ``y``
of integer labels. A model with a single input may take its array from ``x`` instead, which
is how the digits splits are stored. Without ``y`` the data is unlabelled and variants are
compared by the cosine similarity of their outputs to the fp32 model's (embedding models).
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fleet.modelopt.errors import DatasetError

LABELS_KEY = "y"
SINGLE_INPUT_KEY = "x"


@dataclass(frozen=True)
class Dataset:
    """Model feeds (input name to array, batch first) and optional integer labels."""

    path: Path
    feeds: Mapping[str, np.ndarray]
    labels: np.ndarray | None

    @property
    def size(self) -> int:
        return len(next(iter(self.feeds.values())))

    def rows(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """The feeds of examples ``start`` to ``stop`` (a batch)."""
        return {name: array[start:stop] for name, array in self.feeds.items()}

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, self.size, batch_size):
            yield self.rows(start, start + batch_size)


def load_dataset(path: Path, input_names: Sequence[str]) -> Dataset:
    """The arrays of ``path`` matched to the model's ``input_names``; ``DatasetError`` if unfit."""
    arrays = _read_npz(path)
    feeds: dict[str, np.ndarray] = {}
    for name in input_names:
        if name in arrays:
            feeds[name] = arrays[name]
        elif len(input_names) == 1 and SINGLE_INPUT_KEY in arrays:
            feeds[name] = arrays[SINGLE_INPUT_KEY]
        else:
            raise DatasetError(
                f"no array {name!r} for model input {name!r} (arrays: {sorted(arrays)})",
                path=str(path),
            )
    labels = arrays.get(LABELS_KEY)
    _check_lengths(path, feeds, labels)
    return Dataset(path=path, feeds=feeds, labels=labels)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DatasetError("no such data file", path=str(path))
    try:
        # Our own handle: np.load leaks the one it opens when the zip turns out corrupt.
        with path.open("rb") as handle:
            loaded = np.load(handle, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise DatasetError("a single .npy array, not an .npz archive", path=str(path))
            with loaded as npz:
                return {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DatasetError(f"not a readable .npz ({exc})", path=str(path)) from exc


def _check_lengths(path: Path, feeds: Mapping[str, np.ndarray], labels: np.ndarray | None) -> None:
    lengths = {name: len(array) if array.ndim else 0 for name, array in feeds.items()}
    if labels is not None:
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DatasetError(
                f"labels {LABELS_KEY!r} must be 1-D integers, not {labels.dtype}{labels.shape}",
                path=str(path),
            )
        lengths[LABELS_KEY] = len(labels)
    if len(set(lengths.values())) != 1 or 0 in lengths.values():
        raise DatasetError(f"arrays differ in length or are empty ({lengths})", path=str(path))
