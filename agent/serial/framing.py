"""Frames of the serial link: CRC-16/CCITT-FALSE, COBS, and a streaming frame decoder.

Pure functions over bytes (no pyserial, no IO), so both sides of the link and the golden
vectors in ``firmware/protocol/golden_vectors.json`` are checked against the same code.

A frame on the wire is ``COBS(seq u8 | type u8 | payload | crc16 u16 LE)`` followed by a
0x00 delimiter; the CRC covers seq, type and payload (see ``firmware/protocol/messages.toml``).

``FrameDecoder`` never raises on bad input: it drops invalid frames and counts them. Garbage
that precedes a frame without a delimiter of its own is skipped by trying the chunk's suffixes,
so line noise, a frame cut short by a reset, or a lost delimiter costs at most the damaged
frame, never the next one. The price is a few more CRC trials per damaged chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from agent.errors import FrameError

# Relative on purpose: generate.py loads this module against a freshly rendered messages_gen.
from .messages_gen import MAX_PAYLOAD

CRC_INIT = 0xFFFF
CRC_POLY = 0x1021
HEADER_SIZE = 2  # seq, type
CRC_SIZE = 2
MIN_RAW = HEADER_SIZE + CRC_SIZE
MAX_RAW = MIN_RAW + MAX_PAYLOAD
COBS_BLOCK = 254  # data bytes per COBS code byte at most (code 0xFF)


def cobs_max_encoded(size: int) -> int:
    """The longest COBS encoding of ``size`` bytes (without the delimiter)."""
    return size + size // COBS_BLOCK + 1


MIN_ENCODED = cobs_max_encoded(MIN_RAW)
MAX_ENCODED = cobs_max_encoded(MAX_RAW)


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ CRC_POLY if crc & 0x8000 else crc << 1) & 0xFFFF
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16_ccitt(data: bytes, crc: int = CRC_INIT) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final xor).

    Pass a previous result as ``crc`` to continue over more data.
    """
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC_TABLE[(crc >> 8) ^ byte]
    return crc


def cobs_encode(data: bytes) -> bytes:
    """Consistent Overhead Byte Stuffing: the result holds no 0x00 byte.

    A run of exactly 254 non-zero bytes at the end gets no trailing code byte (the usual
    encoder); ``cobs_decode`` inverts this for every input.
    """
    out = bytearray()
    groups = data.split(b"\x00")
    for index, group in enumerate(groups):
        full_blocks, rest = divmod(len(group), COBS_BLOCK)
        for block in range(full_blocks):
            out += b"\xff" + group[block * COBS_BLOCK : (block + 1) * COBS_BLOCK]
        if rest or not full_blocks or index < len(groups) - 1:
            out.append(rest + 1)
            out += group[len(group) - rest :]
    return bytes(out)


def _cobs_decode(data: bytes) -> bytes | str:
    """The decoded bytes, or why ``data`` is not a COBS encoding."""
    if not data:
        return "empty COBS data"
    out = bytearray()
    index = 0
    while index < len(data):
        code = data[index]
        end = index + code
        if code == 0 or end > len(data) or 0 in data[index + 1 : end]:
            return f"bad COBS code 0x{code:02x} at offset {index}"
        out += data[index + 1 : end]
        index = end
        if code != 0xFF and index < len(data):
            out.append(0)
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Invert ``cobs_encode``; raises ``FrameError`` for input no encoder produces."""
    result = _cobs_decode(data)
    if isinstance(result, str):
        raise FrameError(result, data=data)
    return result


@dataclass(frozen=True)
class Frame:
    """One decoded frame: sequence number, message type, and the message's payload."""

    seq: int
    msg_type: int
    payload: bytes


def encode_frame(seq: int, msg_type: int, payload: bytes) -> bytes:
    """The wire bytes of one frame: COBS-encoded seq, type, payload and CRC, then 0x00.

    Raises:
        ValueError: seq or type is not a byte, or the payload is longer than MAX_PAYLOAD.
    """
    if not 0 <= seq <= 0xFF:
        raise ValueError(f"seq must be in 0..255, got {seq}")
    if not 0 <= msg_type <= 0xFF:
        raise ValueError(f"msg_type must be in 0..255, got {msg_type}")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload is {len(payload)} bytes, over the maximum of {MAX_PAYLOAD}")
    raw = bytes((seq, msg_type)) + payload
    return cobs_encode(raw + crc16_ccitt(raw).to_bytes(CRC_SIZE, "little")) + b"\x00"


