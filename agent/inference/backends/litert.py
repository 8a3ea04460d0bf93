"""The TFLite backend over LiteRT (``ai-edge-litert``) or ``tflite-runtime``.

The agent's only importer of either. Owns choosing the interpreter package (LiteRT preferred;
``tflite-runtime`` 2.14 is its last release and needs numpy<2, but older Jetson images ship
it), naming tensors (the keys of the "serving_default" signature when the file has one, else
the tensor names), quantizing float inputs and dequantizing outputs with each tensor's own
scale and zero point, and running batches.

Batches: a file whose leading dimension is dynamic (-1) runs a batch of N in one invoke, the
interpreter's input resized to N (a no-op when N did not change). A file fixed at batch 1
([1, 64]) is probed once at load with a batch of 2: if the graph resizes and its outputs
follow, it runs batched too; otherwise batches run row by row, which is always correct for a
per-example model. Either way the backend declares the leading dimension as -1, and checks
every output comes back with N rows.

A TFLite interpreter is not thread-safe: one lock serializes ``run``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import import_module, metadata
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.errors import InvalidInputError, ModelLoadError, ModelRunError
from agent.inference.backends import (
    BackendOptions,
    Tensor,
    TfliteRuntimeChoice,
    input_contract,
)
from agent.inference.quantize import dequantize, quantize
from edge_contract.card import DType, Quantization, TensorSpec

SERVING_SIGNATURE = "serving_default"
# numpy dtype names of the tensor types a model card can declare.
TFLITE_DTYPES: dict[str, DType] = {
    "float32": "float32",
    "float16": "float16",
    "int8": "int8",
    "uint8": "uint8",
    "int32": "int32",
    "int64": "int64",
    "bool": "bool",
}
MAX_RUNTIME_MESSAGE = 500

Arrays = dict[str, Tensor]
Invoke = Callable[..., Mapping[str, Tensor]]


@dataclass(frozen=True)
class _InterpreterPackage:
    label: str  # "litert" or "tflite-runtime", also the name in error messages
    module: str
    distribution: str


PACKAGES = {
    "litert": _InterpreterPackage("litert", "ai_edge_litert.interpreter", "ai-edge-litert"),
    "tflite-runtime": _InterpreterPackage(
        "tflite-runtime", "tflite_runtime.interpreter", "tflite-runtime"
    ),
}


def import_interpreter(choice: TfliteRuntimeChoice, path: Path) -> tuple[Any, str]:
    """The interpreter module for ``choice`` and its runtime label ("litert 2.3.0")."""
    candidates = ["litert", "tflite-runtime"] if choice == "auto" else [choice]
    failures = []
    for label in candidates:
        package = PACKAGES[label]
        try:
            module = import_module(package.module)
        except (ImportError, AttributeError) as exc:  # numpy ABI mismatch raises either
            failures.append(f"{label}: {exc}")
            continue
        return module, f"{label} {metadata.version(package.distribution)}"
    raise ModelLoadError(
        f"no TFLite interpreter is installed for runtime choice {choice!r} ({'; '.join(failures)})",
        path=str(path),
    )


def tflite_available(choice: TfliteRuntimeChoice = "auto") -> bool:
    """Whether an interpreter for ``choice`` imports here (the agent can run .tflite files)."""
    try:
        import_interpreter(choice, Path("-"))
    except ModelLoadError:
        return False
    return True


class TfliteBackend:
    """One TFLite interpreter over one .tflite file."""

    def __init__(
        self,
        interpreter: Any,
        invoke: Invoke,
        details: tuple[dict[str, Any], dict[str, Any]],
        *,
        path: Path,
        model: str,
        runtime: str,
    ) -> None:
        input_details, output_details = details
        self._interpreter: Any = interpreter  # owns the memory the runner works in
        self._invoke: Invoke | None = invoke
        self._model = model
        self._lock = threading.Lock()
        self.path = path
        self.runtime = runtime
        file_inputs = tuple(_tensor_spec(name, d, path) for name, d in input_details.items())
        file_outputs = tuple(_tensor_spec(name, d, path) for name, d in output_details.items())
        self._resizable = _has_batch_dimension(file_inputs)
        self.inputs = _any_batch(file_inputs) if self._resizable else file_inputs
        self.outputs = _any_batch(file_outputs) if self._resizable else file_outputs
        self._contract = input_contract(model, self.inputs)
        self._batched = not self._resizable or _runs_batched(invoke, file_inputs, file_outputs)

    def run(self, feeds: Mapping[str, npt.ArrayLike]) -> Arrays:
        arrays = self._contract.conform(feeds)
        raw = {spec.name: self._to_model(spec, arrays[spec.name]) for spec in self.inputs}
        rows = _batch_size(self._model, raw) if self._resizable else None
        with self._lock:
            invoke = self._invoke
            if invoke is None:
                raise ModelRunError(f"backend for {self.path} is closed", model=self._model)
            try:
                if rows is not None and not self._batched:
                    results = _invoke_by_row(invoke, raw, rows)
                else:
                    results = dict(invoke(**raw))
            except Exception as exc:  # the interpreter raises ValueError/RuntimeError
                raise ModelRunError(
                    f"{self.runtime} failed: {_first_line(exc)}", model=self._model
                ) from exc
        self._check_rows(results, rows)
        return {spec.name: _from_model(spec, results[spec.name]) for spec in self.outputs}

    def close(self) -> None:
        with self._lock:
            self._invoke = None
            self._interpreter = None

    def _check_rows(self, results: Arrays, rows: int | None) -> None:
        """A resized graph that did not carry the batch through must not pass silently."""
        if rows is None:
            return
        for spec in self.outputs:
            value = results[spec.name]
            if spec.shape[:1] == (-1,) and (value.ndim == 0 or value.shape[0] != rows):
                raise ModelRunError(
                    f"output {spec.name!r} has shape {list(value.shape)} for a batch of {rows}",
                    model=self._model,
                )

    def _to_model(self, spec: TensorSpec, value: Tensor) -> Tensor:
        """A caller's float tensor in the file's integer type, with the file's own parameters."""
        if spec.quantization is None:
            return value
        if np.isnan(value).any():
            raise InvalidInputError(
                f"input {spec.name!r} has NaN values, which a quantized input cannot take",
                model=self._model,
                detail=spec.name,
            )
        return quantize(
            value.astype(np.float32, copy=False),
            scale=spec.quantization.scale,
            zero_point=spec.quantization.zero_point,
            dtype=spec.dtype,
        )


