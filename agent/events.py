"""Events on ``fleet/<device_id>/events``: state changes, queued so they survive outages."""

from __future__ import annotations

from typing import Any

import structlog

from agent.forwarder import DiskOutbox
from agent.mqtt import payloads
from agent.mqtt.topics import Channel, topic_for

log = structlog.get_logger("agent.events")


class EventEmitter:
    """Builds event payloads and queues them in the outbox (QoS 1, never dropped silently)."""

    def __init__(self, device_id: str, outbox: DiskOutbox) -> None:
        self._device_id = device_id
        self._topic = topic_for(device_id, Channel.EVENTS)
        self._outbox = outbox

    async def emit(self, event: str, **fields: Any) -> None:
        body = {"device_id": self._device_id, "event": event, "ts": payloads.utc_now(), **fields}
        log.info("event.queued", name=event, **fields)
        await self._outbox.append(self._topic, payloads.encode(body))
