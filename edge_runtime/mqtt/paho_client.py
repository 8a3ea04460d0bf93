"""The MQTT link's paho client: paho's own, minus the copies it makes of large packets.

Part of the link's boundary: only ``edge_runtime.mqtt.link`` uses it, and only these two modules
import paho. paho 2.x copies a PUBLISH's payload four times while decoding it (it unpacks
the rest of the packet with ``struct`` after the topic length, after the topic, after the
packet id, then slices it after the properties), and copies every queued packet again on
its first write (``packet[pos:]`` of a ``bytearray``). For the 1 MiB replies of an OTA
download that was a noticeable share of the device's CPU per MiB (bench/bench_ota.py;
docs/benchmarks.md, "OTA: model transfer goodput and verification time").

``LinkClient`` overrides two of paho's internal methods, for large packets only (at least
``LARGE_PACKET_BYTES``):

- ``_handle_publish`` reads a QoS 0 or 1 MQTT v5 PUBLISH through a ``memoryview`` and hands
  over the packet itself as the payload, a ``bytearray`` with the topic and properties cut
  off in place: no copy at all. Anything else (QoS 2, a small packet, an empty topic,
  lengths that do not add up, properties that do not parse) goes to paho's own
  ``_handle_publish``, which keeps its checks and its errors (and gives ``bytes``).
- ``_packet_queue`` queues a ``memoryview`` of the packet, so paho's ``packet[pos:]`` is a
  view instead of a copy.

Both rely on paho internals (``_in_packet``, ``_handle_on_message``, ``_send_puback``,
``_manual_ack``, ``_packet_queue``), which pyproject.toml pins to paho-mqtt 2.x; the link's
integration tests exercise both paths against a real broker.
"""

from __future__ import annotations

import struct
import time

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.exception import MQTTException
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers

# Below this, paho's copies cost less than the Python of doing without them.
LARGE_PACKET_BYTES = 64 * 1024
# What paho's decoders turn into MalformedPacket (paho.mqtt._packet.DECODE_ERRORS).
_DECODE_ERRORS = (struct.error, IndexError, KeyError, ValueError, MQTTException)


class LinkClient(paho.Client):
    """``paho.Client`` with zero-copy handling of large packets (see the module docstring)."""

    def _handle_publish(self) -> MQTTErrorCode:
        message = self._large_publish()
        if message is None:
            return super()._handle_publish()
        # What paho does after decoding a QoS 0 or 1 PUBLISH.
        self._handle_on_message(message)
        if message.qos == 1 and not self._manual_ack:
            return self._send_puback(message.mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _large_publish(self) -> paho.MQTTMessage | None:
        """The PUBLISH in ``_in_packet`` if it is one this class handles, else None."""
        command, packet = self._in_packet["command"], self._in_packet["packet"]
        qos = (command & 0x06) >> 1
        if (
            len(packet) < LARGE_PACKET_BYTES
            or qos == 2
            or self._protocol != MQTTProtocolVersion.MQTTv5
        ):
            return None
        view = memoryview(packet)
        at = 2 + int.from_bytes(view[:2], "big")
        topic = bytes(view[2:at])
        mid = 0
        if qos == 1:
            mid = int.from_bytes(view[at : at + 2], "big")
            at += 2
        properties = _properties_at(view, at)
        view.release()  # a bytearray with a view on it cannot shrink
        if not topic or properties is None:
            return None
        parsed, length = properties
        message = paho.MQTTMessage(mid=mid, topic=topic)
        message.dup = bool(command & 0x08)
        message.qos = qos
        message.retain = bool(command & 0x01)
        message.properties = parsed
        # The packet becomes the payload: a bytearray drops a prefix in place, without a copy.
        # paho starts a new bytearray for the next packet.
        del packet[: at + length]
        message.payload = packet
        message.timestamp = time.monotonic()  # paho's clock for messages
        return message

    def _packet_queue(
        self,
        command: int,
        packet: bytes | bytearray,
        mid: int,
        qos: int,
        info: paho.MQTTMessageInfo | None = None,
    ) -> MQTTErrorCode:
        if len(packet) >= LARGE_PACKET_BYTES:
            # paho writes ``packet[pos:]``: a view of it costs nothing, a bytearray slice a copy.
            packet = memoryview(packet)  # type: ignore[assignment]  # paho only slices and sends it
        return super()._packet_queue(command, packet, mid, qos, info)


def _properties_at(view: memoryview, at: int) -> tuple[Properties, int] | None:
    """The PUBLISH properties that start at ``view[at]`` and their encoded length, or None
    if they run past the packet or do not parse."""
    if at + 1 > len(view):
        return None
    try:
        length, size = VariableByteIntegers.decode(bytes(view[at : at + 4]))  # type: ignore[no-untyped-call]
        end = at + size + length
        if end > len(view):
            return None
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.unpack(bytes(view[at:end]))  # type: ignore[no-untyped-call]
    except _DECODE_ERRORS:  # paho's own decoder will say what is wrong
        return None
    return properties, end - at
