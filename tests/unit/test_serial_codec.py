"""The serial protocol's codecs: Python and C against the golden vectors, and the generator.

The golden vectors (firmware/protocol/golden_vectors.json) are made by the Python codec; the C
codec is compiled with the host gcc and checked against the same bytes, so both sides of the
link agree byte for byte. Property tests feed the stream decoder garbage and damaged frames.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import FrameError, MessageError
from agent.serial import messages_gen as msg
from agent.serial.framing import (
    MAX_ENCODED,
    Frame,
    FrameDecoder,
    cobs_decode,
    cobs_encode,
    crc16_ccitt,
    decode_frame,
    encode_frame,
)

ROOT = Path(__file__).resolve().parents[2]
GENERATE = ROOT / "firmware/protocol/generate.py"
SPEC = ROOT / "firmware/protocol/messages.toml"
GOLDEN = json.loads((ROOT / "firmware/protocol/golden_vectors.json").read_text(encoding="utf-8"))
C_FLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]
INT_RANGES = {"u8": (0, 0xFF), "u16": (0, 0xFFFF), "u32": (0, 0xFFFFFFFF), "i16": (-0x8000, 0x7FFF)}
ERROR_TEXT = {
    "empty": "empty frame",
    "cobs": "bad COBS",
    "short": "too short",
    "long": "too long",
    "crc": "CRC mismatch",
}
# Deterministic: a CRC-16 lets about 1 in 65536 damaged frames through, so random runs would
# be flaky by design; these examples are fixed and pass.
PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=300)


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("protocol_generate", GENERATE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


def _frame(vector: dict[str, Any]) -> Frame:
    return Frame(vector["seq"], vector["type"], bytes.fromhex(vector["payload"]))


def _counters(decoder: FrameDecoder) -> dict[str, int]:
    return {name: getattr(decoder, name) for name in ("crc_errors", "framing_errors", "oversize")}


def _copy_spec(tmp_path: Path, old: str, new: str, count: int = 1) -> Path:
    text = SPEC.read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / "messages.toml"
    path.write_text(text.replace(old, new, count), encoding="utf-8")
    return path


def _run_c_tests(tmp_path: Path, src: Path, headers: dict[str, str] | None = None) -> str:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc is missing: the C codec cannot be checked")
    for path in (src / "src/framing.c", src / "src/framing.h", src / "tests/test_codec.c"):
        shutil.copy(path, tmp_path / path.name)
    for name, text in (headers or {}).items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    include = [f"-I{tmp_path}", f"-I{src / 'src'}", f"-I{src / 'tests'}"]
    binary = tmp_path / "test_codec"
    sources = [str(tmp_path / "framing.c"), str(tmp_path / "test_codec.c")]
    build = subprocess.run(
        [gcc, *C_FLAGS, *include, *sources, "-o", str(binary)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    result = subprocess.run([str(binary)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _utf8_prefix(size: int) -> Callable[[str], str]:
    def cut(text: str) -> str:
        return text.encode()[:size].decode(errors="ignore")

    return cut


def _message_strategy(cls: type[msg.Message]) -> st.SearchStrategy[msg.Message]:
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in cls.FIELDS:
        if field.kind == "str":
            fields[field.name] = st.text(max_size=field.max).map(_utf8_prefix(field.max))
        else:
            fields[field.name] = st.integers(*INT_RANGES[field.kind])
    return st.builds(cls, **fields)


class TestCrc:
    def test_check_value(self) -> None:
        """CRC-16/CCITT-FALSE of b"123456789" is the catalogued 0x29B1."""
        assert crc16_ccitt(b"123456789") == 0x29B1

    def test_incremental(self) -> None:
        """Continuing from a previous CRC gives the CRC of the concatenation."""
        assert crc16_ccitt(b"56789", crc16_ccitt(b"1234")) == 0x29B1


class TestCobs:
    @pytest.mark.parametrize("vector", GOLDEN["cobs"], ids=lambda v: v["name"])
    def test_golden_vectors(self, vector: dict[str, str]) -> None:
        """Encoding and decoding match the golden COBS vectors, the 0xFF code run included."""
        decoded, encoded = bytes.fromhex(vector["decoded"]), bytes.fromhex(vector["encoded"])
        assert cobs_encode(decoded) == encoded
        assert cobs_decode(encoded) == decoded

    @PROPERTY
    @given(st.binary(max_size=1200))
    def test_round_trip(self, data: bytes) -> None:
        """Any bytes survive encode and decode, and the encoding holds no 0x00."""
        encoded = cobs_encode(data)
        assert 0 not in encoded
        assert len(encoded) <= len(data) + len(data) // 254 + 1
        assert cobs_decode(encoded) == data

    @pytest.mark.parametrize("data", [b"", b"\x00", b"\x05\x01", b"\x02\x00", b"\x03\x01\x00"])
    def test_refuses_what_no_encoder_makes(self, data: bytes) -> None:
        """Empty input, a 0x00, or a code past the end raise FrameError."""
        with pytest.raises(FrameError):
            cobs_decode(data)


class TestGoldenVectors:
    @pytest.mark.parametrize("vector", GOLDEN["messages"], ids=lambda v: v["name"])
    def test_message_encodes_to_the_golden_bytes(self, vector: dict[str, Any]) -> None:
        """The message's payload and its whole frame are the golden bytes."""
        message = msg.MESSAGE_TYPES[vector["type"]](**vector["fields"])
        assert message.encode().hex() == vector["payload"]
        assert encode_frame(vector["seq"], message.TYPE, message.encode()).hex() == vector["wire"]

    @pytest.mark.parametrize("vector", GOLDEN["messages"], ids=lambda v: v["name"])
    def test_golden_bytes_decode_to_the_message(self, vector: dict[str, Any]) -> None:
        """The golden wire bytes decode to the frame and then to the message's fields."""
        wire = bytes.fromhex(vector["wire"])
        frame = decode_frame(wire[:-1])
        assert frame == _frame(vector)
        message = msg.decode_message(frame.msg_type, frame.payload)
        assert message == msg.MESSAGE_TYPES[vector["type"]](**vector["fields"])
        assert vector["message"] == message.NAME

    @pytest.mark.parametrize(
        "vector", GOLDEN["messages"] + GOLDEN["frames"], ids=lambda v: v["name"]
    )
    def test_stream_decoder_after_garbage(self, vector: dict[str, Any]) -> None:
        """After a corrupted frame and undelimited garbage, the stream decoder yields the frame."""
        wire = bytes.fromhex(vector["wire"])
        corrupted = wire[:2] + bytes((wire[2] ^ (0x20 if wire[2] == 0x10 else 0x10),)) + wire[3:]
        decoder = FrameDecoder()
        frames = [
            f
            for byte in corrupted + b"\x13\x37\xff\x02" + wire
            for f in decoder.feed(bytes((byte,)))
        ]
        assert frames == [_frame(vector)]
        assert decoder.frames == 1
        assert sum(_counters(decoder).values()) == 2

    @pytest.mark.parametrize("vector", GOLDEN["frames"], ids=lambda v: v["name"])
    def test_framing_vectors(self, vector: dict[str, Any]) -> None:
        """Frames at the size limits (empty, 48 zeros, 48 0xFF) encode and decode both ways."""
        payload = bytes.fromhex(vector["payload"])
        assert encode_frame(vector["seq"], vector["type"], payload).hex() == vector["wire"]
        assert decode_frame(bytes.fromhex(vector["wire"])[:-1]) == _frame(vector)

    @pytest.mark.parametrize("vector", GOLDEN["invalid"], ids=lambda v: v["name"])
    def test_invalid_vectors(self, vector: dict[str, Any]) -> None:
        """Each invalid vector raises FrameError, and in a stream yields nothing and counts once."""
        with pytest.raises(FrameError, match=ERROR_TEXT[vector["error"]]):
            decode_frame(bytes.fromhex(vector["encoded"]))
        decoder = FrameDecoder()
        assert decoder.feed(bytes.fromhex(vector["wire"])) == []
        expected = {name: int(name == vector["counter"]) for name in _counters(decoder)}
        assert _counters(decoder) == expected
        assert decoder.frames == 0

    def test_vectors_cover_every_type_and_edge_case(self) -> None:
        """Every message type has vectors, with 0x00 in a payload, seq 255 and a full str."""
        vectors = GOLDEN["messages"]
        assert {v["type"] for v in vectors} == set(msg.MESSAGE_TYPES)
        assert any("00" in re.findall("..", v["payload"]) for v in vectors)
        assert any(v["seq"] == 255 for v in vectors)
        assert any(len(v["fields"].get("text", "").encode()) == 40 for v in vectors)
        assert GOLDEN["protocol_hash"] == f"0x{msg.PROTOCOL_HASH:08x}"
        assert GOLDEN["max_encoded"] == MAX_ENCODED


