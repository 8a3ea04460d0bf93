"""``fleet.modelopt``'s one door to LiteRT (``ai-edge-litert``, or ``tflite-runtime``).

No other module of ``fleet/`` imports either package (ruff's banned-api enforces it); the
agent's own door is ``agent/inference/backends/litert.py``, and fleet/ never imports agent/.

``fleet model optimize`` times a full-integer TFLite candidate as the agent will serve it:
float in, float out, each edge tensor quantized and dequantized with the file's own scale and
zero point, rounding as TFLite's QUANTIZE kernel does (halves away from zero, the division in
float32). tests/unit/test_modelopt_litert.py checks the outputs equal the agent backend's on
the same file. One input and one output: the candidates are single-tensor classifiers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fleet.modelopt.errors import ModelFileError


def _interpreter_module(path: Path) -> tuple[Any, str]:
    """LiteRT's interpreter module, else tflite-runtime's, and a label ("ai-edge-litert 2.3")."""
    failures = []
    try:
        from ai_edge_litert import interpreter  # noqa: PLC0415  # heavy, only for a candidate

        return interpreter, f"ai-edge-litert {metadata.version('ai-edge-litert')}"
    except (ImportError, AttributeError) as exc:  # numpy ABI mismatch raises either
        failures.append(f"ai-edge-litert: {exc}")
    try:
        from tflite_runtime import interpreter as old  # noqa: PLC0415

        return old, f"tflite-runtime {metadata.version('tflite-runtime')}"
    except (ImportError, AttributeError) as exc:
        failures.append(f"tflite-runtime: {exc}")
    raise ModelFileError(
        f"no TFLite interpreter is installed ({'; '.join(failures)})", path=str(path)
    )


@dataclass(frozen=True)
class _Edge:
    """One input or output tensor: its index and its quantization, if any."""

    index: int
    dtype: np.dtype[Any]
    scale: float | None
    zero_point: int

    @classmethod
    def of(cls, details: Mapping[str, Any]) -> _Edge:
        scales = list((details.get("quantization_parameters") or {}).get("scales", []))
        points = list((details.get("quantization_parameters") or {}).get("zero_points", []))
        scale = float(scales[0]) if len(scales) == 1 else None
        return cls(
            int(details["index"]), np.dtype(details["dtype"]), scale, int(points[0]) if scale else 0
        )

    def to_model(self, values: npt.ArrayLike) -> np.ndarray:
        real = np.asarray(values, dtype=np.float32)
        if self.scale is None:
            return real.astype(self.dtype, copy=False)
        limits = np.iinfo(self.dtype)
        steps = real / np.float32(self.scale)
        rounded = np.sign(steps) * np.floor(np.abs(steps) + np.float32(0.5))
        shifted = rounded.astype(np.float64) + self.zero_point
        saturated: np.ndarray = np.clip(shifted, limits.min, limits.max).astype(self.dtype)
        return saturated

    def from_model(self, values: np.ndarray) -> np.ndarray:
        if self.scale is None:
            return np.asarray(values)
        steps = np.asarray(values).astype(np.int32) - np.int32(self.zero_point)
        return steps.astype(np.float32) * np.float32(self.scale)


class LiteRtSession:
    """One interpreter over one single-input, single-output .tflite file, float at its edge."""

    def __init__(self, interpreter: Any, runtime: str) -> None:
        self._interpreter = interpreter
        self.runtime = runtime
        (input_details,) = interpreter.get_input_details()
        (output_details,) = interpreter.get_output_details()
        self._input = _Edge.of(input_details)
        self._output = _Edge.of(output_details)
        self._shape = tuple(int(size) for size in input_details["shape"])

    def run(self, values: npt.ArrayLike) -> np.ndarray:
        """The model's output for ``values`` (float), dequantized to float."""
        array = self._input.to_model(values)
        if array.shape != self._shape:
            self._interpreter.resize_tensor_input(self._input.index, list(array.shape))
            self._interpreter.allocate_tensors()
            self._shape = array.shape
        self._interpreter.set_tensor(self._input.index, array)
        self._interpreter.invoke()
        return self._output.from_model(self._interpreter.get_tensor(self._output.index))


def open_litert(path: Path, *, threads: int = 1) -> LiteRtSession:
    """A session on ``path``; ``ModelFileError`` if the file is missing or does not load."""
    if not path.is_file():
        raise ModelFileError("no such model file", path=str(path))
    module, runtime = _interpreter_module(path)
    try:
        interpreter = module.Interpreter(model_path=str(path), num_threads=threads)
        interpreter.allocate_tensors()
        return LiteRtSession(interpreter, runtime)
    except Exception as exc:  # ValueError "not a valid flatbuffer", RuntimeError from ops
        text = str(exc).strip().splitlines()
        first_line = text[0] if text else type(exc).__name__
        raise ModelFileError(
            f"{runtime} cannot load the model ({first_line})", path=str(path)
        ) from exc
