"""The fleet's certificate authority: device, controller, operator and broker certificates.

Owns the X.509 side of provisioning (the ``cryptography`` package, ECDSA P-256 keys, which
Mosquitto's OpenSSL accepts everywhere): creating the CA, issuing certificates whose common
name is the identity the broker's ACL sees (``use_identity_as_username``), checking a
device's CSR, and the CRL of revoked serials. ``CaDir`` is the only part that touches files:
a CA directory holds ``ca.pem``, ``ca.key`` (mode 0600, optionally passphrase-encrypted),
``index.json`` (every certificate issued: serial, common name, role, expiry, revocation) and
``crl.pem``. Everything else is pure.

Identities: a device's common name is its device id (``edge_contract.topics`` id rule); the
controller's is ``fleet-controller``; an operator's is ``operator:<name>`` (a ``:`` no device
id can hold, so no device can be issued an operator's or the controller's identity).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import ip_address
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_contract.errors import TopicError
from edge_contract.topics import validate_device_id
from fleet.errors import EXIT_DATA, FleetError

CONTROLLER_CN = "fleet-controller"
OPERATOR_PREFIX = "operator:"
_OPERATOR_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
# Device ids that would collide with a broker identity or read as one.
RESERVED_DEVICE_IDS = frozenset({CONTROLLER_CN, "mosquitto", "broker"})

DEVICE_DAYS = 365
CA_DAYS = 3650
CRL_DAYS = 365
# Issued certificates start a little in the past: a board's clock may lag the CA's.
_BACKDATE = dt.timedelta(minutes=5)


class PkiError(FleetError):
    """A CA, certificate or CSR problem; the message names it."""

    exit_code = EXIT_DATA


class Role(StrEnum):
    DEVICE = "device"
    CONTROLLER = "controller"
    OPERATOR = "operator"
    BROKER = "broker"


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def common_name(cert: x509.Certificate | x509.CertificateSigningRequest) -> str:
    """The subject's CN, or ``PkiError`` when there is not exactly one."""
    values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(values) != 1:
        raise PkiError("the subject must have exactly one common name")
    return str(values[0].value)


def device_common_name(device_id: str) -> str:
    """``device_id`` if it is a valid, unreserved device id (the device certificate's CN)."""
    try:
        validate_device_id(device_id)
    except TopicError as exc:
        raise PkiError(f"invalid device id {device_id!r}: {exc}") from None
    if device_id in RESERVED_DEVICE_IDS:
        raise PkiError(f"device id {device_id!r} is reserved for a broker identity")
    return device_id


def operator_common_name(name: str) -> str:
    if not _OPERATOR_NAME.fullmatch(name):
        raise PkiError(f"operator name {name!r} must match {_OPERATOR_NAME.pattern}")
    return OPERATOR_PREFIX + name


