"""The fleet CA (fleet/pki.py) and the bundles and broker files built on it (fleet/provision.py).

Pure apart from files under pytest's tmp_path: no processes, sockets or sleeps.
"""

from __future__ import annotations

import datetime as dt
import stat
import tarfile
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from agent.config import AgentConfig
from fleet.pki import (
    CONTROLLER_CN,
    CaDir,
    PkiError,
    Role,
    common_name,
    csr_public_key,
    device_common_name,
    make_csr,
    new_key,
    operator_common_name,
    verify_issued,
)
from fleet.provision import (
    BrokerOptions,
    BundleOptions,
    acl_text,
    mosquitto_conf,
    write_broker_config,
    write_bundle,
)

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def ca(tmp_path: Path) -> CaDir:
    authority = CaDir(tmp_path / "ca")
    authority.init(now=NOW)
    return authority


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class TestCa:
    def test_init_writes_an_owner_only_key_and_refuses_to_overwrite(self, ca: CaDir) -> None:
        assert _mode(ca.key_path) == 0o600
        cert = ca.ca_cert()
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert ca.crl().next_update_utc is not None
        with pytest.raises(PkiError, match="already holds a CA"):
            ca.init(now=NOW)

    def test_a_passphrase_protects_the_key(self, tmp_path: Path) -> None:
        CaDir(tmp_path / "p", b"s3cret").init(now=NOW)
        assert b"ENCRYPTED" in (tmp_path / "p" / "ca.key").read_bytes()
        with pytest.raises(PkiError, match="passphrase"):
            CaDir(tmp_path / "p").load()
        with pytest.raises(PkiError, match="passphrase"):
            CaDir(tmp_path / "p", b"wrong").load()
        CaDir(tmp_path / "p", b"s3cret").issue("pi-1", Role.DEVICE, now=NOW)

    def test_a_device_certificate_names_the_device_and_is_a_client_certificate(
        self, ca: CaDir
    ) -> None:
        issued = ca.issue("pi-1", Role.DEVICE, now=NOW)
        assert common_name(issued.cert) == "pi-1"
        verify_issued(issued.cert, ca.ca_cert())
        usage = issued.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        assert issued.cert.not_valid_after_utc == NOW + dt.timedelta(days=365)
        [entry] = ca.index().issued
        assert (entry.common_name, entry.role, entry.serial_int) == (
            "pi-1",
            Role.DEVICE,
            issued.cert.serial_number,
        )

    def test_a_certificate_of_another_ca_does_not_verify(self, ca: CaDir, tmp_path: Path) -> None:
        other = CaDir(tmp_path / "other")
        other.init(now=NOW)
        with pytest.raises(PkiError, match="not issued by this CA"):
            verify_issued(other.issue("pi-1", Role.DEVICE, now=NOW).cert, ca.ca_cert())

    def test_identities_no_device_can_take(self) -> None:
        assert operator_common_name("alice") == "operator:alice"
        for bad in (CONTROLLER_CN, "Pi-1", "pi/1", "+", "#", "operator:alice", ""):
            with pytest.raises(PkiError):
                device_common_name(bad)
        with pytest.raises(PkiError):
            operator_common_name("alice/#")


class TestCsr:
    def test_a_csr_for_the_device_gives_its_key(self, ca: CaDir) -> None:
        key = new_key()
        public = csr_public_key(make_csr(key, "pi-1"), "pi-1")
        issued = ca.issue("pi-1", Role.DEVICE, now=NOW, public_key=public)
        assert issued.key is None
        assert issued.cert.public_key() == key.public_key()

    def test_a_csr_with_another_common_name_is_refused(self) -> None:
        with pytest.raises(PkiError, match="common name 'pi-2' is not the device id 'pi-1'"):
            csr_public_key(make_csr(new_key(), "pi-2"), "pi-1")

    def test_a_tampered_csr_is_refused(self) -> None:
        pem = make_csr(new_key(), "pi-1")
        der = bytearray(x509.load_pem_x509_csr(pem).public_bytes(Encoding.DER))
        der[-5] ^= 0x01  # inside the signature
        tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(Encoding.PEM)
        with pytest.raises(PkiError, match="signature"):
            csr_public_key(tampered, "pi-1")

    def test_garbage_is_refused(self) -> None:
        with pytest.raises(PkiError, match="not a PEM"):
            csr_public_key(b"hello", "pi-1")


