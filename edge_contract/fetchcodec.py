"""The repository-file exchange on the wire: its limits, status codes and the reply codec.

Shared by the device (``agent.ota.transport``, which requests ranges) and the controller
(``fleet.release.fileserver``, which answers them), so both read the same constants and the
same header format. Pure: no IO, no MQTT client, no TUF (the controller imports this module
without pulling in the device's TUF client).

The exchange (documented in docs/mqtt-api.md): the device publishes ``{"path", "offset",
"length"}`` (``encode_request``) on ``fleet/<id>/fetch``; the controller answers on the
request's response topic with ``encode_reply``'s payload: a small JSON header, then the raw
bytes of the range (or a short UTF-8 error message).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from edge_contract import payloads
from edge_contract.errors import PayloadError

REQUEST_EXPIRY_S = 30
CORRELATION_BYTES = 16
MAX_CORRELATION_BYTES = 64  # the server ignores requests with more
MAX_REQUEST_BYTES = 4096  # a request is a small JSON object
MAX_RANGE_LENGTH = 64 * 1024 * 1024  # a larger "length" is a bad request
# Bytes of a reply's JSON header: three integers and a correlation of up to 64 bytes in hex.
REPLY_HEADER_MAX = 256
MAX_REPLY_PACKET = 4 * 1024 * 1024  # whole PUBLISH packet of a reply, whatever the broker allows
URL_SCHEME = "mqtt:"
STATUS_OK = 200
STATUS_BAD_REQUEST = 400
STATUS_NOT_FOUND = 404
STATUS_TOO_LARGE = 413
STATUS_BAD_RANGE = 416
STATUS_BAD_REPLY = 502
STATUS_TIMEOUT = 504
MAX_PATH_LENGTH = 1024


class FetchRequest(BaseModel):
    """``fleet/<id>/fetch``: a byte range of a repository file (``metadata/...``,
    ``targets/...``). The path's own rules (no ``..``, no absolute path, ...) are the file
    server's: they need the repository to check symlinks."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    path: Annotated[str, StringConstraints(min_length=1, max_length=MAX_PATH_LENGTH)]
    offset: Annotated[int, Field(ge=0, le=payloads.INT_MAX)]
    length: Annotated[int, Field(gt=0, le=MAX_RANGE_LENGTH)]


@dataclass(frozen=True)
class DecodedReply:
    """A reply payload taken apart: the integer header fields, the correlation data it
    names (None if its header has none) and the data after the header (a view, not a copy)."""

    fields: dict[str, int]
    correlation: bytes | None
    data: memoryview


def encode_request(path: str, offset: int, length: int) -> bytes:
    """A range request's payload (not validated here: the file server answers a bad one 400,
    and the device reports that status as before)."""
    request = FetchRequest.model_construct(path=path, offset=offset, length=length)
    return json.dumps(request.model_dump()).encode()


def decode_request(payload: bytes | bytearray) -> FetchRequest:
    """A range request validated (``PayloadError``: the decoder's reasons, or ``schema``
    naming the field)."""
    return payloads.decode_model(FetchRequest, payload, max_bytes=MAX_REQUEST_BYTES)


def encode_reply(
    status: int, data: bytes, size: int | None, offset: int, correlation: bytes = b""
) -> bytes:
    """A reply's payload: a 2-byte big-endian header length, the JSON header
    ``{"status", "offset", "size", "correlation"}``, then ``data`` (the bytes of the range, or
    an error message).

    Everything travels in the payload and the reply has no MQTT v5 property, not even the
    correlation data that v5 request/response usually echoes: paho decodes properties by
    slicing the rest of the packet, payload included, again and again. With the correlation
    as a property paho 2.2 took several times as long to decode a 1 MiB reply, and user
    properties cost more still (docs/benchmarks.md, "OTA: model transfer goodput and
    verification time"). The agent's own link no longer pays this
    (``edge_runtime.mqtt.paho_client`` reads large packets in place); a client on plain paho does.
    """
    fields: dict[str, int | str] = {"status": status, "offset": offset}
    if size is not None:
        fields["size"] = size
    if correlation:
        fields["correlation"] = correlation.hex()
    header = json.dumps(fields, separators=(",", ":")).encode()
    return len(header).to_bytes(2, "big") + header + data


def decode_reply(payload: bytes | bytearray) -> DecodedReply:
    """A reply payload taken apart; ``ValueError`` if it is not one."""
    if len(payload) < 2:
        raise ValueError("shorter than its header length")
    end = 2 + int.from_bytes(payload[:2], "big")
    if end > len(payload) or end - 2 > REPLY_HEADER_MAX:
        raise ValueError(f"header of {end - 2} bytes")
    try:
        # A flat object of a few integers: anything deeper is not a header.
        fields = payloads.decode_object(payload[2:end], max_bytes=REPLY_HEADER_MAX, max_depth=1)
    except PayloadError as exc:  # a ValueError too, but say which limit
        raise ValueError(f"header: {exc.reason}: {exc}") from None
    correlation = _correlation_field(fields.pop("correlation", None))
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in fields.values()):
        raise ValueError(f"header {fields!r}")
    return DecodedReply(fields, correlation, memoryview(payload)[end:])


def _correlation_field(value: object) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= 2 * MAX_CORRELATION_BYTES:
        raise ValueError(f"correlation {str(value)[:80]!r}")
    return bytes.fromhex(value)  # ValueError if it is not hex
