"""Runtime backends: one interface over ONNX Runtime and LiteRT / tflite-runtime.

This package owns the contract between the agent and a runtime: ``BackendOptions`` (what the
config may tune), the ``Backend`` protocol every runtime module implements, ``open_backend``
(checks the file, then imports the runtime module lazily so a board with one runtime never
imports the other), ``check_signature`` (the card's I/O contract against what the file
declares) and, from ``feeds``, the input check every request passes once before a runtime
sees it (``conform_feeds``). Only ``onnx.py`` and ``litert.py`` import a runtime.

Callers always speak float: a quantized input takes float32 (the backend quantizes with the
model's own scale and zero point) and a quantized output comes back dequantized as float32.
Outputs are passed on as the model computed them, NaN and Inf included: deciding that a
non-finite result is an error (``NonFiniteOutputError``) belongs to the registry, which also
counts it for monitoring.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy.typing as npt

from agent.errors import ModelLoadError, ModelSignatureError
from agent.inference.backends.feeds import (
    CheckedFeeds,
    InputContract,
    Tensor,
    batch_sizes,
    caller_dtype,
    conform_caller_feeds,
    conform_feeds,
    input_contract,
)
from edge_contract.card import ModelCard, Quantization, Runtime, TensorSpec

__all__ = [
    "Backend",
    "BackendOptions",
    "CheckedFeeds",
    "InputContract",
    "OnnxThreadPools",
    "Tensor",
    "batch_sizes",
    "caller_dtype",
    "check_model_file",
    "check_signature",
    "conform_caller_feeds",
    "conform_feeds",
    "input_contract",
    "open_backend",
]

TFLITE_IDENTIFIER = b"TFL3"  # flatbuffer file identifier, bytes 4..8 of every .tflite
# An ONNX ModelProto serializes ir_version (field 1, varint) first: tag byte 0x08.
ONNX_FIRST_BYTE = 0x08
SCALE_RELATIVE_TOLERANCE = 1e-6

TfliteRuntimeChoice = Literal["auto", "litert", "tflite-runtime"]
OnnxThreadPools = Literal["shared", "per-model"]


@dataclass(frozen=True)
class BackendOptions:
    """Runtime settings from the agent's config."""

    # Tried in order; unavailable ones are skipped with one log line; CPU is always last.
    onnx_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    # TensorRT's engines: fp16 when it helps, kept in this directory across restarts (None:
    # rebuilt in every process, the runtime's default).
    tensorrt_fp16: bool = False
    tensorrt_cache_dir: Path | None = None
    intra_op_threads: int = 0  # 0: the runtime's default
    inter_op_threads: int = 0
    # Whether idle intra-op threads spin before they sleep (None: the runtime's default, on).
    # Per-model pools only: ONNX Runtime's shared pools always spin.
    intra_op_spinning: bool | None = None
    tflite_threads: int | None = None  # None: the runtime's default
    tflite_runtime: TfliteRuntimeChoice = "auto"  # auto: LiteRT preferred, else tflite-runtime
    # shared: every ONNX session of the process runs on one pair of thread pools, made at the
    # first load (a hot swap then starts and stops no threads). It is process state in ONNX
    # Runtime, so the daemon and ``serve`` choose it; the library default leaves a process
    # (a test run, a benchmark's bare sessions) free to open sessions with pools of their own.
    onnx_thread_pools: OnnxThreadPools = "per-model"


class Backend(Protocol):
    """A loaded model file, ready to run. Thread-safe."""

    runtime: str  # e.g. "onnxruntime 1.32.0 (CPUExecutionProvider)", "litert 2.3.0"
    path: Path
    inputs: tuple[TensorSpec, ...]  # as the model file declares them
    outputs: tuple[TensorSpec, ...]

    def run(self, feeds: Mapping[str, npt.ArrayLike]) -> dict[str, Tensor]:
        """Outputs by name for ``feeds`` by input name; float in and out for quantized tensors.

        ``InvalidInputError`` for unknown or missing names, wrong shape or dtype;
        ``ModelRunError`` when the runtime fails.
        """
        ...

    def close(self) -> None:
        """Release the runtime's resources; later calls to ``run`` raise ``ModelRunError``."""
        ...


def onnx_providers() -> tuple[str, ...]:
    """The ONNX Runtime execution providers of this build; empty without onnxruntime."""
    try:
        from agent.inference.backends.onnx import available_providers  # noqa: PLC0415
    except ImportError:
        return ()
    return available_providers()


def tflite_available(choice: TfliteRuntimeChoice = "auto") -> bool:
    """Whether a LiteRT / tflite-runtime interpreter imports in this install."""
    try:
        from agent.inference.backends import litert  # noqa: PLC0415
    except ImportError:
        return False
    return litert.tflite_available(choice)


