"""The serial transport: the only module that imports pyserial.

Opens a port by path or finds a board by USB VID:PID, reads with the event loop
(``add_reader`` on the port's file descriptor), and turns every pyserial or OS failure
(unplugged cable, emulator gone) into ``SerialLinkError`` so the session above can reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib

import serial
import serial.tools.list_ports

from agent.errors import SerialLinkError

_READ_CHUNK = 256
_QUEUE_LIMIT = 256


def find_port(vid_pid: str) -> str:
    """The device path of the first USB serial port whose ``VID:PID`` (hex) matches."""
    try:
        vid_text, pid_text = vid_pid.split(":")
        vid, pid = int(vid_text, 16), int(pid_text, 16)
    except ValueError:
        raise SerialLinkError(f"usb id must be VID:PID in hex, got {vid_pid!r}") from None
    for port in serial.tools.list_ports.comports():
        if port.vid == vid and port.pid == pid:
            return str(port.device)
    raise SerialLinkError(f"no serial port with USB id {vid_pid}")


class SerialTransport:
    """An open port: ``read()`` returns bytes as they arrive, ``write()`` sends them."""

    def __init__(self, port: serial.Serial, path: str) -> None:
        self._port = port
        self.path = path
        self._chunks: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=_QUEUE_LIMIT)
        self._loop = asyncio.get_running_loop()
        self._closed = False
        self._loop.add_reader(port.fileno(), self._on_readable)

    @classmethod
    async def open(cls, path: str, baudrate: int) -> SerialTransport:
        """Open ``path``; raises ``SerialLinkError`` if it is missing or busy."""
        try:
            port = await asyncio.to_thread(
                serial.Serial, path, baudrate, timeout=0, write_timeout=2, exclusive=True
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise SerialLinkError(f"cannot open {path}: {exc}") from None
        return cls(port, path)

    def _on_readable(self) -> None:
        try:
            data = self._port.read(self._port.in_waiting or _READ_CHUNK)
        except (serial.SerialException, OSError, TypeError):
            # pyserial raises TypeError from in_waiting when the fd vanished mid-call.
            data = b""
        if not data:
            # Readable with no data: the other end is gone (unplugged, pty closed).
            self._detach()
            self._push(None)
            return
        self._push(data)

    def _push(self, item: bytes | None) -> None:
        try:
            self._chunks.put_nowait(item)
        except asyncio.QueueFull:
            # The reader fell far behind; dropping bytes is what a UART does, and the
            # framing layer resynchronises at the next delimiter.
            pass

    async def read(self) -> bytes:
        """Next chunk of bytes; raises ``SerialLinkError`` once the port is gone."""
        if self._closed and self._chunks.empty():
            raise SerialLinkError(f"{self.path} is closed")
        chunk = await self._chunks.get()
        if chunk is None:
            self._closed = True
            raise SerialLinkError(f"{self.path} disconnected")
        return chunk

    async def write(self, data: bytes) -> None:
        if self._closed:
            raise SerialLinkError(f"{self.path} is closed")
        try:
            await asyncio.to_thread(self._port.write, data)
        except (serial.SerialException, OSError) as exc:
            self._closed = True
            raise SerialLinkError(f"write to {self.path} failed: {exc}") from None

    def _detach(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self._port.fileno())

    async def close(self) -> None:
        if not self._closed:
            self._detach()
        self._closed = True
        with contextlib.suppress(serial.SerialException, OSError):
            await asyncio.to_thread(self._port.close)
