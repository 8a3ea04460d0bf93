"""Events on ``fleet/<device_id>/events``: state changes, queued so they survive outages.

``emit`` takes the event at once, in the call (its body, its timestamp, and the append to
the outbox it starts): an event emitted from a synchronous callback through a background
task is not lost because that task had not run yet. At shutdown ``close`` refuses anything
emitted later (logged, not scheduled on a closed outbox) and waits for every append already
started, so the agent closes the outbox only after its last event is on disk.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Hashable
from typing import Any

import structlog

from agent.uplink.forwarder import DiskOutbox
from edge_contract import payloads
from edge_contract.topics import Channel, topic_for

log = structlog.get_logger("agent.control.events")


class EventEmitter:
    """Builds event payloads and queues them in the outbox (QoS 1, never dropped silently)."""

    def __init__(self, device_id: str, outbox: DiskOutbox) -> None:
        self._device_id = device_id
        self._topic = topic_for(device_id, Channel.EVENTS)
        self._outbox = outbox
        self._pending: set[asyncio.Task[None]] = set()
        self._closed = False
        self.refused_after_close = 0

    def emit(self, event: str, **fields: Any) -> Coroutine[Any, Any, None]:
        """Queue one event now; awaiting the result waits until it is in the outbox.

        Must be called on the event loop. After ``close`` the event is logged and dropped.
        """
        body = {"device_id": self._device_id, "event": event, "ts": payloads.utc_now(), **fields}
        if self._closed:
            self.refused_after_close += 1
            log.warning("event.after_close", name=event, **fields)
            return _nothing()
        log.info("event.queued", name=event, **fields)
        task = asyncio.get_running_loop().create_task(self._append(event, payloads.encode(body)))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return _wait(task)

    async def _append(self, event: str, payload: bytes) -> None:
        try:
            await self._outbox.append(self._topic, payload)
        except Exception as exc:  # the task is nobody's to await: report here, never raise
            log.error("event.lost", name=event, error=f"{type(exc).__name__}: {exc}")

    async def close(self) -> None:
        """Refuse new events and wait until every one already emitted is in the outbox."""
        self._closed = True
        while self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)


async def _wait(task: asyncio.Task[None]) -> None:
    # Shielded: a caller cancelled while waiting does not take the event with it.
    await asyncio.shield(task)


async def _nothing() -> None:
    return None


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
