"""Transformer fusion before dynamic int8, on the committed tiny BERT (models/tinybert).

The tiny BERT has the architecture and the export of all-MiniLM-L6-v2 (TorchScript exporter)
at a size that loads in milliseconds: what ONNX Runtime fuses in it, it fuses in MiniLM.
Checked here: the fusions keep the outputs, the quantizer keeps the fused attention
(``QAttention``), a graph without a recognised attention is an error rather than a silently
unfused file, and ``fleet model optimize`` reports the fused fp32 beside the int8 variant
(and refuses the attention options when it would quantize statically, which cannot fuse).
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fleet.modelopt.errors import EXIT_USAGE, OptimizeError, OptionsError
from fleet.modelopt.measure import mean_cosine
from fleet.modelopt.quantize import AttentionShape, fuse_transformer, quantize_int8_dynamic
from tests.integration.harness import model_optimize

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "models" / "tinybert" / "tinybert-fp32.onnx"
DIGITS = REPO / "models" / "digits" / "digits-fp32.onnx"
DIGITS_EVAL = REPO / "models" / "digits" / "data" / "eval.npz"
DIGITS_CALIBRATION = REPO / "models" / "digits" / "data" / "calibration.npz"
SHAPE = AttentionShape(heads=4, hidden_size=32)
LAYERS, VOCAB = 2, 128


def _feeds(count: int = 8, tokens: int = 12) -> list[dict[str, np.ndarray]]:
    """Token ids with the last few positions of every other row padded out by the mask."""
    rng = np.random.default_rng(7)
    feeds = []
    for row in range(count):
        ids = rng.integers(1, VOCAB, (1, tokens), dtype=np.int64)
        mask = np.ones_like(ids)
        if row % 2:
            mask[:, -3:] = 0
        feeds.append({"input_ids": ids, "attention_mask": mask})
    return feeds


def _outputs(path: Path, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, feed)[0] for feed in feeds])


def _ops(path: Path) -> collections.Counter[str]:
    return collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)


@pytest.fixture(scope="module")
def fused(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    out = tmp_path_factory.mktemp("fusion") / "tinybert-fused.onnx"
    return out, fuse_transformer(TINY, out, SHAPE)


def test_fusion_makes_one_attention_per_layer_and_keeps_the_outputs(
    fused: tuple[Path, dict[str, int]],
) -> None:
    path, counts = fused
    assert counts["Attention"] == LAYERS
    assert _ops(path)["Attention"] == LAYERS
    assert "Softmax" in _ops(TINY)
    assert "Softmax" not in _ops(path)  # folded into the fused attention
    feeds = _feeds()
    np.testing.assert_allclose(_outputs(path, feeds), _outputs(TINY, feeds), atol=1e-4)


def test_dynamic_int8_of_the_fused_model_keeps_the_attention_fused(
    fused: tuple[Path, dict[str, int]], tmp_path: Path
) -> None:
    path, _ = fused
    int8 = quantize_int8_dynamic(path, tmp_path / "tinybert-int8.onnx")
    ops = _ops(int8)
    assert ops["QAttention"] == LAYERS
    assert ops["Attention"] == 0
    feeds = _feeds()
    reference = _outputs(TINY, feeds)
    assert mean_cosine(_outputs(int8, feeds), reference) > 0.98
    assert int8.stat().st_size < 0.6 * TINY.stat().st_size


def test_a_graph_without_attention_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    out = tmp_path / "digits-fused.onnx"
    with pytest.raises(OptimizeError, match="fused no attention") as caught:
        fuse_transformer(DIGITS, out, SHAPE)
    assert caught.value.path == str(DIGITS)
    assert not out.exists()


@pytest.mark.parametrize(("heads", "hidden"), [(0, 32), (3, 32), (4, 0)])
def test_an_impossible_attention_shape_is_an_options_error(heads: int, hidden: int) -> None:
    with pytest.raises(OptionsError, match="multiple of the heads"):
        AttentionShape(heads, hidden)


def test_optimize_command_reports_fused_fp32_beside_int8(tmp_path: Path) -> None:
    eval_data = tmp_path / "eval.npz"
    feeds = _feeds(count=16)
    np.savez(eval_data, **{name: np.concatenate([f[name] for f in feeds]) for name in feeds[0]})
    out = tmp_path / "out"
    done = model_optimize(
        TINY, "--eval", eval_data, "--out", out, "--sparsity", "0", "--runs", "10",
        "--attention-heads", "4", "--hidden-size", "32",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    record = json.loads((out / "report.json").read_text())
    assert record["quantization"] == "dynamic"
    assert record["metric"] == "cosine"
    variants = {variant["name"]: variant for variant in record["variants"]}
    assert list(variants) == ["fp32", "fp32-fused", "int8-dynamic"]
    assert variants["fp32-fused"]["quality"] == pytest.approx(1.0, abs=1e-5)
    assert variants["fp32-fused"]["note"] == (
        "fused 1 EmbedLayerNormalization, 2 Attention, 2 BiasGelu, 4 SkipLayerNormalization"
    )
    assert variants["int8-dynamic"]["quality"] > 0.98
    assert _ops(Path(str(variants["int8-dynamic"]["path"])))["QAttention"] == LAYERS


def test_optimize_command_wants_both_attention_options(tmp_path: Path) -> None:
    eval_data, out = tmp_path / "x.npz", tmp_path / "out"
    done = model_optimize(TINY, "--eval", eval_data, "--out", out, "--attention-heads", "4")
    assert done.returncode != 0
    assert "--attention-heads and --hidden-size go together" in done.stderr
    assert "Traceback" not in done.stderr


def test_optimize_command_refuses_attention_options_when_auto_picks_static(
    tmp_path: Path,
) -> None:
    """Float inputs and labelled data make ``--mode auto`` static, which cannot fuse."""
    out = tmp_path / "out"
    done = model_optimize(
        DIGITS, "--eval", DIGITS_EVAL, "--calibration", DIGITS_CALIBRATION, "--out", out,
        "--attention-heads", "4", "--hidden-size", "32",
    )  # fmt: skip
    assert done.returncode == EXIT_USAGE
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "--mode auto chose static" in line
    assert not out.exists()
