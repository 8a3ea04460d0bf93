"""One error hierarchy in the agent: every exception class it defines derives from AgentError.

The classes are found in the source with ``ast`` (any class whose bases name an error or an
exception), then imported to check the hierarchy, so a new ``class X(ValueError)`` anywhere in
``agent/`` fails here. The errors that also keep a built-in base keep it, because callers
catch them by it (a board's unparseable output is a ``ValueError``, a failed tool an
``OSError``).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from agent.errors import (
    AgentError,
    BoardParseError,
    BoardReadError,
    CommandError,
    FrameError,
    InvalidInputError,
    MessageError,
    UnknownModelError,
    UnknownPredictionError,
)

REPO = Path(__file__).resolve().parents[2]


def _exception_classes() -> list[tuple[str, str]]:
    """(module, class) for every class in agent/ whose bases name an Error or an Exception."""
    found: list[tuple[str, str]] = []
    for path in sorted((REPO / "agent").rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                ast.unparse(base).endswith(("Error", "Exception")) for base in node.bases
            ):
                found.append((module, node.name))
    return found


def test_the_scan_finds_the_errors_it_is_meant_to_check() -> None:
    names = {name for _, name in _exception_classes()}
    assert {"AgentError", "CommandError", "BoardParseError", "_Refused", "_BodyBudgetFull"} <= names


@pytest.mark.parametrize(("module", "name"), _exception_classes())
def test_every_exception_the_agent_defines_is_an_agent_error(module: str, name: str) -> None:
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, AgentError), f"{module}.{name} does not derive from AgentError"


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (BoardParseError, ValueError),
        (BoardReadError, OSError),
        (FrameError, ValueError),
        (MessageError, ValueError),
        (InvalidInputError, ValueError),
        (UnknownModelError, LookupError),
        (UnknownPredictionError, LookupError),
    ],
)
def test_errors_keep_the_builtin_base_their_callers_catch(
    cls: type[AgentError], builtin: type[Exception]
) -> None:
    assert issubclass(cls, builtin)


def test_board_errors_carry_the_offending_value() -> None:
    parse = BoardParseError("not tegrastats output", "x" * 500)
    assert parse.line == "x" * 500
    assert str(parse) == f"not tegrastats output: {'x' * 120 + '...'!r}"
    read = BoardReadError(["vcgencmd", "get_throttled"], "exit status 1")
    assert read.command == ("vcgencmd", "get_throttled")
    assert str(read) == "vcgencmd get_throttled: exit status 1"


def test_a_command_error_is_an_agent_error_but_not_an_inference_error() -> None:
    # Handlers raise it to answer ok: false; the dispatcher catches it by name, and nothing
    # that catches InferenceError (the model paths) may swallow it.
    from agent.errors import InferenceError

    assert issubclass(CommandError, AgentError)
    assert not issubclass(CommandError, InferenceError)
