"""Build the tiny BERT that the transformer-fusion tests run on: 2 layers, 4 heads, hidden 32.

Run from the repository root with the heavy build environment (offline; a few seconds):

    .venv-models/bin/python models/tinybert/build.py

Random weights from a fixed seed (no download, nothing to learn: the tests compare the fused
and quantized files with this one), the same architecture as all-MiniLM-L6-v2 at a size that
loads in milliseconds, exported the same way (TorchScript, ``models/minilm/build.py``), so
ONNX Runtime's fusions find the same patterns. The output, ``tinybert-fp32.onnx`` (about
0.2 MB), is committed: tests need no PyTorch. Inputs ``input_ids`` and ``attention_mask``
int64 [batch, sequence]; output ``last_hidden_state`` float32 [batch, sequence, 32].
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch
from transformers import BertConfig, BertModel

OUT = Path(__file__).resolve().parent / "tinybert-fp32.onnx"
HEADS, HIDDEN = 4, 32
INPUTS, OUTPUT = ("input_ids", "attention_mask"), "last_hidden_state"
VOCAB, MAX_TOKENS = 128, 64


class Encoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        config = BertConfig(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=HEADS,
            intermediate_size=4 * HIDDEN,
            max_position_embeddings=MAX_TOKENS,
            attn_implementation="eager",
        )
        self.bert = BertModel(config, add_pooling_layer=False).eval()

    def forward(self, input_ids, attention_mask):
        return self.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=torch.zeros_like(input_ids),
        ).last_hidden_state


def main() -> None:
    torch.manual_seed(0)
    module = Encoder().eval()
    ids = torch.randint(1, VOCAB, (2, 9))
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUTS}
    with torch.no_grad():
        torch.onnx.export(
            module,
            (ids, torch.ones_like(ids)),
            str(OUT),
            input_names=list(INPUTS),
            output_names=[OUTPUT],
            opset_version=17,
            dynamic_axes=axes | {OUTPUT: {0: "batch", 1: "sequence"}},
            dynamo=False,
        )
    onnx.checker.check_model(onnx.load(str(OUT)), full_check=True)
    print(f"{OUT.relative_to(Path.cwd())}: {OUT.stat().st_size / 1e3:.1f} kB")


if __name__ == "__main__":
    main()
