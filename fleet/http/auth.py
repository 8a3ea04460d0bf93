"""Who may do what over HTTP: bearer tokens, their roles, and the bind policy. Pure: no IO.

A token file holds one token a line, ``ROLE NAME sha256:HEX`` (``#`` starts a comment): only
the SHA-256 of each token is kept, so the file can be read without revealing a token, and a
presented token is compared against every hash in constant time. Two roles: ``viewer``
reads, ``operator`` reads and acts. ``fleet http token`` writes the lines.

With no token file the server binds to loopback only, and every caller is the anonymous
local viewer: it can read, never act (there is no default token or password).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum

from fleet.errors import FleetConfigError

_LINE = re.compile(
    r"^(viewer|operator)\s+([A-Za-z0-9][A-Za-z0-9_.@-]{0,63})\s+sha256:([0-9a-f]{64})$"
)
# Longest token looked at: a longer Authorization header is refused before hashing it.
MAX_TOKEN_CHARS = 256


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"


@dataclass(frozen=True)
class Principal:
    """A caller the server recognised: ``name`` is recorded with every action it takes."""

    name: str
    role: Role

    def may_act(self) -> bool:
        return self.role is Role.OPERATOR


ANONYMOUS = Principal("local", Role.VIEWER)


@dataclass(frozen=True)
class TokenEntry:
    name: str
    role: Role
    digest: bytes


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_token() -> str:
    """A fresh bearer token (256 bits)."""
    return "flt_" + secrets.token_urlsafe(32)


def token_line(name: str, role: Role, token: str) -> str:
    return f"{role.value} {name} sha256:{hash_token(token).hex()}"


def parse_tokens(text: str, source: str = "tokens file") -> list[TokenEntry]:
    """Raises ``FleetConfigError`` naming the line that does not parse, or a name twice."""
    entries: list[TokenEntry] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _LINE.match(line)
        if match is None:
            raise FleetConfigError(
                f"{source} line {number}: expected 'viewer|operator NAME sha256:HEX', "
                f"got {line[:80]!r}"
            )
        role, name, digest = match.groups()
        if any(e.name == name for e in entries):
            raise FleetConfigError(f"{source} line {number}: {name!r} appears twice")
        entries.append(TokenEntry(name, Role(role), bytes.fromhex(digest)))
    return entries


def add_token(text: str, name: str, role: Role, source: str = "tokens file") -> tuple[str, str]:
    """A new token for ``name`` and the line to append to a tokens file holding ``text``.

    Raises:
        FleetConfigError: ``text`` does not parse, ``name`` is not a valid token name, or
            the file already has a token of that name.
    """
    entries = parse_tokens(text, source=source)
    if any(entry.name == name for entry in entries):
        raise FleetConfigError(f"{source} already has a token named {name!r}")
    token = new_token()
    line = token_line(name, role, token)
    if _LINE.match(line) is None:
        raise FleetConfigError(
            f"token name {name[:80]!r}: 1-64 of letters, digits and _.@- (starting with a "
            "letter or digit)"
        )
    return line, token


class Authenticator:
    """Maps a presented token to its principal; ``None`` when it matches no entry."""

    def __init__(self, entries: list[TokenEntry]) -> None:
        self._entries = entries

    @property
    def configured(self) -> bool:
        return bool(self._entries)

    def identify(self, token: str | None) -> Principal | None:
        if not self._entries:
            return ANONYMOUS
        if not token or len(token) > MAX_TOKEN_CHARS:
            return None
        digest = hash_token(token)
        found: Principal | None = None
        for entry in self._entries:  # every entry compared: no early exit to time
            if hmac.compare_digest(digest, entry.digest):
                found = Principal(entry.name, entry.role)
        return found


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header, else None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) -> (host, port); raises FleetConfigError."""
    host, _, port_text = listen.rpartition(":")
    host = host.strip("[]")
    port = int(port_text) if port_text.isdigit() else -1
    if not host or not 0 <= port <= 65535:
        raise FleetConfigError(f"[http] listen must be HOST:PORT, not {listen!r}")
    return host, port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, authenticator: Authenticator) -> None:
    """Binding beyond loopback without a token would hand the fleet to the network."""
    if not authenticator.configured and not is_loopback(host):
        raise FleetConfigError(
            f"[http] listen on {host!r} needs [http] tokens_file: without tokens the "
            "controller serves HTTP on loopback only"
        )
