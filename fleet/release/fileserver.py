"""The controller's repository file server: answers the devices' range requests over MQTT.

``RepositoryFiles`` is the part without MQTT: it parses one request, applies the path rules
and reads the range from the repository directory (``metadata/`` and ``targets/`` only).
``FileService`` puts it on the controller's link: it takes requests from ``fleet/+/fetch``,
answers each on the requesting device's own ``fleet/<id>/file`` topic (and only there, so a
device cannot make the controller publish into another device's topics), reads in worker
threads and bounds the requests it holds, so a flood costs dropped requests, not memory.
Each device may ask ``rate_per_s`` times a second on average (bursts of ``burst``): a fetch
storm from one device is refused (``rate_limited``) before it costs a disk read. Every
refused request is acknowledged and counted by reason in ``rejections``.
The wire format (limits, status codes, the reply codec) is ``edge_contract.fetchcodec``, shared
with the device side (``agent.ota.transport``); it imports no TUF.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import structlog

from edge_contract import payloads
from edge_contract.errors import PayloadError, TopicError
from edge_contract.fetchcodec import (
    MAX_CORRELATION_BYTES,
    MAX_RANGE_LENGTH,
    MAX_REPLY_PACKET,
    MAX_REQUEST_BYTES,
    REPLY_HEADER_MAX,
    STATUS_BAD_RANGE,
    STATUS_BAD_REQUEST,
    STATUS_NOT_FOUND,
    STATUS_OK,
    encode_reply,
)
from edge_contract.topics import Channel, all_devices, parse, topic_for
from edge_runtime.errors import MqttError
from edge_runtime.mqtt.base import InboundMessage, PublishOptions, publish_packet_size
from edge_runtime.mqtt.link import MqttLink
from edge_runtime.mqtt.rejections import RejectionLedger

log = structlog.get_logger("fleet.release.fileserver")

SERVED_DIRS = ("metadata", "targets")
MAX_PATH_LENGTH = 1024
# A device downloads with 1 MiB requests, four in flight: the default sits above the fastest
# download measured (docs/benchmarks.md, "OTA: model transfer goodput and verification
# time"). Above that it is a storm, not a download.
DEFAULT_RATE_PER_S = 400.0
DEFAULT_BURST = 400
MAX_BUCKETS = 10_000  # devices tracked at once; the least recently seen is forgotten


class RateLimiter:
    """A token bucket per key: ``burst`` at once, ``rate_per_s`` on average after."""

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = MAX_BUCKETS,
    ) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def admit(self, key: str) -> bool:
        """Take a token for ``key``; False when its bucket is empty."""
        now = self._clock()
        tokens, since = self._buckets.pop(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - since) * self._rate)
        admitted = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if admitted else tokens, now)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return admitted


class BadRequestError(ValueError):
    """A request the server refuses with 400; the message goes back to the device."""


@dataclass(frozen=True)
class FileReply:
    """The answer to one request: ``data`` is the range (200) or a short UTF-8 message."""

    status: int
    data: bytes
    size: int | None
    offset: int

    def encode(self, correlation: bytes = b"") -> bytes:
        """The reply's payload for the request with ``correlation`` (header and data,
        ``edge_contract.fetchcodec.encode_reply``)."""
        return encode_reply(self.status, self.data, self.size, self.offset, correlation)


@dataclass(frozen=True)
class FileRequest:
    path: str
    offset: int
    length: int


class RepositoryFiles:
    """Ranges of the files under ``repo_dir/metadata`` and ``repo_dir/targets``."""

    def __init__(self, repo_dir: Path) -> None:
        self._repo = repo_dir.resolve()
        self._roots = {name: (self._repo / name).resolve() for name in SERVED_DIRS}

    def answer(self, payload: bytes | bytearray, max_reply: int) -> FileReply:
        """The reply to one request payload; never raises for anything the payload holds."""
        try:
            request = parse_request(payload)
            file_path = self.resolve(request.path)
        except BadRequestError as exc:
            return _error(STATUS_BAD_REQUEST, str(exc), 0)
        return self._read(file_path, request, max_reply)

    def resolve(self, path: str) -> Path:
        """The file ``path`` names, or ``BadRequestError`` if the path rules refuse it."""
        check_path_syntax(path)
        top = path.split("/", 1)[0]
        root = self._roots[top]
        resolved = (self._repo / path).resolve()
        # resolve() follows symlinks: one that points out of its directory lands outside.
        if not resolved.is_relative_to(root) or resolved == root:
            raise BadRequestError(f"path {path!r} leaves {top}/")
        return resolved

    def _read(self, file_path: Path, request: FileRequest, max_reply: int) -> FileReply:
        try:
            fd = os.open(file_path, os.O_RDONLY | os.O_NOFOLLOW)
        except (FileNotFoundError, NotADirectoryError):
            return _error(STATUS_NOT_FOUND, f"no file {request.path}", request.offset)
        except OSError as exc:
            log.warning("fileserver.unreadable", path=request.path, error=str(exc))
            return _error(STATUS_NOT_FOUND, f"cannot read {request.path}", request.offset)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return _error(STATUS_NOT_FOUND, f"{request.path} is not a file", request.offset)
            size = info.st_size
            if request.offset > size:
                return _error(
                    STATUS_BAD_RANGE, f"offset {request.offset} beyond {size} bytes", request.offset
                )
            count = min(request.length, size - request.offset, max(max_reply, 1))
            data = os.pread(fd, count, request.offset)
        finally:
            os.close(fd)
        return FileReply(STATUS_OK, data, size, request.offset)


def parse_request(payload: bytes | bytearray) -> FileRequest:
    """``{"path": str, "offset": int >= 0, "length": int > 0}`` or ``BadRequestError``."""
    if len(payload) > MAX_REQUEST_BYTES:
        raise BadRequestError(f"request of {len(payload)} bytes, limit {MAX_REQUEST_BYTES}")
    try:
        # Depth is checked before parsing: a request nests no deeper than its object.
        body: Any = payloads.decode_json(payload, max_bytes=MAX_REQUEST_BYTES, max_depth=2)
    except PayloadError as exc:  # not UTF-8, not JSON, nested too deep, a number too big
        raise BadRequestError(f"request is not JSON: {exc}"[:200]) from None
    if not isinstance(body, dict):
        raise BadRequestError("request is not a JSON object")
    extra = sorted(set(body) - {"path", "offset", "length"})
    if extra:
        raise BadRequestError(f"unexpected fields {extra}")
    path, offset, length = body.get("path"), body.get("offset"), body.get("length")
    if not isinstance(path, str):
        raise BadRequestError(f"path must be a string, got {path!r}"[:200])
    if not _is_int(offset) or offset < 0:
        raise BadRequestError(f"offset must be an integer >= 0, got {offset!r}"[:200])
    if not _is_int(length) or not 0 < length <= MAX_RANGE_LENGTH:
        raise BadRequestError(f"length must be 1..{MAX_RANGE_LENGTH}, got {length!r}"[:200])
    return FileRequest(path, offset, length)


def check_path_syntax(path: str) -> None:
    """The path rules that need no disk: relative, under a served dir, no tricks."""
    shown = repr(path[:100])
    if not path or len(path) > MAX_PATH_LENGTH:
        raise BadRequestError(f"path length {len(path)} not in 1..{MAX_PATH_LENGTH}")
    if "\\" in path or any(ord(char) < 0x20 for char in path):
        raise BadRequestError(f"path {shown} holds a backslash or a control character")
    try:
        path.encode()
    except UnicodeEncodeError:
        raise BadRequestError(f"path {shown} is not valid UTF-8") from None
    if path.startswith("/"):
        raise BadRequestError(f"path {shown} is absolute")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise BadRequestError(f"path {shown} has an empty, '.' or '..' component")
    if parts[0] not in SERVED_DIRS or len(parts) < 2:
        raise BadRequestError(f"path {shown} is not under metadata/ or targets/")


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _error(status: int, message: str, offset: int) -> FileReply:
    return FileReply(status, message.encode()[:500], None, offset)


def max_reply_bytes(reply_topic: str, max_packet_size: int | None) -> int:
    """The most bytes of a range whose reply PUBLISH fits the broker's limit and
    ``MAX_REPLY_PACKET``."""
    limit = min(max_packet_size or MAX_REPLY_PACKET, MAX_REPLY_PACKET)
    properties = 0  # a reply has no v5 properties
    header = 2 + REPLY_HEADER_MAX  # the payload's header: its length, then at most this much
    room = limit - publish_packet_size(reply_topic, header, 1, properties)
    # The remaining-length varint grows with the payload: step back until the packet fits.
    while room > 0 and publish_packet_size(reply_topic, room + header, 1, properties) > limit:
        room -= 1
    return room


class FileService:
    """Serves ``RepositoryFiles`` to the devices over the controller's link.

    Call ``on_message`` (on the loop thread) for messages on ``subscription()``; ``close()``
    when the controller stops.
    """

    def __init__(
        self,
        link: MqttLink,
        files: RepositoryFiles,
        *,
        workers: int = 1,
        max_pending: int = 32,
        rate_per_s: float = DEFAULT_RATE_PER_S,
        burst: int = DEFAULT_BURST,
    ) -> None:
        self._link = link
        self._limiter = RateLimiter(rate_per_s, burst)
        self.rejections = RejectionLedger(log, event="fileserver.rejected")
        self._files = files
        self._max_pending = max_pending
        self._pending = 0
        # One reader by default: a range in the page cache is a memory copy, so parallel
        # readers on a small server only interleave the replies, and the first reply of a
        # download then arrives with the last (bench/bench_ota.py: the first chunk came
        # sooner with one reader than with four). A slow disk may want more.
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="fileserver")
        self.dropped = 0  # requests refused because too many were pending

    def subscription(self) -> str:
        return all_devices(Channel.FETCH)

    def on_message(self, msg: InboundMessage) -> None:
        """Start answering one request; invalid or excess requests are dropped and counted.

        Never raises: whatever the message holds, it is acknowledged first (a lost request is
        only a device-side retry, so it is never redelivered) and a failure here is counted.
        """
        self._link.ack(msg)
        try:
            self._take(msg)
        except Exception as exc:  # one odd request must not stop the controller's loop
            log.exception("fileserver.handler_failed", topic=msg.topic[:256])
            self._refuse(msg, "handler_failed", repr(exc))

    def _take(self, msg: InboundMessage) -> None:
        reply_topic = self._reply_topic(msg)
        if reply_topic is None or msg.correlation_data is None:
            return
        if not self._limiter.admit(reply_topic):
            self._refuse(msg, "rate_limited", "too many requests from this device")
            return
        if self._pending >= self._max_pending:
            self.dropped += 1
            self._refuse(msg, "busy", f"{self._pending} requests pending")
            return
        info = self._link.info
        correlation = bytes(msg.correlation_data)
        max_reply = max_reply_bytes(reply_topic, info.max_packet_size if info else None)
        self._pending += 1
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(
            self._executor, self._encoded_answer, msg.payload, max_reply, correlation
        )
        work.add_done_callback(lambda done: self._send(done, reply_topic))

    def _refuse(self, msg: InboundMessage, reason: str, detail: str) -> None:
        self.rejections.reject(msg.topic, msg.payload, reason, detail, retained=msg.retain)

    def _encoded_answer(
        self, payload: bytes | bytearray, max_reply: int, correlation: bytes
    ) -> bytes:
        # Encoding copies the whole range: do it in the worker, not on the loop thread.
        return self._files.answer(payload, max_reply).encode(correlation)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _reply_topic(self, msg: InboundMessage) -> str | None:
        try:
            topic = parse(msg.topic)
        except TopicError as exc:
            self._refuse(msg, "topic", str(exc))
            return None
        if topic.channel is not Channel.FETCH:
            self._refuse(msg, "topic", "not a fetch topic")
            return None
        expected = topic_for(topic.device_id, Channel.FILE)
        if msg.response_topic != expected:
            shown = repr((msg.response_topic or "")[:100])
            self._refuse(msg, "response_topic", f"response topic {shown}, expected {expected}")
            return None
        size = len(msg.correlation_data or b"")
        if not 0 < size <= MAX_CORRELATION_BYTES:
            self._refuse(msg, "correlation", f"correlation data of {size} bytes")
            return None
        return expected

    def _send(self, done: asyncio.Future[bytes], topic: str) -> None:
        if done.cancelled() or done.exception() is not None:
            self._pending -= 1
            if not done.cancelled():
                log.error("fileserver.answer_failed", topic=topic, error=repr(done.exception()))
            return
        # No v5 property at all, the correlation is in the payload: a device on plain paho
        # copies the packet several times per property (edge_contract.fetchcodec.encode_reply).
        options = PublishOptions(content_type=None)
        try:
            acked = self._link.publish(topic, done.result(), qos=1, options=options)
        except MqttError as exc:
            self._pending -= 1
            log.warning("fileserver.reply_failed", topic=topic, error=str(exc))
            return
        acked.add_done_callback(self._settled)

    def _settled(self, acked: asyncio.Future[None]) -> None:
        self._pending -= 1
        if not acked.cancelled() and acked.exception() is not None:
            log.warning("fileserver.reply_refused", error=str(acked.exception()))
