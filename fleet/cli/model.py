"""``fleet model``: optimize a model on this machine (``optimize``, here), and publish it
signed into the release repository (``fleet.release.cli``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fleet.cli.common import fail
from fleet.errors import FleetConfigError, FleetError
from fleet.release.cli import register_model_commands

model_app = typer.Typer(
    no_args_is_help=True, help="Models: optimization on this machine, signed publishing."
)
register_model_commands(model_app)


@model_app.command("optimize")
def model_optimize(
    model: Annotated[Path, typer.Argument(help="fp32 ONNX model to optimize")],
    eval_data: Annotated[
        Path, typer.Option("--eval", help=".npz held-out split: input arrays (or x), labels y")
    ],
    out: Annotated[Path, typer.Option("--out", help="folder for the variants and the report")],
    calibration: Annotated[
        Path | None, typer.Option("--calibration", help=".npz calibration split")
    ] = None,
    mode: Annotated[
        str, typer.Option("--mode", help="int8 quantization: auto, static or dynamic")
    ] = "auto",
    sparsity: Annotated[
        float, typer.Option("--sparsity", help="magnitude pruning sparsity, 0 to skip")
    ] = 0.5,
    tf_model: Annotated[
        Path | None,
        typer.Option("--tf-model", help="Keras file or SavedModel for the TFLite int8 variant"),
    ] = None,
    compare: Annotated[
        list[Path] | None, typer.Option("--compare", help="extra ONNX model to measure (repeat)")
    ] = None,
    runs: Annotated[int, typer.Option("--runs", help="timed single-example runs")] = 200,
    threads: Annotated[int, typer.Option("--threads", help="intra-op threads")] = 1,
    attention_heads: Annotated[
        int | None,
        typer.Option("--attention-heads", help="transformer: fuse it first (with --hidden-size)"),
    ] = None,
    hidden_size: Annotated[
        int | None, typer.Option("--hidden-size", help="transformer hidden size")
    ] = None,
) -> None:
    """Quantize and prune an ONNX model, then compare size, latency and accuracy."""
    # Checked before any work: matplotlib is imported only to write the report at the end,
    # sympy only by ONNX Runtime's transformer fusions (--attention-heads).
    later = ["matplotlib"] if attention_heads is None else ["matplotlib", "sympy"]
    for module in later:
        if importlib.util.find_spec(module) is None:
            fail(_optimize_extra_missing(module))
    try:
        from rich.markup import escape  # noqa: PLC0415
        from rich.progress import Progress  # noqa: PLC0415

        from fleet.modelopt.errors import OptionsError  # noqa: PLC0415
        from fleet.modelopt.pipeline import OptimizeOptions, optimize  # noqa: PLC0415
        from fleet.modelopt.quantize import AttentionShape  # noqa: PLC0415
        from fleet.modelopt.report import render_table  # noqa: PLC0415
    except ImportError as exc:  # numpy, onnxruntime, onnx; an ABI mismatch has no name
        fail(_optimize_extra_missing(exc.name or str(exc)))
        return
    if mode not in ("auto", "static", "dynamic"):
        fail(OptionsError(f"--mode must be auto, static or dynamic, not {mode!r}"))
    attention = None
    if (attention_heads is None) != (hidden_size is None):
        fail(OptionsError("--attention-heads and --hidden-size go together"))
    try:
        if attention_heads is not None and hidden_size is not None:
            attention = AttentionShape(attention_heads, hidden_size)
    except OptionsError as exc:
        fail(exc)
    options = OptimizeOptions(
        model=model,
        eval_data=eval_data,
        out=out,
        calibration=calibration,
        mode=mode,  # type: ignore[arg-type]  # checked above
        sparsity=sparsity,
        tf_model=tf_model,
        compare=tuple(compare or ()),
        runs=runs,
        threads=threads,
        attention=attention,
    )
    console = Console()
    try:
        with Progress(console=console, transient=True) as progress:
            report = optimize(options, progress)
    except FleetError as exc:
        fail(exc)
    console.print(render_table(report))
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {escape(note)}", highlight=False)
    console.print(f"report: {out / 'report.json'}, {out / 'report.png'}", highlight=False)


def _optimize_extra_missing(module: str) -> FleetConfigError:
    # _fail escapes the message: rich shows "[optimize]" as it is.
    return FleetConfigError(
        f"fleet model optimize needs the 'optimize' extra ({module} is not installed): "
        "pip install 'edge-fleet[optimize]'"
    )
