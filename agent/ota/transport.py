"""Repository files over MQTT, device side: range requests, pipelined chunks, ngclient's fetcher.

The exchange (also served by ``fleet.release.fileserver``; documented in docs/mqtt-api.md):
the device publishes ``{"path", "offset", "length"}`` on ``fleet/<id>/fetch`` (QoS 1, response
topic ``fleet/<id>/file``, 16 random bytes of correlation data, message expiry 30 s); the
controller answers on the response topic with a payload of a small JSON header,
``correlation`` (the request's correlation data, in hex), ``status`` (200, 400, 404, 416),
``size`` (the whole file's, with 200) and ``offset`` (see ``fetchcodec.encode_reply``),
followed by the raw bytes ``[offset, offset + n)``. An error reply carries a short UTF-8
message after the header. The reply has no v5 properties at all (see
``fetchcodec.encode_reply`` for why); a reply that carries the correlation as a v5 property
instead is matched too. ``n`` may be smaller than asked (the broker's Maximum Packet Size),
so readers loop until they have what they need.

``RepositoryClient`` runs on the agent's asyncio loop: ``on_message`` matches replies to
requests by correlation data, a request that gets no reply in time is sent again with new
correlation data, and ``fetch_chunks`` keeps a window of chunks in flight (the round trip,
not the bandwidth, bounds a one-at-a-time download). The wire format (limits, status codes,
the reply header) is ``edge_contract.fetchcodec``'s; ``agent.ota.trust.MqttFetcher`` adapts this
client to ``tuf.ngclient``, so this module does not import TUF.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass

import structlog

from agent.control.inbound import InboundRejections
from agent.errors import FetchError
from edge_contract.errors import UpdateError
from edge_contract.fetchcodec import (
    CORRELATION_BYTES,
    MAX_RANGE_LENGTH,
    REQUEST_EXPIRY_S,
    STATUS_BAD_REPLY,
    STATUS_BAD_REQUEST,
    STATUS_OK,
    STATUS_TIMEOUT,
    STATUS_TOO_LARGE,
    DecodedReply,
    decode_reply,
    encode_request,
)
from edge_contract.reasons import Reason
from edge_contract.release import DEFAULT_CHUNK_SIZE
from edge_contract.topics import Channel, topic_for
from edge_runtime.errors import MqttError
from edge_runtime.mqtt.base import InboundMessage, PublishOptions
from edge_runtime.mqtt.link import MqttLink

log = structlog.get_logger("agent.ota.transport")

# Bytes asked for per request in ``fetch_chunks``: four 256 KiB chunks (replies are cut to
# the broker's packet limit anyway).
DEFAULT_REQUEST_BYTES = 1024 * 1024
DEFAULT_WINDOW = 4  # requests in flight in ``fetch_chunks``

# (index, bytes) of the chunks of one reply, in order; views into the reply, not copies.
OnChunks = Callable[[list[tuple[int, memoryview]]], Awaitable[None]]


@dataclass(frozen=True)
class RangeReply:
    """One successful reply: ``data`` starts at the requested offset; ``size`` is the file's.

    ``data`` is a view into the reply's payload: a 1 MiB reply is not copied again.
    """

    data: memoryview
    size: int


@dataclass(frozen=True)
class ChunkRange:
    """One chunk to fetch: its index (passed back to ``on_chunks``), offset and length."""

    index: int
    offset: int
    length: int


class RepositoryClient:
    """Fetches repository files from the controller over the agent's MQTT link.

    Owned by the agent's loop: every method must be called on it. Route messages of
    ``subscription()`` to ``on_message``.
    """

    def __init__(
        self,
        link: MqttLink,
        device_id: str,
        *,
        window: int = DEFAULT_WINDOW,
        timeout_s: float = 10.0,
        retries: int = 3,
        request_bytes: int = DEFAULT_REQUEST_BYTES,
        rejections: InboundRejections | None = None,
    ) -> None:
        if window < 1 or timeout_s <= 0 or retries < 0 or request_bytes < 1:
            raise ValueError(
                f"window={window}, timeout_s={timeout_s}, retries={retries}, "
                f"request_bytes={request_bytes}"
            )
        self._request_bytes = request_bytes
        self._rejections = rejections or InboundRejections()
        self._link = link
        self._request_topic = topic_for(device_id, Channel.FETCH)
        self._reply_topic = topic_for(device_id, Channel.FILE)
        self._window = window
        self._timeout_s = timeout_s
        self._retries = retries
        self._waiting: dict[bytes, asyncio.Future[DecodedReply]] = {}

    @property
    def window(self) -> int:
        return self._window

    @property
    def timeout_s(self) -> float:
        return self._timeout_s

    @property
    def retries(self) -> int:
        return self._retries

    def subscription(self) -> str:
        """The topic replies arrive on: add it to the link's subscriptions."""
        return self._reply_topic

    def on_message(self, msg: InboundMessage) -> None:
        """Hand a reply to the request that waits for it; unknown or late replies are dropped.

        The request is named by the ``correlation`` of the reply's header, or by its v5
        correlation data when the header has none. A reply that cannot be decoded fails its
        request (502) if its v5 correlation data names one, and is dropped otherwise. Every
        reply that no request takes (undecodable, unknown or late) is recorded as rejected.
        """
        if msg.topic != self._reply_topic:
            return
        try:
            reply = decode_reply(msg.payload)
        except ValueError as exc:
            waiter = self._waiter_for(msg, msg.correlation_data)
            if waiter is not None:
                waiter.set_exception(exc)
            else:
                self._rejections.reject(msg, "bad_reply", str(exc)[:200])
            return
        waiter = self._waiter_for(msg, reply.correlation or msg.correlation_data)
        if waiter is not None:
            waiter.set_result(reply)
        else:
            self._rejections.reject(msg, "unmatched_reply", "no request waits for this reply")

    def _waiter_for(
        self, msg: InboundMessage, correlation: bytes | None
    ) -> asyncio.Future[DecodedReply] | None:
        waiter = self._waiting.pop(bytes(correlation), None) if correlation else None
        if waiter is None:
            log.debug("ota.transport.unmatched_reply", topic=msg.topic, bytes=len(msg.payload))
            return None
        return None if waiter.done() else waiter

    async def fetch_range(self, path: str, offset: int, length: int) -> RangeReply:
        """Up to ``length`` bytes of ``path`` from ``offset`` (fewer at the end of the file or
        when the broker's packet limit makes the controller answer in smaller pieces).

        Raises:
            FetchError: 404 missing, 400/416 refused, 502 a reply of the wrong shape, 504 no
                reply after ``retries`` repeats of ``timeout_s``.
        """
        if offset < 0 or not 0 < length <= MAX_RANGE_LENGTH:
            raise FetchError(path, STATUS_BAD_REQUEST, f"bad range offset={offset} length={length}")
        request = encode_request(path, offset, length)
        for attempt in range(self._retries + 1):
            try:
                reply = await self._exchange(request)
            except ValueError as exc:
                raise FetchError(path, STATUS_BAD_REPLY, f"malformed reply ({exc})") from exc
            if reply is not None:
                return _parse_reply(path, offset, length, reply)
            log.warning("ota.transport.timeout", path=path, offset=offset, attempt=attempt + 1)
        raise FetchError(
            path,
            STATUS_TIMEOUT,
            f"no reply at offset {offset} after {self._retries + 1} tries of {self._timeout_s} s",
        )

    async def fetch_file(
        self, path: str, max_length: int, *, piece: int = DEFAULT_CHUNK_SIZE
    ) -> bytes:
        """The whole of a small file (metadata), in as many ranges as it takes.

        Raises:
            FetchError: as ``fetch_range``; 413 if the file is longer than ``max_length``.
        """
        parts: list[memoryview] = []
        offset = 0
        size: int | None = None
        while size is None or offset < size:
            reply = await self.fetch_range(path, offset, piece)
            size = _check_size(path, size, reply.size, max_length)
            if not reply.data:
                break
            parts.append(reply.data)
            offset += len(reply.data)
        return b"".join(parts)

    async def fetch_chunks(
        self,
        path: str,
        ranges: Sequence[ChunkRange],
        on_chunks: OnChunks,
        *,
        expected_size: int | None = None,
    ) -> None:
        """Fetch every range of ``path``, up to ``window`` requests in flight at once.

        Adjacent ranges are asked for together, up to ``request_bytes`` per request: each
        request and reply costs far more CPU on a small board than the bytes it carries
        (bench/bench_ota.py). ``on_chunks([(index, data), ...])`` is awaited once per request
        with its ranges, in the order of ``ranges`` (a request answered early waits for the
        ones before it), so a caller can write and report progress in order, one trip to a
        worker thread per request. ``data`` is shorter than asked only if the file ends
        first. On the first failure the other requests are abandoned and the
        error raised. With ``expected_size`` (the signed length), a reply saying the file has
        another size ends the download: ``UpdateError`` ``too_long`` (endless data) or
        ``tampered``.
        """
        pending: list[tuple[list[ChunkRange], asyncio.Task[memoryview]]] = []
        upcoming = iter(_coalesce(ranges, self._request_bytes))

        def refill() -> None:
            while len(pending) < self._window:
                group = next(upcoming, None)
                if group is None:
                    return
                whole = ChunkRange(group[0].index, group[0].offset, sum(c.length for c in group))
                task = asyncio.create_task(self._fetch_whole_range(path, whole, expected_size))
                pending.append((group, task))

        try:
            refill()
            while pending:
                group, task = pending.pop(0)
                data = await task
                refill()
                pieces, at = [], 0
                for chunk in group:
                    pieces.append((chunk.index, data[at : at + chunk.length]))
                    at += chunk.length
                await on_chunks(pieces)
        finally:
            for _, task in pending:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.gather(*(task for _, task in pending), return_exceptions=True)

    async def _fetch_whole_range(
        self, path: str, chunk: ChunkRange, expected_size: int | None = None
    ) -> memoryview:
        parts: list[memoryview] = []
        got = 0
        while got < chunk.length:
            reply = await self.fetch_range(path, chunk.offset + got, chunk.length - got)
            if expected_size is not None and reply.size != expected_size:
                reason = Reason.TOO_LONG if reply.size > expected_size else Reason.TAMPERED
                raise UpdateError(
                    reason, f"{path} is {reply.size} bytes, signed length {expected_size}"
                )
            if not reply.data:
                break  # the file ends before the range does: the caller's hash check decides
            parts.append(reply.data)
            got += len(reply.data)
        return parts[0] if len(parts) == 1 else memoryview(b"".join(parts))

    async def _exchange(self, request: bytes) -> DecodedReply | None:
        """Send one request and wait for its reply; None when the timeout passes first.

        Raises:
            ValueError: the reply could not be decoded.
        """
        loop = asyncio.get_running_loop()
        correlation = secrets.token_bytes(CORRELATION_BYTES)
        waiter: asyncio.Future[DecodedReply] = loop.create_future()
        self._waiting[correlation] = waiter
        options = PublishOptions(
            response_topic=self._reply_topic,
            correlation_data=correlation,
            message_expiry_s=REQUEST_EXPIRY_S,
        )
        try:
            async with asyncio.timeout(self._timeout_s):
                # While the link is down the request waits for it, within the same timeout.
                await self._link.wait_connected()
                try:
                    acked = self._link.publish(self._request_topic, request, options=options)
                except MqttError as exc:
                    log.warning("ota.transport.publish_failed", error=str(exc))
                    await asyncio.sleep(self._timeout_s)  # ends in the timeout: a retry
                else:
                    acked.add_done_callback(_ignore_outcome)
                return await waiter
        except TimeoutError:
            return None
        finally:
            self._waiting.pop(correlation, None)