def open_backend(path: Path, runtime: Runtime, options: BackendOptions, *, model: str) -> Backend:
    """Load ``path`` with ``runtime``; ``ModelLoadError`` if that cannot be done."""
    check_model_file(path, runtime)
    # Imported here, not at the top: each runtime is an optional install.
    if runtime == "onnx":
        from agent.inference.backends.onnx import open_onnx  # noqa: PLC0415

        return open_onnx(path, options, model=model)
    if runtime == "tflite":
        from agent.inference.backends.litert import open_tflite  # noqa: PLC0415

        return open_tflite(path, options, model=model)
    raise ModelLoadError(
        f"unknown runtime {runtime!r} (expected 'onnx' or 'tflite')", path=str(path)
    )


def check_model_file(path: Path, runtime: Runtime) -> None:
    """A clear ``ModelLoadError`` for files no runtime should be given: missing, empty, or
    another runtime's format (read from the file's first bytes)."""
    try:
        with path.open("rb") as file:
            head = file.read(8)
    except FileNotFoundError as exc:
        raise ModelLoadError("model file does not exist", path=str(path)) from exc
    except OSError as exc:
        raise ModelLoadError(f"cannot read model file ({exc.strerror})", path=str(path)) from exc
    if not head:
        raise ModelLoadError("model file is empty (0 bytes)", path=str(path))
    is_tflite = head[4:8] == TFLITE_IDENTIFIER
    if runtime == "onnx" and is_tflite:
        raise ModelLoadError(
            "file is a TFLite flatbuffer (TFL3), not an ONNX model: use runtime 'tflite'",
            path=str(path),
        )
    if runtime == "tflite" and not is_tflite:
        hint = (
            " (it looks like an ONNX model: use runtime 'onnx')" if _looks_like_onnx(head) else ""
        )
        raise ModelLoadError(
            f"file is not a TFLite flatbuffer: no TFL3 identifier at bytes 4..8{hint}",
            path=str(path),
        )


def _looks_like_onnx(head: bytes) -> bool:
    return head[0] == ONNX_FIRST_BYTE


def check_signature(card: ModelCard, backend: Backend) -> None:
    """``ModelSignatureError`` listing every way the file's I/O differs from ``card``'s."""
    differences = _differences("input", card.inputs, backend.inputs)
    differences += _differences("output", card.outputs, backend.outputs)
    if differences:
        raise ModelSignatureError(
            f"model file {backend.path.name} differs from its card: " + "; ".join(differences),
            model=card.name,
        )


def _differences(
    kind: str, declared: tuple[TensorSpec, ...], found: tuple[TensorSpec, ...]
) -> list[str]:
    found_by_name = {spec.name: spec for spec in found}
    declared_names = {spec.name for spec in declared}
    problems = [
        f"{kind} {spec.name!r} is in the card, not in the file"
        for spec in declared
        if spec.name not in found_by_name
    ]
    problems += [
        f"{kind} {spec.name!r} is in the file, not in the card"
        for spec in found
        if spec.name not in declared_names
    ]
    for want in declared:
        have = found_by_name.get(want.name)
        if have is not None:
            problems += _tensor_differences(f"{kind} {want.name!r}", want, have)
    return problems


def _tensor_differences(label: str, card: TensorSpec, file: TensorSpec) -> list[str]:
    problems = []
    if card.dtype != file.dtype:
        problems.append(f"{label} dtype: card {card.dtype}, file {file.dtype}")
    if not _shapes_match(card.shape, file.shape):
        problems.append(f"{label} shape: card {list(card.shape)}, file {list(file.shape)}")
    if not _quantizations_match(card.quantization, file.quantization):
        problems.append(
            f"{label} quantization: card {_describe(card.quantization)}, "
            f"file {_describe(file.quantization)}"
        )
    return problems


def _shapes_match(card: tuple[int, ...], file: tuple[int, ...]) -> bool:
    return len(card) == len(file) and all(
        -1 in (want, have) or want == have for want, have in zip(card, file, strict=True)
    )


def _quantizations_match(card: Quantization | None, file: Quantization | None) -> bool:
    if card is None or file is None:
        return card is file
    return card.zero_point == file.zero_point and math.isclose(
        card.scale, file.scale, rel_tol=SCALE_RELATIVE_TOLERANCE, abs_tol=0.0
    )


def _describe(quantization: Quantization | None) -> str:
    if quantization is None:
        return "none"
    return f"scale {quantization.scale:.9g} zero point {quantization.zero_point}"
