"""Pure helpers of the MQTT link: reconnect backoff and packet sizes."""

from __future__ import annotations

import random

from edge_runtime.mqtt.base import backoff_delay, publish_packet_size


class TestBackoff:
    def test_doubles_up_to_the_cap_with_jitter(self) -> None:
        """Delay n lies in [c/2, c] with c = min(max, min * 2**n)."""
        rng = random.Random(7)
        for attempt in range(12):
            ceiling = min(30.0, 0.5 * 2**attempt)
            for _ in range(50):
                delay = backoff_delay(attempt, 0.5, 30.0, rng)
                assert ceiling / 2 <= delay <= ceiling

    def test_jitter_spreads_a_fleet(self) -> None:
        """Devices that lost the broker together do not all retry at the same instant."""
        rng = random.Random(1)
        delays = {round(backoff_delay(5, 0.5, 30.0, rng), 3) for _ in range(20)}
        assert len(delays) > 15

    def test_huge_attempt_counts_do_not_overflow(self) -> None:
        """After days of failures the delay stays at the cap."""
        assert backoff_delay(10_000, 0.5, 30.0, random.Random(0)) <= 30.0


class TestPacketSize:
    def test_matches_the_mqtt5_publish_layout(self) -> None:
        """Fixed header + topic + packet id + properties + payload, varint lengths included."""
        # 1 type byte, 1 length byte, 2+5 topic, 2 packet id, 1 property length, 3 payload
        assert publish_packet_size("a/b/c", 3, 1, 0) == 1 + 1 + 7 + 2 + 1 + 3
        assert publish_packet_size("a/b/c", 3, 0, 0) == 1 + 1 + 7 + 1 + 3
        # remaining length of 128 needs two varint bytes
        assert publish_packet_size("t", 128 - 2 - 1 - 2 - 1, 1, 0) == 1 + 2 + 128
