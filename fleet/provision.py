"""Device bundles and the locked-down Mosquitto configuration, built from a ``CaDir``.

A device bundle (``fleet devices provision``) is a directory ``<out>/<device_id>/`` and the
same as ``<out>/<device_id>.tar.gz``: ``agent.toml`` (TLS towards the broker with the device's
client certificate), ``tls/ca.pem``, ``tls/device.pem``, ``tls/device.key`` (absent when the
device sent a CSR and keeps its key) and ``root.json`` (the TUF root, when a repository is
given). The broker configuration (``fleet broker config``) is ``mosquitto.conf``, ``acl``, the
broker's certificate and key, the CA certificate and the CRL. ``acl_text`` and
``mosquitto_conf`` are pure; the rest writes only under the directory it is given.
"""

from __future__ import annotations

import datetime as dt
import grp
import json
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from fleet.pki import (
    CONTROLLER_CN,
    CaDir,
    Issued,
    PkiError,
    Role,
    cert_pem,
    device_common_name,
    key_pem,
    write_private,
)

DEFAULT_INSTALL_DIR = Path("/etc/edge-agent")
MAX_PACKET_SIZE = 1_048_576


# --- device bundles ---------------------------------------------------------------------


@dataclass(frozen=True)
class BundleOptions:
    broker_host: str
    broker_port: int = 8883
    install_dir: Path = DEFAULT_INSTALL_DIR
    repo: Path | None = None


def _toml_str(value: str | Path) -> str:
    # A JSON string is a valid TOML basic string for the characters a path or host holds.
    return json.dumps(str(value))


def agent_toml(device_id: str, options: BundleOptions, *, with_root: bool) -> str:
    """The bundle's ``agent.toml``: paths as they will be once installed in ``install_dir``."""
    base = options.install_dir
    lines = [
        "# Written by `fleet devices provision`; see docs/agent.example.toml for every key.",
        f"device_id = {_toml_str(device_id)}",
        "",
        "[mqtt]",
        f"host = {_toml_str(options.broker_host)}",
        f"port = {options.broker_port}",
        "",
        "[mqtt.tls]",
        f"ca_file = {_toml_str(base / 'tls' / 'ca.pem')}",
        f"cert_file = {_toml_str(base / 'tls' / 'device.pem')}",
        f"key_file = {_toml_str(base / 'tls' / 'device.key')}",
    ]
    if with_root:
        lines += ["", "[ota]", "enabled = true", f"trusted_root = {_toml_str(base / 'root.json')}"]
    return "\n".join(lines) + "\n"


def write_bundle(
    ca: CaDir,
    device_id: str,
    out: Path,
    options: BundleOptions,
    *,
    now: dt.datetime,
    public_key: ec.EllipticCurvePublicKey | None = None,
) -> tuple[Path, Path, Issued]:
    """Issue ``device_id``'s certificate and write its bundle; (directory, tarball, issued)."""
    device_common_name(device_id)
    root: bytes | None = None
    if options.repo is not None:
        root_path = options.repo / "metadata" / "1.root.json"
        try:
            root = root_path.read_bytes()
        except OSError as exc:
            raise PkiError(f"no TUF root at {root_path}: {exc}") from None
    bundle = out / device_id
    if bundle.exists():
        raise PkiError(f"{bundle} already exists; remove it or pick another --out")
    issued = ca.issue(device_id, Role.DEVICE, now=now, public_key=public_key)
    (bundle / "tls").mkdir(parents=True)
    os.chmod(bundle, 0o700)
    write_private(bundle / "tls" / "ca.pem", cert_pem(ca.ca_cert()), 0o644)
    write_private(bundle / "tls" / "device.pem", cert_pem(issued.cert), 0o644)
    if issued.key is not None:
        write_private(bundle / "tls" / "device.key", key_pem(issued.key), 0o600)
    if root is not None:
        write_private(bundle / "root.json", root, 0o644)
    toml = agent_toml(device_id, options, with_root=root is not None)
    write_private(bundle / "agent.toml", toml.encode(), 0o644)
    tarball = out / f"{device_id}.tar.gz"
    _tar(bundle, tarball)
    return bundle, tarball, issued


def _tar(directory: Path, tarball: Path) -> None:
    tmp = tarball.with_name(tarball.name + ".tmp")
    # The tarball holds the private key: owner-only, like the key itself.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle, tarfile.open(fileobj=handle, mode="w:gz") as tar:
        tar.add(directory, arcname=directory.name)
    os.replace(tmp, tarball)


