"""The link's paho client on packets put straight into its read state, with no socket.

Well-formed large PUBLISH packets take the client's own decoder (``_large_publish``); anything
it cannot vouch for must reach paho's decoder, which refuses malformed packets with
``MalformedPacket`` (the connection is then dropped) instead of delivering garbage.
"""

from __future__ import annotations

import pytest
from paho.mqtt.client import MQTTMessage, MQTTv5
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_runtime.mqtt.paho_client import LARGE_PACKET_BYTES, LinkClient

PUBLISH_QOS0 = 0x30
PUBLISH_QOS0_RETAIN = 0x31
PUBLISH_QOS2 = 0x34


def _client() -> tuple[LinkClient, list[MQTTMessage]]:
    client = LinkClient(callback_api_version=CallbackAPIVersion.VERSION2, protocol=MQTTv5)
    delivered: list[MQTTMessage] = []
    client.on_message = lambda _client, _userdata, message: delivered.append(message)
    return client, delivered


def _publish_body(topic: bytes, properties: bytes, payload: bytes, mid: bytes = b"") -> bytearray:
    """A PUBLISH after its fixed header: topic, packet id (QoS > 0), properties, payload."""
    return bytearray(len(topic).to_bytes(2, "big") + topic + mid + properties + payload)


def _encoded_properties() -> bytes:
    properties = Properties(PacketTypes.PUBLISH)
    properties.ResponseTopic = "fleet/d/file"
    properties.CorrelationData = b"\x01\x02"
    return bytes(properties.pack())


def _handle(client: LinkClient, command: int, body: bytearray) -> None:
    client._in_packet["command"] = command
    client._in_packet["packet"] = body
    client._handle_publish()


class TestLargePublish:
    def test_a_well_formed_one_is_delivered_whole(self) -> None:
        client, delivered = _client()
        payload = bytes(range(256)) * (LARGE_PACKET_BYTES // 256 + 1)
        _handle(client, PUBLISH_QOS0_RETAIN, _publish_body(b"a/b", _encoded_properties(), payload))
        [message] = delivered
        assert (message.topic, message.qos, message.retain) == ("a/b", 0, True)
        assert message.payload == payload
        assert message.properties.ResponseTopic == "fleet/d/file"
        assert message.properties.CorrelationData == b"\x01\x02"

    @pytest.mark.parametrize(
        "body",
        [
            # the topic length points past the end of the packet
            bytearray(b"\xff\xff" + b"t" * LARGE_PACKET_BYTES),
            # the properties claim more bytes than the packet holds
            _publish_body(b"a/b", b"\xff\xff\xff\x07", b"x" * LARGE_PACKET_BYTES),
            # a property identifier that does not exist
            _publish_body(b"a/b", b"\x02\x7f\x00", b"x" * LARGE_PACKET_BYTES),
        ],
        ids=["topic-past-end", "properties-past-end", "unknown-property"],
    )
    def test_a_malformed_one_is_refused_by_paho(self, body: bytearray) -> None:
        client, delivered = _client()
        with pytest.raises(MalformedPacket):
            _handle(client, PUBLISH_QOS0, body)
        assert delivered == []

    def test_small_and_qos2_packets_are_left_to_paho(self) -> None:
        client, _ = _client()
        body = _publish_body(b"a/b", b"\x00", b"x" * LARGE_PACKET_BYTES, mid=b"\x00\x01")
        for command, packet in (
            (PUBLISH_QOS0, bytearray(b"\x00\x03a/b\x00small")),
            (PUBLISH_QOS2, body),
        ):
            client._in_packet["command"] = command
            client._in_packet["packet"] = packet
            assert client._large_publish() is None
