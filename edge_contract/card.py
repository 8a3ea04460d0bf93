"""The model card: a model's I/O contract, golden check and reference statistics.

A card is a JSON file that travels with a model file (``<model file>.card.json`` beside it,
or the path given explicitly). It says what the model takes and returns (names, dtypes,
shapes, quantization), what its labels mean, one golden input with its expected output and
tolerance (checked before a model is allowed to serve), and the statistics of its outputs on
the held-out split (the reference that drift is measured against). The signed-delivery issue
carries the same document in the TUF target's ``custom`` field.

Pure: no numpy, no runtime, no IO. Reading a card file is each side's: the agent's
``agent.inference.cardfile.load_card``, the controller's ``fleet.release.publish``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge_contract.errors import CardError

CARD_SUFFIX = ".card.json"
Runtime = Literal["onnx", "tflite"]
DType = Literal["float32", "float16", "int8", "uint8", "int32", "int64", "bool"]
Task = Literal["classification", "embedding", "regression"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Quantization(_Frozen):
    """Affine quantization of a tensor: real = scale * (q - zero_point)."""

    scale: Annotated[float, Field(gt=0, description="Real value of one quantization step.")]
    zero_point: int = Field(description="Quantized value that stands for real 0.")


class TensorSpec(_Frozen):
    """One input or output tensor of the model, as the model file declares it."""

    name: str = Field(description="Tensor name in the model file.")
    dtype: DType = Field(description="Element type in the model file (int8 when quantized).")
    shape: tuple[int, ...] = Field(description="Shape; -1 for a dimension of any size.")
    quantization: Quantization | None = Field(
        default=None, description="Present when the tensor is quantized; callers speak float."
    )

    def accepts_shape(self, shape: tuple[int, ...]) -> bool:
        """True if a tensor of ``shape`` fits this spec (-1 matches any size)."""
        return len(shape) == len(self.shape) and all(
            want in (-1, got) for want, got in zip(self.shape, shape, strict=True)
        )


class Golden(_Frozen):
    """A known input and the output the model must give for it, within ``atol``."""

    inputs: dict[str, list[object]] = Field(description="Input name to nested list (float).")
    outputs: dict[str, list[object]] = Field(description="Output name to nested list (float).")
    atol: float = Field(ge=0, description="Largest absolute difference accepted per element.")


class ReferenceStats(_Frozen):
    """Output statistics on the held-out split: the baseline of drift detection."""

    samples: int = Field(ge=1, description="Number of held-out examples these come from.")
    class_frequency: tuple[float, ...] | None = Field(
        default=None, description="Fraction of predictions per class (classifiers)."
    )
    confidence_mean: float | None = Field(default=None, description="Mean top-1 confidence.")
    confidence_std: float | None = Field(default=None, description="Std of top-1 confidence.")
    confidence_edges: tuple[float, ...] | None = Field(
        default=None, description="Bin edges of the top-1 confidence histogram."
    )
    confidence_fractions: tuple[float, ...] | None = Field(
        default=None, description="Fraction of held-out examples per confidence bin."
    )
    accuracy: float | None = Field(default=None, description="Top-1 accuracy on the split.")

    @model_validator(mode="after")
    def _bins_match(self) -> ReferenceStats:
        edges, fractions = self.confidence_edges, self.confidence_fractions
        if (edges is None) != (fractions is None):
            raise ValueError("confidence_edges and confidence_fractions come together")
        if edges is not None and fractions is not None and len(edges) != len(fractions) + 1:
            raise ValueError("confidence_edges must have one more entry than the fractions")
        return self


class ModelCard(_Frozen):
    """Everything the agent needs to know about a model besides its weights."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$", description="Model name.")
    version: str = Field(pattern=r"^[0-9A-Za-z][0-9A-Za-z_.+-]{0,63}$", description="Version.")
    runtime: Runtime = Field(description="Which backend runs the file.")
    task: Task = Field(default="classification", description="What the output means.")
    inputs: tuple[TensorSpec, ...] = Field(min_length=1, description="Input tensors.")
    outputs: tuple[TensorSpec, ...] = Field(min_length=1, description="Output tensors.")
    labels: tuple[str, ...] | None = Field(default=None, description="Class names, in order.")
    golden: Golden | None = Field(default=None, description="Known-answer check before serving.")
    reference: ReferenceStats | None = Field(default=None, description="Drift baseline.")
    description: str = Field(default="", description="Free text: data, training, variant.")

    def input(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.inputs if spec.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.outputs if spec.name == name), None)


def card_path_for(model_path: Path) -> Path:
    """Where the card of ``model_path`` lives by default: beside it, ``<file>.card.json``."""
    return model_path.with_name(model_path.name + CARD_SUFFIX)


def parse_card(text: str | bytes, *, source: str) -> ModelCard:
    """A card from JSON text; ``CardError`` naming the first problem if it is invalid."""
    try:
        return ModelCard.model_validate(json.loads(text))
    except json.JSONDecodeError as exc:
        problem = f"model card is not JSON ({exc.msg} at {exc.pos})"
        raise CardError(problem, source=source) from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise CardError(f"model card field {where}: {first['msg']}", source=source) from exc
