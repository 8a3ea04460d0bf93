"""The on-disk store-and-forward queue (the outbox) and the telemetry sequence counter.

Every telemetry message and event is written here first and deleted only after the broker's
PUBACK, so nothing is lost across a broker outage, an agent crash or a power cut. SQLite in
WAL mode with ``synchronous=FULL``: a committed append survives power loss (``NORMAL`` may
lose the last commits).

The queue is capped in payload bytes. When an append would exceed the cap, rows the broker
has already acknowledged (waiting for their batched delete) are removed first, which loses
nothing; then the oldest rows that are not in flight are dropped and counted. The count is
handed to the next sequenced message (``append_sequenced``), so the loss is reported, never
silent. ``seq`` is allocated in the same transaction as the row it numbers, so a crash
cannot leave a gap that looks like a loss, nor reuse a number.

Not thread-safe: the agent uses one instance from a single worker thread (see ``DiskOutbox``
in ``agent.uplink.forwarder``), which keeps fsync latency off the event loop.
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from agent.errors import StoreError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    topic   TEXT    NOT NULL,
    payload BLOB    NOT NULL,
    qos     INTEGER NOT NULL,
    retain  INTEGER NOT NULL,
    size    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


class OutboxRow(NamedTuple):
    """One queued message (a named tuple: draining a backlog builds thousands of them)."""

    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(frozen=True)
class DropReport:
    """Drops to report in the message being built: since the last report, and ever."""

    since_last: int
    total: int


@dataclass(frozen=True)
class OutboxStats:
    """Queue depth and drop counters, for telemetry and health.

    ``depth`` counts messages not yet acknowledged by the broker; ``bytes`` is what the queue
    holds on disk, which includes acknowledged rows waiting for their batched delete.
    """

    depth: int
    bytes: int
    max_bytes: int
    dropped_total: int


class Outbox:
    """A byte-capped FIFO of messages on disk; see the module docstring for guarantees."""

    def __init__(self, path: Path, *, max_bytes: int) -> None:
        self._path = path
        self._max_bytes = max_bytes
        self._inflight: set[int] = set()
        self._acked: set[int] = set()
        self._forget: list[int] = []  # acknowledged rows removed by the open transaction
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we open transactions explicitly, one per operation.
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            # Keep the WAL file from growing without bound after a long outage drains.
            self._db.execute("PRAGMA journal_size_limit=4194304")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT COALESCE(SUM(size), 0), COUNT(*) FROM outbox").fetchone()
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open outbox ({exc})", path=str(path)) from exc
        self._bytes, self._depth = int(row[0]), int(row[1])
        self.stream = self._stream_id()

    # -- writing ---------------------------------------------------------------------------

    def append(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> OutboxRow | None:
        """Queue one message; may drop the oldest to stay under the cap.

        Returns the queued row, or None when the message alone exceeds the cap (counted as
        a drop).
        """
        with self._transaction():
            return self._insert(topic, payload, qos, retain)

    def append_sequenced(
        self,
        topic: str,
        build: Callable[[int, DropReport], bytes],
        *,
        counter: str = "telemetry_seq",
        qos: int = 1,
    ) -> int:
        """Allocate the next ``seq`` of ``counter``, build the payload and queue it atomically.

        ``build(seq, drops)`` gets the drops not yet reported; they count as reported once the
        transaction commits. Returns the seq used.
        """
        return self.append_sequenced_row(topic, build, counter=counter, qos=qos)[0]

    def append_sequenced_row(
        self,
        topic: str,
        build: Callable[[int, DropReport], bytes],
        *,
        counter: str = "telemetry_seq",
        qos: int = 1,
    ) -> tuple[int, OutboxRow | None]:
        """``append_sequenced`` that also returns the queued row (None if it was dropped)."""
        with self._transaction():
            seq = self._counter(counter) + 1
            drops = DropReport(self._counter("dropped_unreported"), self._counter("dropped_total"))
            payload = build(seq, drops)
            self._set_counter(counter, seq)
            self._set_counter("dropped_unreported", 0)
            row = self._insert(topic, payload, qos, retain=False)
        return seq, row

    def delete(self, ids: Iterable[int]) -> None:
        """Forget messages the broker acknowledged (or that can never be sent).

        Not fsynced on its own (``synchronous=NORMAL`` for this transaction): losing a delete
        to a power cut only means those rows are sent again, while the next append's fsync
        makes it durable anyway, since the WAL is written in order.
        """
        id_list = sorted(ids)
        if not id_list:
            return
        self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            with self._transaction():
                for first, last, chunk in _id_runs(id_list):
                    self._delete_run(first, last, chunk)
        finally:
            self._db.execute("PRAGMA synchronous=FULL")
        for row_id in id_list:
            self._inflight.discard(row_id)
            self._acked.discard(row_id)

    def _delete_run(self, first: int, last: int, chunk: list[int]) -> None:
        if last - first + 1 == len(chunk):
            # Acks arrive in id order, so a batch is nearly always one range: one index scan.
            where, params = "id BETWEEN ? AND ?", [first, last]
        else:
            where, params = f"id IN ({','.join('?' * len(chunk))})", chunk
        sizes = self._db.execute(
            f"SELECT COALESCE(SUM(size), 0), COUNT(*) FROM outbox WHERE {where}",  # noqa: S608 - placeholders only
            params,
        ).fetchone()
        self._db.execute(f"DELETE FROM outbox WHERE {where}", params)  # noqa: S608
        self._bytes -= int(sizes[0])
        self._depth -= int(sizes[1])

    # -- reading ---------------------------------------------------------------------------

    def fetch(self, *, after_id: int, limit: int) -> list[OutboxRow]:
        """The oldest ``limit`` messages with an id above ``after_id``, oldest first.

        The rows come back as one aggregate row (see ``_FETCH_PACKED``): the sqlite3 module
        releases the GIL around every step, so a row-per-step fetch on the outbox thread
        hands the GIL back and forth with the event loop once per row while a backlog
        drains, which cost the drain a noticeable share of its rate (bench/bench_agent.py;
        docs/benchmarks.md, "Agent core: telemetry publishing and footprint").
        """
        try:
            packed = self._db.execute(_FETCH_PACKED, (after_id, limit)).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read outbox ({exc})", path=str(self._path)) from exc
        return _unpack_rows(packed)

    def mark_inflight(self, ids: Iterable[int]) -> None:
        """Protect rows handed to the broker from being dropped by the cap.

        Safe to call from another thread than the one writing: set operations are atomic.
        """
        for row_id in ids:
            self._inflight.add(row_id)

    def mark_acked(self, row_id: int) -> None:
        """The broker has this row; it only waits for a batched delete (any thread)."""
        self._acked.add(row_id)

    def stats(self) -> OutboxStats:
        return OutboxStats(
            depth=self._depth - len(self._acked),
            bytes=self._bytes,
            max_bytes=self._max_bytes,
            dropped_total=self._counter("dropped_total"),
        )

    def close(self) -> None:
        self._db.close()

    def _stream_id(self) -> str:
        """A random id made once per outbox: seq numbers are unique within it.

        If the state dir is wiped, seq restarts at 1 under a new stream, so receivers do not
        mistake the new messages for duplicates of old ones.
        """
        with self._transaction():
            value = self._counter("stream")
            if value == 0:
                value = secrets.randbits(62) + 1
                self._set_counter("stream", value)
        return f"{value:016x}"

    # -- internals -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT; on any error roll back and restore the counts."""
        saved = (self._bytes, self._depth)
        self._forget.clear()
        try:
            self._db.execute("BEGIN IMMEDIATE")
            yield
            self._db.execute("COMMIT")
            for row_id in self._forget:
                self._acked.discard(row_id)
                self._inflight.discard(row_id)
        except BaseException as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._bytes, self._depth = saved
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot write outbox ({exc})", path=str(self._path)) from exc
            raise

    def _insert(self, topic: str, payload: bytes, qos: int, retain: bool) -> OutboxRow | None:
        size = len(payload) + len(topic)
        if size > self._max_bytes:
            # Larger than the whole queue: keeping it would evict everything else.
            self._count_drops(1)
            return None
        self._make_room(size)
        cursor = self._db.execute(
            "INSERT INTO outbox (topic, payload, qos, retain, size) VALUES (?, ?, ?, ?, ?)",
            (topic, payload, qos, int(retain), size),
        )
        self._bytes += size
        self._depth += 1
        return OutboxRow(int(cursor.lastrowid or 0), topic, payload, qos, retain)

    def _make_room(self, size: int) -> None:
        """Free room for ``size`` bytes: rows the broker already has first (they only wait
        for a batched delete, so removing them is not a loss), then the oldest rows that are
        not in flight, counted as drops."""
        dropped = 0
        after_id = 0
        while self._bytes + size > self._max_bytes:
            candidates = self._db.execute(
                "SELECT id, size FROM outbox WHERE id > ? ORDER BY id LIMIT 64", (after_id,)
            ).fetchall()
            if not candidates:
                break
            after_id = candidates[-1][0]
            for row_id, row_size in candidates:
                if self._bytes + size <= self._max_bytes:
                    break
                acked = row_id in self._acked
                if row_id in self._inflight and not acked:
                    continue  # handed to the broker, not yet acknowledged: keep it
                self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
                self._bytes -= row_size
                self._depth -= 1
                if acked:
                    self._forget.append(row_id)
                else:
                    dropped += 1
        if dropped:
            self._count_drops(dropped)

    def _count_drops(self, count: int) -> None:
        self._set_counter("dropped_unreported", self._counter("dropped_unreported") + count)
        self._set_counter("dropped_total", self._counter("dropped_total") + count)

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def _set_counter(self, name: str, value: int) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            (name, value),
        )


