"""``fleet ca``, ``fleet certs``, ``fleet broker`` and ``fleet devices provision/revoke``.

Local commands on the operator's machine around a CA directory (``fleet.pki.CaDir``); none
talks to the controller (``devices revoke --db`` writes its database, on its host). Revoking
writes the CA's CRL, and with ``--broker-dir`` the broker's CRL and ACL: Mosquitto re-reads
them on SIGHUP (docs/provisioning.md).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fleet.cli.common import JsonOpt, fail, print_json
from fleet.cli.devices import devices_app
from fleet.errors import FleetError
from fleet.pki import (
    CONTROLLER_CN,
    CaDir,
    IssuedEntry,
    PkiError,
    Role,
    csr_public_key,
    device_common_name,
    operator_common_name,
)
from fleet.provision import (
    DEFAULT_INSTALL_DIR,
    BrokerOptions,
    BundleOptions,
    write_broker_config,
    write_broker_trust,
    write_bundle,
    write_identity,
)

ca_app = typer.Typer(no_args_is_help=True, help="The fleet's certificate authority.")
certs_app = typer.Typer(no_args_is_help=True, help="Certificates issued by the fleet CA.")
broker_app = typer.Typer(no_args_is_help=True, help="The locked-down Mosquitto configuration.")

CaDirOpt = Annotated[Path, typer.Option("--ca-dir", help="the CA directory (fleet ca init)")]
PassOpt = Annotated[
    Path | None,
    typer.Option("--passphrase-file", help="file whose first line encrypts the CA key"),
]
OutOpt = Annotated[Path, typer.Option("--out", help="directory to write into")]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _ca(path: Path, passphrase_file: Path | None) -> CaDir:
    if passphrase_file is None:
        return CaDir(path)
    try:
        lines = passphrase_file.read_text().splitlines()
    except OSError as exc:
        fail(PkiError(f"cannot read the passphrase file: {exc}"))
    if not lines or not lines[0]:
        fail(PkiError(f"{passphrase_file} holds no passphrase on its first line"))
    return CaDir(path, lines[0].encode())


def _say(text: str) -> None:
    Console().print(text, highlight=False, soft_wrap=True)


@ca_app.command("init")
def ca_init(
    ca_dir: Annotated[Path, typer.Option("--dir", help="directory of the new CA")],
    passphrase_file: PassOpt = None,
    name: Annotated[str, typer.Option("--name", help="the CA's common name")] = "edge fleet CA",
) -> None:
    """Create the fleet CA: ca.pem, ca.key (0600), index.json and an empty crl.pem."""
    try:
        cert = _ca(ca_dir, passphrase_file).init(now=_now(), name=name)
    except FleetError as exc:
        fail(exc)
    _say(f"CA {name!r} in {ca_dir}, valid until {cert.not_valid_after_utc:%Y-%m-%d}")


@devices_app.command("provision")
def devices_provision(
    device_id: Annotated[str, typer.Argument(help="the device id (the certificate's CN)")],
    ca_dir: CaDirOpt,
    out: OutOpt,
    broker_host: Annotated[
        str, typer.Option("--broker-host", help="broker name the device connects to")
    ] = "localhost",
    broker_port: Annotated[int, typer.Option("--broker-port", help="broker TLS port")] = 8883,
    csr: Annotated[
        Path | None, typer.Option("--csr", help="the device's CSR (its key stays on it)")
    ] = None,
    repo: Annotated[
        Path | None, typer.Option("--repo", help="release repository: bundle its TUF root")
    ] = None,
    install_dir: Annotated[
        Path, typer.Option("--install-dir", help="where the bundle is installed on the device")
    ] = DEFAULT_INSTALL_DIR,
    passphrase_file: PassOpt = None,
) -> None:
    """Issue a device certificate and write its bundle: OUT/ID/ and OUT/ID.tar.gz."""
    ca = _ca(ca_dir, passphrase_file)
    options = BundleOptions(broker_host, broker_port, install_dir, repo)
    try:
        device_common_name(device_id)
        public_key = None
        if csr is not None:
            try:
                csr_bytes = csr.read_bytes()
            except OSError as exc:
                raise PkiError(f"cannot read the CSR: {exc}") from None
            public_key = csr_public_key(csr_bytes, device_id)
        bundle, tarball, issued = write_bundle(
            ca, device_id, out, options, now=_now(), public_key=public_key
        )
    except FleetError as exc:
        fail(exc)
    _say(
        f"{device_id}: certificate {issued.entry.serial} until "
        f"{issued.entry.not_after:%Y-%m-%d}; bundle {bundle} and {tarball}"
    )


@devices_app.command("revoke")
def devices_revoke(
    device_id: Annotated[str, typer.Argument(help="the device id")],
    ca_dir: CaDirOpt,
    passphrase_file: PassOpt = None,
    db: Annotated[
        Path | None,
        typer.Option(
            "--db",
            help="the controller's database (on its host): also mark the device revoked "
            "there, so deploy and rollouts refuse it",
        ),
    ] = None,
    broker_dir: Annotated[
        Path | None,
        typer.Option(
            "--broker-dir",
            help="the broker's configuration directory (from fleet broker config): rewrite "
            "its crl.pem and acl; then reload Mosquitto (SIGHUP)",
        ),
    ] = None,
) -> None:
    """Revoke the device's certificates and re-sign the CRL (then give it to the broker)."""
    ca = _ca(ca_dir, passphrase_file)
    try:
        # Checked before the CRL changes.
        if db is not None and not db.is_file():
            raise FleetError(f"no controller database at {db}")
        if broker_dir is not None and not broker_dir.is_dir():
            raise FleetError(f"no broker directory at {broker_dir}")
        revoked = ca.revoke(device_common_name(device_id), now=_now())
        if db is not None:
            _revoke_in_store(db, device_id)
        if broker_dir is not None:
            write_broker_trust(ca, broker_dir)
    except FleetError as exc:
        fail(exc)
    except OSError as exc:
        fail(FleetError(f"cannot write {exc.filename}: {exc.strerror}"))
    serials = ", ".join(e.serial for e in revoked) or "none still valid"
    stored = f" Marked revoked in {db}." if db is not None else ""
    if broker_dir is None:
        then = f"Copy {ca.crl_path} to the broker's crlfile, rewrite its acl (--broker-dir)"
    else:
        then = f"Wrote {broker_dir / 'crl.pem'} and {broker_dir / 'acl'}"
    _say(
        f"{device_id}: revoked {serials}.{stored} {then} and reload Mosquitto "
        "(systemctl reload mosquitto, or SIGHUP): its next handshake is refused and, "
        "connected, it gets nothing more."
    )