class TestRevocation:
    def test_the_crl_lists_the_revoked_serial_only(self, ca: CaDir) -> None:
        gone = ca.issue("pi-1", Role.DEVICE, now=NOW)
        kept = ca.issue("pi-2", Role.DEVICE, now=NOW)
        [entry] = ca.revoke("pi-1", now=NOW)
        assert entry.revoked_at == NOW
        crl = ca.crl()
        assert crl.is_signature_valid(ca.ca_cert().public_key())  # type: ignore[arg-type]
        assert crl.get_revoked_certificate_by_serial_number(gone.cert.serial_number) is not None
        assert crl.get_revoked_certificate_by_serial_number(kept.cert.serial_number) is None
        assert [e.common_name for e in ca.active(Role.DEVICE)] == ["pi-2"]

    def test_only_a_device_with_no_usable_certificate_left_is_cut_off(self, ca: CaDir) -> None:
        for device in ("pi-1", "pi-2", "pi-3"):
            ca.issue(device, Role.DEVICE, now=NOW)
        ca.revoke("pi-1", now=NOW)
        ca.revoke("pi-2", now=NOW)
        ca.issue("pi-2", Role.DEVICE, now=NOW)  # re-provisioned after its revocation
        assert ca.cut_off(Role.DEVICE) == ["pi-1"]
        assert ca.cut_off(Role.OPERATOR) == []

    def test_revoking_an_unknown_device_is_an_error(self, ca: CaDir) -> None:
        with pytest.raises(PkiError, match="no certificate to 'pi-9'"):
            ca.revoke("pi-9", now=NOW)

    def test_renewal_keeps_the_name_and_the_index_keeps_both(self, ca: CaDir) -> None:
        first = ca.issue("pi-1", Role.DEVICE, now=NOW)
        later = NOW + dt.timedelta(days=300)
        second = ca.issue("pi-1", Role.DEVICE, now=later)
        assert common_name(second.cert) == "pi-1"
        assert second.cert.serial_number != first.cert.serial_number
        assert [e.not_after for e in ca.index().issued] == [
            NOW + dt.timedelta(days=365),
            later + dt.timedelta(days=365),
        ]


class TestBundle:
    def test_bundle_holds_key_cert_ca_root_and_a_valid_agent_toml(
        self, ca: CaDir, tmp_path: Path
    ) -> None:
        repo = tmp_path / "repo"
        (repo / "metadata").mkdir(parents=True)
        (repo / "metadata" / "1.root.json").write_text('{"signed": {}}')
        options = BundleOptions("broker.lan", 8883, tmp_path / "out" / "pi-1", repo)
        bundle, tarball, issued = write_bundle(ca, "pi-1", tmp_path / "out", options, now=NOW)
        assert _mode(bundle / "tls" / "device.key") == 0o600
        assert _mode(tarball) == 0o600
        assert (bundle / "root.json").read_text() == '{"signed": {}}'
        cert = x509.load_pem_x509_certificate((bundle / "tls" / "device.pem").read_bytes())
        assert cert == issued.cert
        with tarfile.open(tarball) as tar:
            assert set(tar.getnames()) >= {
                "pi-1/agent.toml",
                "pi-1/tls/device.key",
                "pi-1/tls/device.pem",
                "pi-1/tls/ca.pem",
                "pi-1/root.json",
            }
        config = AgentConfig.model_validate(tomllib.loads((bundle / "agent.toml").read_text()))
        assert config.device_id == "pi-1"
        assert (config.mqtt.host, config.mqtt.port) == ("broker.lan", 8883)
        assert config.mqtt.tls.cert_file == bundle / "tls" / "device.pem"
        assert config.mqtt.tls.key_file == bundle / "tls" / "device.key"
        assert config.ota.enabled and config.ota.trusted_root == bundle / "root.json"

    def test_a_csr_bundle_has_no_key(self, ca: CaDir, tmp_path: Path) -> None:
        key = new_key()
        public = csr_public_key(make_csr(key, "pi-1"), "pi-1")
        options = BundleOptions("broker.lan")
        bundle, _, _ = write_bundle(ca, "pi-1", tmp_path, options, now=NOW, public_key=public)
        assert not (bundle / "tls" / "device.key").exists()
        assert "ota" not in tomllib.loads((bundle / "agent.toml").read_text())

    def test_an_existing_bundle_is_not_overwritten(self, ca: CaDir, tmp_path: Path) -> None:
        write_bundle(ca, "pi-1", tmp_path, BundleOptions("b"), now=NOW)
        with pytest.raises(PkiError, match="already exists"):
            write_bundle(ca, "pi-1", tmp_path, BundleOptions("b"), now=NOW)


