"""Events on ``fleet/<device_id>/events``: state changes, queued so they survive outages."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
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


class EventThrottle:
    """At most one event per key per ``interval_s``; the ones held back are counted.

    For events a misbehaving part can raise on every request (a model returning NaN for each
    input): the first goes out at once, the rest of the interval only adds to a count that the
    next admitted event carries, so the outbox is not flooded and nothing goes unreported.
    """

    def __init__(self, interval_s: float, *, now: Callable[[], float] = time.monotonic) -> None:
        self._interval_s = interval_s
        self._now = now
        self._last: dict[Hashable, float] = {}
        self._held: dict[Hashable, int] = {}

    def admit(self, key: Hashable) -> int | None:
        """None if this event is held back; else how many were held back before it."""
        now = self._now()
        last = self._last.get(key)
        if last is not None and now - last < self._interval_s:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)
