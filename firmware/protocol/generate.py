"""Generate the serial protocol's code and golden vectors from ``messages.toml``.

``python firmware/protocol/generate.py`` (re)writes, from the single source of truth
``firmware/protocol/messages.toml``:

* ``firmware/src/protocol_gen.h``: C ids, payload structs, pack/unpack, PROTOCOL_HASH;
* ``agent/serial/messages_gen.py``: Python dataclasses with encode/decode, PROTOCOL_HASH;
* ``firmware/protocol/golden_vectors.json``: byte vectors made by the Python codec;
* ``firmware/tests/golden_gen.h``: the same vectors as C arrays for the firmware's tests.

``--check`` writes nothing and exits 1, naming the stale files, when any of them differs from
what the spec produces. Output is deterministic. Stdlib only.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import keyword
import re
import sys
import textwrap
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SPEC_PATH = ROOT / "firmware/protocol/messages.toml"
C_HEADER = ROOT / "firmware/src/protocol_gen.h"
PY_MODULE = ROOT / "agent/serial/messages_gen.py"
GOLDEN_JSON = ROOT / "firmware/protocol/golden_vectors.json"
GOLDEN_C = ROOT / "firmware/tests/golden_gen.h"
FRAMING_PY = ROOT / "agent/serial/framing.py"
BANNER = (
    "GENERATED from firmware/protocol/messages.toml by firmware/protocol/generate.py — do not edit"
)

INT_TYPES = {
    "u8": (1, 0, 0xFF),
    "u16": (2, 0, 0xFFFF),
    "u32": (4, 0, 0xFFFFFFFF),
    "i16": (2, -0x8000, 0x7FFF),
}
C_TYPES = {"u8": "uint8_t", "u16": "uint16_t", "u32": "uint32_t", "i16": "int16_t"}
# The C codec indexes frames with uint8_t: the COBS-encoded frame plus delimiter fits 255.
MAX_PAYLOAD_LIMIT = 249
DIRECTIONS = ("host_to_device", "device_to_host", "both")
NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
RESERVED_FIELDS = {"encode", "decode", "TYPE", "NEEDS_ACK", "NAME", "FIELDS"}


class SpecError(ValueError):
    """The spec is invalid; the message names the offending message and field."""


@dataclass(frozen=True)
class Field:
    """One payload field: ``kind`` is u8, u16, u32, i16 or str (``max`` bytes of UTF-8)."""

    name: str
    kind: str
    max: int
    doc: str

    @property
    def size(self) -> int:
        return self.max + 1 if self.kind == "str" else INT_TYPES[self.kind][0]


@dataclass(frozen=True)
class Message:
    """One message type of the spec."""

    name: str
    id: int
    direction: str
    ack: bool
    doc: str
    fields: tuple[Field, ...]

    @property
    def camel(self) -> str:
        return "".join(part.capitalize() for part in self.name.split("_"))

    @property
    def max_len(self) -> int:
        return sum(field.size for field in self.fields)

    @property
    def fixed(self) -> bool:
        return all(field.kind != "str" for field in self.fields)


@dataclass(frozen=True)
class Spec:
    """The validated spec and its hash."""

    version: int
    max_payload: int
    actuators: int
    sensors: int
    messages: tuple[Message, ...]
    hash: int


def protocol_hash(raw: dict[str, Any]) -> int:
    """First 4 bytes (big-endian) of SHA-256 over the spec's canonical JSON."""
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"))
    return int.from_bytes(hashlib.sha256(canonical.encode("utf-8")).digest()[:4], "big")


def _require(condition: bool, where: str, problem: str) -> None:
    if not condition:
        raise SpecError(f"messages.toml: {where}: {problem}")


def _int(table: dict[str, Any], key: str, where: str, low: int, high: int) -> int:
    value = table.get(key)
    _require(
        type(value) is int and low <= value <= high,
        where,
        f"{key} must be an integer in {low}..{high}, got {value!r}",
    )
    assert isinstance(value, int)
    return value


def _keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    _require(not unknown, where, f"unknown keys {unknown}")


def _doc(table: dict[str, Any], where: str) -> str:
    doc = table.get("doc", "")
    _require(isinstance(doc, str), where, "doc must be a string")
    return " ".join(str(doc).split())


