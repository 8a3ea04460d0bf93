"""JSON payload codec: strict output, clear errors with excerpts for bad input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import PayloadError
from agent.mqtt import payloads


class TestPayloads:
    def test_round_trip_and_non_finite_floats(self) -> None:
        """Objects round-trip; NaN and infinities become null so the output is strict JSON."""
        body = {"a": 1, "b": [1.5, float("nan")], "c": {"d": float("inf")}}
        assert payloads.decode_object(payloads.encode(body)) == {
            "a": 1,
            "b": [1.5, None],
            "c": {"d": None},
        }

    @pytest.mark.parametrize(
        ("raw", "message"),
        [
            (b"{nope", "not valid JSON"),
            (b"\xff\xfe", "not valid JSON"),
            (b"[1, 2]", "expected a JSON object"),
            (b'"text"', "expected a JSON object"),
        ],
    )
    def test_bad_payloads_name_the_problem(self, raw: bytes, message: str) -> None:
        """Each bad payload raises PayloadError with the reason and an excerpt."""
        with pytest.raises(PayloadError, match=message) as error:
            payloads.decode_object(raw)
        assert error.value.excerpt

    def test_oversized_payload_is_refused_before_parsing(self) -> None:
        """A payload over the limit is refused with its size in the message."""
        with pytest.raises(PayloadError, match="payload of 101 bytes exceeds 100"):
            payloads.decode_object(b"{" + b" " * 99 + b"}", max_bytes=100)

    def test_timestamps(self) -> None:
        """utc_now is ISO 8601 UTC with milliseconds and parses back with its zone."""
        now = payloads.utc_now()
        assert now.endswith("Z") and len(now) == 24
        assert payloads.from_iso(now).utcoffset() is not None
        with pytest.raises(ValueError, match="without a time zone"):
            payloads.from_iso("2026-01-01T00:00:00")

    @given(st.binary(max_size=200))
    def test_decoder_only_raises_payload_error(self, raw: bytes) -> None:
        """Random bytes either decode to an object or raise PayloadError."""
        try:
            assert isinstance(payloads.decode_object(raw), dict)
        except PayloadError:
            pass
