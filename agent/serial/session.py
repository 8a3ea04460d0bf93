"""One session with a peripheral over an open transport: handshake, heartbeats, acks, resends.

Pure protocol logic over a ``Transport`` (anything with ``read``/``write``/``close``), so it is
tested without pyserial. Messages marked ``NEEDS_ACK`` in the spec are resent after
``ack_timeout_s`` until acknowledged, up to ``max_retries``; the receiver acknowledges by seq,
so a resent frame is recognised. Round-trip times of heartbeats and acks are kept for the
link statistics.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from agent.errors import HandshakeError, MessageError, SerialLinkError
from agent.serial import messages_gen as msg
from agent.serial.framing import Frame, FrameDecoder, encode_frame

log = structlog.get_logger("agent.serial")

HOST_VERSION = 1


class Transport(Protocol):
    """What a session needs from the port below it."""

    async def read(self) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None: ...


@dataclass
class LinkStats:
    """Counters for telemetry and health; they survive reconnects."""

    frames_in: int = 0
    frames_out: int = 0
    resends: int = 0
    ack_failures: int = 0
    bad_messages: int = 0
    crc_errors: int = 0
    framing_errors: int = 0
    device: dict[str, int] = field(default_factory=dict)
    rtt_ms: deque[float] = field(default_factory=lambda: deque(maxlen=512))

    def rtt_percentiles(self) -> tuple[float | None, float | None]:
        samples = sorted(self.rtt_ms)
        if len(samples) < 2:
            return (samples[0], samples[0]) if samples else (None, None)
        cuts = statistics.quantiles(samples, n=100, method="inclusive")
        return round(cuts[49], 3), round(cuts[98], 3)


@dataclass
class _Pending:
    frame: bytes
    future: asyncio.Future[None]
    sent_at: float
    attempts: int = 1


class PeripheralSession:
    """Speaks the protocol on one transport until it fails or is closed."""

    def __init__(
        self,
        transport: Transport,
        stats: LinkStats,
        *,
        on_message: Callable[[msg.Message], None],
        ack_timeout_s: float = 0.3,
        max_retries: int = 5,
    ) -> None:
        self._transport = transport
        self._stats = stats
        self._on_message = on_message
        self._ack_timeout_s = ack_timeout_s
        self._max_retries = max_retries
        self._decoder = FrameDecoder()
        self._seq = 0
        self._pending: dict[int, _Pending] = {}
        self._hello: asyncio.Future[msg.Hello] | None = None
        self._heartbeat_sent: float | None = None
        self.hello: msg.Hello | None = None

    async def send(self, message: msg.Message) -> None:
        """Send; for messages that need an ack, wait for it (resending as needed).

        Raises:
            SerialLinkError: the port failed, or no ack came after every retry.
        """
        self._seq = (self._seq + 1) & 0xFF
        frame = encode_frame(self._seq, message.TYPE, message.encode())
        if not message.NEEDS_ACK:
            await self._write(frame)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending[self._seq] = _Pending(frame, future, time.monotonic())
        await self._write(frame)
        await future

    async def handshake(self, timeout_s: float) -> msg.Hello:
        """Exchange hello; raises ``HandshakeError`` if the firmware speaks another spec."""
        self._hello = asyncio.get_running_loop().create_future()
        deadline = time.monotonic() + timeout_s
        while True:
            await self.send(msg.HelloRequest(HOST_VERSION, msg.PROTOCOL_HASH))
            try:
                async with asyncio.timeout(min(0.5, max(deadline - time.monotonic(), 0.01))):
                    hello = await asyncio.shield(self._hello)
                break
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise SerialLinkError("no hello from the peripheral") from None
        if hello.protocol_hash != msg.PROTOCOL_HASH:
            raise HandshakeError(
                f"firmware speaks protocol 0x{hello.protocol_hash:08x}, "
                f"this agent 0x{msg.PROTOCOL_HASH:08x}: refusing the peripheral"
            )
        self.hello = hello
        return hello

    async def heartbeat(self, uptime_ms: int) -> None:
        self._heartbeat_sent = time.monotonic()
        await self.send(msg.Heartbeat(uptime_ms & 0xFFFFFFFF, 0))

    async def run(self) -> None:
        """Read and dispatch frames, resend unacknowledged ones; returns only by raising."""
        resender = asyncio.create_task(self._resend_loop())
        try:
            while True:
                data = await self._transport.read()
                for frame in self._decoder.feed(data):
                    self._dispatch(frame)
                self._stats.crc_errors = self._decoder.crc_errors
                self._stats.framing_errors = self._decoder.framing_errors
        finally:
            resender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await resender
            self._fail_pending(SerialLinkError("link closed"))

    def _dispatch(self, frame: Frame) -> None:
        self._stats.frames_in += 1
        try:
            message = msg.decode_message(frame.msg_type, frame.payload)
        except MessageError as exc:
            self._stats.bad_messages += 1
            log.warning("serial.bad_message", error=str(exc))
            return
        if isinstance(message, msg.Ack):
            self._acknowledged(message.seq, None)
        elif isinstance(message, msg.Nack):
            self._acknowledged(
                message.seq, SerialLinkError(f"peripheral refused frame (reason {message.reason})")
            )
        elif isinstance(message, msg.Hello):
            if self._hello is not None and not self._hello.done():
                self._hello.set_result(message)
        elif isinstance(message, msg.Error) and message.code == 1:
            if self._hello is not None and not self._hello.done():
                self._hello.set_exception(
                    HandshakeError(
                        f"firmware refused our protocol 0x{msg.PROTOCOL_HASH:08x}; "
                        f"it speaks 0x{message.detail:08x}"
                    )
                )
        elif isinstance(message, msg.Heartbeat) and self._heartbeat_sent is not None:
            self._stats.rtt_ms.append((time.monotonic() - self._heartbeat_sent) * 1000)
            self._heartbeat_sent = None
        elif isinstance(message, msg.Stats):
            self._stats.device = {
                "rx_frames": message.rx_frames,
                "crc_errors": message.crc_errors,
                "framing_errors": message.framing_errors,
                "rx_overflows": message.rx_overflows,
                "failsafe_trips": message.failsafe_trips,
            }
        self._on_message(message)

    def _acknowledged(self, seq: int, error: SerialLinkError | None) -> None:
        pending = self._pending.pop(seq, None)
        if pending is None or pending.future.done():
            return
        self._stats.rtt_ms.append((time.monotonic() - pending.sent_at) * 1000)
        if error is None:
            pending.future.set_result(None)
        else:
            pending.future.set_exception(error)

    async def _resend_loop(self) -> None:
        while True:
            await asyncio.sleep(self._ack_timeout_s / 2)
            now = time.monotonic()
            for seq, pending in list(self._pending.items()):
                if now - pending.sent_at < self._ack_timeout_s:
                    continue
                if pending.attempts > self._max_retries:
                    self._pending.pop(seq, None)
                    self._stats.ack_failures += 1
                    if not pending.future.done():
                        pending.future.set_exception(
                            SerialLinkError(
                                f"no ack for frame {seq} after {pending.attempts} tries"
                            )
                        )
                    continue
                pending.attempts += 1
                pending.sent_at = now
                self._stats.resends += 1
                await self._write(pending.frame)

    async def _write(self, frame: bytes) -> None:
        await self._transport.write(frame)
        self._stats.frames_out += 1

    def _fail_pending(self, error: SerialLinkError) -> None:
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(error)
        self._pending.clear()
        if self._hello is not None and not self._hello.done():
            self._hello.set_exception(error)


__all__ = ["LinkStats", "PeripheralSession", "Transport"]
