"""Moves queued messages from the outbox to the broker, oldest first, and deletes them on PUBACK.

``DiskOutbox`` runs every outbox call on one dedicated worker thread, so SQLite's fsyncs never
block the event loop. ``Forwarder`` keeps at most ``link.window`` messages awaiting PUBACK and
refills the window from an in-memory read-ahead of the oldest rows as each PUBACK arrives, so
the MQTT link, not the disk, sets the pace. Acknowledged rows are deleted in batches in the
background: every ``DELETE_BATCH`` rows while a backlog drains, at once when it has drained,
and otherwise ``DELETE_DELAY_S`` after the first acknowledgement of a batch. A crash before a
batch is deleted only means those rows are sent again (receivers de-duplicate by ``stream``
and ``seq``).

Ordering and duplicates: rows are handed to the link in id order. Rows in flight when the
link drops are resent by the link itself on reconnect (paho keeps them), so the forwarder
never hands them over twice in one process; it continues after the last row it handed over.
Delivery is at-least-once, so a ``seq`` can arrive twice in two cases: a row in flight when
the link drops whose PUBACK was lost with the connection (the link resends it), and, after
an agent restart, rows not yet deleted (sent again).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import deque
from collections.abc import Callable
from typing import TypeVar

import structlog

from agent.uplink.outbox import Outbox, OutboxRow, OutboxStats
from agent.uplink.outbox_thread import WorkerThread, reporting_to_loop
from edge_runtime.errors import (
    MqttError,
    NotConnectedError,
    PacketTooLargeError,
    PublishRejectedError,
)
from edge_runtime.mqtt.base import ConnectionInfo
from edge_runtime.mqtt.link import MqttLink

log = structlog.get_logger("agent.uplink.forwarder")
T = TypeVar("T")

# Deleting acknowledged rows costs a trip to the worker thread and a commit; batching them
# trades possible resends after a crash (at most this many rows, plus the in-flight window)
# for far fewer wake-ups. While a backlog drains, a few large deletes cost the event loop and
# the broker much less than many small ones competing with them for the cores (the agent
# benchmark's drain ran measurably faster this way than with a delete every 128 rows;
# docs/benchmarks.md, "Agent core: telemetry publishing and footprint").
DELETE_BATCH = 4096
DELETE_DELAY_S = 5.0
# After a backlog drains, delete at once rather than waiting out the delay.
DELETE_WHEN_DRAINED = 16


class DiskOutbox:
    """Async front of ``Outbox``: every call runs on one worker thread (``WorkerThread``).

    Each call answers the event loop with one ``call_soon_threadsafe``, and the row it
    appended (if any) is announced to listeners in the same callback. All rows are appended
    on the one worker, so listeners see them in id order, whichever coroutine appended them.
    """

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._worker = WorkerThread("outbox")
        self.stream = outbox.stream
        self._listeners: list[Callable[[OutboxRow], None]] = []
        self.last_stats = outbox.stats()

    def on_append(self, listener: Callable[[OutboxRow], None]) -> None:
        """``listener`` gets every row appended through this front, on the loop thread."""
        self._listeners.append(listener)

    async def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the worker and return its result."""
        return await self._call_appending(lambda: (None, fn()))

    async def _call_appending(self, fn: Callable[[], tuple[OutboxRow | None, T]]) -> T:
        """Run ``fn`` on the worker; it returns (row appended or None, result)."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()

        def succeed(outcome: tuple[OutboxRow | None, T]) -> None:
            row, value = outcome
            self._announce(row)  # even if the caller gave up waiting: the row is queued
            if not future.done():
                future.set_result(value)

        def fail(exc: BaseException) -> None:
            if not future.done():
                future.set_exception(exc)

        self._worker.submit(reporting_to_loop(fn, succeed, fail))
        return await future

    async def run(
        self, work: Callable[[Outbox], tuple[tuple[int, OutboxRow | None], T]]
    ) -> tuple[int, T]:
        """Run ``work(outbox)`` on the worker thread; it returns ((seq, row), extra).

        The row it appended is announced to listeners like any other append.
        """
        return await self._call_appending(lambda: self._run(work))

    def every(
        self,
        interval_s: float,
        work: Callable[[Outbox], tuple[tuple[int, OutboxRow | None], T]],
        on_result: Callable[[int, T], None],
        on_error: Callable[[BaseException], None],
    ) -> None:
        """Run ``work(outbox)`` on the worker every ``interval_s``, first now, on the worker's
        own clock (see ``agent.uplink.outbox_thread``). ``on_result(seq, extra)`` or
        ``on_error(exc)`` is called on this loop after each run; the appended row is announced
        first."""

        def ticked(outcome: tuple[OutboxRow | None, tuple[int, T]]) -> None:
            row, (seq, value) = outcome
            self._announce(row)
            on_result(seq, value)

        self._worker.every(interval_s, reporting_to_loop(lambda: self._run(work), ticked, on_error))

    def cancel_every(self) -> None:
        self._worker.cancel_every()

    def _run(
        self, work: Callable[[Outbox], tuple[tuple[int, OutboxRow | None], T]]
    ) -> tuple[OutboxRow | None, tuple[int, T]]:
        (seq, row), extra = work(self._outbox)
        self.last_stats = self._outbox.stats()
        return row, (seq, extra)

    async def append(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        await self._call_appending(lambda: self._append(topic, payload, qos, retain))

    def _append(
        self, topic: str, payload: bytes, qos: int, retain: bool
    ) -> tuple[OutboxRow | None, None]:
        row = self._outbox.append(topic, payload, qos=qos, retain=retain)
        self.last_stats = self._outbox.stats()
        return row, None

    def _announce(self, row: OutboxRow | None) -> None:
        if row is None:
            return
        for listener in self._listeners:
            listener(row)

    async def fetch(self, *, after_id: int, limit: int) -> list[OutboxRow]:
        """The next rows after ``after_id``, marked in flight."""
        return await self._call(lambda: self._fetch_and_mark(after_id, limit))

    def _fetch_and_mark(self, after_id: int, limit: int) -> list[OutboxRow]:
        rows = self._outbox.fetch(after_id=after_id, limit=limit)
        self._outbox.mark_inflight(row.id for row in rows)
        return rows

    def mark_acked(self, row_id: int) -> None:
        # Same reasoning as mark_inflight: single set operations from the loop thread.
        self._outbox.mark_acked(row_id)

    def mark_inflight(self, row: OutboxRow) -> None:
        # Called on the loop thread without a trip to the worker: the in-flight set only sees
        # single add / membership / discard operations, each atomic in CPython.
        self._outbox.mark_inflight([row.id])

    async def delete(self, ids: list[int]) -> None:
        await self._call(lambda: self._delete(ids))

    def _delete(self, ids: list[int]) -> None:
        self._outbox.delete(ids)
        self.last_stats = self._outbox.stats()

    async def stats(self) -> OutboxStats:
        return await self._call(self._outbox.stats)

    async def probe(self, call: Callable[[], None] = lambda: None) -> None:
        """Return once the worker thread ran ``call``: the watchdog's sign it is not stuck."""
        await self._call(call)

    async def close(self) -> None:
        self._worker.cancel_every()
        await self._call(self._outbox.close)
        self._worker.stop()