class TestBrokerConfig:
    def test_acl_uses_the_username_never_the_client_id(self) -> None:
        text = acl_text(["operator:alice"])
        assert "%c" not in text
        patterns = [line for line in text.splitlines() if line.startswith("pattern")]
        assert patterns and all("fleet/%u/" in line for line in patterns)
        assert "pattern read fleet/%u/cmd/#" in patterns
        assert "pattern write fleet/%u/telemetry" in patterns
        assert not any("fleet-controller" in line for line in patterns)
        blocks = text.split("\n\n")
        operator = next(b for b in blocks if b.startswith("user operator:alice"))
        assert "topic write fleet-controller/rpc/+" in operator
        controller = next(b for b in blocks if b.startswith(f"user {CONTROLLER_CN}"))
        assert "topic read fleet/#" in controller

    def test_a_revoked_device_is_denied_everything_before_any_grant(self) -> None:
        text = acl_text(["operator:alice"], cut_off=["pi-1"])
        blocks = text.split("\n\n")
        assert any(b.splitlines()[-2:] == ["user pi-1", "topic deny #"] for b in blocks), text
        assert "pi-1" not in acl_text(["operator:alice"])

    def test_listener_requires_certificates_and_the_crl(self) -> None:
        conf = mosquitto_conf(BrokerOptions(port=8884, config_dir=Path("/etc/m")))
        lines = conf.splitlines()
        for line in (
            "listener 8884",
            "require_certificate true",
            "use_identity_as_username true",
            "crlfile /etc/m/crl.pem",
            "allow_anonymous false",
            "acl_file /etc/m/acl",
            "max_packet_size 1048576",
            "max_inflight_messages 20",
            "max_queued_messages 1000",
        ):
            assert line in lines

    def test_broker_files_and_server_certificate(self, ca: CaDir, tmp_path: Path) -> None:
        ca.issue(operator_common_name("alice"), Role.OPERATOR, now=NOW)
        ca.issue(operator_common_name("bob"), Role.OPERATOR, now=NOW)
        ca.revoke(operator_common_name("bob"), now=NOW)
        out = tmp_path / "broker"
        write_broker_config(ca, out, BrokerOptions(hosts=("mqtt.example.net",)), now=NOW)
        for name in ("mosquitto.conf", "acl", "broker.pem", "ca.pem", "crl.pem"):
            assert _mode(out / name) == 0o644, name
        assert _mode(out / "broker.key") in (0o600, 0o640)
        acl = (out / "acl").read_text()
        assert "user operator:alice" in acl and "operator:bob" not in acl
        cert = x509.load_pem_x509_certificate((out / "broker.pem").read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == ["localhost", "mqtt.example.net"]
        assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)


class TestRevokeInTheStore:
    def test_devices_revoke_with_db_marks_the_device_revoked(
        self, ca: CaDir, tmp_path: Path
    ) -> None:
        from typer.testing import CliRunner

        from fleet.cli import app
        from fleet.store import REVOKED, Inbound, SqliteFleetStore

        ca.issue("pi-1", Role.DEVICE, now=NOW)
        db = tmp_path / "fleet.db"
        store = SqliteFleetStore(db)
        store.ingest([Inbound("pi-1", "status", {"state": "online"}, NOW.timestamp())])
        store.accept_device("pi-1", operator="t", now=NOW.timestamp())
        store.close()
        missing = CliRunner().invoke(
            app, ["devices", "revoke", "pi-1", "--ca-dir", str(ca.path), "--db", str(tmp_path)]
        )
        assert missing.exit_code != 0 and "no controller database" in missing.output
        done = CliRunner().invoke(
            app, ["devices", "revoke", "pi-1", "--ca-dir", str(ca.path), "--db", str(db)]
        )
        assert done.exit_code == 0, done.output
        assert f"Marked revoked in {db}" in done.output
        store = SqliteFleetStore(db)
        try:
            assert store.admission("pi-1") == REVOKED
        finally:
            store.close()
