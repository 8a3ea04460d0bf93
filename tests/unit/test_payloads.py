"""JSON payload codec: strict output, clear errors with excerpts for bad input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_contract import payloads
from edge_contract.errors import PayloadError


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
            (b"\xff\xfe", "not valid UTF-8"),
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


class TestLimits:
    """Limits come before types: size, depth and number ranges are refused with a reason."""

    @pytest.mark.parametrize(
        ("raw", "reason"),
        [
            (b"[" * 6000 + b"]" * 6000, "too_deep"),
            (b'{"a":' + b"[" * 33 + b"]" * 33 + b"}", "too_deep"),
            (b'{"seq": 9223372036854775808}', "number_range"),
            (b'{"seq": -9223372036854775809}', "number_range"),
            (b'{"seq": ' + b"9" * 5000 + b"}", "number_range"),
            (b'{"x": NaN}', "number_range"),
            (b'{"x": -Infinity}', "number_range"),
            (b'{"x": 1e400}', "number_range"),
            (b'{"x": "\xff"}', "not_utf8"),
            (b"", "not_json"),
            (b"[1]", "not_object"),
        ],
    )
    def test_refused_with_reason(self, raw: bytes, reason: str) -> None:
        """Each payload is refused with its reason code, never a RecursionError or overflow."""
        with pytest.raises(PayloadError) as error:
            payloads.decode_object(raw)
        assert error.value.reason == reason

    def test_limits_are_inclusive(self) -> None:
        """Exactly 32 levels and the 64-bit extremes are accepted."""
        raw = b'{"a":' + b"[" * 31 + b"]" * 31 + b"}"
        assert payloads.nesting_depth(raw) == 32
        assert isinstance(payloads.decode_object(raw)["a"], list)
        body = payloads.decode_object(b'{"lo": -9223372036854775808, "hi": 9223372036854775807}')
        assert body == {"lo": -(2**63), "hi": 2**63 - 1}

    def test_brackets_inside_strings_do_not_count(self) -> None:
        """A string full of brackets (with escaped quotes) is not nesting."""
        raw = b'{"s": "[[[[\\"[[[[' + b"[" * 100 + b'"}'
        assert payloads.nesting_depth(raw) == 1
        assert payloads.decode_object(raw)["s"].startswith('[[[["')

    @given(st.integers(min_value=0, max_value=200))
    def test_depth_scan_matches_structure(self, depth: int) -> None:
        """The scan counts exactly the nesting of a well-formed document."""
        raw = ("[" * depth + "]" * depth).encode()
        assert payloads.nesting_depth(raw) == depth

    def test_decode_model_names_the_field(self) -> None:
        """A typed model's refusal names the offending field and has reason 'schema'."""
        from pydantic import BaseModel, ConfigDict

        class Sample(BaseModel):
            model_config = ConfigDict(extra="forbid")
            seq: int

        assert payloads.decode_model(Sample, b'{"seq": 3}').seq == 3
        with pytest.raises(PayloadError, match="seq") as error:
            payloads.decode_model(Sample, b'{"seq": "x"}')
        assert error.value.reason == "schema"
        with pytest.raises(PayloadError, match="other: Extra inputs") as error:
            payloads.decode_model(Sample, b'{"seq": 1, "other": 2}')
        assert error.value.reason == "schema"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=40,
)


@given(json_values, st.integers(min_value=0, max_value=60))
def test_decoder_on_generated_documents(value: object, wrap: int) -> None:
    """Generated documents, wrapped deeper and deeper, only ever decode or raise PayloadError."""
    import json

    raw = ('{"v":' + "[" * wrap + json.dumps(value) + "]" * wrap + "}").encode()
    reason = None
    try:
        assert isinstance(payloads.decode_object(raw), dict)
    except PayloadError as exc:
        reason = exc.reason
    assert reason in {None, "too_deep", "number_range", "too_large"}