def open_tflite(path: Path, options: BackendOptions, *, model: str) -> TfliteBackend:
    """A ``TfliteBackend`` for ``path``; ``ModelLoadError`` if the interpreter rejects it."""
    module, runtime = import_interpreter(options.tflite_runtime, path)
    try:
        interpreter = module.Interpreter(model_path=str(path), num_threads=options.tflite_threads)
        interpreter.allocate_tensors()
        invoke, details = _entry_point(interpreter)
        return TfliteBackend(interpreter, invoke, details, path=path, model=model, runtime=runtime)
    except ModelLoadError:
        raise
    except Exception as exc:  # ValueError "not a valid flatbuffer", RuntimeError from ops
        message = _first_line(exc)
        raise ModelLoadError(f"{runtime} cannot load the model: {message}", path=str(path)) from exc


def _entry_point(interpreter: Any) -> tuple[Invoke, tuple[dict[str, Any], dict[str, Any]]]:
    """How to run the model and its tensor details by public name."""
    if SERVING_SIGNATURE in interpreter.get_signature_list():
        runner = interpreter.get_signature_runner(SERVING_SIGNATURE)
        return runner, (runner.get_input_details(), runner.get_output_details())
    by_tensor = _TensorNameRunner(interpreter)
    return by_tensor, (by_tensor.input_details, by_tensor.output_details)


