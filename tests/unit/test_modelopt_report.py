"""The optimization report: deltas against fp32, the JSON record, the table and the plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from fleet.modelopt.report import REPORT_VERSION, Report, VariantResult, plot_report, render_table


def _report(metric: str = "accuracy") -> Report:
    report = Report(
        model="digits-fp32.onnx",
        eval_data="eval.npz",
        metric=metric,  # type: ignore[arg-type]
        quantization="static",
        threads=1,
        runs=50,
        machine={"processor": "x86_64"},
    )
    report.variants += [
        VariantResult("fp32", "baseline", "a.onnx", 40_000, 36_000, 0.020, 0.050, 0.98),
        VariantResult("int8-static", "quantized", "b.onnx", 12_000, 9_000, 0.010, 0.040, 0.975),
        VariantResult("pruned-50", "pruned", "c.onnx", 40_000, 20_000, 0.020, 0.060, 0.95, 0.5),
    ]
    report.notes.append("TFLite full-integer variant skipped: because")
    return report


def test_deltas_are_ratios_and_differences_against_fp32() -> None:
    report = _report()
    int8 = report.deltas(report.variants[1])
    assert int8 == {
        "size_ratio": 0.3,
        "gzip_ratio": 0.25,
        "p50_ratio": 0.5,
        "p99_ratio": 0.8,
        "quality_delta": pytest.approx(-0.005),
    }
    baseline = report.deltas(report.baseline)
    assert baseline["size_ratio"] == baseline["p50_ratio"] == 1.0
    assert baseline["quality_delta"] == 0.0


def test_json_record_has_every_variant_with_its_deltas(tmp_path: Path) -> None:
    path = _report().write_json(tmp_path / "report.json")
    record = json.loads(path.read_text())
    assert record["report_version"] == REPORT_VERSION
    assert record["metric"] == "accuracy"
    assert record["threads"] == 1
    assert record["runs"] == 50
    assert [v["name"] for v in record["variants"]] == ["fp32", "int8-static", "pruned-50"]
    pruned = record["variants"][2]
    assert pruned["sparsity"] == 0.5
    assert pruned["vs_fp32"]["gzip_ratio"] == pytest.approx(20_000 / 36_000, abs=1e-4)
    assert set(pruned) == {
        "name", "kind", "path", "size_bytes", "gzip_bytes", "p50_ms", "p99_ms",
        "quality", "sparsity", "note", "vs_fp32",
    }  # fmt: skip
    assert record["notes"] == ["TFLite full-integer variant skipped: because"]


@pytest.mark.parametrize(
    ("metric", "header", "cell"), [("accuracy", "acc.", "97.50%"), ("cosine", "cosine", "0.9750")]
)
def test_table_fits_eighty_columns_and_shows_quality(metric: str, header: str, cell: str) -> None:
    console = Console(width=80, record=True)
    console.print(render_table(_report(metric)))
    text = console.export_text()
    assert "…" not in text  # nothing truncated
    assert header in text
    assert cell in text
    assert "int8-static" in text
    assert "0.30" in text  # size ratio of int8
    assert "50%" in text  # sparsity of the pruned variant


def test_plot_is_a_png(tmp_path: Path) -> None:
    path = plot_report(_report(), tmp_path / "report.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000
