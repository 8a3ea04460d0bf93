"""The ONNX Runtime backend: the agent's only importer of ``onnxruntime``.

Owns provider selection (the configured execution providers in order, those this build of
onnxruntime lacks skipped with one warning, CPU always the last resort; a provider that is
present but cannot create the session, a TensorRT without its libraries or a CUDA without a
device, is dropped and the session made with the next one, each such fallback recorded on the
backend for the registry's ``provider_fallback`` event), session threading,
reading the graph's inputs and outputs into ``TensorSpec`` and running validated feeds.
It also owns the process's shared thread pools (ONNX Runtime's global thread pools), made
once at the first load that asks for them and used by every session opened after.
ONNX graphs have no quantization at their inputs and outputs (a QDQ int8 model keeps float
I/O), so no conversion happens here. ``InferenceSession.run`` is thread-safe: no lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy.typing as npt
import onnxruntime as ort
import structlog

from agent.errors import InferenceError, ModelLoadError, ModelRunError
from agent.inference.backends import BackendOptions, Tensor, input_contract
from edge_contract.card import DType, TensorSpec

log = structlog.get_logger("agent.inference")

CPU_PROVIDER = "CPUExecutionProvider"
TENSORRT_PROVIDER = "TensorrtExecutionProvider"
# ONNX Runtime's type strings for the tensor element types a model card can declare.
ORT_TENSOR_DTYPES: dict[str, DType] = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}
MAX_RUNTIME_MESSAGE = 500  # onnxruntime messages can quote whole graphs

# ONNX Runtime's global thread pools are process state: once made they cannot be resized, and
# it refuses any later session that asks for pools of its own.
_shared_pools_lock = threading.Lock()
_shared_pools: tuple[int, int] | None = None  # (intra-op, inter-op) sizes, 0 meaning ORT's


@dataclass(frozen=True)
class ProviderFallback:
    """A provider that was present but failed to create the session, and why."""

    provider: str
    error: str


class OnnxBackend:
    """One ``InferenceSession`` over one .onnx file."""

    def __init__(
        self,
        session: Any,
        *,
        path: Path,
        model: str,
        fallbacks: tuple[ProviderFallback, ...] = (),
    ) -> None:
        self._session: Any = session
        self.provider_fallbacks = fallbacks
        self._model = model
        self.path = path
        self.inputs = tuple(_tensor_spec(arg, path) for arg in session.get_inputs())
        self.outputs = tuple(_tensor_spec(arg, path) for arg in session.get_outputs())
        self._contract = input_contract(model, self.inputs)
        self._output_names = [spec.name for spec in self.outputs]
        providers = ", ".join(session.get_providers())
        self.runtime = f"onnxruntime {ort.__version__} ({providers})"

    @property
    def session(self) -> ort.InferenceSession:
        """The ``InferenceSession`` itself (benchmarks time it bare); ``ModelRunError`` once
        the backend is closed."""
        if self._session is None:
            raise ModelRunError(f"backend for {self.path} is closed", model=self._model)
        return self._session

    def run(self, feeds: Mapping[str, npt.ArrayLike]) -> dict[str, Tensor]:
        arrays = self._contract.conform(feeds)
        session = self._session
        if session is None:
            raise ModelRunError(f"backend for {self.path} is closed", model=self._model)
        try:
            values = session.run(self._output_names, arrays)
        except Exception as exc:  # onnxruntime raises its own pybind11 exception types
            message = _first_line(exc)
            raise ModelRunError(f"onnxruntime failed: {message}", model=self._model) from exc
        # Tensor outputs come back as arrays (a graph with any other output is refused at load).
        return dict(zip(self._output_names, values, strict=True))

    def close(self) -> None:
        # Runs in flight keep their own reference; the session is freed after the last one.
        self._session = None


def open_onnx(path: Path, options: BackendOptions, *, model: str) -> OnnxBackend:
    """An ``OnnxBackend`` for ``path``; ``ModelLoadError`` if onnxruntime rejects the file."""
    providers = choose_providers(options.onnx_providers, model=model)
    session_options = session_options_for(options, path)

    def create(chosen: list[str]) -> Any:
        return ort.InferenceSession(
            str(path),
            session_options,
            providers=chosen,
            provider_options=provider_options(chosen, options),
        )

    try:
        session, fallbacks = session_with_fallback(create, providers, model=model)
    except Exception as exc:  # InvalidProtobuf, InvalidGraph, Fail, NoSuchFile...
        message = _first_line(exc)
        raise ModelLoadError(
            f"onnxruntime cannot load the model: {message}", path=str(path)
        ) from exc
    return OnnxBackend(session, path=path, model=model, fallbacks=fallbacks)


def provider_options(providers: Sequence[str], options: BackendOptions) -> list[dict[str, str]]:
    """ONNX Runtime's options for each provider, in order: TensorRT's fp16 and engine cache
    (the directory is made here; ORT writes the engines), nothing for the others."""
    result: list[dict[str, str]] = []
    for provider in providers:
        settings: dict[str, str] = {}
        if provider == TENSORRT_PROVIDER:
            settings["trt_fp16_enable"] = "True" if options.tensorrt_fp16 else "False"
            if options.tensorrt_cache_dir is not None:
                options.tensorrt_cache_dir.mkdir(parents=True, exist_ok=True)
                settings["trt_engine_cache_enable"] = "True"
                settings["trt_engine_cache_path"] = str(options.tensorrt_cache_dir)
        result.append(settings)
    return result


def session_with_fallback(
    create: Callable[[list[str]], Any], providers: Sequence[str], *, model: str
) -> tuple[Any, tuple[ProviderFallback, ...]]:
    """``create(providers)``; when that fails, drop the first provider and try the rest, down
    to the last one (CPU), whose failure is the model's (raised). Returns the session and the
    providers that failed, in order."""
    remaining = list(providers)
    fallbacks: list[ProviderFallback] = []
    while True:
        try:
            return create(remaining), tuple(fallbacks)
        except Exception as exc:
            if len(remaining) <= 1:
                raise
            failed = ProviderFallback(remaining[0], _first_line(exc))
            log.warning(
                "inference.provider_fallback",
                model=model,
                provider=failed.provider,
                error=failed.error,
                next=remaining[1],
            )
            fallbacks.append(failed)
            remaining = remaining[1:]


def session_options_for(options: BackendOptions, path: Path) -> ort.SessionOptions:
    session_options = ort.SessionOptions()
    if options.onnx_thread_pools == "shared":
        try:
            share_thread_pools(options.intra_op_threads, options.inter_op_threads)
        except InferenceError as exc:
            raise ModelLoadError(str(exc), path=str(path)) from exc
    if shared_thread_pools() is not None:
        # Sessions of their own are refused once the shared pools exist, so even a per-model
        # request follows them; the thread counts are the pools'.
        session_options.use_per_session_threads = False
    else:
        if options.intra_op_threads:
            session_options.intra_op_num_threads = options.intra_op_threads
        if options.inter_op_threads:
            session_options.inter_op_num_threads = options.inter_op_threads
        if options.intra_op_spinning is not None:
            # Spinning threads keep a core busy between runs: the fastest for a lone caller
            # on an idle machine, a tax on the event loop and other callers elsewhere.
            spin = "1" if options.intra_op_spinning else "0"
            session_options.add_session_config_entry("session.intra_op.allow_spinning", spin)
            session_options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return session_options


def share_thread_pools(intra_op_threads: int, inter_op_threads: int) -> None:
    """Make the process's shared thread pools, unless they exist (the first call's sizes
    stay): every session opened after runs on them, so loading or dropping a model starts or
    stops no threads and several models do not each spin a pool on the same cores.
    ``InferenceError`` if ONNX Runtime refuses."""
    global _shared_pools  # noqa: PLW0603  # process state, as it is in ONNX Runtime
    with _shared_pools_lock:
        if _shared_pools is not None:
            return
        try:
            ort.set_global_thread_pool_sizes(intra_op_threads, inter_op_threads)
        except Exception as exc:  # onnxruntime's Fail: pools made elsewhere, or a bad size
            raise InferenceError(
                f"onnxruntime cannot make the shared thread pools (intra_op_threads="
                f"{intra_op_threads}, inter_op_threads={inter_op_threads}): {_first_line(exc)}"
            ) from exc
        _shared_pools = (intra_op_threads, inter_op_threads)
    log.info(
        "inference.thread_pools",
        mode="shared",
        intra_op_threads=intra_op_threads or "auto",
        inter_op_threads=inter_op_threads or "auto",
    )


def shared_thread_pools() -> tuple[int, int] | None:
    """The shared pools' (intra-op, inter-op) sizes (0: ONNX Runtime's choice), or ``None``
    before any load asked for them."""
    return _shared_pools


def available_providers() -> tuple[str, ...]:
    """The execution providers this build of onnxruntime has (what the agent can run on)."""
    return tuple(ort.get_available_providers())


def choose_providers(requested: Sequence[str], *, model: str) -> list[str]:
    """The requested providers this onnxruntime has, in order, CPU last; one warning names
    the missing ones (a config written for a Jetson still runs on a plain CPU board)."""
    available = set(ort.get_available_providers())
    wanted = list(dict.fromkeys(requested))
    chosen = [name for name in wanted if name in available and name != CPU_PROVIDER]
    chosen.append(CPU_PROVIDER)
    missing = [name for name in wanted if name not in available]
    if missing:
        log.warning(
            "inference.providers_unavailable",
            model=model,
            missing=missing,
            using=chosen,
            available=sorted(available),
        )
    return chosen


def _tensor_spec(arg: Any, path: Path) -> TensorSpec:
    dtype = ORT_TENSOR_DTYPES.get(arg.type)
    if dtype is None:
        raise ModelLoadError(
            f"tensor {arg.name!r} has type {arg.type}, which the agent does not serve "
            f"(supported: {', '.join(ORT_TENSOR_DTYPES)})",
            path=str(path),
        )
    if arg.shape is None:
        raise ModelLoadError(f"tensor {arg.name!r} declares no shape", path=str(path))
    # Symbolic ("batch") and unknown (None) dimensions take any size.
    shape = tuple(size if isinstance(size, int) and size >= 0 else -1 for size in arg.shape)
    return TensorSpec(name=arg.name, dtype=dtype, shape=shape)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    message = text[0] if text else type(exc).__name__
    return message[:MAX_RUNTIME_MESSAGE]
