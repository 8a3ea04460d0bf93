"""The device selector language: parsing, its canonical text, and matching a device's tags.

``""`` or ``"*"`` selects every device. Otherwise clauses separated by ``,`` must all hold:
``key=value``, ``key!=value``, ``key=v1|v2`` (any of), ``key!=v1|v2`` (none of). A device
without the key fails ``key=v`` and passes ``key!=v``. Which tags a device has (``device=``,
``hardware=``, its reported and its operator's tags) is the controller's business, not this
module's. ``str(selector)`` is canonical (clauses and alternatives sorted, duplicates
dropped), so ``parse_selector(str(s)) == s``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from fleet.errors import SelectorError

MAX_LENGTH = 1024  # characters; RolloutSpec.selector keeps at most this
MAX_CLAUSES = 32
KEY_PATTERN = r"[a-z][a-z0-9_.-]{0,63}"
VALUE_PATTERN = r"[A-Za-z0-9_.:/@+-]{1,128}"
_KEY = re.compile(KEY_PATTERN)
_VALUE = re.compile(VALUE_PATTERN)
_CLAUSE = re.compile(r"(?P<key>[^!=]*)(?P<op>!=|=)(?P<values>.*)", re.DOTALL)


@dataclass(frozen=True, order=True)
class Clause:
    """``key=v1|v2`` (``negated``: ``key!=v1|v2``); ``values`` sorted and distinct."""

    key: str
    negated: bool
    values: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", tuple(sorted(set(self.values))))

    def matches(self, tags: Mapping[str, str]) -> bool:
        has = tags.get(self.key) in self.values
        return not has if self.negated else has

    def __str__(self) -> str:
        return f"{self.key}{'!=' if self.negated else '='}{'|'.join(self.values)}"


@dataclass(frozen=True)
class Selector:
    """All of ``clauses`` (none: every device). Kept canonical: sorted, without duplicates."""

    clauses: tuple[Clause, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "clauses", tuple(sorted(set(self.clauses), key=str)))

    def matches(self, tags: Mapping[str, str]) -> bool:
        return all(clause.matches(tags) for clause in self.clauses)

    @property
    def is_all(self) -> bool:
        return not self.clauses

    def __str__(self) -> str:
        return ",".join(str(clause) for clause in self.clauses) if self.clauses else "*"


ALL = Selector()


def parse_selector(text: str) -> Selector:
    """The selector ``text`` denotes; ``SelectorError`` naming the clause when it is not one."""
    if len(text) > MAX_LENGTH:
        raise SelectorError(text[:64] + "...", f"longer than {MAX_LENGTH} characters")
    stripped = text.strip()
    if stripped in ("", "*"):
        return ALL
    parts = stripped.split(",")
    if len(parts) > MAX_CLAUSES:
        raise SelectorError(text, f"{len(parts)} clauses, at most {MAX_CLAUSES}")
    return Selector(tuple(_clause(text, i, part.strip()) for i, part in enumerate(parts, 1)))


def _clause(text: str, index: int, part: str) -> Clause:
    match = _CLAUSE.fullmatch(part)
    if match is None:
        why = "empty" if not part else "not key=value or key!=value"
        raise SelectorError(text, f"clause {index} {part!r} is {why}", clause=part)
    key, values = match["key"].strip(), match["values"].strip().split("|")
    if not _KEY.fullmatch(key):
        reason = f"clause {index} {part!r}: key {key!r} does not match {KEY_PATTERN}"
        raise SelectorError(text, reason, clause=part)
    for value in values:
        if not _VALUE.fullmatch(value):
            reason = f"clause {index} {part!r}: value {value!r} does not match {VALUE_PATTERN}"
            raise SelectorError(text, reason, clause=part)
    return Clause(key, match["op"] == "!=", tuple(values))