class _Rejected(NamedTuple):
    """Why a chunk is not a frame: ``kind`` is empty, cobs, short, long or crc."""

    kind: str
    message: str


def _unstuff(encoded: bytes) -> bytes | _Rejected:
    """The raw frame (seq, type, payload, CRC) if its COBS and length are right."""
    if not encoded:
        return _Rejected("empty", "empty frame")
    if len(encoded) > MAX_ENCODED:
        return _Rejected("long", f"frame too long: {len(encoded)} encoded bytes")
    raw = _cobs_decode(encoded)
    if isinstance(raw, str):
        return _Rejected("cobs", raw)
    if len(raw) < MIN_RAW:
        return _Rejected("short", f"frame too short: {len(raw)} bytes")
    return raw


def _parse(encoded: bytes) -> Frame | _Rejected:
    raw = _unstuff(encoded)
    if isinstance(raw, _Rejected):
        return raw
    body, received = raw[:-CRC_SIZE], int.from_bytes(raw[-CRC_SIZE:], "little")
    computed = crc16_ccitt(body)
    if computed != received:
        return _Rejected("crc", f"CRC mismatch: got 0x{received:04x}, want 0x{computed:04x}")
    return Frame(body[0], body[1], body[HEADER_SIZE:])


def decode_frame(encoded_without_delimiter: bytes) -> Frame:
    """Decode one frame's bytes between delimiters.

    Raises:
        FrameError: empty, bad COBS, too short, too long, or a CRC mismatch.
    """
    result = _parse(encoded_without_delimiter)
    if isinstance(result, _Rejected):
        raise FrameError(result.message, data=encoded_without_delimiter)
    return result


def _parse_suffix(chunk: bytes, first: int) -> Frame | None:
    """The frame that ends ``chunk`` after some garbage, trying the longest suffix first."""
    for start in range(first, len(chunk) - MIN_ENCODED + 1):
        result = _parse(chunk[start:])
        if isinstance(result, Frame):
            return result
    return None


class FrameDecoder:
    """Turns a byte stream into frames; invalid frames are dropped and counted, never raised.

    Counters: ``frames`` (valid frames returned), ``crc_errors``, ``framing_errors`` (bad COBS,
    too short, garbage skipped before a frame), ``oversize`` (runs longer than the longest
    frame without a delimiter, counted once per run). Empty chunks (0x00 0x00) are idle
    delimiters and count as nothing.
    """

    def __init__(self) -> None:
        self.frames = 0
        self.crc_errors = 0
        self.framing_errors = 0
        self.oversize = 0
        self._buffer = bytearray()
        self._overflowed = False

    def feed(self, data: bytes) -> list[Frame]:
        """Take the next bytes from the line; return the frames they complete, in order."""
        frames: list[Frame] = []
        start = 0
        while (end := data.find(0, start)) >= 0:
            self._append(data[start:end])
            frame = self._finish()
            if frame is not None:
                frames.append(frame)
            start = end + 1
        self._append(data[start:])
        return frames

    def _append(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > MAX_ENCODED:
            # Keep only what could still be a frame: its end may come with the next 0x00.
            del self._buffer[:-MAX_ENCODED]
            if not self._overflowed:
                self._overflowed = True
                self.oversize += 1

    def _finish(self) -> Frame | None:
        chunk, overflowed = bytes(self._buffer), self._overflowed
        self._buffer.clear()
        self._overflowed = False
        whole = None if overflowed else _parse(chunk)
        if isinstance(whole, Frame):
            self.frames += 1
            return whole
        if whole is not None and whole.kind == "empty":
            return None
        frame = _parse_suffix(chunk, 0 if overflowed else 1)
        if whole is not None:
            if whole.kind == "crc" and frame is None:
                self.crc_errors += 1
            else:
                self.framing_errors += 1
        if frame is not None:
            self.frames += 1
        return frame


__all__ = [
    "MAX_ENCODED",
    "MAX_RAW",
    "Frame",
    "FrameDecoder",
    "cobs_decode",
    "cobs_encode",
    "crc16_ccitt",
    "decode_frame",
    "encode_frame",
]
