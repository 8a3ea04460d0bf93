"""The shared runtime's errors: the MQTT link's failures, raised to the agent and the controller.

``SharedRuntimeError`` is their base; both sides catch it (or ``MqttError``) beside their own
hierarchy. Errors carry the offending value as an attribute and name it in their message.
"""

from __future__ import annotations


class SharedRuntimeError(Exception):
    """Base of every error the shared runtime (``edge_runtime``) raises on purpose."""


class MqttError(SharedRuntimeError):
    """The MQTT link failed or refused an operation."""


class NotConnectedError(MqttError):
    """An operation needed a connected link and the broker is not reachable right now."""


class PacketTooLargeError(MqttError):
    """A publish would exceed the broker's Maximum Packet Size and was refused locally.

    Sending it anyway makes the broker drop the connection, and the client would resend the
    same packet on every reconnect: a disconnect loop.
    """

    def __init__(self, *, topic: str, size: int, limit: int) -> None:
        self.topic = topic
        self.size = size
        self.limit = limit
        super().__init__(
            f"publish to {topic!r} is {size} bytes, over the broker's maximum packet size "
            f"of {limit} bytes"
        )


class PublishRejectedError(MqttError):
    """The broker answered a QoS 1 publish with a failure reason code."""

    def __init__(self, *, topic: str, reason: str, code: int) -> None:
        self.topic = topic
        self.reason = reason
        self.code = code
        super().__init__(f"broker rejected publish to {topic!r}: {reason} (0x{code:02x})")
