"""Pure pieces of the MQTT link: settings, message types, reconnect backoff, packet sizes.

No paho and no IO here, so these are shared (the serial relay uses the same backoff) and
tested on their own; ``edge_runtime.mqtt.link`` is the module that talks to the broker.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edge_runtime.errors import MqttError

AckCallback = Callable[[MqttError | None], None]


@dataclass(frozen=True)
class TlsSettings:
    """Files for a TLS connection; a client certificate is optional."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None


@dataclass(frozen=True)
class Will:
    """The Last Will, published by the broker ``delay_s`` after an unclean disconnect."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True
    delay_s: int = 0


@dataclass(frozen=True)
class LinkSettings:
    """Everything needed to open and keep the connection."""

    host: str
    port: int
    client_id: str
    keepalive_s: int = 30
    session_expiry_s: int = 86400
    clean_start: bool = False
    will: Will | None = None
    tls: TlsSettings | None = None
    username: str | None = None
    password: str | None = None
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    connect_timeout_s: float = 10.0
    max_inflight: int = 20
    # Acknowledge inbound QoS 1 messages only when ``ack()`` is called (after they are stored),
    # so a crash between receipt and storage makes the broker redeliver instead of losing them.
    manual_ack: bool = False


@dataclass(frozen=True)
class ConnectionInfo:
    """What the broker told us in CONNACK."""

    session_present: bool
    max_packet_size: int | None
    receive_maximum: int


@dataclass(frozen=True)
class InboundMessage:
    """A message delivered to us, with the v5 request/response properties we use."""

    topic: str
    # bytes, or for a packet of 64 KiB or more the bytearray paho read it into
    # (edge_runtime.mqtt.paho_client: no copy of a large payload). Treat it as read-only.
    payload: bytes | bytearray
    qos: int
    retain: bool
    response_topic: str | None = None
    correlation_data: bytes | None = None
    mid: int = 0
    user_properties: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class PublishOptions:
    """Optional v5 properties of an outgoing publish."""

    response_topic: str | None = None
    correlation_data: bytes | None = None
    message_expiry_s: int | None = None
    # None for binary payloads: no Content Type property is sent.
    content_type: str | None = "application/json"
    user_properties: tuple[tuple[str, str], ...] = ()


class LinkListener(Protocol):
    """Told on the loop thread when the link comes up or goes down."""

    def link_up(self, info: ConnectionInfo) -> None: ...

    def link_down(self, reason: str) -> None: ...


def backoff_delay(attempt: int, min_s: float, max_s: float, rng: random.Random) -> float:
    """Delay before reconnect attempt ``attempt`` (0-based): doubling, capped, equal jitter.

    Half of the delay is fixed and half random, so a fleet that lost the same broker spreads
    its reconnects while each device still backs off.
    """
    ceiling = min(max_s, min_s * float(2 ** min(attempt, 32)))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


def _varint_len(value: int) -> int:
    length = 1
    while value >= 128:
        value //= 128
        length += 1
    return length


def publish_packet_size(topic: str, payload_len: int, qos: int, properties_len: int) -> int:
    """Size in bytes of an MQTT v5 PUBLISH packet, as the broker counts Maximum Packet Size."""
    properties_total = _varint_len(properties_len) + properties_len
    remaining = 2 + len(topic.encode()) + (2 if qos > 0 else 0) + properties_total + payload_len
    return 1 + _varint_len(remaining) + remaining