class _TensorNameRunner:
    """A signature runner's interface for files without signatures: tensors by name."""

    def __init__(self, interpreter: Any) -> None:
        self._interpreter = interpreter
        self.input_details = {d["name"]: d for d in interpreter.get_input_details()}
        self.output_details = {d["name"]: d for d in interpreter.get_output_details()}
        self._shapes = {name: tuple(d["shape"]) for name, d in self.input_details.items()}

    def __call__(self, **feeds: Tensor) -> Arrays:
        interpreter = self._interpreter
        resized = False
        for name, value in feeds.items():
            if self._shapes[name] != value.shape:
                index = self.input_details[name]["index"]
                interpreter.resize_tensor_input(index, list(value.shape), strict=False)
                self._shapes[name] = value.shape
                resized = True
        if resized:
            interpreter.allocate_tensors()
        for name, value in feeds.items():
            interpreter.set_tensor(self.input_details[name]["index"], value)
        interpreter.invoke()
        # get_tensor returns a copy: safe to hand out after the lock is released.
        return {name: interpreter.get_tensor(d["index"]) for name, d in self.output_details.items()}


def _tensor_spec(name: str, details: Mapping[str, Any], path: Path) -> TensorSpec:
    numpy_name = np.dtype(details["dtype"]).name
    dtype = TFLITE_DTYPES.get(numpy_name)
    if dtype is None:
        raise ModelLoadError(
            f"tensor {name!r} has dtype {numpy_name}, which the agent does not serve",
            path=str(path),
        )
    signature = details.get("shape_signature")
    shape = signature if signature is not None and len(signature) else details["shape"]
    return TensorSpec(
        name=name,
        dtype=dtype,
        shape=tuple(int(size) for size in shape),
        quantization=_quantization(name, details, path),
    )


def _quantization(name: str, details: Mapping[str, Any], path: Path) -> Quantization | None:
    parameters = details.get("quantization_parameters") or {}
    scales = list(parameters.get("scales", []))
    zero_points = list(parameters.get("zero_points", []))
    if not scales:
        return None
    if len(scales) > 1:
        raise ModelLoadError(
            f"tensor {name!r} is quantized per channel ({len(scales)} scales); "
            "model inputs and outputs must be quantized per tensor",
            path=str(path),
        )
    return Quantization(scale=float(scales[0]), zero_point=int(zero_points[0]))


def _leads_with_batch(spec: TensorSpec) -> bool:
    """A leading batch dimension: dynamic (-1) or fixed at 1, before at least one more."""
    return len(spec.shape) >= 2 and spec.shape[0] in (-1, 1)


def _has_batch_dimension(specs: tuple[TensorSpec, ...]) -> bool:
    return all(_leads_with_batch(spec) for spec in specs)


def _any_batch(specs: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
    return tuple(
        spec.model_copy(update={"shape": (-1, *spec.shape[1:])})
        if _leads_with_batch(spec)
        else spec
        for spec in specs
    )


def _runs_batched(
    invoke: Invoke, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]
) -> bool:
    """Whether a batch of 2 runs in one invoke with 2 rows out (always for dynamic batch)."""
    if all(spec.shape[0] == -1 for spec in inputs):
        return True
    probe = {spec.name: np.zeros((2, *spec.shape[1:]), np.dtype(spec.dtype)) for spec in inputs}
    try:
        results = invoke(**probe)
    except Exception:  # a graph that cannot resize: rows one by one
        return False
    finally:
        # Back to one row, so a row-by-row backend starts from the file's own shapes.
        one = {name: value[:1] for name, value in probe.items()}
        invoke(**one)
    return all(
        results[spec.name].ndim > 0 and results[spec.name].shape[0] == 2
        for spec in outputs
        if _leads_with_batch(spec)
    )


def _batch_size(model: str, arrays: Arrays) -> int:
    sizes = {name: int(value.shape[0]) for name, value in arrays.items()}
    if len(set(sizes.values())) > 1:
        raise InvalidInputError(f"inputs have different batch sizes: {sizes}", model=model)
    return next(iter(sizes.values()))


def _invoke_by_row(invoke: Invoke, arrays: Arrays, rows: int) -> Arrays:
    per_row = [
        invoke(**{name: value[i : i + 1] for name, value in arrays.items()}) for i in range(rows)
    ]
    return {name: np.concatenate([result[name] for result in per_row]) for name in per_row[0]}


def _from_model(spec: TensorSpec, value: Tensor) -> Tensor:
    if spec.quantization is None:
        return value
    return dequantize(
        value,
        scale=spec.quantization.scale,
        zero_point=spec.quantization.zero_point,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    message = text[0] if text else type(exc).__name__
    return message[:MAX_RUNTIME_MESSAGE]
