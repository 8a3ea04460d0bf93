"""The use cases' replies (``fleet.app.usecases``), as typed records.

Each is a frozen dataclass of plain values and the store's typed rows (``fleet.records``);
``to_json`` turns one into the JSON object the RPC front end sends, field for field what the
controller has always answered (the CLI and the tests read those replies).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from fleet.records import DeviceDetail, DeviceSummary, Operator, StoredDeadLetter

# A message a use case hands back for the front end to publish: (topic, payload).
Publish = tuple[str, bytes]


@dataclass(frozen=True)
class DevicesReply:
    devices: list[DeviceSummary]


@dataclass(frozen=True)
class DeviceReply:
    device: DeviceDetail


@dataclass(frozen=True)
class Rejected:
    total: int
    by_reason: dict[str, int]


@dataclass(frozen=True)
class StatusReply:
    """What was refused since the start, and the newest dead letters."""

    rejected: Rejected
    dead_letters: list[StoredDeadLetter]


@dataclass(frozen=True)
class OperatorsReply:
    operators: list[Operator]


@dataclass(frozen=True)
class Skipped:
    device_id: str
    reason: str


@dataclass(frozen=True)
class DeployReply:
    """The devices a release is now desired on, and those ``--all`` left out and why."""

    model: str
    version: str
    target: str
    devices: list[str]
    skipped: list[Skipped]


@dataclass(frozen=True)
class RollbackReply:
    device_id: str
    model: str
    version: str


@dataclass(frozen=True)
class AcceptReply:
    device_id: str
    admission: str
    changed: bool


@dataclass(frozen=True)
class OperatorAddedReply:
    name: str
    key_id: str


@dataclass(frozen=True)
class OperatorRemovedReply:
    name: str
    removed: bool


Reply = (
    DevicesReply
    | DeviceReply
    | StatusReply
    | OperatorsReply
    | DeployReply
    | RollbackReply
    | AcceptReply
    | OperatorAddedReply
    | OperatorRemovedReply
)


def to_json(reply: Reply) -> dict[str, Any]:
    """The reply as the JSON object sent on the wire (nested records included)."""
    return asdict(reply)
