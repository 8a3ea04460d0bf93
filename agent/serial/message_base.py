"""The hand-written base of the generated serial messages (``messages_gen.py``).

Field codecs for the spec's types (u8, u16, u32, i16, str), a payload reader whose every
failure is a ``MessageError``, and the ``Message`` base class. The generator only emits the
per-message classes on top of these, so this code exists once.
"""

from __future__ import annotations

import struct
from typing import ClassVar, NamedTuple, Self

from agent.errors import MessageError

_INTS: dict[str, tuple[struct.Struct, int, int]] = {
    "u8": (struct.Struct("<B"), 0, 0xFF),
    "u16": (struct.Struct("<H"), 0, 0xFFFF),
    "u32": (struct.Struct("<I"), 0, 0xFFFFFFFF),
    "i16": (struct.Struct("<h"), -0x8000, 0x7FFF),
}


class FieldSpec(NamedTuple):
    """A payload field: ``kind`` is u8, u16, u32, i16 or str (``max`` UTF-8 bytes)."""

    name: str
    kind: str
    max: int = 0


def pack_int(kind: str, name: str, value: int) -> bytes:
    layout, low, high = _INTS[kind]
    if not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in {low}..{high}, got {value!r}")
    return layout.pack(value)


def pack_str(name: str, value: str, max_len: int) -> bytes:
    try:
        data = value.encode("utf-8")
    except (AttributeError, UnicodeEncodeError) as exc:
        raise ValueError(f"{name} must be a str encodable as UTF-8, got {value!r}") from exc
    if len(data) > max_len:
        raise ValueError(f"{name} is {len(data)} bytes of UTF-8, over its maximum of {max_len}")
    return bytes((len(data),)) + data


class PayloadReader:
    """Reads a payload front to back; every failure is a MessageError."""

    def __init__(self, msg_type: int, payload: bytes) -> None:
        self._type = msg_type
        self._payload = payload
        self._offset = 0

    def _fail(self, problem: str) -> MessageError:
        return MessageError(problem, msg_type=self._type, payload=self._payload)

    def _take(self, size: int, name: str) -> bytes:
        end = self._offset + size
        if end > len(self._payload):
            raise self._fail(f"payload too short for {name}")
        data = self._payload[self._offset : end]
        self._offset = end
        return data

    def number(self, kind: str, name: str) -> int:
        layout = _INTS[kind][0]
        value: int = layout.unpack(self._take(layout.size, name))[0]
        return value

    def text(self, name: str, max_len: int) -> str:
        size = self.number("u8", name)
        if size > max_len:
            raise self._fail(f"{name} is {size} bytes, over its maximum of {max_len}")
        try:
            return self._take(size, name).decode("utf-8")
        except UnicodeDecodeError:
            raise self._fail(f"{name} is not valid UTF-8") from None

    def done(self) -> None:
        if self._offset != len(self._payload):
            raise self._fail(f"payload has {len(self._payload) - self._offset} extra bytes")


class Message:
    """Base of the generated messages: a payload codec tagged with its type id."""

    TYPE: ClassVar[int]
    NEEDS_ACK: ClassVar[bool]
    NAME: ClassVar[str]
    FIELDS: ClassVar[tuple[FieldSpec, ...]]

    def encode(self) -> bytes:
        """The payload (no seq, type or CRC); raises ValueError naming a bad field."""
        raise NotImplementedError

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        """Parse a payload; raises MessageError for a wrong length, bad UTF-8 or long str."""
        raise NotImplementedError