def _coalesce(ranges: Sequence[ChunkRange], limit: int) -> Iterator[list[ChunkRange]]:
    """Runs of adjacent ranges, each at most ``limit`` bytes (a single range may exceed it)."""
    group: list[ChunkRange] = []
    size = 0
    for chunk in ranges:
        adjacent = group and group[-1].offset + group[-1].length == chunk.offset
        if group and (not adjacent or size + chunk.length > limit):
            yield group
            group, size = [], 0
        group.append(chunk)
        size += chunk.length
    if group:
        yield group


def _parse_reply(path: str, offset: int, length: int, reply: DecodedReply) -> RangeReply:
    fields, data = reply.fields, reply.data
    status = fields.get("status")
    if status is None:
        raise FetchError(path, STATUS_BAD_REPLY, f"reply without a status: {fields}")
    if status != STATUS_OK:
        message = bytes(data[:200]).decode(errors="replace")
        raise FetchError(path, status, message or "refused")
    size, at = fields.get("size"), fields.get("offset")
    if size is None or at != offset:
        raise FetchError(path, STATUS_BAD_REPLY, f"reply for offset {at}, size {size}: {fields}")
    if len(data) > length or offset + len(data) > size or (not data and offset < size):
        raise FetchError(
            path,
            STATUS_BAD_REPLY,
            f"{len(data)} bytes at offset {offset} of a {size}-byte file, {length} asked",
        )
    return RangeReply(data=data, size=size)


def _check_size(path: str, known: int | None, size: int, max_length: int) -> int:
    if size > max_length:
        raise FetchError(path, STATUS_TOO_LARGE, f"{size} bytes, at most {max_length} accepted")
    if known is not None and size != known:
        # Only a file replaced mid-download does this (metadata is one range in practice).
        raise FetchError(path, STATUS_BAD_REPLY, f"size changed from {known} to {size}")
    return size


def _ignore_outcome(future: asyncio.Future[None]) -> None:
    """A request's PUBACK does not matter (its reply does); retrieve the outcome quietly."""
    if not future.cancelled():
        future.exception()
