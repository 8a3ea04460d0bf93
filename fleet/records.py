"""The controller store's interface: ``FleetStore``, what goes in and the typed rows out.

``fleet.store`` implements it. The rows are frozen dataclasses: the RPC front end turns them
into the JSON replies with ``dataclasses.asdict`` (field order is the reply's key order, so
the replies stay as they were). Reads are defensive: a stored value that is not what
today's ingest writes is shown as a missing value, never an exception.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from edge_runtime.mqtt.rejections import DeadLetter
from fleet.operators import TrustedKey

ACCEPTED, PENDING = "accepted", "pending"


@dataclass(frozen=True)
class Retention:
    """How much history is kept per device."""

    max_age_s: float = 7 * 86400
    max_telemetry_rows: int = 10000
    max_event_rows: int = 1000


@dataclass(frozen=True)
class Inbound:
    """One validated message from a device, ready to store."""

    device_id: str
    kind: str  # "status" | "telemetry" | "events" | "reported"
    body: dict[str, Any]
    received: float


class FleetStore(Protocol):
    """What the controller needs from storage."""

    def ingest(self, batch: list[Inbound]) -> None: ...

    def list_devices(self, now: float | None = None) -> list[DeviceSummary]: ...

    def device_detail(self, device_id: str, *, events: int = 20) -> DeviceDetail: ...

    def telemetry_seqs(self, device_id: str) -> list[int]: ...

    def prune(self, now: float | None = None) -> int: ...

    def add_dead_letters(self, letters: list[DeadLetter]) -> None: ...

    def dead_letters(self, limit: int = 10) -> list[StoredDeadLetter]: ...

    def close(self) -> None: ...

    def next_desired(
        self, device_id: str, *, model: str, version: str, action: str, now: float
    ) -> int: ...

    # -- operators, nonces, admission --

    def add_operator(self, name: str, public_key: str, *, now: float) -> str: ...

    def remove_operator(self, name: str) -> None: ...

    def list_operators(self) -> list[Operator]: ...

    def trusted_keys(self) -> dict[str, TrustedKey]: ...

    def nonce_used(self, nonce: str) -> bool: ...

    def remember_nonce(self, nonce: str, *, expires: float, now: float) -> bool: ...

    def log_request(
        self, *, operator: str | None, method: str, outcome: str, detail: str, now: float
    ) -> None: ...

    def accept_device(self, device_id: str, *, operator: str, now: float) -> bool: ...

    def admission(self, device_id: str) -> str | None: ...

    def admissions(self) -> dict[str, str]: ...

    def ota_devices(self) -> set[str]: ...


@dataclass(frozen=True)
class DeviceSummary:
    """One line of ``fleet devices list``."""

    device_id: str
    online: bool
    state: str
    agent_version: str | None
    last_telemetry_age_s: float | None
    last_seq: int | None
    cpu_percent: int | float | None
    memory_percent: int | float | None
    temperature_c: int | float | None
    health: str | None
    queue_depth: int | float | None
    models: dict[str, Any]
    duplicates: int
    admission: str = PENDING


@dataclass(frozen=True)
class DesiredRow:
    """The desired state the controller last sent a device for one model."""

    counter: int
    model: str
    version: str
    action: str


@dataclass(frozen=True)
class DeviceDetail:
    """``fleet devices show``: the summary and the stored documents (None where absent)."""

    summary: DeviceSummary
    reported: dict[str, Any] | None
    desired: DesiredRow | None  # the newest, whatever the model
    status: dict[str, Any] | None
    telemetry: dict[str, Any] | None
    events: list[dict[str, Any] | None]


@dataclass(frozen=True)
class Operator:
    name: str
    key_id: str
    public_key: str
    added: float


@dataclass(frozen=True)
class StoredDeadLetter:
    """A refused message as kept: the first bytes of its payload, decoded leniently."""

    topic: str
    reason: str
    detail: str
    excerpt: str
    retained: bool
    received: float


@dataclass(frozen=True)
class OperatorLogEntry:
    id: int
    received: float
    operator: str | None
    method: str
    outcome: str
    detail: str


def device_summary(row: Mapping[Any, Any], now: float, admission: str) -> DeviceSummary:
    """The device-list view of one ``devices`` row; odd stored values read as missing."""
    telemetry = document(row["telemetry_json"]) or {}
    status = document(row["status_json"]) or {}
    temps = [t for t in (_section(telemetry, "temperatures_c")).values() if _is_number(t)]
    received = row["telemetry_received"]
    state = row["state"] if isinstance(row["state"], str) else None
    models = status.get("models")
    return DeviceSummary(
        device_id=row["device_id"],
        online=state == "online",
        state=state or "unknown",
        agent_version=_text(status.get("agent_version")),
        last_telemetry_age_s=round(now - received, 1) if _is_number(received) else None,
        last_seq=row["telemetry_seq"] if isinstance(row["telemetry_seq"], int) else None,
        cpu_percent=_number(_section(telemetry, "cpu").get("percent")),
        memory_percent=_number(_section(telemetry, "memory").get("used_percent")),
        temperature_c=max(temps) if temps else None,
        health=_text(_section(telemetry, "health").get("status")),
        queue_depth=_number(_section(telemetry, "queue").get("depth")),
        models=models if isinstance(models, dict) else {},
        duplicates=row["duplicates"],
        admission=admission,
    )


def document(text: object) -> dict[str, Any] | None:
    """A stored JSON object, or None for anything else (NULL, not JSON, not an object)."""
    if not isinstance(text, str | bytes) or not text:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _section(doc: dict[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key)
    return value if isinstance(value, dict) else {}


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(value: object) -> int | float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
