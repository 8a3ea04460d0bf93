"""docs/mqtt-api.md against the wire contract: every field a payload model declares is named in
the document's section for that message, so a field added to a model without its doc fails.

A field counts as named when it appears in the section as a code span (`` `seq` ``, or a word
inside one, as in `` `{status: ok}` ``) or as a JSON key (``"seq":``, in an example). Nested
models (``TelemetryMessage.queue`` is a ``QueueReading``) are walked too. Pure: reads files.
"""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from edge_contract import fetchcodec
from edge_contract.controller import RPC_REPLIES, Refusal
from edge_contract.desired import DesiredState
from edge_contract.messages import (
    MODELS,
    EventMessage,
    ReportedMessage,
    StatusMessage,
    TelemetryMessage,
)
from edge_contract.replies import COMMAND_REPLIES, CapturedInput, CommandReply

DOC = Path(__file__).resolve().parents[2] / "docs" / "mqtt-api.md"

# Each payload model of edge_contract: the heading (##) of its section in docs/mqtt-api.md.
SECTIONS: dict[type[BaseModel], str] = {
    StatusMessage: "Status",
    TelemetryMessage: "Telemetry",
    EventMessage: "Events",
    ReportedMessage: "Reported state",
    DesiredState: "Desired state",
    CommandReply: "Commands",
    **{reply: "Commands" for replies in COMMAND_REPLIES.values() for reply in replies},
    CapturedInput: "Captured inputs",
    fetchcodec.FetchRequest: "Repository files",
    # The controller's answers to the CLI (each nests its rows: DeviceSummary, DeviceDetail...).
    **dict.fromkeys([*RPC_REPLIES.values(), Refusal], "Controller RPC"),
}


def _section(title: str) -> str:
    """The text under ``## title`` up to the next ``## `` heading (its ### parts included)."""
    text = DOC.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert match is not None, f"docs/mqtt-api.md has no section '## {title}'"
    return match.group(1)


def _named(section: str) -> set[str]:
    """The words in the section's code spans, and the JSON keys in its text and examples."""
    prose = re.sub(r"^```.*?^```", "", section, flags=re.M | re.S)  # fences would pair wrongly
    spans = re.findall(r"`([^`]+)`", prose)
    words = {word for span in spans for word in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", span)}
    return words | set(re.findall(r'"([A-Za-z_][A-Za-z0-9_]*)"\s*:', section))


def _nested_models(annotation: object) -> list[type[BaseModel]]:
    """The pydantic models inside a field's type (``X | None``, ``dict[str, X]``, ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found += _nested_models(arg)
    return found


def _fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str]]:
    """(dotted path, field name) of every field of ``model`` and of the models it nests."""
    fields: list[tuple[str, str]] = []
    for name, info in model.model_fields.items():
        fields.append((f"{prefix}{name}", name))
        for nested in _nested_models(info.annotation):
            fields += _fields(nested, prefix=f"{prefix}{name}.")
    return fields


def test_every_device_message_model_has_a_section() -> None:
    """A new device message (a channel in ``MODELS``) needs its section here and in the doc."""
    assert set(MODELS.values()) <= set(SECTIONS)


def test_every_command_reply_model_has_a_section() -> None:
    """A new command's reply model (in ``COMMAND_REPLIES``) is checked against "Commands"."""
    assert {reply for replies in COMMAND_REPLIES.values() for reply in replies} <= set(SECTIONS)


@pytest.mark.parametrize("model", list(SECTIONS), ids=lambda model: model.__name__)
def test_every_field_of_the_model_is_named_in_its_section(model: type[BaseModel]) -> None:
    named = _named(_section(SECTIONS[model]))

    missing = [path for path, name in _fields(model) if name not in named]

    assert missing == [], f"docs/mqtt-api.md '## {SECTIONS[model]}' does not name {missing}"


def test_the_repository_file_exchange_keys_are_named() -> None:
    """The fetch request's keys and the reply header's, as the codec writes them."""
    request = json.loads(fetchcodec.encode_request("metadata/root.json", 0, 1))
    reply = fetchcodec.encode_reply(200, b"x", 1, 0, correlation=b"\x01")
    header = json.loads(reply[2 : 2 + int.from_bytes(reply[:2], "big")])
    named = _named(_section("Repository files"))

    assert sorted(set(request) | set(header)) == sorted((set(request) | set(header)) & named)


def test_the_check_can_fail() -> None:
    """A field the doc does not name is reported (the matcher is not vacuous)."""

    class Probe(BaseModel):
        seq: int
        not_in_the_doc_at_all: int

    named = _named(_section("Telemetry"))
    assert [name for _, name in _fields(Probe) if name not in named] == ["not_in_the_doc_at_all"]


def test_nested_types_are_walked() -> None:
    paths = {path for path, _ in _fields(TelemetryMessage)}
    assert {"queue.dropped_total", "cpu.percent", "health.status"} <= paths
