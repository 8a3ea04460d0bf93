"""The fleet's topic scheme: the only place that builds or parses a topic string.

Pure (no IO, no paho), shared by the agent and the fleet controller. Per device::

    fleet/<device_id>/status          retained presence (online / offline via the will)
    fleet/<device_id>/telemetry       periodic measurements, QoS 1
    fleet/<device_id>/events          state changes, QoS 1
    fleet/<device_id>/cmd/<name>      controller -> device request (v5 response topic)
    fleet/<device_id>/reply           device -> controller responses
    fleet/<device_id>/desired         retained, controller -> device
    fleet/<device_id>/reported        retained, device -> controller
    fleet/<device_id>/results         pipeline results, device -> anyone, QoS 1
    fleet/<device_id>/input/<name>    inputs for the pipeline <name> (its MQTT source)
    fleet/<device_id>/capture         low-confidence inputs uploaded on command, QoS 1
    fleet/<device_id>/fetch           device -> controller: repository file requests (v5)
    fleet/<device_id>/file            controller -> device: repository file chunks (replies)

The controller answers the CLI on ``fleet-controller/rpc/<method>``. ``topic_for`` and
``parse`` are inverses; a topic that does not fit raises ``TopicError``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from edge_contract.errors import TopicError

ROOT = "fleet"
CONTROLLER_ROOT = "fleet-controller"
DEVICE_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_COMMAND_NAME_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,63}")


class Channel(StrEnum):
    """The per-device channels of the scheme."""

    STATUS = "status"
    TELEMETRY = "telemetry"
    EVENTS = "events"
    CMD = "cmd"
    REPLY = "reply"
    DESIRED = "desired"
    REPORTED = "reported"
    RESULTS = "results"
    INPUT = "input"
    CAPTURE = "capture"
    FETCH = "fetch"
    FILE = "file"


# Channels whose topics carry one more level: the command or pipeline name.
_NAMED_CHANNELS = frozenset({Channel.CMD, Channel.INPUT})


@dataclass(frozen=True)
class Delivery:
    """How messages on a channel are sent."""

    qos: int
    retain: bool


DELIVERY: dict[Channel, Delivery] = {
    Channel.STATUS: Delivery(qos=1, retain=True),
    Channel.TELEMETRY: Delivery(qos=1, retain=False),
    Channel.EVENTS: Delivery(qos=1, retain=False),
    Channel.CMD: Delivery(qos=1, retain=False),
    Channel.REPLY: Delivery(qos=1, retain=False),
    Channel.DESIRED: Delivery(qos=1, retain=True),
    Channel.REPORTED: Delivery(qos=1, retain=True),
    Channel.RESULTS: Delivery(qos=1, retain=False),
    Channel.INPUT: Delivery(qos=1, retain=False),
    Channel.CAPTURE: Delivery(qos=1, retain=False),
    Channel.FETCH: Delivery(qos=1, retain=False),
    Channel.FILE: Delivery(qos=1, retain=False),
}


@dataclass(frozen=True)
class DeviceTopic:
    """A parsed per-device topic; ``name`` is set for ``cmd/<name>`` and ``input/<name>``."""

    device_id: str
    channel: Channel
    name: str | None = None


def validate_device_id(device_id: str) -> str:
    """Return ``device_id`` unchanged, or raise ``TopicError`` if it breaks the id rule."""
    if not DEVICE_ID_PATTERN.fullmatch(device_id):
        raise TopicError(f"device id must match {DEVICE_ID_PATTERN.pattern}", topic=device_id)
    return device_id


def topic_for(device_id: str, channel: Channel, name: str | None = None) -> str:
    """Build the topic of ``channel`` for ``device_id`` (``name`` for cmd and input only)."""
    validate_device_id(device_id)
    if channel in _NAMED_CHANNELS:
        if name is None or not _COMMAND_NAME_PATTERN.fullmatch(name):
            raise TopicError(
                f"{channel.value} topics need a name matching [a-z][a-z0-9_-]*", topic=str(name)
            )
        return f"{ROOT}/{device_id}/{channel.value}/{name}"
    if name is not None:
        raise TopicError(f"channel {channel.value} takes no name", topic=name)
    return f"{ROOT}/{device_id}/{channel.value}"


def parse(topic: str) -> DeviceTopic:
    """Parse a per-device topic; the inverse of ``topic_for``."""
    parts = topic.split("/")
    if len(parts) < 3 or parts[0] != ROOT:
        raise TopicError("not a fleet device topic", topic=topic)
    device_id = parts[1]
    if not DEVICE_ID_PATTERN.fullmatch(device_id):
        raise TopicError("unknown or malformed device id in topic", topic=topic)
    try:
        channel = Channel(parts[2])
    except ValueError:
        raise TopicError("unknown channel in topic", topic=topic) from None
    if channel in _NAMED_CHANNELS:
        if len(parts) != 4 or not _COMMAND_NAME_PATTERN.fullmatch(parts[3]):
            raise TopicError(f"malformed {channel.value} topic", topic=topic)
        return DeviceTopic(device_id, channel, parts[3])
    if len(parts) != 3:
        raise TopicError("unexpected levels after the channel", topic=topic)
    return DeviceTopic(device_id, channel)


def all_devices(channel: Channel) -> str:
    """Subscription filter for ``channel`` of every device."""
    suffix = "/+" if channel in _NAMED_CHANNELS else ""
    return f"{ROOT}/+/{channel.value}{suffix}"


def device_commands(device_id: str) -> str:
    """Subscription filter for every command addressed to ``device_id``."""
    return f"{ROOT}/{validate_device_id(device_id)}/{Channel.CMD.value}/+"


def device_inputs(device_id: str) -> str:
    """Subscription filter for the inputs of every MQTT-sourced pipeline of ``device_id``."""
    return f"{ROOT}/{validate_device_id(device_id)}/{Channel.INPUT.value}/+"


def controller_rpc(method: str) -> str:
    """Topic on which the controller answers CLI requests for ``method``."""
    if not _COMMAND_NAME_PATTERN.fullmatch(method):
        raise TopicError("rpc method must match [a-z][a-z0-9_-]*", topic=method)
    return f"{CONTROLLER_ROOT}/rpc/{method}"


def controller_rpc_filter() -> str:
    return f"{CONTROLLER_ROOT}/rpc/+"


def parse_controller_rpc(topic: str) -> str:
    """Return the method of a controller rpc topic."""
    parts = topic.split("/")
    if len(parts) != 3 or parts[:2] != [CONTROLLER_ROOT, "rpc"]:
        raise TopicError("not a controller rpc topic", topic=topic)
    if not _COMMAND_NAME_PATTERN.fullmatch(parts[2]):
        raise TopicError("malformed rpc method", topic=topic)
    return parts[2]


def reply_inbox(client_id: str) -> str:
    """A private response topic for a short-lived requester (CLI invocation)."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", client_id)
    return f"{CONTROLLER_ROOT}/inbox/{safe}"