class TestCCodec:
    def test_c_codec_passes_the_golden_vectors(self, tmp_path: Path) -> None:
        """test_codec.c, built with host gcc -Werror, checks the C codec against every vector."""
        out = _run_c_tests(tmp_path, ROOT / "firmware")
        assert re.search(r"test_codec: \d+ checks, 0 failed", out), out

    def test_avr_build(self, tmp_path: Path) -> None:
        """The codec, the generated headers and the test build for the ATmega328P."""
        avr_gcc = shutil.which("avr-gcc")
        if avr_gcc is None:
            pytest.skip("avr-gcc is not installed")
        for source in ("src/framing.c", "tests/test_codec.c"):
            result = subprocess.run(
                [
                    avr_gcc,
                    "-mmcu=atmega328p",
                    "-Os",
                    *C_FLAGS,
                    "-Ifirmware/src",
                    "-Ifirmware/tests",
                    "-c",
                    f"firmware/{source}",
                    "-o",
                    str(tmp_path / "x.o"),
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=False,
            )
            assert result.returncode == 0, result.stderr


class TestGenerator:
    def test_generated_files_are_fresh(self) -> None:
        """generate.py --check passes: no generated file differs from what the spec gives."""
        result = subprocess.run(
            [sys.executable, str(GENERATE), "--check"], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr

    def test_changed_spec_makes_the_check_fail(self, tmp_path: Path) -> None:
        """A changed spec renders different files, and --check names them and exits 1."""
        spec = _copy_spec(tmp_path, "max = 40", "max = 39")
        rendered = gen.render_all(spec)
        assert sorted(gen.stale_files(rendered)) == sorted(rendered)
        result = subprocess.run(
            [sys.executable, str(GENERATE), "--check", "--spec", str(spec)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 1
        assert "stale: agent/serial/messages_gen.py" in result.stderr

    def test_protocol_hash_follows_the_spec(self, tmp_path: Path) -> None:
        """PROTOCOL_HASH is the same in Python and C and changes with any change of the spec."""
        header = (ROOT / "firmware/src/protocol_gen.h").read_text(encoding="utf-8")
        assert f"#define PROTOCOL_HASH 0x{msg.PROTOCOL_HASH:08X}UL" in header
        assert gen.load_spec(SPEC).hash == msg.PROTOCOL_HASH
        changed = _copy_spec(tmp_path, 'doc = "One ADC reading."', 'doc = "An ADC reading."')
        assert gen.load_spec(changed).hash != msg.PROTOCOL_HASH

    def test_output_is_deterministic(self) -> None:
        """Rendering twice gives identical text for every file."""
        assert gen.render_all(SPEC) == gen.render_all(SPEC)

    @pytest.mark.parametrize(
        ("old", "new", "error"),
        [
            ("id = 0x0B", "id = 0x0A", "duplicate message ids"),
            ('name = "configure"', 'name = "stats"', "duplicate message names"),
            ('{ name = "level", type = "u8"', '{ name = "level", type = "u64"', "unknown type"),
            ('type = "str", max = 40', 'type = "str"', "needs max"),
            ("max = 40", "max = 60", "exceeds max_payload"),
            ("\nack = true", "\nacks = true", "unknown keys"),
        ],
    )
    def test_invalid_spec_is_refused(self, tmp_path: Path, old: str, new: str, error: str) -> None:
        """An invalid spec fails with a message naming the problem, and the CLI exits 2."""
        spec = _copy_spec(tmp_path, old, new)
        with pytest.raises(gen.SpecError, match=error):
            gen.load_spec(spec)
        result = subprocess.run(
            [sys.executable, str(GENERATE), "--check", "--spec", str(spec)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 2
        assert error in result.stderr

    def test_i16_and_several_strs_work_in_python_and_c(self, tmp_path: Path) -> None:
        """A spec with an i16 and two str fields renders code that passes its own golden tests."""
        extra = """
[[message]]
name = "calibrate"
id = 0x20
direction = "both"
fields = [
  { name = "offset", type = "i16" },
  { name = "label", type = "str", max = 8 },
  { name = "unit", type = "str", max = 4 },
  { name = "scale", type = "u16" },
]
"""
        spec = tmp_path / "messages.toml"
        spec.write_text(SPEC.read_text(encoding="utf-8") + extra, encoding="utf-8")
        rendered = gen.render_all(spec)
        codec = gen.load_codec(rendered[gen.PY_MODULE])
        calibrate = codec.messages.MESSAGE_TYPES[0x20](-32768, "ab", "mV", 1)
        assert calibrate.encode() == b"\x00\x80\x02ab\x02mV\x01\x00"
        assert codec.messages.decode_message(0x20, calibrate.encode()) == calibrate
        headers = {"protocol_gen.h": rendered[gen.C_HEADER], "golden_gen.h": rendered[gen.GOLDEN_C]}
        assert "test_codec:" in _run_c_tests(tmp_path, ROOT / "firmware", headers)


class TestMessages:
    @PROPERTY
    @given(
        st.sampled_from(sorted(msg.MESSAGE_TYPES)).flatmap(
            lambda t: _message_strategy(msg.MESSAGE_TYPES[t])
        )
    )
    def test_round_trip(self, message: msg.Message) -> None:
        """Every message type decodes back to itself, through a frame and decode_message."""
        frame = decode_frame(encode_frame(7, message.TYPE, message.encode())[:-1])
        assert msg.decode_message(frame.msg_type, frame.payload) == message

    @pytest.mark.parametrize(
        ("cls", "field"),
        [(cls, f) for cls in msg.MESSAGE_TYPES.values() for f in cls.FIELDS if f.kind != "str"],
        ids=lambda x: getattr(x, "name", getattr(x, "__name__", "")),
    )
    def test_out_of_range_int_is_refused(
        self, cls: type[msg.Message], field: msg.FieldSpec
    ) -> None:
        """encode raises ValueError naming the field when an integer does not fit its type."""
        low, high = INT_RANGES[field.kind]
        for bad in (low - 1, high + 1):
            values = {f.name: ("" if f.kind == "str" else 0) for f in cls.FIELDS}
            with pytest.raises(ValueError, match=re.escape(f"{cls.__name__}.{field.name}")):
                cls(**{**values, field.name: bad}).encode()

    def test_str_limits(self) -> None:
        """A str over its maximum is refused both ways; multi-byte UTF-8 counts bytes."""
        assert msg.Log(1, "é" * 20).encode() == b"\x01\x28" + "é".encode() * 20
        with pytest.raises(ValueError, match=r"Log\.text is 42 bytes"):
            msg.Log(1, "é" * 21).encode()
        with pytest.raises(MessageError, match="over its maximum"):
            msg.Log.decode(b"\x01\x29" + b"a" * 41)
        with pytest.raises(MessageError, match="not valid UTF-8"):
            msg.Log.decode(b"\x01\x01\xff")

    @pytest.mark.parametrize(
        ("msg_type", "payload", "error"),
        [
            (0x06, b"", "too short"),
            (0x06, b"\x01\x02", "extra bytes"),
            (0x08, b"\x01\x05ab", "too short"),
            (0xEE, b"", "unknown message type"),
        ],
    )
    def test_bad_payloads_raise_message_error(
        self, msg_type: int, payload: bytes, error: str
    ) -> None:
        """Wrong lengths and unknown types raise MessageError carrying the type and payload."""
        with pytest.raises(MessageError, match=error) as caught:
            msg.decode_message(msg_type, payload)
        assert (caught.value.msg_type, caught.value.payload) == (msg_type, payload)

    @PROPERTY
    @given(st.integers(0, 255), st.binary(max_size=60))
    def test_random_payloads_raise_only_message_error(self, msg_type: int, payload: bytes) -> None:
        """decode_message on any bytes returns a message that re-encodes identically, or raises."""
        try:
            message = msg.decode_message(msg_type, payload)
        except MessageError:
            return
        assert message.encode() == payload


frames = st.builds(
    Frame, st.integers(0, 255), st.integers(0, 255), st.binary(max_size=msg.MAX_PAYLOAD)
)


def _wire(frame: Frame) -> bytes:
    return encode_frame(frame.seq, frame.msg_type, frame.payload)


def _feed_in_chunks(decoder: FrameDecoder, data: bytes, cuts: list[int]) -> list[Frame]:
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [f for a, b in itertools.pairwise(bounds) for f in decoder.feed(data[a:b])]


class TestFrameDecoder:
    @PROPERTY
    @given(st.binary(max_size=600), st.lists(st.integers(0, 600), max_size=8))
    def test_random_bytes_never_raise(self, data: bytes, cuts: list[int]) -> None:
        """Random bytes in random chunks never raise, and the frames counter matches."""
        decoder = FrameDecoder()
        found = _feed_in_chunks(decoder, data, cuts)
        assert decoder.frames == len(found)

    @PROPERTY
    @given(
        st.lists(st.tuples(st.binary(max_size=120), frames), min_size=1, max_size=5),
        st.lists(st.integers(0, 2000), max_size=8),
    )
    def test_garbage_never_hides_the_next_frame(
        self, items: list[tuple[bytes, Frame]], cuts: list[int]
    ) -> None:
        """Whatever garbage precedes each frame, every frame comes out, in order, unchanged."""
        data = b"".join(garbage + _wire(frame) for garbage, frame in items)
        assert _feed_in_chunks(FrameDecoder(), data, cuts) == [frame for _, frame in items]

    @PROPERTY
    @given(frames, frames, st.data())
    def test_truncated_frame_is_dropped(
        self, cut: Frame, after: Frame, data: st.DataObject
    ) -> None:
        """A frame cut short is refused, and the frame after it still decodes."""
        wire = _wire(cut)
        end = data.draw(st.integers(0, len(wire) - 2))
        if end:
            with pytest.raises(FrameError):
                decode_frame(wire[:end])
        assert FrameDecoder().feed(wire[:end] + _wire(after)) == [after]

    @PROPERTY
    @given(frames, frames, st.lists(st.integers(0, 8 * 60), min_size=1, max_size=6))
    def test_bit_flips_never_yield_a_changed_frame(
        self, frame: Frame, sentinel: Frame, flips: list[int]
    ) -> None:
        """Flipped bits are rejected or undone; the frame after the damage still decodes."""
        wire = bytearray(_wire(frame))
        for bit in flips:
            wire[(bit // 8) % len(wire)] ^= 1 << (bit % 8)
        found = FrameDecoder().feed(bytes(wire) + _wire(sentinel))
        assert found[-1:] == [sentinel]
        assert all(f in (frame, sentinel) for f in found)
        if bytes(wire) == _wire(frame):
            assert found == [frame, sentinel]

    def test_oversize_run_is_counted_once(self) -> None:
        """A long run without a delimiter counts one oversize, and the frame ending it survives."""
        decoder = FrameDecoder()
        frame = Frame(1, 2, b"\x03")
        for _ in range(10):
            assert decoder.feed(b"\x41" * 50) == []
        assert decoder.feed(_wire(frame)) == [frame]
        assert _counters(decoder) == {"crc_errors": 0, "framing_errors": 0, "oversize": 1}
        assert decoder.feed(b"\x41" * 60 + b"\x00") == []
        assert decoder.oversize == 2

    def test_idle_delimiters_count_nothing(self) -> None:
        """Runs of 0x00 between frames are idle line, not errors."""
        decoder = FrameDecoder()
        frame = Frame(255, 0x08, b"\x00\x00")
        assert decoder.feed(b"\x00\x00" + _wire(frame) + b"\x00\x00\x00") == [frame]
        assert _counters(decoder) == {"crc_errors": 0, "framing_errors": 0, "oversize": 0}

    @pytest.mark.parametrize(
        ("seq", "msg_type", "size"),
        [(256, 1, 0), (-1, 1, 0), (0, 256, 0), (0, 1, msg.MAX_PAYLOAD + 1)],
    )
    def test_encode_frame_validates(self, seq: int, msg_type: int, size: int) -> None:
        """seq and type must be bytes and the payload at most MAX_PAYLOAD bytes."""
        with pytest.raises(ValueError, match=r"^(seq|msg_type|payload) "):
            encode_frame(seq, msg_type, bytes(size))