def _revoke_in_store(db: Path, device_id: str) -> None:
    from fleet.store import SqlFleetStore  # noqa: PLC0415 (the CA commands need no database)

    store = SqlFleetStore(db)
    try:
        store.revoke_device(device_id, operator="--db", now=_now().timestamp())
    finally:
        store.close()


def _entry_json(entry: IssuedEntry, now: dt.datetime) -> dict[str, object]:
    body = entry.model_dump(mode="json")
    body["expired"] = entry.not_after <= now
    body["days_left"] = (entry.not_after - now).days
    return body


@certs_app.command("list")
def certs_list(ca_dir: CaDirOpt, json_out: JsonOpt = False) -> None:
    """Every certificate the CA issued, with its expiry and revocation."""
    try:
        entries = CaDir(ca_dir).index().issued
    except FleetError as exc:
        fail(exc)
    now = _now()
    if json_out:
        print_json([_entry_json(e, now) for e in entries])
        return
    table = Table(title=f"Certificates issued by {ca_dir}")
    for column in ("common name", "role", "serial", "not after", "days left", "state"):
        table.add_column(column)
    for entry in sorted(entries, key=lambda e: (e.common_name, e.not_after)):
        state = "revoked" if entry.revoked_at else "expired" if entry.not_after <= now else "valid"
        table.add_row(
            entry.common_name,
            entry.role.value,
            entry.serial[:16],
            f"{entry.not_after:%Y-%m-%d %H:%M}",
            str((entry.not_after - now).days),
            state,
        )
    Console().print(table)