def _parse_field(table: Any, where: str) -> Field:
    _require(isinstance(table, dict), where, "a field must be a table")
    _keys(table, {"name", "type", "max", "doc"}, where)
    name, kind = table.get("name"), table.get("type")
    _require(isinstance(name, str) and bool(NAME_RE.match(name)), where, f"bad name {name!r}")
    where = f"{where} {name!r}"
    _require(
        not keyword.iskeyword(str(name)) and name not in RESERVED_FIELDS, where, "name is reserved"
    )
    _require(
        kind in INT_TYPES or kind == "str",
        where,
        f"unknown type {kind!r} (known: {', '.join([*INT_TYPES, 'str'])})",
    )
    if kind == "str":
        _require("max" in table, where, "a str field needs max")
        size = _int(table, "max", where, 1, MAX_PAYLOAD_LIMIT - 1)
    else:
        _require("max" not in table, where, "max is only for str fields")
        size = 0
    return Field(str(name), str(kind), size, _doc(table, where))


def _parse_message(table: Any, index: int, max_payload: int) -> Message:
    where = f"message #{index + 1}"
    _require(isinstance(table, dict), where, "a message must be a table")
    _keys(table, {"name", "id", "direction", "ack", "doc", "fields"}, where)
    name = table.get("name")
    _require(isinstance(name, str) and bool(NAME_RE.match(name)), where, f"bad name {name!r}")
    where = f"message {name!r}"
    ident = _int(table, "id", where, 0, 0xFF)
    direction, ack = table.get("direction"), table.get("ack", False)
    raw_fields = table.get("fields")
    _require(direction in DIRECTIONS, where, f"direction must be one of {DIRECTIONS}")
    _require(isinstance(ack, bool), where, "ack must be true or false")
    _require(isinstance(raw_fields, list), where, "fields must be a list")
    assert isinstance(raw_fields, list)
    fields = tuple(_parse_field(f, f"{where} field") for f in raw_fields)
    names = [field.name for field in fields]
    _require(len(set(names)) == len(names), where, f"duplicate field names in {names}")
    message = Message(str(name), ident, str(direction), bool(ack), _doc(table, where), fields)
    _require(
        message.max_len <= max_payload,
        where,
        f"payload of up to {message.max_len} bytes exceeds max_payload {max_payload}",
    )
    return message


def parse_spec(raw: dict[str, Any]) -> Spec:
    """Validate a parsed spec; raises ``SpecError`` naming what is wrong."""
    _keys(raw, {"protocol", "message"}, "top level")
    protocol = raw.get("protocol")
    _require(isinstance(protocol, dict), "[protocol]", "missing table")
    assert isinstance(protocol, dict)
    _keys(protocol, {"version", "max_payload", "actuators", "sensors"}, "[protocol]")
    max_payload = _int(protocol, "max_payload", "[protocol]", 1, MAX_PAYLOAD_LIMIT)
    tables = raw.get("message")
    _require(isinstance(tables, list) and bool(tables), "[[message]]", "no messages")
    assert isinstance(tables, list)
    messages = tuple(_parse_message(t, i, max_payload) for i, t in enumerate(tables))
    for attr in ("name", "id"):
        values = [getattr(message, attr) for message in messages]
        dupes = sorted({v for v in values if values.count(v) > 1})
        _require(not dupes, "[[message]]", f"duplicate message {attr}s {dupes}")
    return Spec(
        version=_int(protocol, "version", "[protocol]", 0, 0xFFFF),
        max_payload=max_payload,
        actuators=_int(protocol, "actuators", "[protocol]", 0, 8),
        sensors=_int(protocol, "sensors", "[protocol]", 0, 8),
        messages=messages,
        hash=protocol_hash(raw),
    )