# Every column of up to ``limit`` rows in one step. The group_concat()s of one aggregate see
# the rows in the same order, so the lists line up; payloads and topics are concatenated
# without separators and cut apart by their lengths (blob bytes; text characters, which
# Python's str indexing counts the same way). group_concat() keeps a blob's bytes as they are.
_FETCH_PACKED = """
SELECT group_concat(id), group_concat(length(payload)), CAST(group_concat(payload, x'') AS BLOB),
       group_concat(length(topic)), group_concat(topic, ''), group_concat(qos * 2 + retain, '')
FROM (SELECT id, topic, payload, qos, retain FROM outbox WHERE id > ? ORDER BY id LIMIT ?)
"""


def _unpack_rows(packed: tuple[Any, ...] | None) -> list[OutboxRow]:
    """The rows of one ``_FETCH_PACKED`` result, in id order."""
    if packed is None or packed[0] is None:
        return []
    ids, payload_lengths, blob, topic_lengths, topics, flags = packed
    blob = blob or b""
    rows: list[OutboxRow] = []
    payload_at = topic_at = 0
    for index, (row_id, payload_length, topic_length) in enumerate(
        zip(ids.split(","), payload_lengths.split(","), topic_lengths.split(","), strict=True)
    ):
        payload_end = payload_at + int(payload_length)
        topic_end = topic_at + int(topic_length)
        flag = int(flags[index])
        rows.append(
            OutboxRow(
                int(row_id),
                topics[topic_at:topic_end],
                blob[payload_at:payload_end],
                flag >> 1,
                bool(flag & 1),
            )
        )
        payload_at, topic_at = payload_end, topic_end
    rows.sort()  # already in id order in practice; the aggregate does not promise it
    return rows


def _id_runs(sorted_ids: list[int], limit: int = 500) -> Iterator[tuple[int, int, list[int]]]:
    """Chunks of at most ``limit`` ids as (first, last, ids), for bounded SQL statements."""
    for start in range(0, len(sorted_ids), limit):
        chunk = sorted_ids[start : start + limit]
        yield chunk[0], chunk[-1], chunk
