"""The controller store's interface: ``FleetStore``, what goes in and the typed rows out.

``fleet.store`` implements it. The rows a reply carries (``DeviceSummary``, ``DeviceDetail``,
``DesiredRow``, ``Operator``, ``StoredDeadLetter``) are the wire contract's reply models
(``edge_contract.controller``), re-exported here: the use cases hand them on as they are.
The rest are frozen dataclasses. Reads are defensive: a stored value that is not what
today's ingest writes is shown as a missing value, never an exception.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from edge_contract.controller import (
    ACCEPTED,
    PENDING,
    REVOKED,
    DesiredRow,
    DeviceDetail,
    DeviceSummary,
    JsonObject,
    Operator,
    StoredDeadLetter,
)
from edge_contract.http_api import (
    StoredEvent,
)
from edge_runtime.mqtt.rejections import DeadLetter
from fleet.operators import TrustedKey
from fleet.rollouts.model import DeviceInstall, RolloutState, Transition

__all__ = [
    "ACCEPTED",
    "PENDING",
    "REVOKED",
    "DesiredRow",
    "DeviceDetail",
    "DeviceSummary",
    "Directive",
    "FleetStore",
    "Inbound",
    "JsonObject",
    "Operator",
    "OperatorLogEntry",
    "Retention",
    "StoredDeadLetter",
    "StoredEvent",
    "TaggedDevice",
    "TelemetryRow",
    "TelemetrySample",
    "device_summary",
    "document",
]


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
    body: JsonObject
    received: float


@dataclass(frozen=True)
class DeviceDocuments:
    """A device's presence and newest documents, as ``/metrics`` reads them (parsed JSON
    objects, None where absent or unreadable)."""

    device_id: str
    state: str
    admission: str
    last_seen: float
    status: JsonObject | None
    telemetry: JsonObject | None
    reported: JsonObject | None


class FleetStore(Protocol):
    """What the controller needs from storage."""

    def ingest(self, batch: list[Inbound]) -> None: ...

    def list_devices(self, now: float | None = None) -> list[DeviceSummary]: ...

    def device_detail(self, device_id: str, *, events: int = 20) -> DeviceDetail: ...

    def telemetry_seqs(self, device_id: str) -> list[int]: ...

    def telemetry_range(
        self, device_id: str, since: float, until: float, *, limit: int
    ) -> tuple[list[TelemetryRow], bool]: ...

    def device_events(
        self, device_id: str, *, limit: int, before: int | None = None
    ) -> list[StoredEvent]: ...

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

    def revoke_device(self, device_id: str, *, operator: str, now: float) -> bool: ...

    def admission(self, device_id: str) -> str | None: ...

    def admissions(self) -> dict[str, str]: ...

    def ota_devices(self) -> set[str]: ...

    # -- tags and rollouts --

    def set_tags(self, device_id: str, tags: Mapping[str, str]) -> None: ...

    def remove_tags(self, device_id: str, keys: Iterable[str]) -> list[str]: ...

    def device_tags(self, device_id: str) -> dict[str, str]: ...

    def tagged_devices(self) -> list[TaggedDevice]: ...

    def save_rollout(
        self,
        state: RolloutState,
        transitions: Sequence[Transition],
        directives: Sequence[Directive] = (),
        sign: Callable[[Directive, int], bytes] | None = None,
    ) -> list[tuple[str, bytes]]: ...

    def rollout(self, rollout_id: str) -> RolloutState | None: ...

    def rollouts(self, *, active: bool = False, model: str | None = None) -> list[RolloutState]: ...

    def rollout_history(self, rollout_id: str) -> list[Transition]: ...

    def rollout_phase_counts(self) -> dict[str, int]: ...

    def device_documents(self, *, telemetry_for: int) -> list[DeviceDocuments]: ...

    def desired_payloads(self, model: str, device_ids: Iterable[str]) -> dict[str, bytes]: ...

    def installs(
        self, model: str, version: str, since: Mapping[str, float]
    ) -> dict[str, DeviceInstall]: ...

    def telemetry_samples(
        self, device_ids: Iterable[str], start: float, end: float
    ) -> dict[str, list[TelemetrySample]]: ...


@dataclass(frozen=True)
class TelemetryRow:
    """One stored telemetry message: the device's own ``ts`` (Unix seconds) and its body."""

    ts: float
    body: JsonObject


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
    readings = _section(telemetry, "temperatures_c").values()
    temps = [t for t in map(_number, readings) if t is not None]
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


def document(text: object) -> JsonObject | None:
    """A stored JSON object, or None for anything else (NULL, not JSON, not an object)."""
    if not isinstance(text, str | bytes) or not text:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _section(doc: JsonObject, key: str) -> JsonObject:
    value = doc.get(key)
    return value if isinstance(value, dict) else {}


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(value: object) -> int | float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


# -- rollouts (fleet.app.rollouts, fleet.rollouts_driver) ------------------------------------


@dataclass(frozen=True)
class TaggedDevice:
    """A device as a selector sees it: its merged tags, and whether it can be a target.

    ``tags``: implicit ``device=<id>`` and ``hardware=<hardware_id>`` (when its status says),
    then the tags its status reports, then the operator's (which win on the same key).
    ``operator_tags``: the operator's alone (``fleet devices tag``).
    """

    device_id: str
    tags: Mapping[str, str]
    operator_tags: Mapping[str, str]
    admission: str
    ota: bool  # it publishes a reported OTA state (OTA on)

    @property
    def target(self) -> bool:
        """Accepted with OTA on: a rollout may change it."""
        return self.admission == ACCEPTED and self.ota


@dataclass(frozen=True)
class Directive:
    """One desired state a rollout sets: ``action`` (deploy | rollback) of ``model@version``."""

    device_id: str
    model: str
    version: str
    action: str


@dataclass(frozen=True)
class TelemetrySample:
    """One stored telemetry message of a device: its time (Unix s) and its ``inference``
    block as the device sent it (None when it has none); ``fleet.rollouts_driver`` types it."""

    ts: float
    inference: JsonObject | None