def create_ca(
    name: str = "edge fleet CA", *, now: dt.datetime, days: int = CA_DAYS
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA key and certificate (path length 0: it signs end entities only)."""
    key = new_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    public_key: ec.EllipticCurvePublicKey,
    subject_cn: str,
    *,
    now: dt.datetime,
    days: int = DEVICE_DAYS,
    not_after: dt.datetime | None = None,
    server_names: Sequence[str] = (),
) -> x509.Certificate:
    """An end-entity certificate for ``subject_cn``: a TLS client certificate, or a server
    one when ``server_names`` (DNS names or IP addresses) are given. ``not_after`` overrides
    ``days`` (tests issue expired certificates with it)."""
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise PkiError("only EC (P-256) keys are accepted")
    end = not_after if not_after is not None else now + dt.timedelta(days=days)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject_cn))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(now - _BACKDATE, end - dt.timedelta(seconds=1)))
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in server_names]), critical=False
        )
    return builder.sign(ca_key, hashes.SHA256())


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def csr_public_key(csr_pem: bytes, device_id: str) -> ec.EllipticCurvePublicKey:
    """The public key of a device's CSR, once its signature verifies and its CN is
    ``device_id``; else ``PkiError`` saying which."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise PkiError(f"not a PEM certificate signing request: {exc}") from None
    if not csr.is_signature_valid:
        raise PkiError("the CSR's signature does not verify")
    cn = common_name(csr)
    if cn != device_id:
        raise PkiError(f"the CSR's common name {cn!r} is not the device id {device_id!r}")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise PkiError("the CSR's key must be an EC (P-256) key")
    return key


def make_csr(key: ec.EllipticCurvePrivateKey, subject_cn: str) -> bytes:
    """A PEM CSR for ``subject_cn`` (what a board runs to keep its key; tests use it)."""
    csr = x509.CertificateSigningRequestBuilder().subject_name(_name(subject_cn))
    return csr.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def build_crl(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    revoked: Iterable[tuple[int, dt.datetime]],
    *,
    now: dt.datetime,
    days: int = CRL_DAYS,
) -> x509.CertificateRevocationList:
    """The CA's CRL listing ``revoked`` (serial, revocation time). OpenSSL refuses every
    client once the CRL's next update has passed: re-sign it (any revoke does) before."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - _BACKDATE)
        .next_update(now + dt.timedelta(days=days))
    )
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    return builder.sign(ca_key, hashes.SHA256())


def verify_issued(cert: x509.Certificate, ca_cert: x509.Certificate) -> None:
    """``PkiError`` unless ``ca_cert``'s key signed ``cert``."""
    key = ca_cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    if cert.signature_hash_algorithm is None:
        raise PkiError("certificate without a signature hash")
    try:
        key.verify(
            cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
        )
    except InvalidSignature:
        raise PkiError("the certificate was not issued by this CA") from None


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey, passphrase: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


class IssuedEntry(BaseModel):
    """One line of the CA's index: a certificate it issued."""

    model_config = ConfigDict(extra="forbid")

    serial: str = Field(pattern=r"^[0-9a-f]{1,40}$", description="hex")
    common_name: str = Field(min_length=1, max_length=128)
    role: Role
    not_after: dt.datetime
    revoked_at: dt.datetime | None = None

    @property
    def serial_int(self) -> int:
        return int(self.serial, 16)


class CaIndex(BaseModel):
    model_config = ConfigDict(extra="forbid")

    issued: list[IssuedEntry] = Field(default_factory=list)


@dataclass(frozen=True)
class Issued:
    """A certificate just issued, with its key when the CA generated it."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey | None
    entry: IssuedEntry


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` created with ``mode`` (never world-readable in between)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, mode)  # the umask may have narrowed it
    os.replace(tmp, path)


class CaDir:
    """A CA directory: ``ca.pem``, ``ca.key``, ``index.json``, ``crl.pem``."""

    def __init__(self, path: Path, passphrase: bytes | None = None) -> None:
        self.path = path
        self._passphrase = passphrase

    @property
    def cert_path(self) -> Path:
        return self.path / "ca.pem"

    @property
    def key_path(self) -> Path:
        return self.path / "ca.key"

    @property
    def index_path(self) -> Path:
        return self.path / "index.json"

    @property
    def crl_path(self) -> Path:
        return self.path / "crl.pem"

    def init(self, *, now: dt.datetime, name: str = "edge fleet CA") -> x509.Certificate:
        """Create the CA; refuses to overwrite an existing one."""
        if self.key_path.exists() or self.cert_path.exists():
            raise PkiError(f"{self.path} already holds a CA; refusing to overwrite it")
        self.path.mkdir(parents=True, exist_ok=True)
        key, cert = create_ca(name, now=now)
        write_private(self.key_path, key_pem(key, self._passphrase), 0o600)
        write_private(self.cert_path, cert_pem(cert), 0o644)
        self._save_index(CaIndex())
        self._write_crl(key, cert, CaIndex(), now)
        return cert

    def load(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        try:
            cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
            key_bytes = self.key_path.read_bytes()
        except OSError as exc:
            raise PkiError(f"no CA in {self.path} (run `fleet ca init`): {exc}") from None
        try:
            key = serialization.load_pem_private_key(key_bytes, self._passphrase)
        except (TypeError, ValueError) as exc:
            raise PkiError(f"cannot open {self.key_path} (passphrase?): {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{self.key_path} is not an EC key")
        return key, cert

    def ca_cert(self) -> x509.Certificate:
        return self.load()[1]

    def index(self) -> CaIndex:
        if not self.index_path.exists():
            return CaIndex()
        try:
            return CaIndex.model_validate(json.loads(self.index_path.read_text()))
        except (ValueError, ValidationError) as exc:
            raise PkiError(f"{self.index_path} is damaged: {exc}") from None

    def _save_index(self, index: CaIndex) -> None:
        write_private(self.index_path, index.model_dump_json(indent=2).encode(), 0o644)

    def _write_crl(
        self,
        key: ec.EllipticCurvePrivateKey,
        cert: x509.Certificate,
        index: CaIndex,
        now: dt.datetime,
    ) -> None:
        revoked = [(e.serial_int, e.revoked_at) for e in index.issued if e.revoked_at is not None]
        crl = build_crl(key, cert, revoked, now=now)
        write_private(self.crl_path, crl.public_bytes(serialization.Encoding.PEM), 0o644)

    def issue(
        self,
        subject_cn: str,
        role: Role,
        *,
        now: dt.datetime,
        public_key: ec.EllipticCurvePublicKey | None = None,
        days: int = DEVICE_DAYS,
        not_after: dt.datetime | None = None,
        server_names: Sequence[str] = (),
    ) -> Issued:
        """Issue (and record) a certificate; a key is generated unless ``public_key``."""
        ca_key, ca_cert = self.load()
        key: ec.EllipticCurvePrivateKey | None = None
        if public_key is None:
            key = new_key()
            public_key = key.public_key()
        cert = issue(
            ca_key,
            ca_cert,
            public_key,
            subject_cn,
            now=now,
            days=days,
            not_after=not_after,
            server_names=server_names,
        )
        entry = IssuedEntry(
            serial=format(cert.serial_number, "x"),
            common_name=subject_cn,
            role=role,
            not_after=cert.not_valid_after_utc,
        )
        index = self.index()
        index.issued.append(entry)
        self._save_index(index)
        return Issued(cert, key, entry)

    def revoke(self, subject_cn: str, *, now: dt.datetime) -> list[IssuedEntry]:
        """Revoke every unrevoked certificate of ``subject_cn`` and re-sign the CRL."""
        ca_key, ca_cert = self.load()
        index = self.index()
        hit = [e for e in index.issued if e.common_name == subject_cn and e.revoked_at is None]
        if not hit and not any(e.common_name == subject_cn for e in index.issued):
            raise PkiError(f"this CA issued no certificate to {subject_cn!r}")
        for entry in hit:
            entry.revoked_at = now
        self._save_index(index)
        self._write_crl(ca_key, ca_cert, index, now)
        return hit

    def refresh_crl(self, *, now: dt.datetime) -> None:
        """Re-sign the CRL (its next update moves ``CRL_DAYS`` ahead)."""
        ca_key, ca_cert = self.load()
        self._write_crl(ca_key, ca_cert, self.index(), now)

    def crl(self) -> x509.CertificateRevocationList:
        return x509.load_pem_x509_crl(self.crl_path.read_bytes())

    def cut_off(self, role: Role) -> list[str]:
        """Common names of ``role`` whose every certificate is revoked, sorted: the broker's
        ACL denies them everything, so a revoked client still connected gets nothing more."""
        entries = [e for e in self.index().issued if e.role == role]
        usable = {e.common_name for e in entries if e.revoked_at is None}
        return sorted({e.common_name for e in entries if e.revoked_at is not None} - usable)

    def active(self, role: Role) -> list[IssuedEntry]:
        """Unrevoked certificates of ``role``, one per common name (the latest)."""
        latest: dict[str, IssuedEntry] = {}
        for entry in self.index().issued:
            if entry.role == role and entry.revoked_at is None:
                latest[entry.common_name] = entry
        return sorted(latest.values(), key=lambda e: e.common_name)
