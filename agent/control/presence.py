"""Presence on the retained ``fleet/<device_id>/status`` topic.

``online`` is published (retained) on every connect; the broker publishes the retained
``offline`` Last Will after ``will_delay_s`` if the agent vanishes; a clean shutdown
publishes ``offline`` itself before disconnecting, since a normal DISCONNECT discards the will.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Literal

import psutil
import structlog

import agent
from agent.loop.background import BackgroundTasks
from edge_contract import payloads
from edge_contract.messages import StatusMessage
from edge_contract.topics import DELIVERY, Channel, topic_for
from edge_runtime.errors import MqttError
from edge_runtime.mqtt.base import ConnectionInfo, Will
from edge_runtime.mqtt.link import MqttLink

log = structlog.get_logger("agent.control.presence")

State = Literal["online", "offline"]


class Presence:
    """Builds status payloads and publishes ``online`` whenever the link comes up."""

    def __init__(
        self,
        device_id: str,
        hardware_id: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        self._device_id = device_id
        self._hardware_id = hardware_id
        self._tags = dict(tags or {})
        self._topic = topic_for(device_id, Channel.STATUS)
        self._boot_time = payloads.to_iso_ts(psutil.boot_time())
        self._started_at = payloads.utc_now()
        self._link: MqttLink | None = None
        self._tasks = BackgroundTasks()
        self.models: dict[str, str] = {}

    def status(self, state: State, reason: str | None = None) -> StatusMessage:
        """The status message; ``reason`` is absent (not null) when there is none.

        Built unvalidated: the controller validates it, and a board whose clock reads 1970
        until NTP syncs must still say it is online (its ``ts`` is refused there, as before).
        """
        message = StatusMessage.model_construct(
            device_id=self._device_id,
            state=state,
            agent_version=agent.__version__,
            models=dict(self.models),
            boot_time=self._boot_time,
            started_at=self._started_at,
            ts=payloads.utc_now(),
        )
        if self._hardware_id is not None:
            message = message.model_copy(
                update={"hardware_id": self._hardware_id, "tags": dict(self._tags)}
            )
        return message if reason is None else message.model_copy(update={"reason": reason})

    def payload(self, state: State, reason: str | None = None) -> bytes:
        """The status message's bytes, as published."""
        message = self.status(state, reason)
        return payloads.encode(message.model_dump(mode="json", exclude_unset=True))

    def will(self, delay_s: int) -> Will:
        delivery = DELIVERY[Channel.STATUS]
        return Will(
            topic=self._topic,
            payload=self.payload("offline", reason="connection lost"),
            qos=delivery.qos,
            retain=delivery.retain,
            delay_s=delay_s,
        )

    def attach(self, link: MqttLink) -> None:
        self._link = link
        link.add_listener(self)

    def link_up(self, info: ConnectionInfo) -> None:
        self._tasks.spawn(self.publish("online"))

    def link_down(self, reason: str) -> None:
        pass

    async def publish(self, state: State, reason: str | None = None, timeout: float = 5.0) -> bool:
        """Publish a retained status and wait for its PUBACK; False if that was not possible."""
        if self._link is None:
            return False
        delivery = DELIVERY[Channel.STATUS]
        try:
            future = self._link.publish(
                self._topic,
                self.payload(state, reason),
                qos=delivery.qos,
                retain=delivery.retain,
            )
            async with asyncio.timeout(timeout):
                await future
        except (MqttError, TimeoutError) as exc:
            log.warning("presence.publish_failed", state=state, error=str(exc))
            return False
        return True
