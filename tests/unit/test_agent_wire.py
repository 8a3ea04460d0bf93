"""What the agent's own parts build is what the wire contract accepts: the status message, the
``health`` reply's blocks and a captured input, each through the decoder a client uses. Pure:
no broker, no processes (a dispatcher on a recording link).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

import pytest

from agent.control.commands import CommandDispatcher, NoArguments
from agent.control.inbound import InboundRejections
from agent.control.presence import Presence
from agent.telemetry.subsystem_health import HealthMonitor, Status
from edge_contract import payloads
from edge_contract.errors import PayloadError
from edge_contract.messages import StatusMessage, decode_device_message
from edge_contract.replies import (
    CommandReply,
    HealthReply,
    HealthSnapshot,
    LinkState,
    QueueCounts,
    RejectedCounts,
)
from edge_contract.topics import Channel
from edge_runtime.mqtt.base import InboundMessage
from edge_runtime.mqtt.link import MqttLink


class _Link:
    """Records what the dispatcher publishes."""

    def __init__(self) -> None:
        self.published: list[bytes] = []

    def publish(self, topic: str, payload: bytes, **_: Any) -> asyncio.Future[None]:
        self.published.append(payload)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def test_the_status_the_agent_builds_is_a_valid_status_message() -> None:
    presence = Presence("pi-01")
    presence.models = {"digits": "2"}

    online, _ = decode_device_message(Channel.STATUS, "pi-01", presence.payload("online"))
    offline, _ = decode_device_message(
        Channel.STATUS, "pi-01", presence.payload("offline", reason="connection lost")
    )

    assert isinstance(online, StatusMessage) and isinstance(offline, StatusMessage)
    assert (online.state, online.models, online.reason) == ("online", {"digits": "2"}, None)
    assert "reason" not in json.loads(presence.payload("online"))
    assert (offline.state, offline.reason) == ("offline", "connection lost")
    assert (online.hardware_id, online.tags) == (None, {})


def test_the_status_carries_the_hardware_id_and_static_tags() -> None:
    presence = Presence("pi-01", "pi4", {"site": "lab"})

    online, body = decode_device_message(Channel.STATUS, "pi-01", presence.payload("online"))

    assert isinstance(online, StatusMessage)
    assert (online.hardware_id, online.tags) == ("pi4", {"site": "lab"})
    assert (body["hardware_id"], body["tags"]) == ("pi4", {"site": "lab"})
    bad = json.loads(presence.payload("online")) | {"tags": {"Site": "lab"}}
    with pytest.raises(PayloadError) as refused:
        decode_device_message(Channel.STATUS, "pi-01", json.dumps(bad).encode())
    assert refused.value.reason == "schema" and "tags" in str(refused.value)


def test_the_health_reply_the_dispatcher_sends_validates_as_a_health_reply() -> None:
    """The agent's own snapshots (health monitor, rejection counts) fit the reply's blocks."""
    health = HealthMonitor()
    health.update("mqtt", Status.DEGRADED, "disconnected")
    # A telemetry reason quotes every reading that failed: longer than a field's 256 chars.
    health.update("telemetry", Status.DEGRADED, "; ".join(["disk: OSError: gone"] * 40))
    rejections = InboundRejections()
    rejections.reject(InboundMessage("fleet/pi-01/cmd/x", b"{", qos=1, retain=False), "x", "y")
    link = _Link()
    dispatcher = CommandDispatcher("pi-01", cast(MqttLink, link), rejections)

    async def report(_: NoArguments) -> CommandReply:
        return HealthReply(
            health=HealthSnapshot.model_validate(health.snapshot()),
            queue=QueueCounts(depth=0, bytes=0, dropped_total=0),
            link=LinkState(connected=False, outages=1, last_outage_s=None),
            rejected=RejectedCounts.model_validate(rejections.snapshot()),
        )

    dispatcher.register("health", report, NoArguments)
    message = InboundMessage("fleet/pi-01/cmd/health", b"", qos=1, retain=False)
    asyncio.run(dispatcher.dispatch(message))

    reply = payloads.decode_model(HealthReply, link.published[0])
    assert (reply.ok, reply.command, reply.device_id) == (True, "health", "pi-01")
    assert reply.health.subsystems["mqtt"].reason == "disconnected"
    assert reply.rejected.by_reason == {"x": 1}