def write_identity(issued: Issued, out: Path, stem: str, ca: CaDir) -> list[Path]:
    """Write a controller's or operator's ``<stem>.pem``, ``<stem>.key`` and ``ca.pem``."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{stem}.pem", out / "ca.pem"]
    write_private(written[0], cert_pem(issued.cert), 0o644)
    write_private(written[1], cert_pem(ca.ca_cert()), 0o644)
    if issued.key is not None:
        written.append(out / f"{stem}.key")
        write_private(written[-1], key_pem(issued.key), 0o600)
    return written


# --- the broker ---------------------------------------------------------------------------

# What a device may do on its own topics (the %u of the ACL is its certificate's CN).
DEVICE_READ = ("cmd/#", "desired", "file", "input/#")
DEVICE_WRITE = (
    "status",
    "telemetry",
    "events",
    "reported",
    "reply",
    "results",
    "fetch",
    "capture",
)
# The controller publishes commands, desired states and file replies to any device, and
# answers RPC requests on fleet-controller/inbox/<client>.
CONTROLLER_WRITE = ("fleet/+/cmd/#", "fleet/+/desired", "fleet/+/file")


def acl_text(
    operators: Sequence[str], controller: str = CONTROLLER_CN, cut_off: Sequence[str] = ()
) -> str:
    """The Mosquitto ACL: ``%u`` patterns for devices, named users for the rest, and a
    ``deny #`` for each revoked device in ``cut_off``.

    Never ``%c``: with ``use_identity_as_username`` the client id is the client's own claim,
    the username is the certificate's CN.
    """
    lines = [
        "# Written by `fleet broker config`. The username is the client certificate's CN",
        "# (use_identity_as_username); anything not granted here is denied.",
        "",
    ]
    if cut_off:
        # The CRL refuses a revoked certificate's next handshake; a device still connected
        # keeps its session, so its grants are withdrawn too (Mosquitto checks denials first,
        # re-reads this file on SIGHUP, and applies it to connected clients).
        lines.append("# Revoked devices (fleet devices revoke): nothing, even on their own topics.")
        for name in cut_off:
            lines += [f"user {name}", "topic deny #", ""]
    lines += [
        f"user {controller}",
        "topic read fleet/#",
        *(f"topic write {topic}" for topic in CONTROLLER_WRITE),
        "topic readwrite fleet-controller/#",
        "",
    ]
    for operator in operators:
        # The CLI's reply inbox is named after its random client id, so it cannot be tied
        # to %u: every operator may read every CLI inbox (replies, not secrets).
        lines += [
            f"user {operator}",
            "topic write fleet-controller/rpc/+",
            "topic read fleet-controller/inbox/#",
            "",
        ]
    lines += ["# Every client, as itself: a device's own topics only."]
    lines += [f"pattern read fleet/%u/{suffix}" for suffix in DEVICE_READ]
    lines += [f"pattern write fleet/%u/{suffix}" for suffix in DEVICE_WRITE]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class BrokerOptions:
    port: int = 8883
    bind: str | None = None
    hosts: tuple[str, ...] = ()
    config_dir: Path = Path("/etc/mosquitto/fleet")
    data_dir: Path = Path("/var/lib/mosquitto/")


def mosquitto_conf(options: BrokerOptions) -> str:
    """A production listener: TLS with required client certificates, the CRL, the ACL."""
    d = options.config_dir
    listener = f"listener {options.port}" + (f" {options.bind}" if options.bind else "")
    lines = [
        "# Written by `fleet broker config` (docs/provisioning.md).",
        "per_listener_settings false",
        "allow_anonymous false",
        f"acl_file {d / 'acl'}",
        f"max_packet_size {MAX_PACKET_SIZE}",
        "max_inflight_messages 20",
        "max_queued_messages 1000",
        "max_queued_bytes 67108864",
        "persistent_client_expiration 14d",
        "max_keepalive 120",
        "persistence true",
        f"persistence_location {options.data_dir}/".replace("//", "/"),
        "",
        listener,
        "protocol mqtt",
        f"cafile {d / 'ca.pem'}",
        f"certfile {d / 'broker.pem'}",
        f"keyfile {d / 'broker.key'}",
        f"crlfile {d / 'crl.pem'}",
        "tls_version tlsv1.2",
        "require_certificate true",
        "use_identity_as_username true",
    ]
    return "\n".join(lines) + "\n"


def broker_names(hosts: Sequence[str]) -> list[str]:
    names = ["localhost", "127.0.0.1"]
    names += [h for h in hosts if h not in names]
    return names


def write_broker_config(
    ca: CaDir, out: Path, options: BrokerOptions, *, now: dt.datetime
) -> list[Path]:
    """Issue the broker's server certificate and write the configuration into ``out``.

    ``options.config_dir`` is where the files will live on the broker (the paths in
    mosquitto.conf); the files go to ``out``. Certificates, CRL and ACL are world-readable
    (Mosquitto drops to its own user); the key is 0640 with group ``mosquitto`` when that
    group exists and we may chown, else 0600 (then give it to the broker's user yourself).
    """
    names = broker_names(options.hosts)
    issued = ca.issue(
        options.hosts[0] if options.hosts else "localhost", Role.BROKER, now=now, server_names=names
    )
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "mosquitto.conf": mosquitto_conf(options).encode(),
        "broker.pem": cert_pem(issued.cert),
        "ca.pem": cert_pem(ca.ca_cert()),
    }
    written = []
    for name, data in files.items():
        write_private(out / name, data, 0o644)
        written.append(out / name)
    written += write_broker_trust(ca, out)
    assert issued.key is not None
    key_path = out / "broker.key"
    write_private(key_path, key_pem(issued.key), 0o600)
    _give_to_mosquitto(key_path)
    written.append(key_path)
    return written


def write_broker_trust(ca: CaDir, out: Path) -> list[Path]:
    """The parts of the broker's configuration that revocation changes: ``acl`` (revoked
    devices denied everything) and ``crl.pem``, both world-readable (Mosquitto drops to its
    own user). Mosquitto re-reads both on SIGHUP (``systemctl reload mosquitto``)."""
    operators = [e.common_name for e in ca.active(Role.OPERATOR)]
    acl = acl_text(operators, cut_off=ca.cut_off(Role.DEVICE))
    write_private(out / "acl", acl.encode(), 0o644)
    write_private(out / "crl.pem", ca.crl_path.read_bytes(), 0o644)
    return [out / "acl", out / "crl.pem"]


def _give_to_mosquitto(path: Path) -> None:
    try:
        gid = grp.getgrnam("mosquitto").gr_gid
        os.chown(path, -1, gid)
    except (KeyError, PermissionError):
        return
    os.chmod(path, 0o640)