def load_spec(spec_path: Path) -> Spec:
    """Read and validate a spec file."""
    try:
        raw = tomllib.loads(spec_path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{spec_path}: not valid TOML: {exc}") from exc
    return parse_spec(raw)


# ---- C header -------------------------------------------------------------------------------

C_HELPERS = """\
static inline void proto_put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static inline void proto_put_u32(uint8_t *p, uint32_t v)
{
    proto_put_u16(p, (uint16_t)v);
    proto_put_u16(p + 2, (uint16_t)(v >> 16));
}

static inline uint16_t proto_get_u16(const uint8_t *p)
{
    return (uint16_t)(p[0] | ((uint16_t)p[1] << 8));
}

static inline uint32_t proto_get_u32(const uint8_t *p)
{
    return (uint32_t)proto_get_u16(p) | ((uint32_t)proto_get_u16(p + 2) << 16);
}
"""


def _c_comment(text: str) -> str:
    return text.replace("*/", "* /")


def _c_pack_field(field: Field) -> list[str]:
    f = field.name
    if field.kind == "str":
        return [
            f"buf[n] = (uint8_t)(m->{f}_len > {field.max} ? {field.max} : m->{f}_len);",
            f"for (i = 0; i < buf[n]; i++) buf[n + 1 + i] = (uint8_t)m->{f}[i];",
            "n = (uint8_t)(n + 1 + buf[n]);",
        ]
    if field.kind == "u8":
        return [f"buf[n++] = m->{f};"]
    size = INT_TYPES[field.kind][0]
    cast = "(uint16_t)" if field.kind == "i16" else ""
    return [f"proto_put_u{size * 8}(buf + n, {cast}m->{f});", f"n = (uint8_t)(n + {size});"]


def _c_unpack_field(field: Field, fixed: bool) -> list[str]:
    f = field.name
    if field.kind == "str":
        return [
            "if (len - n < 1) return -1;",
            f"m->{f}_len = buf[n++];",
            f"if (m->{f}_len > {field.max} || len - n < m->{f}_len) return -1;",
            f"for (i = 0; i < m->{f}_len; i++) m->{f}[i] = (char)buf[n + i];",
            f"n = (uint8_t)(n + m->{f}_len);",
        ]
    size = INT_TYPES[field.kind][0]
    check = [] if fixed else [f"if (len - n < {size}) return -1;"]
    if field.kind == "u8":
        return [*check, f"m->{f} = buf[n++];"]
    get = f"proto_get_u{size * 8}(buf + n)"
    cast = "(int16_t)" if field.kind == "i16" else ""
    return [*check, f"m->{f} = {cast}{get};", f"n = (uint8_t)(n + {size});"]


def _c_message(message: Message) -> str:
    upper, name = message.name.upper(), message.name
    doc = _c_comment(message.doc or message.name)
    lines = [
        f"/* {name} (0x{message.id:02X}, {message.direction}): {doc} */",
        f"#define MSG_{upper} 0x{message.id:02X}",
        f"#define MSG_{upper}_NEEDS_ACK {int(message.ack)}",
        f"#define MSG_{upper}_MAX_LEN {message.max_len}",
        "",
        "typedef struct {",
    ]
    for field in message.fields:
        note = f" /* {_c_comment(field.doc)} */" if field.doc else ""
        if field.kind == "str":
            lines += [
                f"    uint8_t {field.name}_len;",
                f"    char {field.name}[{field.max}];{note}",
            ]
        else:
            lines.append(f"    {C_TYPES[field.kind]} {field.name};{note}")
    if not message.fields:
        lines.append("    uint8_t unused;")
    lines.append(f"}} msg_{name}_t;")
    decl = "    uint8_t n = 0;\n" + ("" if message.fixed else "    uint8_t i;\n")
    pack = [line for field in message.fields for line in _c_pack_field(field)]
    unpack = [f"if (len != {message.max_len}) return -1;"] if message.fixed else []
    unpack += [line for field in message.fields for line in _c_unpack_field(field, message.fixed)]
    if not message.fields:
        pack, unpack, decl = ["(void)m;", "(void)buf;"], ["(void)buf;", "(void)m;"], ""
    pack_body = "".join(f"    {line}\n" for line in pack)
    unpack_body = "".join(f"    {line}\n" for line in unpack)
    n = "n" if message.fields else "0"
    lines += [
        "",
        f"static inline uint8_t msg_{name}_pack(const msg_{name}_t *m, uint8_t *buf)",
        "{",
        f"{decl}{pack_body}    return {n};",
        "}",
        "",
        f"static inline int8_t msg_{name}_unpack(const uint8_t *buf, uint8_t len, msg_{name}_t *m)",
        "{",
        f"{decl}{unpack_body}    return {n} == len ? 0 : -1;",
        "}",
    ]
    return "\n".join(lines) + "\n"


def render_c_header(spec: Spec) -> str:
    """firmware/src/protocol_gen.h."""
    head = f"""\
/* {BANNER} */
/* Serial protocol ids, payload structs and explicit little-endian pack/unpack (no padding or
 * endianness assumptions). pack returns the payload length; unpack returns 0, or -1 when the
 * length or a str length is wrong. */
#ifndef PROTOCOL_GEN_H
#define PROTOCOL_GEN_H

#include <stdint.h>

#define PROTOCOL_VERSION {spec.version}
#define PROTOCOL_HASH 0x{spec.hash:08X}UL
#define MAX_PAYLOAD {spec.max_payload}
#define PROTOCOL_ACTUATORS {spec.actuators}
#define PROTOCOL_SENSORS {spec.sensors}

"""
    body = "\n".join(_c_message(message) for message in spec.messages)
    return f"{head}{C_HELPERS}\n{body}\n#endif /* PROTOCOL_GEN_H */\n"


# ---- Python module --------------------------------------------------------------------------


def _py_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')


def _py_message(message: Message) -> str:
    cls = message.camel
    ack = "; acknowledged with ack/nack" if message.ack else ""
    first = _py_text(message.doc or f"The {message.name} message.")
    wrapped = textwrap.wrap(first, 92, initial_indent='    """', subsequent_indent="    ")
    lines = [
        "",
        "",
        "@dataclass(frozen=True)",
        f"class {cls}(Message):",
        *wrapped,
        "",
        f"    Type 0x{message.id:02x}, {message.direction.replace('_', ' ')}{ack}.",
        '    """',
        "",
        f"    TYPE: ClassVar[int] = 0x{message.id:02x}",
        f"    NEEDS_ACK: ClassVar[bool] = {message.ack}",
        f'    NAME: ClassVar[str] = "{message.name}"',
        "    FIELDS: ClassVar[tuple[FieldSpec, ...]] = (",
    ]
    for field in message.fields:
        extra = f", {field.max}" if field.kind == "str" else ""
        lines.append(f'        FieldSpec("{field.name}", "{field.kind}"{extra}),')
    lines += ["    )", ""]
    for field in message.fields:
        if field.doc:
            lines += textwrap.wrap(
                field.doc, 92, initial_indent="    #: ", subsequent_indent="    #: "
            )
        lines.append(f"    {field.name}: {'str' if field.kind == 'str' else 'int'}")
    return "\n".join(lines + _py_methods(message)) + "\n"


def _py_methods(message: Message) -> list[str]:
    parts, reads = [], []
    for field in message.fields:
        label = f"{message.camel}.{field.name}"
        if field.kind == "str":
            parts.append(f'pack_str("{label}", self.{field.name}, {field.max})')
            reads.append(f'{field.name}=reader.text("{field.name}", {field.max})')
        else:
            parts.append(f'pack_int("{field.kind}", "{label}", self.{field.name})')
            reads.append(f'{field.name}=reader.number("{field.kind}", "{field.name}")')
    joined = "".join(f"\n            {'+ ' if i else ''}{part}" for i, part in enumerate(parts))
    encode = f"({joined}\n        )" if len(parts) > 1 else (parts[0] if parts else 'b""')
    args = "".join(f"            {read},\n" for read in reads)
    build = f"cls(\n{args}        )" if reads else "cls()"
    return [
        "",
        "    def encode(self) -> bytes:",
        f"        return {encode}",
        "",
        "    @classmethod",
        "    def decode(cls, payload: bytes) -> Self:",
        "        reader = PayloadReader(cls.TYPE, payload)",
        f"        message = {build}",
        "        reader.done()",
        "        return message",
    ]


def _export_order(name: str) -> tuple[int, str]:
    """Ruff's __all__ order: CONSTANTS, then Classes, then functions."""
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


def render_python(spec: Spec) -> str:
    """agent/serial/messages_gen.py."""
    head = f'''\
# {BANNER}
"""Messages of the serial protocol with the Arduino: one frozen dataclass per message type.

Payloads are little-endian; a ``str`` is a u8 length and that many UTF-8 bytes. ``encode``
validates every field (``ValueError`` naming it); ``decode`` raises ``MessageError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

from agent.errors import MessageError
from agent.serial.message_base import FieldSpec, Message, PayloadReader, pack_int, pack_str

PROTOCOL_VERSION = {spec.version}
PROTOCOL_HASH = 0x{spec.hash:08x}
MAX_PAYLOAD = {spec.max_payload}
ACTUATORS = {spec.actuators}
SENSORS = {spec.sensors}
'''
    classes = "".join(_py_message(message) for message in spec.messages)
    table = "".join(f"    {m.camel}.TYPE: {m.camel},\n" for m in spec.messages)
    names = sorted(
        [
            "ACTUATORS",
            "MAX_PAYLOAD",
            "MESSAGE_TYPES",
            "PROTOCOL_HASH",
            "PROTOCOL_VERSION",
            "SENSORS",
            "FieldSpec",
            "Message",
            "decode_message",
            *(m.camel for m in spec.messages),
        ],
        key=_export_order,
    )
    exports = "".join(f'    "{name}",\n' for name in names)
    tail = f'''

MESSAGE_TYPES: dict[int, type[Message]] = {{
{table}}}


def decode_message(msg_type: int, payload: bytes) -> Message:
    """The message in a frame; raises MessageError for an unknown type or a bad payload."""
    cls = MESSAGE_TYPES.get(msg_type)
    if cls is None:
        raise MessageError("unknown message type", msg_type=msg_type, payload=payload)
    return cls.decode(payload)


__all__ = [
{exports}]
'''
    return head + classes + tail


# ---- golden vectors -------------------------------------------------------------------------

_PKG = "_protocol_codec"
COUNTERS = {"crc_errors": "CRC", "framing_errors": "FRAMING", "oversize": "OVERFLOW"}
TEXT_SAMPLE = "Grüße vom µC: ADC ok, PORTB 0x3F. "


@dataclass(frozen=True)
class Codec:
    """The Python codec for one spec: its rendered messages module, and framing.py bound to it."""

    messages: ModuleType
    framing: ModuleType


def load_codec(messages_source: str) -> Codec:
    """Load ``messages_source`` and framing.py as a private package; sys.modules is restored."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # framing and messages import agent.errors
    names = (_PKG, f"{_PKG}.messages_gen", f"{_PKG}.framing")
    saved = {name: sys.modules.get(name) for name in names}
    package, messages = ModuleType(_PKG), ModuleType(names[1])
    package.__path__ = []
    sys.modules[_PKG], sys.modules[names[1]] = package, messages
    try:
        code = compile(messages_source, str(PY_MODULE), "exec")
        exec(code, messages.__dict__)  # noqa: S102 - our own rendered module
        spec = importlib.util.spec_from_file_location(names[2], FRAMING_PY)
        assert spec is not None
        assert spec.loader is not None
        framing = importlib.util.module_from_spec(spec)
        sys.modules[names[2]] = framing
        spec.loader.exec_module(framing)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return Codec(messages, framing)


def _digest(label: str, low: int, high: int) -> int:
    value = int.from_bytes(hashlib.sha256(label.encode("utf-8")).digest()[:4], "big")
    return low + value % (high - low + 1)


def sample_text(size: int) -> str:
    """Exactly ``size`` bytes of UTF-8, multi-byte characters included."""
    text = ""
    for char in TEXT_SAMPLE * (size // len(TEXT_SAMPLE) + 1):
        if len((text + char).encode("utf-8")) > size:
            break
        text += char
    return text + "." * (size - len(text.encode("utf-8")))


def _values(spec: Spec, message: Message, variant: str) -> dict[str, int | str]:
    values: dict[str, int | str] = {}
    for field in message.fields:
        if field.kind == "str":
            sizes = {"min": 0, "mid": min(field.max, 12), "max": field.max}
            values[field.name] = sample_text(sizes[variant])
            continue
        _, low, high = INT_TYPES[field.kind]
        mid = _digest(f"{message.name}.{field.name}", low, high)
        if field.name == "protocol_hash" and field.kind == "u32":
            mid = spec.hash
        values[field.name] = {"min": low, "mid": mid, "max": high}[variant]
    return values


def _frame_vector(
    codec: Codec, name: str, seq: int, msg_type: int, payload: bytes
) -> dict[str, Any]:
    wire: bytes = codec.framing.encode_frame(seq, msg_type, payload)
    decoded = codec.framing.decode_frame(wire[:-1])
    assert (decoded.seq, decoded.msg_type, decoded.payload) == (seq, msg_type, payload), name
    return {
        "name": name,
        "seq": seq,
        "type": msg_type,
        "payload": payload.hex(),
        "wire": wire.hex(),
    }


def _message_vectors(spec: Spec, codec: Codec) -> list[dict[str, Any]]:
    vectors = []
    for message in spec.messages:
        cls = codec.messages.MESSAGE_TYPES[message.id]
        seqs = {"min": 0, "mid": _digest(f"{message.name}.seq", 1, 254), "max": 255}
        for variant, seq in seqs.items():
            fields = _values(spec, message, variant)
            payload: bytes = cls(**fields).encode()
            assert codec.messages.decode_message(message.id, payload) == cls(**fields)
            vector = _frame_vector(codec, f"{message.name}_{variant}", seq, message.id, payload)
            vectors.append({**vector, "message": message.name, "fields": fields})
    return vectors


def _framing_vectors(spec: Spec, codec: Codec) -> list[dict[str, Any]]:
    size = spec.max_payload
    cases = [
        ("empty_payload", 0, 0x00, b""),
        ("max_payload_zeros", 1, 0xFF, bytes(size)),
        ("max_payload_ff", 255, 0xFF, b"\xff" * size),
        ("max_payload_count", 0x80, 0x7F, bytes(range(1, size + 1))),
    ]
    return [_frame_vector(codec, *case) for case in cases]


def _cobs_vectors(codec: Codec) -> list[dict[str, Any]]:
    cases = [
        ("one_zero", b"\x00"),
        ("two_zeros", b"\x00\x00"),
        ("zero_inside", b"\x11\x22\x00\x33"),
        ("zero_last", b"\x11\x22\x33\x00"),
        ("run_253", bytes(range(1, 254))),
        ("run_254_code_ff", bytes(range(1, 255))),
        ("run_253_zero", bytes(range(1, 254)) + b"\0"),
    ]
    vectors = []
    for name, data in cases:
        encoded: bytes = codec.framing.cobs_encode(data)
        assert codec.framing.cobs_decode(encoded) == data, name
        vectors.append({"name": name, "decoded": data.hex(), "encoded": encoded.hex()})
    return vectors


def _invalid_cases(spec: Spec, codec: Codec, reference: dict[str, Any]) -> list[tuple[str, bytes]]:
    cobs, crc16 = codec.framing.cobs_encode, codec.framing.crc16_ccitt
    body = bytes((reference["seq"], reference["type"])) + bytes.fromhex(reference["payload"])
    good = body + crc16(body).to_bytes(2, "little")
    flipped = body[:-1] + bytes((body[-1] ^ 0x01,)) + good[-2:]
    big = bytes((0, 0)) + bytes(range(1, spec.max_payload + 2))
    return [
        ("empty", b""),
        ("bad_crc", cobs(body + (crc16(body) ^ 0x8001).to_bytes(2, "little"))),
        ("payload_bit_flip", cobs(flipped)),
        ("truncated", bytes.fromhex(reference["wire"])[:-2]),
        ("bad_cobs", b"\x05\x11\x22"),
        ("too_short", cobs(b"\x01\x02\x03")),
        ("oversize_payload", cobs(big + crc16(big).to_bytes(2, "little"))),
        ("oversize_run", b"\x41" * 2 * int(codec.framing.MAX_ENCODED)),
    ]


EXPECTED_INVALID = {
    "empty": ("empty", None),
    "bad_crc": ("crc", "crc_errors"),
    "payload_bit_flip": ("crc", "crc_errors"),
    "truncated": ("cobs", "framing_errors"),
    "bad_cobs": ("cobs", "framing_errors"),
    "too_short": ("short", "framing_errors"),
    "oversize_payload": ("long", "oversize"),
    "oversize_run": ("long", "oversize"),
}


def _invalid_vectors(spec: Spec, codec: Codec, reference: dict[str, Any]) -> list[dict[str, Any]]:
    vectors = []
    for name, encoded in _invalid_cases(spec, codec, reference):
        error, counter = EXPECTED_INVALID[name]
        decoder = codec.framing.FrameDecoder()
        wire = encoded + b"\x00"
        found = decoder.feed(wire)
        counts = {key: getattr(decoder, key) for key in COUNTERS}
        assert codec.framing._parse(encoded).kind == error, name
        assert not found, name
        assert counts == {key: int(key == counter) for key in COUNTERS}, name
        vectors.append(
            {
                "name": name,
                "encoded": encoded.hex(),
                "wire": wire.hex(),
                "error": error,
                "counter": counter,
            }
        )
    return vectors


def build_golden(spec: Spec, codec: Codec) -> dict[str, Any]:
    """Every golden vector, made and cross-checked by the Python codec."""
    messages = _message_vectors(spec, codec)
    # A frame whose last raw byte is not zero, so cutting its last COBS byte breaks the COBS.
    reference = next(v for v in messages if not v["wire"].endswith("0100"))
    return {
        "_generated": BANNER,
        "protocol_version": spec.version,
        "protocol_hash": f"0x{spec.hash:08x}",
        "max_payload": spec.max_payload,
        "max_encoded": int(codec.framing.MAX_ENCODED),
        "notes": "COBS code 0xFF needs 254 non-zero bytes in a row: no frame is that long "
        "(see max_encoded), so only the cobs vectors exercise it.",
        "messages": messages,
        "frames": _framing_vectors(spec, codec),
        "cobs": _cobs_vectors(codec),
        "invalid": _invalid_vectors(spec, codec, reference),
    }


def render_json(golden: dict[str, Any]) -> str:
    """firmware/protocol/golden_vectors.json."""
    return json.dumps(golden, indent=2, ensure_ascii=False) + "\n"


def _c_bytes(name: str, data: bytes) -> str:
    values = [f"0x{byte:02X}" for byte in data] or ["0x00"]  # C99 has no empty arrays
    rows = ",\n    ".join(", ".join(values[i : i + 12]) for i in range(0, len(values), 12))
    return f"static const uint8_t {name}[] = {{\n    {rows}\n}};\n"


def _c_char(byte: int) -> str:
    char = chr(byte)
    plain = (char.isascii() and char.isalnum()) or char in " .,:!-"
    return f"'{char}'" if plain else f"(char)0x{byte:02X}"


def _c_init(message: Message, fields: dict[str, Any]) -> str:
    parts = []
    for field in message.fields:
        value = fields[field.name]
        if field.kind == "str":
            data = value.encode("utf-8")
            chars = ", ".join(_c_char(byte) for byte in data) or "0"
            parts.append(f".{field.name}_len = {len(data)}, .{field.name} = {{ {chars} }}")
        else:
            parts.append(f".{field.name} = {f'0x{value:08X}UL' if field.kind == 'u32' else value}")
    return "{ " + ", ".join(parts or ["0"]) + " }"


def _c_wrappers(spec: Spec) -> str:
    members = "".join(f"    msg_{m.name}_t {m.name};\n" for m in spec.messages)
    out = [f"typedef union {{\n{members}}} golden_msg_t;\n"]
    for m in spec.messages:
        out.append(
            f"static uint8_t golden_pack_{m.name}(const void *m, uint8_t *buf)\n{{\n"
            f"    return msg_{m.name}_pack((const msg_{m.name}_t *)m, buf);\n}}\n\n"
            f"static int8_t golden_unpack_{m.name}(const uint8_t *buf, uint8_t len, void *m)\n{{\n"
            f"    return msg_{m.name}_unpack(buf, len, (msg_{m.name}_t *)m);\n}}\n"
        )
    return "\n".join(out)


def render_golden_c(spec: Spec, golden: dict[str, Any]) -> str:
    """firmware/tests/golden_gen.h: the golden vectors as C arrays."""
    by_name = {message.name: message for message in spec.messages}
    frames = golden["messages"] + golden["frames"]
    parts, rows, msg_rows = [], [], []
    for i, vector in enumerate(frames):
        payload, wire = bytes.fromhex(vector["payload"]), bytes.fromhex(vector["wire"])
        parts += [_c_bytes(f"golden_f{i}_payload", payload), _c_bytes(f"golden_f{i}_wire", wire)]
        rows.append(
            f'    {{ "{vector["name"]}", {vector["seq"]}, 0x{vector["type"]:02X}, '
            f"golden_f{i}_payload, {len(payload)}, golden_f{i}_wire, {len(wire)} }},"
        )
        if "message" in vector:
            message = by_name[vector["message"]]
            parts.append(
                f"static const msg_{message.name}_t golden_f{i}_expect = "
                f"{_c_init(message, vector['fields'])};\n"
            )
            msg_rows.append(
                f"    {{ {i}, &golden_f{i}_expect, golden_pack_{message.name}, "
                f"golden_unpack_{message.name} }},"
            )
    cobs_rows, bad_rows = [], []
    for i, vector in enumerate(golden["cobs"]):
        decoded, encoded = bytes.fromhex(vector["decoded"]), bytes.fromhex(vector["encoded"])
        parts += [
            _c_bytes(f"golden_c{i}_decoded", decoded),
            _c_bytes(f"golden_c{i}_encoded", encoded),
        ]
        cobs_rows.append(
            f'    {{ "{vector["name"]}", golden_c{i}_decoded, {len(decoded)}, '
            f"golden_c{i}_encoded, {len(encoded)} }},"
        )
    for i, vector in enumerate(golden["invalid"]):
        wire = bytes.fromhex(vector["wire"])
        parts.append(_c_bytes(f"golden_i{i}_wire", wire))
        counter = COUNTERS.get(vector["counter"], "NONE")
        bad_rows.append(
            f'    {{ "{vector["name"]}", golden_i{i}_wire, {len(wire)}, '
            f'"{vector["error"]}", GOLDEN_COUNTER_{counter} }},'
        )
    tables = [
        ("golden_frame_t golden_frames", "GOLDEN_FRAME_COUNT", rows),
        ("golden_message_t golden_messages", "GOLDEN_MESSAGE_COUNT", msg_rows),
        ("golden_cobs_t golden_cobs", "GOLDEN_COBS_COUNT", cobs_rows),
        ("golden_invalid_t golden_invalid", "GOLDEN_INVALID_COUNT", bad_rows),
    ]
    table_text = "".join(
        f"#define {count} {len(body)}\nstatic const {decl}[] = {{\n" + "\n".join(body) + "\n};\n\n"
        for decl, count, body in tables
    )
    return (
        f"/* {BANNER} */\n/* The golden vectors of golden_vectors.json, for test_codec.c. */\n"
        "#ifndef GOLDEN_GEN_H\n#define GOLDEN_GEN_H\n\n#include <stdint.h>\n\n"
        '#include "golden_types.h"\n#include "protocol_gen.h"\n\n'
        f"#define GOLDEN_PROTOCOL_HASH 0x{spec.hash:08X}UL\n\n"
        f"{_c_wrappers(spec)}\n{''.join(parts)}\n{table_text}#endif /* GOLDEN_GEN_H */\n"
    )


# ---- command line ---------------------------------------------------------------------------


def render_all(spec_path: Path = SPEC_PATH) -> dict[Path, str]:
    """Every generated file's path and the text the spec at ``spec_path`` gives it."""
    spec = load_spec(spec_path)
    python = render_python(spec)
    golden = build_golden(spec, load_codec(python))
    return {
        C_HEADER: render_c_header(spec),
        PY_MODULE: python,
        GOLDEN_JSON: render_json(golden),
        GOLDEN_C: render_golden_c(spec, golden),
    }


def stale_files(rendered: dict[Path, str]) -> list[Path]:
    """The generated files whose content on disk differs from ``rendered``."""
    return [
        path
        for path, text in rendered.items()
        if not path.is_file() or path.read_text(encoding="utf-8") != text
    ]


def main(argv: list[str] | None = None) -> int:
    """Write the generated files, or with ``--check`` report the stale ones and exit 1."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if stale")
    parser.add_argument("--spec", type=Path, default=SPEC_PATH, help="the spec to read")
    args = parser.parse_args(argv)
    try:
        rendered = render_all(args.spec)
    except SpecError as exc:
        sys.stderr.write(f"generate.py: {exc}\n")
        return 2
    stale = stale_files(rendered)
    for path in stale:
        shown = path.relative_to(ROOT)
        if args.check:
            sys.stderr.write(f"stale: {shown} (run python firmware/protocol/generate.py)\n")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(rendered[path], encoding="utf-8", newline="\n")
            sys.stdout.write(f"wrote {shown}\n")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
