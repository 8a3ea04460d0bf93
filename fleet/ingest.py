"""The controller's ingest: validate device messages, batch them, commit, then acknowledge.

Inbound messages are validated on the loop thread into typed models (``edge_contract.messages``:
size, depth, types, ranges, timestamps, the device id against the topic's) and written in
batches on the store thread. Every message is acknowledged exactly once: a valid one after its
commit, any other at once. A refused one, or one whose store write raised, is counted by
reason (``rejections``), kept as a dead letter and never retried; a batch that fails is
retried one message at a time, so one poison row cannot hold back the rest. Old rows are
pruned every minute. ``StoreThread`` is the one thread every store call of the controller
runs on (ingest and the RPC use cases alike).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TypeVar

import structlog

from edge_contract.errors import PayloadError, TopicError
from edge_contract.messages import decode_device_message
from edge_contract.topics import Channel, parse
from edge_runtime.mqtt.base import InboundMessage
from edge_runtime.mqtt.link import MqttLink
from edge_runtime.mqtt.rejections import DeadLetter, RejectionLedger
from fleet.errors import FleetError
from fleet.store import FleetStore, Inbound

# The controller's log events keep their logger name across the split.
log = structlog.get_logger("fleet.service")

RECORDED = (Channel.STATUS, Channel.TELEMETRY, Channel.EVENTS, Channel.REPORTED)
_QUEUE_LIMIT = 50_000
_BATCH = 500
_PRUNE_EVERY_S = 60.0
# Dead letters waiting for the store; beyond this they are only counted (a flood of junk
# must not grow memory).
_LETTER_QUEUE_LIMIT = 1000
# A store that stays locked past its busy timeout this many times in a row gives up on a
# message (dead-lettered) rather than blocking the ones behind it.
_LOCKED_RETRIES = 3
_LOCKED_BACKOFF_S = 0.5

T = TypeVar("T")


def validate(message: InboundMessage, received: float) -> Inbound:
    """Turn a device message into an ``Inbound`` or raise ``TopicError``/``PayloadError``.

    The body is validated into its typed model (``edge_contract.messages``): sizes, depth,
    types, ranges, timestamps and the device id against the topic's.
    """
    topic = parse(message.topic)
    if topic.channel not in RECORDED:
        raise TopicError("not a channel the controller records", topic=message.topic)
    _model, body = decode_device_message(topic.channel, topic.device_id, message.payload)
    return Inbound(topic.device_id, topic.channel.value, body, received)


def rejection_reason(exc: BaseException) -> str:
    """The reason code a refused message is counted under."""
    if isinstance(exc, PayloadError):
        return exc.reason
    if isinstance(exc, TopicError):
        return "topic"
    return "handler_failed"


class StoreThread:
    """The one thread the store is used from: calls run there in the order they came."""

    def __init__(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="store")

    async def run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def shutdown(self) -> None:
        self._executor.shutdown()


@dataclass(frozen=True)
class IngestFigures:
    """What ``/metrics`` shows of ingest: messages committed by kind, the writer's queue."""

    stored: dict[str, int]
    queue_depth: int
    queue_limit: int


