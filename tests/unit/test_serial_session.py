"""The serial session's protocol logic over an in-memory transport (our own interface).

The firmware itself is exercised end to end in tests/integration; here a scripted peer checks
the host side's handshake, acknowledgements, resends and refusal of another protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import pytest

from agent.errors import HandshakeError, SerialLinkError
from agent.serial import messages_gen as msg
from agent.serial.framing import FrameDecoder, encode_frame
from agent.serial.session import LinkStats, PeripheralSession


class ScriptedPeer:
    """Implements the Transport protocol; answers frames like a simple firmware would."""

    def __init__(
        self,
        *,
        protocol_hash: int = msg.PROTOCOL_HASH,
        drop_first: int = 0,
        never_ack: bool = False,
    ) -> None:
        self.protocol_hash = protocol_hash
        self.drop_first = drop_first
        self.never_ack = never_ack
        self.received: list[msg.Message] = []
        self._decoder = FrameDecoder()
        self._outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._seq = 0

    def _reply(self, message: msg.Message) -> None:
        self._seq = (self._seq + 1) & 0xFF
        self._outbox.put_nowait(encode_frame(self._seq, message.TYPE, message.encode()))

    async def write(self, data: bytes) -> None:
        for frame in self._decoder.feed(data):
            if self.drop_first > 0:
                self.drop_first -= 1
                continue
            message = msg.decode_message(frame.msg_type, frame.payload)
            self.received.append(message)
            self._answer(frame.seq, message)

    def _answer(self, seq: int, message: msg.Message) -> None:
        if isinstance(message, msg.HelloRequest):
            self._reply(msg.Hello(7, self.protocol_hash, 0x01, 0x3F, 1500, 100, 1))
        elif isinstance(message, msg.Heartbeat):
            self._reply(msg.Heartbeat(1234, 0))
        elif message.NEEDS_ACK and not self.never_ack:
            self._reply(msg.Ack(seq))

    async def read(self) -> bytes:
        chunk = await self._outbox.get()
        if chunk is None:
            raise SerialLinkError("peer gone")
        return chunk

    async def close(self) -> None:
        self._outbox.put_nowait(None)

    def unplug(self) -> None:
        self._outbox.put_nowait(None)


async def _with_session(
    peer: ScriptedPeer, body: Callable[[PeripheralSession, LinkStats], object]
) -> None:
    stats = LinkStats()
    session = PeripheralSession(
        peer, stats, on_message=lambda _m: None, ack_timeout_s=0.05, max_retries=3
    )
    reader = asyncio.create_task(session.run())
    try:
        await body(session, stats)  # type: ignore[misc]
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, SerialLinkError):
            await reader


class TestSession:
    def test_handshake_and_acknowledged_actuate(self) -> None:
        """Hello is exchanged; an actuate is acknowledged; round trips are measured."""
        peer = ScriptedPeer()

        async def body(session: PeripheralSession, stats: LinkStats) -> None:
            hello = await session.handshake(2)
            assert hello.firmware_version == 7
            await session.send(msg.Actuate(5, 1))
            await session.heartbeat(10)
            await asyncio.sleep(0.05)
            assert stats.resends == 0
            assert len(stats.rtt_ms) >= 2

        asyncio.run(_with_session(peer, body))
        assert msg.Actuate(5, 1) in peer.received

    def test_lost_frames_are_resent_until_acknowledged(self) -> None:
        """Two lost copies of an actuate are resent; the third arrives and is acked."""
        peer = ScriptedPeer()

        async def body(session: PeripheralSession, stats: LinkStats) -> None:
            await session.handshake(2)
            peer.drop_first = 2
            await asyncio.wait_for(session.send(msg.Actuate(3, 1)), 2)
            assert stats.resends == 2

        asyncio.run(_with_session(peer, body))

    def test_no_ack_after_every_retry_is_an_error(self) -> None:
        """A frame never acknowledged fails after max_retries resends."""
        peer = ScriptedPeer(never_ack=True)

        async def body(session: PeripheralSession, stats: LinkStats) -> None:
            await session.handshake(2)
            with pytest.raises(SerialLinkError, match="no ack"):
                await asyncio.wait_for(session.send(msg.Actuate(3, 1)), 3)
            assert stats.ack_failures == 1
            assert stats.resends == 3

        asyncio.run(_with_session(peer, body))

    def test_other_protocol_is_refused(self) -> None:
        """A firmware whose hello names another protocol hash is refused."""
        peer = ScriptedPeer(protocol_hash=msg.PROTOCOL_HASH ^ 0xFFFF)

        async def body(session: PeripheralSession, _stats: LinkStats) -> None:
            with pytest.raises(HandshakeError, match="refusing the peripheral"):
                await session.handshake(2)

        asyncio.run(_with_session(peer, body))

    def test_unplug_fails_pending_sends(self) -> None:
        """When the port goes away, a send waiting for its ack fails instead of hanging."""
        peer = ScriptedPeer(never_ack=True)
        stats = LinkStats()

        async def scenario() -> None:
            session = PeripheralSession(
                peer, stats, on_message=lambda _m: None, ack_timeout_s=5, max_retries=3
            )
            reader = asyncio.create_task(session.run())
            await session.handshake(2)
            sending = asyncio.create_task(session.send(msg.Actuate(1, 1)))
            await asyncio.sleep(0.05)
            peer.unplug()
            with pytest.raises(SerialLinkError):
                await asyncio.wait_for(sending, 2)
            with pytest.raises(SerialLinkError):
                await reader

        asyncio.run(scenario())
