"""Large packets through the MQTT link's own paho client (``edge_runtime.mqtt.paho_client``).

For real.

The link decodes a PUBLISH of ``LARGE_PACKET_BYTES`` or more itself, through a memoryview,
and queues large outgoing packets as views. Here links send such packets through a private
mosquitto in both directions, with every v5 property the link uses, around the size
threshold too, and the receiving side's acknowledgements are checked through the broker's
in-flight limit: without a PUBACK the broker stops after ``INFLIGHT`` messages.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from devtools.localbroker import PrivateBroker
from edge_runtime.mqtt.base import InboundMessage, LinkSettings, PublishOptions
from edge_runtime.mqtt.link import MqttLink
from edge_runtime.mqtt.paho_client import LARGE_PACKET_BYTES
from tests.integration.harness import running_link

INFLIGHT = 3  # the broker's limit of unacknowledged QoS 1 messages per client
TOPIC = "fleet/big-receiver/file"
# Around the threshold on both sides (the packet adds the topic and properties to the
# payload), then the sizes of OTA replies.
SIZES = (10, LARGE_PACKET_BYTES - 300, LARGE_PACKET_BYTES + 10, 1024 * 1024 + 7, 3 * 1024 * 1024)


@pytest.fixture
def small_window_broker(tmp_path: Path) -> PrivateBroker:
    broker = PrivateBroker(tmp_path / "broker", extra_config=[f"max_inflight_messages {INFLIGHT}"])
    broker.start()
    yield broker
    broker.stop()


def _link(port: int, client_id: str, *, manual_ack: bool = False) -> MqttLink:
    settings = LinkSettings(
        host="127.0.0.1", port=port, client_id=client_id, clean_start=True, manual_ack=manual_ack
    )
    return MqttLink(settings)


def _receiver(
    port: int, *, manual_ack: bool = False
) -> tuple[MqttLink, asyncio.Queue[InboundMessage]]:
    inbox: asyncio.Queue[InboundMessage] = asyncio.Queue()
    link = _link(port, "big-receiver", manual_ack=manual_ack)
    link.set_message_handler(inbox.put_nowait)
    link.add_subscription(TOPIC)
    return link, inbox


class TestLargePublishes:
    @pytest.mark.parametrize("qos", [0, 1])
    def test_payloads_and_properties_arrive_byte_for_byte(
        self, small_window_broker: PrivateBroker, qos: int
    ) -> None:
        asyncio.run(self._round_trip(small_window_broker.port, qos))

    async def _round_trip(self, port: int, qos: int) -> None:
        receiver, inbox = _receiver(port)
        sent = []
        async with running_link(receiver), running_link(_link(port, "big-sender")) as sender:
            for number, size in enumerate(SIZES):
                payload = os.urandom(size)
                options = PublishOptions(
                    response_topic=f"fleet/big-sender/reply/{number}",
                    correlation_data=bytes([number]) * 8,
                    content_type="application/octet-stream",
                    user_properties=(("n", str(number)), ("size", str(size))),
                )
                await asyncio.wait_for(sender.publish(TOPIC, payload, qos=qos, options=options), 10)
                sent.append((payload, options))
            for (payload, options), size in zip(sent, SIZES, strict=True):
                got = await asyncio.wait_for(inbox.get(), 10)
                assert (got.topic, got.qos, got.retain) == (TOPIC, qos, False)
                # handed over without a copy from the large-packet threshold on
                assert type(got.payload) is (bytes if size < LARGE_PACKET_BYTES else bytearray)
                assert got.payload == payload
                assert got.response_topic == options.response_topic
                assert got.correlation_data == options.correlation_data
                assert got.user_properties == options.user_properties

    def test_a_retained_large_message_reaches_a_later_subscriber(
        self, small_window_broker: PrivateBroker
    ) -> None:
        asyncio.run(self._retained(small_window_broker.port))

    async def _retained(self, port: int) -> None:
        payload = os.urandom(2 * LARGE_PACKET_BYTES)
        async with running_link(_link(port, "big-sender")) as sender:
            await asyncio.wait_for(sender.publish(TOPIC, payload, retain=True), 10)
        receiver, inbox = _receiver(port)
        async with running_link(receiver):
            got = await asyncio.wait_for(inbox.get(), 10)
        assert got.retain
        assert got.payload == payload

    def test_each_large_message_is_acknowledged(self, small_window_broker: PrivateBroker) -> None:
        """Three times the broker's in-flight limit arrives: every one was acknowledged."""
        asyncio.run(self._acknowledged(small_window_broker.port))

    async def _acknowledged(self, port: int) -> None:
        count = 3 * INFLIGHT
        receiver, inbox = _receiver(port)
        async with running_link(receiver), running_link(_link(port, "big-sender")) as sender:
            payloads = [os.urandom(LARGE_PACKET_BYTES + n) for n in range(count)]
            for payload in payloads:
                sender.publish(TOPIC, payload)
            received = [await asyncio.wait_for(inbox.get(), 10) for _ in range(count)]
        assert [m.payload for m in received] == payloads

    def test_manual_ack_holds_the_acknowledgement_until_ack(
        self, small_window_broker: PrivateBroker
    ) -> None:
        asyncio.run(self._manual(small_window_broker.port))

    async def _manual(self, port: int) -> None:
        count = INFLIGHT + 2
        receiver, inbox = _receiver(port, manual_ack=True)
        async with running_link(receiver), running_link(_link(port, "big-sender")) as sender:
            for n in range(count):
                sender.publish(TOPIC, os.urandom(LARGE_PACKET_BYTES + n))
            first = [await asyncio.wait_for(inbox.get(), 10) for _ in range(INFLIGHT)]
            await asyncio.sleep(0.5)
            assert inbox.empty(), "the broker sent more than its in-flight limit: acked early"
            for message in first:
                receiver.ack(message)
            rest = [await asyncio.wait_for(inbox.get(), 10) for _ in range(count - INFLIGHT)]
        sizes = [len(m.payload) - LARGE_PACKET_BYTES for m in first + rest]
        assert sizes == list(range(count))
