"""Pipelines' bridge to a loaded model: features in, a ``Classification`` out.

Pre-processing turns the pipeline's flat list of scaled readings into the model's single input
(batch of one, reshaped to the input's shape); post-processing takes the single output as
class scores: the arg-max is the label (named by the card's labels), its score the
confidence, and the ``top_k`` best classes are kept for the results sink.
"""

from __future__ import annotations

import math

import numpy as np

from agent.errors import InvalidInputError, ModelSignatureError
from agent.inference.registry import ModelRegistry
from agent.pipelines.pipeline import Classification
from edge_contract.card import ModelCard


class RegistryClassifier:
    """``Classify`` for a pipeline whose model is served by the registry."""

    def __init__(self, registry: ModelRegistry, model: str, *, top_k: int = 1) -> None:
        self._registry = registry
        self._model = model
        self._top_k = top_k

    async def __call__(self, features: list[float]) -> Classification:
        card = self._registry.card(self._model)
        feeds = {card.inputs[0].name: to_input(card, features)}
        prediction = await self._registry.predict(self._model, feeds)
        scores = prediction.outputs[card.outputs[0].name][0].reshape(-1)
        return top_classes(card, scores, self._top_k, prediction.ids[0], prediction.version)


def check_classifier(card: ModelCard) -> None:
    """A pipeline needs a classifier with one input and one output of class scores."""
    if card.task != "classification" or len(card.inputs) != 1 or len(card.outputs) != 1:
        raise ModelSignatureError(
            f"a pipeline needs a classifier with one input and one output, got task "
            f"{card.task!r} with {len(card.inputs)} inputs and {len(card.outputs)} outputs",
            model=card.name,
        )


def to_input(card: ModelCard, features: list[float]) -> np.ndarray:
    """A batch of one shaped like the model's input; the feature count must fit exactly."""
    spec = card.inputs[0]
    inner = tuple(1 if dim == -1 else dim for dim in spec.shape[1:])
    if len(features) != math.prod(inner):
        raise InvalidInputError(
            f"input {spec.name!r} takes {math.prod(inner)} values per example "
            f"(shape {list(spec.shape)}), the pipeline gives {len(features)}",
            model=card.name,
        )
    return np.asarray(features, dtype=np.float32).reshape((1, *inner))


def top_classes(
    card: ModelCard, scores: np.ndarray, top_k: int, prediction_id: str, version: str
) -> Classification:
    """The best ``top_k`` classes of one row of scores, named by the card's labels."""
    order = np.argsort(scores)[::-1][:top_k]
    labels = card.labels or ()
    top = tuple(
        (labels[i] if i < len(labels) else str(i), float(scores[i])) for i in map(int, order)
    )
    return Classification(
        top[0][0], top[0][1], top, model=card.name, version=version, prediction_id=prediction_id
    )
