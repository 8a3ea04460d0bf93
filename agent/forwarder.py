"""Moves queued messages from the outbox to the broker, oldest first, and deletes them on PUBACK.

``DiskOutbox`` runs every outbox call on one dedicated worker thread, so SQLite's fsyncs never
block the event loop. ``Forwarder`` keeps at most ``link.window`` messages awaiting PUBACK.

Ordering and duplicates: rows are handed to the link in id order. Rows in flight when the
link drops are resent by the link itself on reconnect (paho keeps them), so the forwarder
never hands them over twice in one process; it continues after the last id it handed over.
After an agent restart, rows not yet acknowledged are sent again: at-least-once, and the
only case where a ``seq`` can arrive twice.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import Callable
from typing import TypeVar

import structlog

from agent.errors import MqttError, NotConnectedError, PacketTooLargeError, PublishRejectedError
from agent.mqtt.link import ConnectionInfo, MqttLink
from agent.outbox import DropReport, Outbox, OutboxRow, OutboxStats

log = structlog.get_logger("agent.forwarder")
T = TypeVar("T")


class DiskOutbox:
    """Async front of ``Outbox``: every call runs on a single worker thread."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="outbox")
        self.appended = asyncio.Event()
        self.stream = outbox.stream

    async def _call(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def append(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        await self._call(lambda: self._outbox.append(topic, payload, qos=qos, retain=retain))
        self.appended.set()

    async def append_sequenced(self, topic: str, build: Callable[[int, DropReport], bytes]) -> int:
        seq = await self._call(lambda: self._outbox.append_sequenced(topic, build))
        self.appended.set()
        return seq

    async def fetch(self, *, after_id: int, limit: int) -> list[OutboxRow]:
        return await self._call(lambda: self._fetch_and_mark(after_id, limit))

    def _fetch_and_mark(self, after_id: int, limit: int) -> list[OutboxRow]:
        rows = self._outbox.fetch(after_id=after_id, limit=limit)
        self._outbox.mark_inflight(row.id for row in rows)
        return rows

    async def delete(self, ids: list[int]) -> None:
        await self._call(lambda: self._outbox.delete(ids))

    async def stats(self) -> OutboxStats:
        return await self._call(self._outbox.stats)

    async def close(self) -> None:
        await self._call(self._outbox.close)
        self._executor.shutdown(wait=True)


class Forwarder:
    """Drains the outbox through the link while it is up; see the module docstring."""

    def __init__(self, link: MqttLink, outbox: DiskOutbox, *, batch: int = 256) -> None:
        self._link = link
        self._outbox = outbox
        self._batch = batch
        self._last_handed_id = 0
        self._inflight: dict[int, asyncio.Future[None]] = {}
        self._acked: list[int] = []
        self._wake = asyncio.Event()
        self.sent = 0
        self.discarded = 0
        link.add_listener(self)

    # LinkListener
    def link_up(self, info: ConnectionInfo) -> None:
        self._wake.set()

    def link_down(self, reason: str) -> None:
        self._wake.set()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    async def run(self) -> None:
        """Forward until cancelled."""
        appended = asyncio.create_task(self._watch_appends())
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                await self._step()
        finally:
            appended.cancel()

    async def _watch_appends(self) -> None:
        while True:
            await self._outbox.appended.wait()
            self._outbox.appended.clear()
            self._wake.set()

    async def flush_acks(self) -> None:
        """Delete acknowledged rows now (also done on every step)."""
        if self._acked:
            acked, self._acked = self._acked, []
            await self._outbox.delete(acked)

    async def _step(self) -> None:
        await self.flush_acks()
        if not self._link.connected:
            return
        free = self._link.window - len(self._inflight)
        if free <= 0:
            return
        rows = await self._outbox.fetch(after_id=self._last_handed_id, limit=min(free, self._batch))
        for row in rows:
            if not self._hand_over(row):
                return
        if len(rows) == min(free, self._batch):
            self._wake.set()  # there may be more

    def _hand_over(self, row: OutboxRow) -> bool:
        try:
            future = self._link.publish(row.topic, row.payload, qos=row.qos, retain=row.retain)
        except NotConnectedError:
            return False
        except PacketTooLargeError as exc:
            # It can never be sent to this broker; keeping it would block the queue forever.
            log.error("forwarder.discarded", row_id=row.id, topic=row.topic, error=str(exc))
            self._discard(row.id)
            return True
        except MqttError as exc:
            log.warning("forwarder.publish_failed", row_id=row.id, error=str(exc))
            return False
        self._last_handed_id = row.id
        self._inflight[row.id] = future
        future.add_done_callback(functools.partial(self._on_done, row.id))
        return True

    def _on_done(self, row_id: int, future: asyncio.Future[None]) -> None:
        self._inflight.pop(row_id, None)
        if future.cancelled():
            return
        exc = future.exception()
        if isinstance(exc, PublishRejectedError):
            log.error("forwarder.rejected", row_id=row_id, topic=exc.topic, reason=exc.reason)
            self.discarded += 1
        elif exc is not None:
            log.warning("forwarder.ack_failed", row_id=row_id, error=str(exc))
            return
        else:
            self.sent += 1
        self._acked.append(row_id)
        self._wake.set()

    def _discard(self, row_id: int) -> None:
        self._last_handed_id = row_id
        self.discarded += 1
        self._acked.append(row_id)