class Forwarder:
    """Drains the outbox through the link while it is up; see the module docstring."""

    def __init__(self, link: MqttLink, outbox: DiskOutbox, *, batch: int = 2048) -> None:
        self._link = link
        self._outbox = outbox
        self._batch = batch
        self._ahead: deque[OutboxRow] = deque()
        self._last_fetched_id = 0
        self._caught_up = False  # True when every row in the outbox has been read ahead
        # The newest row announced by the outbox. A fetch's answer and a later append's
        # announcement can reach the loop in either order, so a fetch only counts as caught
        # up if it reached this row.
        self._newest_announced = 0
        self._inflight: set[int] = set()
        self._acked: list[int] = []
        self._wake = asyncio.Event()
        self._ack_ready = asyncio.Event()
        self._flush_requested = False
        self._fill_scheduled = False
        self.sent = 0
        self.discarded = 0
        link.add_listener(self)
        outbox.on_append(self._appended)

    # LinkListener
    def link_up(self, info: ConnectionInfo) -> None:
        self._wake.set()

    def link_down(self, reason: str) -> None:
        # Start an outage with every acknowledged row deleted, so a crash during the outage
        # cannot resend what the broker already has.
        self._flush_requested = True
        self._ack_ready.set()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def _appended(self, row: OutboxRow) -> None:
        self._newest_announced = max(self._newest_announced, row.id)
        if row.id <= self._last_fetched_id:
            return
        if self._caught_up and self._link.connected and len(self._ahead) < self._batch:
            # Nothing older is waiting on disk: take the new row directly, skip a fetch.
            self._outbox.mark_inflight(row)
            self._ahead.append(row)
            self._last_fetched_id = row.id
            self._fill_window()
            return
        self._caught_up = False
        self._wake.set()

    async def run(self) -> None:
        """Forward until cancelled."""
        deleter = asyncio.create_task(self._delete_acked_loop())
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                await self._read_ahead()
        finally:
            deleter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await deleter

    async def _read_ahead(self) -> None:
        # Offline, rows stay on disk: read-ahead rows are protected from the byte cap, and
        # the cap must be free to drop the oldest during an outage.
        # Refill only below half: each fetch is a round trip to the worker thread (several ms
        # when the cores are busy, the worker waiting for the GIL), so it must bring many rows,
        # not top up a few, and the half left must outlast the trip. The agent benchmark's
        # drain rate fell with every smaller batch it tried (docs/benchmarks.md, "Agent core:
        # telemetry publishing and footprint").
        if self._link.connected and not self._caught_up and len(self._ahead) <= self._batch // 2:
            limit = self._batch - len(self._ahead)
            rows = await self._outbox.fetch(after_id=self._last_fetched_id, limit=limit)
            if rows:
                self._last_fetched_id = rows[-1].id
                self._ahead.extend(rows)
            self._caught_up = len(rows) < limit and self._last_fetched_id >= self._newest_announced
            if not self._caught_up:
                self._wake.set()  # more on disk after this batch
        self._fill_window()

    def _fill_window(self) -> None:
        if not self._link.connected:
            return
        while self._ahead and len(self._inflight) < self._link.window:
            if not self._hand_over(self._ahead[0]):
                return
            self._ahead.popleft()
        if len(self._ahead) < self._batch // 2 and not self._caught_up:
            self._wake.set()

    def _hand_over(self, row: OutboxRow) -> bool:
        try:
            self._link.publish_tracked(
                row.topic,
                row.payload,
                functools.partial(self._on_done, row.id),
                qos=row.qos,
                retain=row.retain,
            )
        except NotConnectedError:
            return False
        except PacketTooLargeError as exc:
            # It can never be sent to this broker; keeping it would block the queue forever.
            log.error("forwarder.discarded", row_id=row.id, topic=row.topic, error=str(exc))
            self.discarded += 1
            self._acknowledged(row.id)
            return True
        except MqttError as exc:
            log.warning("forwarder.publish_failed", row_id=row.id, error=str(exc))
            return False
        self._inflight.add(row.id)
        return True

    def _on_done(self, row_id: int, exc: MqttError | None) -> None:
        self._inflight.discard(row_id)
        if isinstance(exc, PublishRejectedError):
            log.error("forwarder.rejected", row_id=row_id, topic=exc.topic, reason=exc.reason)
            self.discarded += 1
        elif exc is not None:
            log.warning("forwarder.ack_failed", row_id=row_id, error=str(exc))
            return
        else:
            self.sent += 1
        self._acknowledged(row_id)
        self._schedule_fill()

    def _schedule_fill(self) -> None:
        # PUBACK callbacks run inside paho's packet handling, before paho frees the slot in
        # its own in-flight count: a publish made there is queued by paho and found later by
        # a scan of every message in flight. Refilling on the next loop pass avoids that, and
        # one pass refills for every PUBACK read from the same socket read.
        if not self._fill_scheduled:
            self._fill_scheduled = True
            asyncio.get_running_loop().call_soon(self._scheduled_fill)

    def _scheduled_fill(self) -> None:
        self._fill_scheduled = False
        self._fill_window()

    def _acknowledged(self, row_id: int) -> None:
        self._acked.append(row_id)
        self._outbox.mark_acked(row_id)
        # Wake the deleter only to start its delay or when it should delete now, not per ack.
        if len(self._acked) == 1 or self._delete_now():
            self._ack_ready.set()

    async def flush_acks(self) -> None:
        """Delete acknowledged rows now."""
        self._flush_requested = False
        if self._acked:
            acked, self._acked = self._acked, []
            await self._outbox.delete(acked)

    async def _delete_acked_loop(self) -> None:
        while True:
            await self._ack_ready.wait()
            self._ack_ready.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DELETE_DELAY_S):
                    while not self._delete_now():
                        await self._ack_ready.wait()
                        self._ack_ready.clear()
            await self.flush_acks()

    def _delete_now(self) -> bool:
        drained = not self._inflight and not self._ahead and self._caught_up
        return (
            self._flush_requested
            or len(self._acked) >= DELETE_BATCH
            or (drained and len(self._acked) >= DELETE_WHEN_DRAINED)
        )
