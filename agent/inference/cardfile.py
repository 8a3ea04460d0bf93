"""Reading a model card file on the device: the contract's schema, the agent's errors.

The card's schema and parser are the wire contract's (``edge_contract.card``); this module
adds the one read from disk and reports a bad card as a ``ModelLoadError``, the error every
model-loading path of the agent already handles.
"""

from __future__ import annotations

from pathlib import Path

from agent.errors import ModelLoadError
from edge_contract.card import ModelCard, parse_card
from edge_contract.errors import CardError


def load_card(path: Path) -> ModelCard:
    """Read and validate the card at ``path``."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read model card ({exc.strerror})", path=str(path)) from exc
    try:
        return parse_card(text, source=str(path))
    except CardError as exc:
        raise ModelLoadError(exc.problem, path=exc.source) from exc
