"""``fleet model optimize`` end to end: check inputs, make the variants, measure, report.

Variants: the fp32 baseline as given; int8 by ONNX Runtime (static QDQ calibrated on the
calibration split, or dynamic for transformer-style models); given the attention shape, the
fp32 model after ONNX Runtime's transformer fusions, from which the dynamic int8 is then made
(so the report shows how much of int8's gain is the fusions'); magnitude-pruned at the chosen
sparsity; full-integer TFLite when TensorFlow is installed and a TF model is given; and any
extra ONNX files to compare (a distilled student). Every input is checked before the first
long step, so a bad path fails in a second with one line, not after minutes of calibration.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from rich.progress import Progress, TaskID

from fleet.modelopt import tflite
from fleet.modelopt.data import Dataset, load_dataset
from fleet.modelopt.errors import DatasetError, OptionsError
from fleet.modelopt.litert_session import open_litert
from fleet.modelopt.measure import accuracy, mean_cosine, time_single_examples
from fleet.modelopt.prune import gzip_size, prune_file
from fleet.modelopt.quantize import (
    AttentionShape,
    fuse_transformer,
    quantize_int8_dynamic,
    quantize_int8_static,
)
from fleet.modelopt.report import Report, VariantResult, plot_report
from fleet.modelopt.session import Session, input_names, open_session, runtime_version
from fleet.modelopt.tflite import MISSING_TENSORFLOW, NO_TF_MODEL

Mode = Literal["auto", "static", "dynamic"]
Kind = Literal["baseline", "quantized", "pruned", "tflite", "compare"]
INTEGER_INPUT_TYPES = ("tensor(int64)", "tensor(int32)")


@dataclass(frozen=True)
class OptimizeOptions:
    """What to optimize, with which data, and how to measure it."""

    model: Path
    eval_data: Path
    out: Path
    calibration: Path | None = None
    mode: Mode = "auto"
    sparsity: float = 0.5
    tf_model: Path | None = None
    compare: tuple[Path, ...] = ()
    runs: int = 200
    threads: int = 1
    attention: AttentionShape | None = None  # fuse a transformer before dynamic int8


@dataclass(frozen=True)
class _Candidate:
    name: str
    kind: Kind
    path: Path
    sparsity: float | None = None
    note: str = ""


@dataclass(frozen=True)
class _Runner:
    """Runs one example of a variant and returns its first output.

    Quality is measured one example at a time too, as the agent serves requests: dynamic
    quantization picks activation scales per call, so a batch's rows change each other's
    results.
    """

    one: Callable[[Mapping[str, np.ndarray]], np.ndarray]

    def all(self, data: Dataset) -> np.ndarray:
        rows = [self.one(data.rows(index, index + 1)) for index in range(data.size)]
        return np.concatenate(rows, axis=0)


def choose_mode(session: Session, labelled: bool, requested: Mode) -> str:
    """Dynamic for token-id inputs or unlabelled (embedding) data, static otherwise."""
    if requested != "auto":
        return requested
    token_inputs = any(node.type in INTEGER_INPUT_TYPES for node in session.get_inputs())
    return "dynamic" if token_inputs or not labelled else "static"


def optimize(options: OptimizeOptions, progress: Progress | None = None) -> Report:
    """Make and measure every variant; writes them, report.json and report.png to ``out``."""
    _check_options(options)
    baseline = open_session(options.model, threads=options.threads)
    names = input_names(baseline)
    eval_data = load_dataset(options.eval_data, names)
    mode = choose_mode(baseline, eval_data.labels is not None, options.mode)
    _check_attention_mode(options, mode)
    calibration = _calibration(options, names, mode)
    _check_fits(baseline, eval_data, options.model)
    if calibration is not None:
        _check_fits(baseline, calibration, options.model)
    for path in options.compare:  # fail now, not after quantizing
        _check_fits(open_session(path, threads=options.threads), eval_data, path)
    if options.tf_model is not None and tflite.tensorflow_available():
        tflite.check_tf_model(options.tf_model)
    options.out.mkdir(parents=True, exist_ok=True)

    report = Report(
        model=options.model.name,
        eval_data=str(options.eval_data),
        metric="accuracy" if eval_data.labels is not None else "cosine",
        quantization=mode,
        threads=options.threads,
        runs=options.runs,
        machine=_machine(),
    )
    steps = _Steps(progress)
    candidates = _make_variants(options, mode, calibration, report, steps)
    _measure_all(candidates, eval_data, options, report, steps)
    report.write_json(options.out / "report.json")
    plot_report(report, options.out / "report.png")
    return report


def _check_options(options: OptimizeOptions) -> None:
    if not 0.0 <= options.sparsity < 1.0:
        raise OptionsError(f"--sparsity must be in [0, 1), not {options.sparsity}")
    if options.runs < 1 or options.threads < 1:
        raise OptionsError(
            f"--runs and --threads must be at least 1 (got {options.runs}, {options.threads})"
        )
    _check_attention_mode(options, options.mode)  # an explicit --mode: before any loading


def _check_attention_mode(options: OptimizeOptions, mode: str) -> None:
    """Static int8 quantizes the graph as it is: refuse an attention shape that it would
    silently skip, whether ``--mode static`` said so or ``--mode auto`` chose it."""
    if options.attention is None or mode != "static":
        return
    if options.mode == "static":
        raise OptionsError("the attention shape is for dynamic quantization, not --mode static")
    raise OptionsError(
        "the attention shape is for dynamic quantization, and --mode auto chose static "
        "for this model (float inputs, labelled eval data): pass --mode dynamic, or leave "
        "out --attention-heads and --hidden-size"
    )


def _check_fits(session: Session, data: Dataset, model: Path) -> None:
    """``DatasetError`` unless ``model`` runs on the first example of ``data``."""
    try:
        session.run(None, data.rows(0, 1))
    except Exception as exc:  # ORT's InvalidArgument/Fail types carry the reason
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DatasetError(
            f"{model.name} rejects this data ({reason})", path=str(data.path)
        ) from exc


def _calibration(options: OptimizeOptions, names: list[str], mode: str) -> Dataset | None:
    needed = mode == "static" or (options.tf_model is not None and tflite.tensorflow_available())
    if options.calibration is None:
        if needed:
            purpose = "static int8 quantization" if mode == "static" else "TFLite int8 conversion"
            raise OptionsError(f"--calibration DATA.npz is needed for {purpose}")
        return None
    return load_dataset(options.calibration, names)


def _make_variants(
    options: OptimizeOptions,
    mode: str,
    calibration: Dataset | None,
    report: Report,
    steps: _Steps,
) -> list[_Candidate]:
    stem = options.model.stem.removesuffix("-fp32")
    candidates = [_Candidate("fp32", "baseline", options.model)]
    source = options.model
    if mode == "dynamic" and options.attention is not None:
        source = options.out / f"{stem}-fp32-fused.onnx"
        with steps.step("transformer fusions"):
            fused = fuse_transformer(options.model, source, options.attention)
        note = "fused " + ", ".join(f"{count} {op}" for op, count in fused.items())
        candidates.append(_Candidate("fp32-fused", "compare", source, note=note))
    int8 = options.out / f"{stem}-int8-{mode}.onnx"
    with steps.step(f"{mode} int8 quantization"):
        if mode == "static" and calibration is not None:  # _calibration() ensures it is
            quantize_int8_static(options.model, int8, calibration)
        else:
            quantize_int8_dynamic(source, int8)
    candidates.append(_Candidate(f"int8-{mode}", "quantized", int8))
    if options.sparsity > 0:
        percent = round(options.sparsity * 100)
        pruned = options.out / f"{stem}-pruned{percent}.onnx"
        with steps.step(f"magnitude pruning to {percent}%"):
            result = prune_file(options.model, pruned, options.sparsity)
        note = f"{result.tensors} weight tensors; dense storage: only gzip shows the zeros"
        candidates.append(_Candidate(f"pruned-{percent}", "pruned", pruned, result.sparsity, note))
    candidates += _tflite_variant(options, calibration, stem, report, steps)
    candidates += [_Candidate(path.stem, "compare", path) for path in options.compare]
    return candidates


def _tflite_variant(
    options: OptimizeOptions, calibration: Dataset | None, stem: str, report: Report, steps: _Steps
) -> list[_Candidate]:
    if not tflite.tensorflow_available():
        report.notes.append(MISSING_TENSORFLOW)
        return []
    if options.tf_model is None or calibration is None:
        report.notes.append(NO_TF_MODEL)
        return []
    out = options.out / f"{stem}-int8.tflite"
    with steps.step("TFLite full-integer conversion"):
        tflite.convert_full_integer(options.tf_model, calibration, out)
    return [_Candidate("tflite-int8", "tflite", out)]


def _measure_all(
    candidates: list[_Candidate],
    eval_data: Dataset,
    options: OptimizeOptions,
    report: Report,
    steps: _Steps,
) -> None:
    reference: np.ndarray | None = None
    with steps.bar("measuring variants", total=len(candidates)) as advance:
        for candidate in candidates:
            runner = _runner(candidate, options.threads)
            outputs = runner.all(eval_data)
            if reference is None:
                reference = outputs
            if eval_data.labels is not None:
                quality = accuracy(outputs, eval_data.labels)
            else:
                quality = mean_cosine(outputs, reference)
            latency = time_single_examples(runner.one, eval_data, options.runs)
            report.variants.append(
                VariantResult(
                    name=candidate.name,
                    kind=candidate.kind,
                    path=str(candidate.path),
                    size_bytes=candidate.path.stat().st_size,
                    gzip_bytes=gzip_size(candidate.path),
                    p50_ms=round(latency.p50_ms, 4),
                    p99_ms=round(latency.p99_ms, 4),
                    quality=round(quality, 6),
                    sparsity=None if candidate.sparsity is None else round(candidate.sparsity, 6),
                    note=candidate.note,
                )
            )
            advance()


def _runner(candidate: _Candidate, threads: int) -> _Runner:
    if candidate.kind == "tflite":
        return _tflite_runner(candidate, threads)
    session = open_session(candidate.path, threads=threads)
    return _Runner(lambda feeds: session.run(None, dict(feeds))[0])


def _tflite_runner(candidate: _Candidate, threads: int) -> _Runner:
    """Float in, float out through LiteRT, quantized with the file's own parameters, as the
    agent serves the file (fleet/modelopt/litert_session.py)."""
    session = open_litert(candidate.path, threads=threads)

    def one(feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        # A single-input model: the data's one array goes to the file's one input.
        (array,) = feeds.values()
        return session.run(array)

    return _Runner(one)


def _machine() -> dict[str, str]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": str(os.cpu_count()),
        "python": platform.python_version(),
        "onnxruntime": runtime_version(),
    }


class _Steps:
    """Progress display for long steps; silent when there is no rich Progress."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress

    @contextmanager
    def step(self, description: str) -> Iterator[None]:
        task = self._add(description, total=None)
        yield
        self._finish(task, description)

    @contextmanager
    def bar(self, description: str, *, total: int) -> Iterator[Callable[[], None]]:
        task = self._add(description, total=total)

        def advance() -> None:
            if self._progress is not None and task is not None:
                self._progress.advance(task)

        yield advance
        self._finish(task, description)

    def _add(self, description: str, *, total: int | None) -> TaskID | None:
        if self._progress is None:
            return None
        return self._progress.add_task(description, total=total)

    def _finish(self, task: TaskID | None, description: str) -> None:
        if self._progress is not None and task is not None:
            self._progress.update(task, description=f"{description}: done", total=1, completed=1)
