"""Operator identity for the controller's RPC: Ed25519 keys and signed requests (pure, no IO).

MQTT carries no trustworthy sender identity, so every request that changes the fleet carries
its own proof. The CLI wraps the request body in an envelope::

    {"v": 1, "operator": NAME|null, "key_id": HEX, "method": "deploy",
     "ts": UNIX_SECONDS, "nonce": HEX, "body": {...}, "sig": BASE64}

``sig`` is an Ed25519 signature over ``signing_bytes``: a domain tag and the canonical JSON
(sorted keys, no spaces) of every other field, the method included, so a signed
``devices-accept`` cannot be replayed as ``deploy``. ``verify_request`` checks, in this order:
envelope shape (``unsigned`` / ``malformed``), ``wrong_method``, ``unknown_key``,
``bad_signature``, the timestamp window (``expired`` / ``from_future``) and the nonce
(``replayed``). The clock, the trusted keys and the nonces already seen are passed in; the
controller persists nonces (``fleet.store``) for at least the window, so a restart does not
reopen it.

A key id is the first 32 hex digits of the SHA-256 of the raw 32-byte public key; public keys
travel as base64 of those 32 bytes (PEM is accepted on input).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_contract.controller import JsonObject
from fleet.errors import OperatorKeyError, OperatorRefusedError

ENVELOPE_VERSION = 1
DEFAULT_WINDOW_S = 60.0
_DOMAIN = b"edge-fleet operator request v1\n"
_KEY_ID_HEX = 32
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)


class SignedRequest(BaseModel):
    """The envelope of a mutating request, as it arrives (strict: unknown fields refused)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    v: Literal[1]
    operator: str | None = Field(default=None, pattern=NAME_PATTERN)
    key_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    method: str = Field(min_length=1, max_length=64)
    ts: int = Field(ge=0, le=2**62)
    nonce: str = Field(pattern=r"^[0-9a-f]{32,64}$")
    body: JsonObject
    sig: str = Field(min_length=1, max_length=200)


@dataclass(frozen=True)
class TrustedKey:
    """An operator the controller trusts."""

    name: str
    public_key: str  # base64 of the raw 32 bytes


@dataclass(frozen=True)
class Verified:
    """A request that passed every check: who sent it and what it asks for."""

    operator: str
    key_id: str
    method: str
    nonce: str
    ts: int
    body: JsonObject


