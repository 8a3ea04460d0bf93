"""The optimization report: one row per variant, deltas against fp32, as JSON, table and plot.

The JSON is the record (``report.json``); the rich table is for the terminal; the PNG plots
quality (accuracy, or cosine similarity to fp32 for embedding models) against p50 latency,
with each point's area proportional to the file size.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich import box
from rich.table import Table

Metric = Literal["accuracy", "cosine"]
REPORT_VERSION = 1


@dataclass(frozen=True)
class VariantResult:
    """One model file measured on this machine."""

    name: str
    kind: Literal["baseline", "quantized", "pruned", "tflite", "compare"]
    path: str
    size_bytes: int
    gzip_bytes: int
    p50_ms: float
    p99_ms: float
    quality: float  # accuracy on the eval split, or mean cosine similarity to fp32
    sparsity: float | None = None
    note: str = ""


@dataclass
class Report:
    """Everything ``fleet model optimize`` measured, with how it measured it."""

    model: str
    eval_data: str
    metric: Metric
    quantization: str
    threads: int
    runs: int
    machine: dict[str, str] = field(default_factory=dict)
    variants: list[VariantResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def baseline(self) -> VariantResult:
        return next(v for v in self.variants if v.kind == "baseline")

    def deltas(self, variant: VariantResult) -> dict[str, float]:
        """Ratios of size and latency, and the quality difference, against the fp32 baseline."""
        base = self.baseline
        return {
            "size_ratio": round(variant.size_bytes / base.size_bytes, 4),
            "gzip_ratio": round(variant.gzip_bytes / base.gzip_bytes, 4),
            "p50_ratio": round(variant.p50_ms / base.p50_ms, 4) if base.p50_ms else 0.0,
            "p99_ratio": round(variant.p99_ms / base.p99_ms, 4) if base.p99_ms else 0.0,
            "quality_delta": round(variant.quality - base.quality, 6),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "report_version": REPORT_VERSION,
            "model": self.model,
            "eval_data": self.eval_data,
            "metric": self.metric,
            "quantization": self.quantization,
            "threads": self.threads,
            "runs": self.runs,
            "machine": self.machine,
            "variants": [{**asdict(v), "vs_fp32": self.deltas(v)} for v in self.variants],
            "notes": self.notes,
        }

    def write_json(self, path: Path) -> Path:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def _size(size: int) -> str:
    """Bytes in binary units, short enough for a narrow column: 68.0K, 86.6M."""
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f}{unit}"
    return f"{size}B"


def _signed(value: float, scale: float = 1.0, digits: int = 2) -> str:
    return f"{value * scale:+.{digits}f}"


def render_table(report: Report) -> Table:
    """The report as a rich table: sizes, latency in ms, then ratios and deltas against fp32."""
    accuracy = report.metric == "accuracy"
    table = Table(
        title=f"{report.model} on this machine, {report.threads} thread(s)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
        collapse_padding=True,  # fits 80 columns
        caption="x size, x p50: ratio to fp32; Δ: quality minus fp32's; zeros: weight sparsity",
    )
    table.add_column("variant", overflow="fold", min_width=12)  # long names fold, not numbers
    # Two-line headers keep the columns as narrow as their numbers.
    headers = ("size", "gzip\nsize", "p50\nms", "p99\nms", "acc." if accuracy else "cosine")
    for header in (*headers, "zeros", "x\nsize", "x\np50", "Δ\npt" if accuracy else "Δ"):
        table.add_column(header, justify="right", no_wrap=True)
    for variant in report.variants:
        delta = report.deltas(variant)
        if accuracy:
            shown, change = f"{variant.quality:.2%}", _signed(delta["quality_delta"], 100)
        else:
            shown, change = f"{variant.quality:.4f}", _signed(delta["quality_delta"], digits=4)
        table.add_row(
            variant.name,
            _size(variant.size_bytes),
            _size(variant.gzip_bytes),
            f"{variant.p50_ms:.3f}",
            f"{variant.p99_ms:.3f}",
            shown,
            "" if variant.sparsity is None else f"{variant.sparsity:.0%}",
            f"{delta['size_ratio']:.2f}",
            f"{delta['p50_ratio']:.2f}",
            change,
        )
    return table


def plot_report(report: Report, path: Path) -> Path:
    """Quality against p50 latency; each point's area is proportional to its file size."""
    import matplotlib  # noqa: PLC0415  # heavy: only when a report is written

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # noqa: PLC0415

    largest = max(v.size_bytes for v in report.variants)
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    for variant in report.variants:
        area = 40 + 800 * variant.size_bytes / largest
        axes.scatter(variant.p50_ms, variant.quality, s=area, alpha=0.6)
        axes.annotate(
            f"{variant.name}\n{_size(variant.size_bytes)}",
            (variant.p50_ms, variant.quality),
            textcoords="offset points",
            xytext=(8, 4),
            fontsize=8,
        )
    axes.set_xlabel(f"p50 latency, one example (ms, {report.threads} thread(s))")
    axes.set_ylabel("accuracy on eval split" if report.metric == "accuracy" else "cosine to fp32")
    axes.set_title(f"{report.model}: quality vs latency (point area ~ file size)")
    axes.grid(visible=True, alpha=0.3)
    axes.margins(x=0.25, y=0.15)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