class Ingest:
    """Validation, batched commits, acknowledgements and dead letters of device messages."""

    def __init__(
        self,
        store: FleetStore,
        link: MqttLink,
        thread: StoreThread,
        on_committed: Callable[[list[Inbound]], None] | None = None,
    ) -> None:
        """``on_committed``: loop thread, after each commit, with what it stored (the live
        feed); never raises into the writer."""
        self._store = store
        self._on_committed = on_committed
        self._link = link
        self._thread = thread
        self._queue: asyncio.Queue[tuple[Inbound, InboundMessage]] = asyncio.Queue(
            maxsize=_QUEUE_LIMIT
        )
        # Refused messages, by reason; each is acknowledged and also kept in the store.
        self.rejections = RejectionLedger(log, event="controller.rejected")
        self._letters: asyncio.Queue[DeadLetter] = asyncio.Queue(maxsize=_LETTER_QUEUE_LIMIT)
        # Messages committed, by kind (status, telemetry, events, reported): /metrics.
        self.stored: Counter[str] = Counter()

    def figures(self) -> IngestFigures:
        """Loop thread: the counts and the queue now."""
        return IngestFigures(dict(self.stored), self._queue.qsize(), _QUEUE_LIMIT)

    def offer(self, message: InboundMessage) -> bool:
        """Loop thread: validate a device message and queue it for the writer; True when the
        writer acknowledges it (after its commit), False when the caller must (refused)."""
        if not message.payload and _clears_retained(message.topic):
            return False  # a cleared retained status or reported state
        try:
            item = validate(message, time.time())
        except (TopicError, PayloadError) as exc:
            self.reject(message, rejection_reason(exc), str(exc))
            return False
        try:
            self._queue.put_nowait((item, message))
        except asyncio.QueueFull:
            # Not acknowledged: the broker redelivers it after the controller reconnects.
            log.error("controller.overloaded", topic=message.topic, queue=_QUEUE_LIMIT)
        return True

    def reject(self, message: InboundMessage, reason: str, detail: str) -> None:
        """Count and dead-letter a message that will not be stored (the caller acks it)."""
        letter = self.rejections.reject(
            message.topic, message.payload, reason, detail, retained=message.retain
        )
        with contextlib.suppress(asyncio.QueueFull):  # counted all the same
            self._letters.put_nowait(letter)

    def tasks(self) -> list[Coroutine[object, object, None]]:
        """The coroutines the controller runs for ingest, until cancelled."""
        return [self._writer(), self._pruner(), self._letter_writer()]

    async def drain(self) -> None:
        """Wait until everything received is committed and every dead letter kept."""
        await self._queue.join()
        await self._letters.join()

    async def _writer(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < _BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._store_batch(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _store_batch(self, batch: list[tuple[Inbound, InboundMessage]]) -> None:
        """Commit a batch, then acknowledge it. If the batch fails, each message is tried on
        its own, so one that the store cannot take is dead-lettered (and acknowledged) and
        the others are stored: nothing valid is lost, and nothing stays unacknowledged."""
        # Acknowledge only what is committed: a crash before this makes the broker
        # redeliver, and the store de-duplicates telemetry by (device, stream, seq).
        try:
            await self._ingest([item for item, _ in batch])
        except Exception as exc:  # fall back to one by one
            if len(batch) == 1:
                self._store_failed(batch[0][1], exc)
                return
            log.warning("controller.batch_failed", error=repr(exc)[:300], size=len(batch))
        else:
            for _, message in batch:
                self._link.ack(message)
            self._committed([item for item, _ in batch])
            return
        for item, message in batch:
            try:
                await self._ingest([item])
            except Exception as exc:  # this one only
                self._store_failed(message, exc)
            else:
                self._link.ack(message)
                self._committed([item])

    def _committed(self, items: list[Inbound]) -> None:
        self.stored.update(item.kind for item in items)
        if self._on_committed is None:
            return
        try:
            self._on_committed(items)
        except Exception:  # the live feed must never stop ingest
            log.exception("controller.live_feed_failed")

    async def _ingest(self, items: list[Inbound]) -> None:
        """Store ``items``; a database that stays locked is tried again a few times."""
        for attempt in range(_LOCKED_RETRIES):
            try:
                await self._thread.run(functools.partial(self._store.ingest, items))
            except FleetError as exc:
                if "locked" not in str(exc) or attempt == _LOCKED_RETRIES - 1:
                    raise
                log.warning("controller.store_locked", attempt=attempt + 1)
                await asyncio.sleep(_LOCKED_BACKOFF_S)
            else:
                return

    def _store_failed(self, message: InboundMessage, exc: Exception) -> None:
        log.error("controller.store_failed", topic=message.topic, error=repr(exc)[:300])
        self.reject(message, "store_failed", repr(exc))
        self._link.ack(message)

    async def _letter_writer(self) -> None:
        """Keep dead letters in the store, in batches; a failure here only loses the copy."""
        while True:
            letters = [await self._letters.get()]
            while len(letters) < _BATCH and not self._letters.empty():
                letters.append(self._letters.get_nowait())
            try:
                await self._thread.run(functools.partial(self._store.add_dead_letters, letters))
            except Exception as exc:  # the ledger still counts them
                log.error("controller.dead_letters_failed", error=repr(exc)[:300])
            finally:
                for _ in letters:
                    self._letters.task_done()

    async def _pruner(self) -> None:
        while True:
            try:
                removed = await self._thread.run(self._store.prune)
            except FleetError as exc:
                log.error("controller.prune_failed", error=str(exc))
            else:
                if removed:
                    log.info("controller.pruned", rows=removed)
            await asyncio.sleep(_PRUNE_EVERY_S)


def _clears_retained(topic: str) -> bool:
    """An empty message on a retained channel clears it: nothing to store, nothing wrong."""
    with contextlib.suppress(TopicError):
        return parse(topic).channel in (Channel.STATUS, Channel.REPORTED)
    return False
