# GENERATED from firmware/protocol/messages.toml by firmware/protocol/generate.py — do not edit
"""Messages of the serial protocol with the Arduino: one frozen dataclass per message type.

Payloads are little-endian; a ``str`` is a u8 length and that many UTF-8 bytes. ``encode``
validates every field (``ValueError`` naming it); ``decode`` raises ``MessageError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

from agent.errors import MessageError
from agent.serial.message_base import FieldSpec, Message, PayloadReader, pack_int, pack_str

PROTOCOL_VERSION = 1
PROTOCOL_HASH = 0xb053cba3
MAX_PAYLOAD = 48
ACTUATORS = 6
SENSORS = 6


@dataclass(frozen=True)
class HelloRequest(Message):
    """Host opens the session; the device answers with hello.

    Type 0x01, host to device.
    """

    TYPE: ClassVar[int] = 0x01
    NEEDS_ACK: ClassVar[bool] = False
    NAME: ClassVar[str] = "hello_request"
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        FieldSpec("host_version", "u16"),
        FieldSpec("protocol_hash", "u32"),
    )

    host_version: int
    protocol_hash: int

    def encode(self) -> bytes:
        return (
            pack_int("u16", "HelloRequest.host_version", self.host_version)
            + pack_int("u32", "HelloRequest.protocol_hash", self.protocol_hash)
        )

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        reader = PayloadReader(cls.TYPE, payload)
        message = cls(
            host_version=reader.number("u16", "host_version"),
            protocol_hash=reader.number("u32", "protocol_hash"),
        )
        reader.done()
        return message


@dataclass(frozen=True)
class Hello(Message):
    """Device identity and capabilities.

    Type 0x02, device to host.
    """

    TYPE: ClassVar[int] = 0x02
    NEEDS_ACK: ClassVar[bool] = False
    NAME: ClassVar[str] = "hello"
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        FieldSpec("firmware_version", "u16"),
        FieldSpec("protocol_hash", "u32"),
        FieldSpec("sensor_mask", "u8"),
        FieldSpec("actuator_mask", "u8"),
        FieldSpec("failsafe_ms", "u16"),
        FieldSpec("sensor_period_ms", "u16"),
        FieldSpec("reset_cause", "u8"),
    )

    firmware_version: int
    protocol_hash: int
    #: bit n set: ADC channel n is sampled
    sensor_mask: int
    #: bit n set: PORTB pin n is an actuator
    actuator_mask: int
    #: heartbeat timeout before the safe state
    failsafe_ms: int
    sensor_period_ms: int
    #: MCUSR at boot: 1 power-on, 2 external, 8 watchdog
    reset_cause: int

    def encode(self) -> bytes:
        return (
            pack_int("u16", "Hello.firmware_version", self.firmware_version)
            + pack_int("u32", "Hello.protocol_hash", self.protocol_hash)
            + pack_int("u8", "Hello.sensor_mask", self.sensor_mask)
            + pack_int("u8", "Hello.actuator_mask", self.actuator_mask)
            + pack_int("u16", "Hello.failsafe_ms", self.failsafe_ms)
            + pack_int("u16", "Hello.sensor_period_ms", self.sensor_period_ms)
            + pack_int("u8", "Hello.reset_cause", self.reset_cause)
        )

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        reader = PayloadReader(cls.TYPE, payload)
        message = cls(
            firmware_version=reader.number("u16", "firmware_version"),
            protocol_hash=reader.number("u32", "protocol_hash"),
            sensor_mask=reader.number("u8", "sensor_mask"),
            actuator_mask=reader.number("u8", "actuator_mask"),
            failsafe_ms=reader.number("u16", "failsafe_ms"),
            sensor_period_ms=reader.number("u16", "sensor_period_ms"),
            reset_cause=reader.number("u8", "reset_cause"),
        )
        reader.done()
        return message


@dataclass(frozen=True)
class Heartbeat(Message):
    """Liveness; the host's heartbeats keep the device out of its fail-safe state.

    Type 0x03, both.
    """

    TYPE: ClassVar[int] = 0x03
    NEEDS_ACK: ClassVar[bool] = False
    NAME: ClassVar[str] = "heartbeat"
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        FieldSpec("uptime_ms", "u32"),
        FieldSpec("flags", "u8"),
    )

    uptime_ms: int
    #: bit0: device in fail-safe; bit1: fail-safe tripped since the last heartbeat
    flags: int

    def encode(self) -> bytes:
        return (
            pack_int("u32", "Heartbeat.uptime_ms", self.uptime_ms)
            + pack_int("u8", "Heartbeat.flags", self.flags)
        )

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        reader = PayloadReader(cls.TYPE, payload)
        message = cls(
            uptime_ms=reader.number("u32", "uptime_ms"),
            flags=reader.number("u8", "flags"),
        )
        reader.done()
        return message


@dataclass(frozen=True)
class Sensor(Message):
    """One ADC reading.

    Type 0x04, device to host.
    """

    TYPE: ClassVar[int] = 0x04
    NEEDS_ACK: ClassVar[bool] = False
    NAME: ClassVar[str] = "sensor"
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        FieldSpec("channel", "u8"),
        FieldSpec("value", "u16"),
        FieldSpec("uptime_ms", "u32"),
    )

    channel: int
    #: raw 10-bit ADC value, 0..1023
    value: int
    uptime_ms: int

    def encode(self) -> bytes:
        return (
            pack_int("u8", "Sensor.channel", self.channel)
            + pack_int("u16", "Sensor.value", self.value)
            + pack_int("u32", "Sensor.uptime_ms", self.uptime_ms)
        )

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        reader = PayloadReader(cls.TYPE, payload)
        message = cls(
            channel=reader.number("u8", "channel"),
            value=reader.number("u16", "value"),
            uptime_ms=reader.number("u32", "uptime_ms"),
        )
        reader.done()
        return message


@dataclass(frozen=True)
class Actuate(Message):
    """Set an actuator (an inference result turned into a command).

    Type 0x05, host to device; acknowledged with ack/nack.
    """

    TYPE: ClassVar[int] = 0x05
    NEEDS_ACK: ClassVar[bool] = True
    NAME: ClassVar[str] = "actuate"
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        FieldSpec("actuator", "u8"),
        FieldSpec("value", "u8"),
    )

    #: PORTB pin number
    actuator: int
    #: 0 off, 1 on
    value: int

    def encode(self) -> bytes:
        return (
            pack_int("u8", "Actuate.actuator", self.actuator)
            + pack_int("u8", "Actuate.value", self.value)
        )

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        reader = PayloadReader(cls.TYPE, payload)
        message = cls(
            actuator=reader.number("u8", "actuator"),
            value=reader.number("u8", "value"),
        )
        reader.done()
        return message


@dataclass(frozen=True)
class Ack(Message):
    """The ack message.

    Type 0x06, both.
    """

    TYPE: ClassVar[int] = 0x06
    NEEDS_ACK: ClassVar[bool] = False
    NAME: ClassVar[str] = "ack"
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        FieldSpec("seq", "u8"),
    )

    seq: int

    def encode(self) -> bytes:
        return pack_int("u8", "Ack.seq", self.seq)

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        reader = PayloadReader(cls.TYPE, payload)
        message = cls(
            seq=reader.number("u8", "seq"),
        )
        reader.done()
        return message


@dataclass(frozen=True)
class Nack(Message):
    """The nack message.

    Type 0x07, both.
    """

    TYPE: ClassVar[int] = 0x07
    NEEDS_ACK: ClassVar[bool] = False
    NAME: ClassVar[str] = "nack"
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        FieldSpec("seq", "u8"),
        FieldSpec("reason", "u8"),
    )

    seq: int
    #: 1 unknown type, 2 bad length, 3 bad value, 4 not ready
    reason: int

    def encode(self) -> bytes:
        return (
            pack_int("u8", "Nack.seq", self.seq)
            + pack_int("u8", "Nack.reason", self.reason)
        )

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        reader = PayloadReader(cls.TYPE, payload)
        message = cls(
            seq=reader.number("u8", "seq"),
            reason=reader.number("u8", "reason"),
        )
        reader.done()
        return message


@dataclass(frozen=True)
class Log(Message):
    """The log message.

    Type 0x08, device to host.
    """

    TYPE: ClassVar[int] = 0x08
    NEEDS_ACK: ClassVar[bool] = False
    NAME: ClassVar[str] = "log"
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        FieldSpec("level", "u8"),
        FieldSpec("text", "str", 40),
    )

    #: 0 debug, 1 info, 2 warning, 3 error
    level: int
    text: str

    def encode(self) -> bytes:
        return (
            pack_int("u8", "Log.level", self.level)
            + pack_str("Log.text", self.text, 40)
        )

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        reader = PayloadReader(cls.TYPE, payload)
        message = cls(
            level=reader.number("u8", "level"),
            text=reader.text("text", 40),
        )
        reader.done()
        return message


@dataclass(frozen=True)
class Error(Message):
    """The error message.

    Type 0x09, device to host.
    """

    TYPE: ClassVar[int] = 0x09
    NEEDS_ACK: ClassVar[bool] = False
    NAME: ClassVar[str] = "error"
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        FieldSpec("code", "u8"),
        FieldSpec("detail", "u32"),
    )

    #: 1 protocol hash mismatch, 2 rx overflow
    code: int
    detail: int

    def encode(self) -> bytes:
        return (
            pack_int("u8", "Error.code", self.code)
            + pack_int("u32", "Error.detail", self.detail)
        )

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        reader = PayloadReader(cls.TYPE, payload)
        message = cls(
            code=reader.number("u8", "code"),
            detail=reader.number("u32", "detail"),
        )
        reader.done()
        return message


@dataclass(frozen=True)
class Stats(Message):
    """Link counters, sent with every heartbeat reply.

    Type 0x0a, device to host.
    """

    TYPE: ClassVar[int] = 0x0a
    NEEDS_ACK: ClassVar[bool] = False
    NAME: ClassVar[str] = "stats"
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        FieldSpec("rx_frames", "u16"),
        FieldSpec("crc_errors", "u16"),
        FieldSpec("framing_errors", "u16"),
        FieldSpec("rx_overflows", "u16"),
        FieldSpec("failsafe_trips", "u16"),
    )

    rx_frames: int
    crc_errors: int
    framing_errors: int
    rx_overflows: int
    failsafe_trips: int

    def encode(self) -> bytes:
        return (
            pack_int("u16", "Stats.rx_frames", self.rx_frames)
            + pack_int("u16", "Stats.crc_errors", self.crc_errors)
            + pack_int("u16", "Stats.framing_errors", self.framing_errors)
            + pack_int("u16", "Stats.rx_overflows", self.rx_overflows)
            + pack_int("u16", "Stats.failsafe_trips", self.failsafe_trips)
        )

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        reader = PayloadReader(cls.TYPE, payload)
        message = cls(
            rx_frames=reader.number("u16", "rx_frames"),
            crc_errors=reader.number("u16", "crc_errors"),
            framing_errors=reader.number("u16", "framing_errors"),
            rx_overflows=reader.number("u16", "rx_overflows"),
            failsafe_trips=reader.number("u16", "failsafe_trips"),
        )
        reader.done()
        return message


@dataclass(frozen=True)
class Configure(Message):
    """The configure message.

    Type 0x0b, host to device; acknowledged with ack/nack.
    """

    TYPE: ClassVar[int] = 0x0b
    NEEDS_ACK: ClassVar[bool] = True
    NAME: ClassVar[str] = "configure"
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        FieldSpec("sensor_period_ms", "u16"),
        FieldSpec("failsafe_ms", "u16"),
        FieldSpec("sensor_mask", "u8"),
    )

    #: 0 stops sampling
    sensor_period_ms: int
    failsafe_ms: int
    sensor_mask: int

    def encode(self) -> bytes:
        return (
            pack_int("u16", "Configure.sensor_period_ms", self.sensor_period_ms)
            + pack_int("u16", "Configure.failsafe_ms", self.failsafe_ms)
            + pack_int("u8", "Configure.sensor_mask", self.sensor_mask)
        )

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        reader = PayloadReader(cls.TYPE, payload)
        message = cls(
            sensor_period_ms=reader.number("u16", "sensor_period_ms"),
            failsafe_ms=reader.number("u16", "failsafe_ms"),
            sensor_mask=reader.number("u8", "sensor_mask"),
        )
        reader.done()
        return message


MESSAGE_TYPES: dict[int, type[Message]] = {
    HelloRequest.TYPE: HelloRequest,
    Hello.TYPE: Hello,
    Heartbeat.TYPE: Heartbeat,
    Sensor.TYPE: Sensor,
    Actuate.TYPE: Actuate,
    Ack.TYPE: Ack,
    Nack.TYPE: Nack,
    Log.TYPE: Log,
    Error.TYPE: Error,
    Stats.TYPE: Stats,
    Configure.TYPE: Configure,
}


def decode_message(msg_type: int, payload: bytes) -> Message:
    """The message in a frame; raises MessageError for an unknown type or a bad payload."""
    cls = MESSAGE_TYPES.get(msg_type)
    if cls is None:
        raise MessageError("unknown message type", msg_type=msg_type, payload=payload)
    return cls.decode(payload)


__all__ = [
    "ACTUATORS",
    "MAX_PAYLOAD",
    "MESSAGE_TYPES",
    "PROTOCOL_HASH",
    "PROTOCOL_VERSION",
    "SENSORS",
    "Ack",
    "Actuate",
    "Configure",
    "Error",
    "FieldSpec",
    "Heartbeat",
    "Hello",
    "HelloRequest",
    "Log",
    "Message",
    "Nack",
    "Sensor",
    "Stats",
    "decode_message",
]
