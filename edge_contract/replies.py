"""Typed models of the device's command replies (``fleet/<id>/cmd/<name>`` answered on the
request's response topic, or ``fleet/<id>/reply``), and the state blocks they share with
telemetry: the health snapshot, the link state and the refused-message counts.

The agent builds these and serialises them with ``CommandReply.body``; a client (the
controller, a test, an operator's script) validates a reply with
``payloads.decode_model(PingReply, payload)`` and a bad one is refused with reason ``schema``
naming the field. Replies are strict (unknown fields refused): each command's fields are
listed in docs/mqtt-api.md, "Commands". The wire form is what the agent wrote before these
models existed: ``ok`` and ``command`` first, the command's fields, then ``device_id`` and
``ts``; ``command`` and ``error`` are absent rather than null when they do not apply. Pure:
no IO.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    SerializerFunctionWrapHandler,
    StringConstraints,
    model_serializer,
)

from edge_contract.messages import Count, DeviceId, Key, Text, Timestamp

CommandName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
# An error names the refused input (an excerpt of it) and every field at fault.
ErrorText = Annotated[str, StringConstraints(max_length=64 * 1024)]
Condition = Literal["ok", "degraded", "failed"]
# The envelope fields the agent writes after the command's own (as it always has).
_LAST = ("device_id", "ts")
# Absent, not null, when they do not apply: an answered command has no error, a refused
# message may have no command.
_OMITTED_IF_NONE = ("command", "error")


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class SubsystemCondition(_Strict):
    """One subsystem's health: its status and why (empty when ``ok``)."""

    status: Condition
    reason: ErrorText  # may quote every reading that failed


class HealthSnapshot(_Strict):
    """``health`` in telemetry and in the ``health`` reply: the worst status and each one."""

    status: Condition
    subsystems: dict[Key, SubsystemCondition] = Field(max_length=64)


class LinkState(_Strict):
    """``link``: the MQTT link now, and its outages since the agent started."""

    connected: bool
    outages: Count
    last_outage_s: Annotated[float, Field(ge=0.0)] | None


class RejectedCounts(_Strict):
    """``rejected``: inbound messages the agent refused since it started, by reason code."""

    total: Count
    by_reason: dict[Key, Count] = Field(max_length=256)


class QueueCounts(_Strict):
    """``queue`` in the ``health`` reply (telemetry's has more: see ``TelemetryMessage``)."""

    depth: Count
    bytes: Count
    dropped_total: Count


class CaptureStats(_Strict):
    """The low-confidence capture buffer's counters (``capture`` list, telemetry)."""

    count: Count
    bytes: Count
    max_bytes: Count
    dropped_queue_full: Count
    evicted: Count
    write_errors: Count


class CommandReply(_Strict):
    """The envelope of every reply; a refused or failed command is this with ``ok: false``.

    The agent builds a command's reply without ``device_id`` and ``ts`` and its dispatcher
    stamps them (``stamped``); every reply on the wire carries both.
    """

    ok: bool = True
    command: CommandName | None = None
    error: ErrorText | None = None
    device_id: DeviceId | None = None
    ts: Timestamp | None = None

    @model_serializer(mode="wrap")
    def _wire_order(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        body: dict[str, object] = handler(self)
        for key in _OMITTED_IF_NONE:
            if body.get(key, 0) is None:
                del body[key]
        for key in _LAST:
            if key in body:
                body[key] = body.pop(key)
        return body

    def stamped(self, device_id: str, ts: str) -> CommandReply:
        """This reply with the device and the time filled in where it names none."""
        return self.model_copy(
            update={"device_id": self.device_id or device_id, "ts": self.ts or ts}
        )

    def body(self) -> dict[str, object]:
        """The JSON-ready object the agent publishes."""
        return self.model_dump(mode="json")


class PingReply(CommandReply):
    """``ping``."""

    pong: bool


class HealthReply(CommandReply):
    """``health``: the same blocks as telemetry, read on demand."""

    health: HealthSnapshot
    queue: QueueCounts
    link: LinkState
    rejected: RejectedCounts


class CaptureListReply(CommandReply):
    """``capture`` with ``{"action": "list"}``."""

    count: Count
    stats: CaptureStats


class CaptureClearReply(CommandReply):
    """``capture`` with ``{"action": "clear"}``: how many captured inputs were removed."""

    cleared: Count


class CaptureUploadReply(CommandReply):
    """``capture`` with ``{"action": "upload"}``: how many were sent (and removed)."""

    uploaded: Count


class ConfigGetReply(CommandReply):
    """``config-get``: the effective config (file and environment), secrets masked."""

    config: dict[Key, JsonValue] = Field(max_length=256)
    path: Text | None  # the config file the agent was started with (None: defaults and env)
    pending: bool  # a config-set not yet confirmed by a connection after the restart


class ConfigSetReply(CommandReply):
    """``config-set``: the patch was valid and written; the agent restarts to apply it."""

    path: Text
    previous: Text  # the file it replaced, kept for the automatic rollback
    restarting: bool


class LogsReply(CommandReply):
    """``logs``: the newest lines of the agent's own log, oldest first."""

    lines: list[Annotated[str, StringConstraints(max_length=4096)]] = Field(max_length=1000)


class RestartReply(CommandReply):
    """``restart``: the agent stops gracefully once this reply is sent, then starts again."""

    restarting: bool


COMMAND_REPLIES: dict[str, tuple[type[CommandReply], ...]] = {
    "ping": (PingReply,),
    "health": (HealthReply,),
    "health-check": (HealthReply,),
    "config-get": (ConfigGetReply,),
    "config-set": (ConfigSetReply,),
    "logs": (LogsReply,),
    "restart": (RestartReply,),
    "capture": (CaptureListReply, CaptureClearReply, CaptureUploadReply),
}


class CapturedInput(_Strict):
    """``fleet/<id>/capture``: one low-confidence input, sent by ``capture`` ``upload``."""

    model: Key
    version: Key
    prediction_id: Key
    label: Text
    confidence: Annotated[float, Field(ge=0.0, le=1.0)]
    ts: Annotated[float, Field(ge=0.0)]  # Unix time of the prediction
    inputs_npz_b64: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]*={0,2}$")]