@certs_app.command("renew")
def certs_renew(
    device_id: Annotated[str, typer.Argument(help="the device id")],
    ca_dir: CaDirOpt,
    out: OutOpt,
    passphrase_file: PassOpt = None,
) -> None:
    """A new key and certificate for the same device id: OUT/device.pem, .key, ca.pem.

    The old certificate stays valid until it expires or is revoked.
    """
    ca = _ca(ca_dir, passphrase_file)
    try:
        cn = device_common_name(device_id)
        if not any(e.common_name == cn for e in ca.index().issued):
            raise PkiError(f"this CA never issued a certificate to {cn!r}: provision it")
        issued = ca.issue(cn, Role.DEVICE, now=_now())
        write_identity(issued, out, "device", ca)
    except FleetError as exc:
        fail(exc)
    _say(
        f"{cn}: certificate {issued.entry.serial} until {issued.entry.not_after:%Y-%m-%d} in {out}"
    )


@certs_app.command("crl")
def certs_crl(ca_dir: CaDirOpt, passphrase_file: PassOpt = None) -> None:
    """Re-sign the CRL (valid for a year from now); copy it to the broker and restart it."""
    ca = _ca(ca_dir, passphrase_file)
    try:
        ca.refresh_crl(now=_now())
        next_update = ca.crl().next_update_utc
    except FleetError as exc:
        fail(exc)
    _say(f"{ca.crl_path} re-signed, valid until {next_update:%Y-%m-%d}")


@certs_app.command("controller")
def certs_controller(ca_dir: CaDirOpt, out: OutOpt, passphrase_file: PassOpt = None) -> None:
    """The controller's client certificate (CN fleet-controller): OUT/controller.pem, .key."""
    _issue_identity(_ca(ca_dir, passphrase_file), CONTROLLER_CN, Role.CONTROLLER, out)


@certs_app.command("operator")
def certs_operator(
    name: Annotated[str, typer.Argument(help="the operator's name (CN operator:NAME)")],
    ca_dir: CaDirOpt,
    out: OutOpt,
    passphrase_file: PassOpt = None,
) -> None:
    """An operator's client certificate (CN operator:NAME): OUT/operator.pem, .key.

    Re-run fleet broker config afterwards: the ACL names each operator.
    """
    ca = _ca(ca_dir, passphrase_file)
    try:
        cn = operator_common_name(name)
    except FleetError as exc:
        fail(exc)
    _issue_identity(ca, cn, Role.OPERATOR, out)


def _issue_identity(ca: CaDir, cn: str, role: Role, out: Path) -> None:
    """A controller's or operator's client certificate and key in OUT (``<role>.pem``)."""
    try:
        issued = ca.issue(cn, role, now=_now())
        write_identity(issued, out, role.value, ca)
    except FleetError as exc:
        fail(exc)
    _say(f"{cn}: certificate {issued.entry.serial} in {out}")


@broker_app.command("config")
def broker_config(
    ca_dir: CaDirOpt,
    out: OutOpt,
    port: Annotated[int, typer.Option("--port", help="TLS listener port")] = 8883,
    host: Annotated[
        list[str] | None, typer.Option("--host", help="broker name or address for its cert")
    ] = None,
    bind: Annotated[str | None, typer.Option("--bind", help="listen address only")] = None,
    config_dir: Annotated[
        Path, typer.Option("--config-dir", help="where the files will live on the broker")
    ] = Path("/etc/mosquitto/fleet"),
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="the broker's persistence directory")
    ] = Path("/var/lib/mosquitto"),
    passphrase_file: PassOpt = None,
) -> None:
    """mosquitto.conf, the ACL, the broker's certificate and key, the CA and the CRL."""
    ca = _ca(ca_dir, passphrase_file)
    options = BrokerOptions(port, bind, tuple(host or ()), config_dir, data_dir)
    try:
        written = write_broker_config(ca, out, options, now=_now())
    except FleetError as exc:
        fail(exc)
    _say(
        f"wrote {', '.join(p.name for p in written)} to {out}; install them in {config_dir} "
        "and run Mosquitto on mosquitto.conf, a complete configuration (docs/provisioning.md)"
    )
