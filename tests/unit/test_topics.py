"""The topic scheme: building and parsing are inverses, and bad topics are refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_contract import topics
from edge_contract.errors import TopicError
from edge_contract.topics import Channel

device_ids = st.from_regex(r"\A[a-z0-9][a-z0-9_-]{0,63}\Z")
named_channels = st.sampled_from([Channel.CMD, Channel.INPUT])
plain_channels = st.sampled_from([c for c in Channel if c not in (Channel.CMD, Channel.INPUT)])


class TestTopicScheme:
    @given(device_ids, plain_channels)
    def test_plain_channels_round_trip(self, device_id: str, channel: Channel) -> None:
        """parse(topic_for(d, c)) gives back d and c for every valid id."""
        parsed = topics.parse(topics.topic_for(device_id, channel))
        assert (parsed.device_id, parsed.channel, parsed.name) == (device_id, channel, None)

    @given(device_ids, named_channels, st.from_regex(r"\A[a-z][a-z0-9_-]{0,20}\Z"))
    def test_named_channels_round_trip(self, device_id: str, channel: Channel, name: str) -> None:
        """Command and pipeline-input topics keep their name."""
        parsed = topics.parse(topics.topic_for(device_id, channel, name))
        assert parsed == topics.DeviceTopic(device_id, channel, name)

    def test_documented_examples(self) -> None:
        """The scheme is exactly the documented one."""
        assert topics.topic_for("pi-01", Channel.TELEMETRY) == "fleet/pi-01/telemetry"
        assert topics.topic_for("pi-01", Channel.CMD, "ping") == "fleet/pi-01/cmd/ping"
        assert topics.all_devices(Channel.STATUS) == "fleet/+/status"
        assert topics.device_commands("pi-01") == "fleet/pi-01/cmd/+"
        assert topics.topic_for("pi-01", Channel.INPUT, "light") == "fleet/pi-01/input/light"
        assert topics.topic_for("pi-01", Channel.RESULTS) == "fleet/pi-01/results"
        assert topics.all_devices(Channel.INPUT) == "fleet/+/input/+"
        assert topics.controller_rpc("devices-list") == "fleet-controller/rpc/devices-list"
        assert topics.parse_controller_rpc("fleet-controller/rpc/devices-show") == "devices-show"

    @pytest.mark.parametrize(
        "device_id", ["", "Pi", "-pi", "_pi", "pi/1", "pi+", "pi#", "a" * 65, "pi 1", "pí"]
    )
    def test_bad_device_ids_are_refused(self, device_id: str) -> None:
        """Ids outside ^[a-z0-9][a-z0-9_-]{0,63}$ raise TopicError naming the id."""
        with pytest.raises(TopicError) as error:
            topics.topic_for(device_id, Channel.STATUS)
        assert error.value.topic == device_id

    @pytest.mark.parametrize(
        "topic",
        [
            "fleet/pi-01",
            "other/pi-01/status",
            "fleet/PI/status",
            "fleet/pi-01/unknown",
            "fleet/pi-01/status/extra",
            "fleet/pi-01/cmd",
            "fleet/pi-01/cmd/Bad",
            "fleet/pi-01/cmd/a/b",
            "fleet/+/status",
        ],
    )
    def test_malformed_topics_are_refused(self, topic: str) -> None:
        """Anything that is not a per-device topic of the scheme raises TopicError."""
        with pytest.raises(TopicError):
            topics.parse(topic)

    def test_name_only_for_commands(self) -> None:
        """A name on a non-command channel, or a command without one, is an error."""
        with pytest.raises(TopicError):
            topics.topic_for("pi", Channel.STATUS, "x")
        with pytest.raises(TopicError):
            topics.topic_for("pi", Channel.CMD)

    def test_retained_channels(self) -> None:
        """Presence, desired and reported are retained; telemetry and events are not."""
        retained = {c for c, d in topics.DELIVERY.items() if d.retain}
        assert retained == {Channel.STATUS, Channel.DESIRED, Channel.REPORTED}
        assert all(d.qos == 1 for d in topics.DELIVERY.values())

    @given(st.text(max_size=80))
    def test_parse_never_raises_anything_else(self, text: str) -> None:
        """Arbitrary strings either parse or raise TopicError."""
        try:
            topics.parse(text)
        except TopicError:
            pass