# -- keys ------------------------------------------------------------------------------------


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key(data: bytes, *, source: str) -> Ed25519PrivateKey:
    """An Ed25519 private key from unencrypted PEM.

    Raises:
        OperatorKeyError: not PEM, encrypted, or not Ed25519.
    """
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise OperatorKeyError(
            f"not an unencrypted PEM private key ({exc})", value=source
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise OperatorKeyError("not an Ed25519 private key", value=source)
    return key


def public_key_text(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def parse_public_key(text: str) -> str:
    """Normalize a public key given as base64 (raw 32 bytes) or PEM to base64.

    Raises:
        OperatorKeyError: neither form, or not Ed25519.
    """
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(stripped.encode())
        except (ValueError, TypeError) as exc:
            raise OperatorKeyError(f"not a PEM public key ({exc})", value=stripped[:60]) from None
        if not isinstance(key, Ed25519PublicKey):
            raise OperatorKeyError("not an Ed25519 public key", value=stripped[:60])
        return public_key_text(key)
    try:
        raw = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError):
        raise OperatorKeyError("not base64 or PEM", value=stripped[:60]) from None
    if len(raw) != 32:
        raise OperatorKeyError(
            f"an Ed25519 public key is 32 bytes, this is {len(raw)}", value=stripped[:60]
        )
    return base64.b64encode(raw).decode()


def key_id(public_key: str) -> str:
    """The key id of a base64 public key (see the module docstring)."""
    return hashlib.sha256(base64.b64decode(public_key)).hexdigest()[:_KEY_ID_HEX]


def check_name(name: str) -> str:
    """Raises ``OperatorKeyError`` unless ``name`` is a short id (letters, digits, ._@-)."""
    if not _NAME.match(name):
        raise OperatorKeyError("operator names are 1-64 of letters, digits and ._@-", value=name)
    return name


# -- requests --------------------------------------------------------------------------------


def signing_bytes(
    *, operator: str | None, key: str, method: str, ts: int, nonce: str, body: JsonObject
) -> bytes:
    """The exact bytes a signature covers: domain tag + canonical JSON of every field."""
    fields = {
        "v": ENVELOPE_VERSION,
        "operator": operator,
        "key_id": key,
        "method": method,
        "ts": ts,
        "nonce": nonce,
        "body": body,
    }
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return _DOMAIN + canonical.encode()


def sign_request(
    private: Ed25519PrivateKey,
    method: str,
    body: JsonObject,
    *,
    now: float,
    operator: str | None = None,
    nonce: str | None = None,
) -> JsonObject:
    """The envelope of ``body`` for ``method``, signed now with a fresh random nonce."""
    kid = key_id(public_key_text(private.public_key()))
    ts, nonce = int(now), nonce or secrets.token_hex(16)
    message = signing_bytes(
        operator=operator, key=kid, method=method, ts=ts, nonce=nonce, body=body
    )
    return {
        "v": ENVELOPE_VERSION,
        "operator": operator,
        "key_id": kid,
        "method": method,
        "ts": ts,
        "nonce": nonce,
        "body": body,
        "sig": base64.b64encode(private.sign(message)).decode(),
    }


def verify_request(
    request: JsonObject,
    *,
    method: str,
    trusted: Mapping[str, TrustedKey],
    now: float,
    window_s: float,
    seen_nonces: Container[str],
) -> Verified:
    """Check a signed request for ``method``; ``trusted`` maps key ids to operators.

    Raises:
        OperatorRefusedError: with ``reason`` unsigned, malformed, wrong_method, unknown_key,
            bad_signature, expired, from_future or replayed.
    """
    if "sig" not in request or "key_id" not in request:
        raise OperatorRefusedError("unsigned", "the request is not signed by an operator key")
    try:
        envelope = SignedRequest.model_validate(request)
    except ValidationError as exc:
        where = ".".join(str(p) for p in exc.errors()[0]["loc"]) or "envelope"
        raise OperatorRefusedError("malformed", f"bad signed envelope at {where}") from None
    if envelope.method != method:
        raise OperatorRefusedError(
            "wrong_method", f"signed for {envelope.method!r}, sent to {method!r}"
        )
    operator = trusted.get(envelope.key_id)
    if operator is None or (envelope.operator not in (None, operator.name)):
        raise OperatorRefusedError("unknown_key", f"key {envelope.key_id} is not a known operator")
    _check_signature(envelope, operator)
    age = now - envelope.ts
    if age > window_s:
        raise OperatorRefusedError("expired", f"signed {age:.0f}s ago, the window is {window_s:g}s")
    if -age > window_s:
        raise OperatorRefusedError(
            "from_future", f"signed {-age:.0f}s in the future, the window is {window_s:g}s"
        )
    if envelope.nonce in seen_nonces:
        raise OperatorRefusedError("replayed", f"nonce {envelope.nonce} was already used")
    return Verified(
        operator.name, envelope.key_id, method, envelope.nonce, envelope.ts, envelope.body
    )


def _check_signature(envelope: SignedRequest, operator: TrustedKey) -> None:
    message = signing_bytes(
        operator=envelope.operator,
        key=envelope.key_id,
        method=envelope.method,
        ts=envelope.ts,
        nonce=envelope.nonce,
        body=envelope.body,
    )
    try:
        signature = base64.b64decode(envelope.sig, validate=True)
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(operator.public_key))
        public.verify(signature, message)
    except (binascii.Error, ValueError, InvalidSignature):
        raise OperatorRefusedError(
            "bad_signature", f"the signature does not verify with {operator.name}'s key"
        ) from None
