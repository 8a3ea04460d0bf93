"""The generated broker configuration (``fleet broker config``), run by a real Mosquitto.

Certificates come from a real ``CaDir``; clients are real paho clients with those
certificates. What a device may not see is checked by delivery (Mosquitto grants the
subscription and then delivers nothing), with a message on an allowed topic sent after the
forbidden one as the marker that delivery has caught up.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from devtools.localbroker import free_port, port_is_open
from fleet.pki import (
    CONTROLLER_CN,
    CaDir,
    Role,
    cert_pem,
    key_pem,
    make_csr,
    new_key,
    operator_common_name,
)
from fleet.provision import BrokerOptions, write_broker_config
from tests.integration.harness import (
    REPO,
    ManagedProcess,
    agent_process,
    controller_process,
    register_operator,
    wait_until,
)

NOW = dt.datetime.now(dt.UTC)


@dataclass
class Bench:
    """A locked broker on a free loopback port, and the identities the CA issued."""

    port: int
    ca_dir: Path
    log: Path
    identities: dict[str, tuple[Path, Path]] = field(default_factory=dict)
    config_dir: Path = Path()
    process: subprocess.Popen[bytes] | None = None

    @property
    def ca_file(self) -> Path:
        return self.ca_dir / "ca.pem"

    def client(self, name: str | None) -> Client:
        return Client(self, name)


@dataclass
class Client:
    bench: Bench
    identity: str | None
    received: list[tuple[str, bytes]] = field(default_factory=list)
    acks: dict[int, int] = field(default_factory=dict)  # mid -> PUBACK reason code

    def __post_init__(self) -> None:
        self.paho = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5
        )
        ca = str(self.bench.ca_file)
        if self.identity is None:
            self.paho.tls_set(ca_certs=ca)
        else:
            cert, key = self.bench.identities[self.identity]
            self.paho.tls_set(ca_certs=ca, certfile=str(cert), keyfile=str(key))
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.closed = threading.Event()
        self.paho.on_connect = self._on_connect
        self.paho.on_disconnect = lambda *_a: self.closed.set()
        self.paho.on_message = self._on_message
        self.paho.on_publish = self._on_publish
        self.paho.on_subscribe = self._on_subscribe
        self._granted: list[int] = []

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            self.connected.set()

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.received.append((msg.topic, bytes(msg.payload)))

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        with self._lock:
            self.acks[mid] = int(rc.value)

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, codes: list[Any], _p: Any) -> None:
        with self._lock:
            self._granted.append(mid)

    def try_connect(self) -> bool:
        """True once the broker's CONNACK accepts us; False if TLS or MQTT refuses."""
        try:
            self.paho.connect("127.0.0.1", self.bench.port, keepalive=10)
        except (ssl.SSLError, OSError):
            return False
        self.paho.loop_start()
        wait_until(
            lambda: self.connected.is_set() or self.closed.is_set(), 10, "CONNACK or a close"
        )
        return self.connected.is_set()

    def connect(self) -> Client:
        assert self.try_connect(), f"{self.identity} could not connect"
        return self

    def subscribe(self, *filters: str) -> None:
        mids = [self.paho.subscribe(f, qos=1)[1] for f in filters]
        wait_until(lambda: all(m in self._granted for m in mids), 10, "SUBACKs")

    def publish(self, topic: str, payload: bytes = b"{}") -> int:
        info = self.paho.publish(topic, payload, qos=1)
        wait_until(lambda: info.mid in self.acks, 10, f"PUBACK of {topic}")
        return self.acks[info.mid]

    def topics(self) -> list[str]:
        with self._lock:
            return [topic for topic, _ in self.received]

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


def _write_identity(
    ca: CaDir, directory: Path, cn: str, role: Role, **kw: Any
) -> tuple[Path, Path]:
    issued = ca.issue(cn, role, now=NOW, **kw)
    assert issued.key is not None
    cert, key = directory / f"{cn}.pem", directory / f"{cn}.key"
    cert.write_bytes(cert_pem(issued.cert))
    key.write_bytes(key_pem(issued.key))
    return cert, key


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    binary = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
    if binary is None:
        pytest.fail("mosquitto is not installed: run `make test`, which installs it")
    ca = CaDir(tmp_path / "ca")
    ca.init(now=NOW)
    ids = tmp_path / "ids"
    ids.mkdir()
    identities = {
        "controller": _write_identity(ca, ids, CONTROLLER_CN, Role.CONTROLLER),
        "operator": _write_identity(ca, ids, operator_common_name("alice"), Role.OPERATOR),
        "pi-a": _write_identity(ca, ids, "pi-a", Role.DEVICE),
        "pi-b": _write_identity(ca, ids, "pi-b", Role.DEVICE),
        "pi-revoked": _write_identity(ca, ids, "pi-revoked", Role.DEVICE),
        "pi-expired": _write_identity(
            ca, ids, "pi-expired", Role.DEVICE, not_after=NOW - dt.timedelta(hours=1)
        ),
    }
    ca.revoke("pi-revoked", now=NOW)
    port = free_port()
    out = tmp_path / "broker"
    options = BrokerOptions(port=port, bind="127.0.0.1", config_dir=out, data_dir=tmp_path / "data")
    write_broker_config(ca, out, options, now=NOW)
    (tmp_path / "data").mkdir()
    log = tmp_path / "mosquitto.log"
    conf = out / "mosquitto.conf"
    # The generated file as is, plus where to log; as root, Mosquitto would drop to its own
    # user, which cannot enter pytest's private tmp dir.
    extra = [f"log_dest file {log}", "log_type all"] + (["user root"] if os.geteuid() == 0 else [])
    conf.write_text(conf.read_text() + "\n".join(extra) + "\n")
    process = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        wait_until(lambda: port_is_open(port) or process.poll() is not None, 10, "mosquitto up")
        assert process.poll() is None, log.read_text() if log.exists() else "mosquitto exited"
        yield Bench(port, ca.path, log, identities, out, process)
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    opened: list[Client] = []
    yield opened
    for client in opened:
        client.close()


def _open(bench: Bench, clients: list[Client], name: str) -> Client:
    client = bench.client(name).connect()
    clients.append(client)
    return client


class TestLockedBroker:
    def test_device_b_receives_nothing_of_device_a(
        self, bench: Bench, clients: list[Client]
    ) -> None:
        controller = _open(bench, clients, "controller")
        a, b = _open(bench, clients, "pi-a"), _open(bench, clients, "pi-b")
        mine = ["fleet/pi-a/cmd/restart", "fleet/pi-a/desired", "fleet/pi-a/file"]
        a.subscribe("fleet/pi-a/cmd/+", "fleet/pi-a/desired", "fleet/pi-a/file")
        # B asks for A's topics (the broker grants it) and for its own (the marker).
        b.subscribe(
            "fleet/pi-a/cmd/+",
            "fleet/pi-a/desired",
            "fleet/pi-a/file",
            "fleet/#",
            "fleet/pi-b/cmd/+",
        )
        for topic in mine:
            assert controller.publish(topic) == 0
        assert controller.publish("fleet/pi-b/cmd/marker") == 0
        wait_until(lambda: "fleet/pi-b/cmd/marker" in b.topics(), 10, "B's own command")
        wait_until(lambda: len(a.topics()) == len(mine), 10, "A's command, desired state, file")
        assert not any(t.startswith("fleet/pi-a/") for t in b.topics()), b.topics()
        assert sorted(a.topics()) == sorted(mine)

    def test_device_b_cannot_publish_in_device_a_s_name(
        self, bench: Bench, clients: list[Client]
    ) -> None:
        controller = _open(bench, clients, "controller")
        controller.subscribe("fleet/#")
        b = _open(bench, clients, "pi-b")
        # Mosquitto 2.0.11 answers a denied QoS 1 publish with PUBACK 135 "not authorized".
        assert b.publish("fleet/pi-a/telemetry") == 135
        assert b.publish("fleet/pi-a/status") == 135
        assert b.publish("fleet/pi-b/telemetry") == 0
        wait_until(lambda: "fleet/pi-b/telemetry" in controller.topics(), 10, "B's telemetry")
        assert not any(t.startswith("fleet/pi-a/") for t in controller.topics())

    def test_device_cannot_call_operator_rpc(self, bench: Bench, clients: list[Client]) -> None:
        controller = _open(bench, clients, "controller")
        controller.subscribe("fleet-controller/rpc/+")
        device, operator = _open(bench, clients, "pi-a"), _open(bench, clients, "operator")
        assert device.publish("fleet-controller/rpc/deploy") == 135
        assert operator.publish("fleet-controller/rpc/marker") == 0
        wait_until(lambda: controller.topics() != [], 10, "the operator's request")
        assert controller.topics() == ["fleet-controller/rpc/marker"]

    @pytest.mark.parametrize("identity", ["pi-revoked", "pi-expired", None])
    def test_revoked_expired_and_missing_certificates_are_refused(
        self, bench: Bench, clients: list[Client], identity: str | None
    ) -> None:
        _open(bench, clients, "pi-a")  # a good one connects on the same broker
        client = bench.client(identity)
        clients.append(client)
        assert not client.try_connect()
        # The reason is the TLS alert the broker sent (OpenSSL's name for it), not an MQTT one.
        expected = {
            "pi-revoked": "SSLV3_ALERT_CERTIFICATE_REVOKED",
            "pi-expired": "SSLV3_ALERT_CERTIFICATE_EXPIRED",
            None: "SSLV3_ALERT_HANDSHAKE_FAILURE",
        }[identity]
        assert _tls_refusal(bench, identity) == expected
        assert _tls_refusal(bench, "pi-a") == ""

    def test_a_revocation_takes_effect_on_a_reload_without_a_restart(
        self, bench: Bench, clients: list[Client]
    ) -> None:
        controller = _open(bench, clients, "controller")
        controller.subscribe("fleet/+/telemetry")
        a, b = _open(bench, clients, "pi-a"), _open(bench, clients, "pi-b")
        a.subscribe("fleet/pi-a/cmd/+")
        b.subscribe("fleet/pi-b/cmd/+")
        assert controller.publish("fleet/pi-a/cmd/before") == 0
        wait_until(lambda: a.topics() == ["fleet/pi-a/cmd/before"], 10, "A's command")

        revoked = _fleet(
            "devices", "revoke", "pi-a", "--ca-dir", bench.ca_dir, "--broker-dir", bench.config_dir
        )
        assert revoked.returncode == 0, revoked.stderr
        assert "deny #" in (bench.config_dir / "acl").read_text()
        broker = bench.process
        assert broker is not None
        reloads = bench.log.read_text().count("Reloading config")
        broker.send_signal(signal.SIGHUP)
        wait_until(
            lambda: bench.log.read_text().count("Reloading config") > reloads, 10, "the reload"
        )
        # Still connected, A is cut off: what it publishes is refused, nothing reaches it.
        wait_until(lambda: a.publish("fleet/pi-a/telemetry") == 135, 10, "A's publish refused")
        assert controller.publish("fleet/pi-a/cmd/after") == 0
        assert controller.publish("fleet/pi-b/cmd/marker") == 0
        wait_until(lambda: "fleet/pi-b/cmd/marker" in b.topics(), 10, "B's command")
        assert "fleet/pi-a/cmd/after" not in a.topics(), a.topics()
        assert b.publish("fleet/pi-b/telemetry") == 0  # B is untouched
        # A new handshake with A's certificate is refused, by the same broker process.
        assert _tls_refusal(bench, "pi-a") == "SSLV3_ALERT_CERTIFICATE_REVOKED"
        assert _tls_refusal(bench, "pi-b") == ""
        assert broker.poll() is None


# MQTT v5 CONNECT: clean start, keepalive 10, no properties, client id "x".
_CONNECT = bytes.fromhex("100e00044d5154540502000a00000178")


def _tls_refusal(bench: Bench, identity: str | None) -> str:
    """The TLS alert that ends ``identity``'s handshake ("" when the broker answers CONNECT).

    TLS 1.2, so that the broker's verdict on the certificate is part of the handshake (under
    1.3 the client's handshake ends first and the alert can race the broker's close)."""
    context = ssl.create_default_context(cafile=str(bench.ca_file))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    if identity is not None:
        cert, key = bench.identities[identity]
        context.load_cert_chain(str(cert), str(key))
    with socket.create_connection(("127.0.0.1", bench.port), timeout=10) as raw:
        try:
            tls = context.wrap_socket(raw, server_hostname="127.0.0.1")
        except ssl.SSLError as exc:
            return str(exc.reason or type(exc).__name__)
        with tls:
            tls.sendall(_CONNECT)
            first = tls.recv(1)
    assert first == b"\x20", f"expected a CONNACK, got {first!r}"
    return ""


class TestProvisionedAgent:
    def test_a_provisioned_agent_works_through_the_locked_broker(
        self, bench: Bench, clients: list[Client], processes: list[ManagedProcess], tmp_path: Path
    ) -> None:
        """`fleet devices provision` writes a bundle whose agent.toml, as is, connects: its
        presence and telemetry reach the controller's identity, and it answers a command."""
        out = tmp_path / "bundles"
        provision = subprocess.run(
            [
                sys.executable, "-m", "fleet", "devices", "provision", "pi-e2e",
                "--ca-dir", str(bench.ca_dir), "--out", str(out),
                "--broker-host", "127.0.0.1", "--broker-port", str(bench.port),
                "--install-dir", str(out / "pi-e2e"),
            ],
            capture_output=True, text=True, timeout=60, check=False, cwd=REPO,
        )  # fmt: skip
        assert provision.returncode == 0, provision.stderr
        controller = _open(bench, clients, "controller")
        controller.subscribe("fleet/#")
        template = agent_process(tmp_path, bench.port, "pi-e2e")
        # Only the state dir and the test's timings come from the environment; the device
        # id, the broker and the TLS files come from the bundle's agent.toml.
        env = {
            k: v
            for k, v in template.env.items()
            if k not in ("EDGE_AGENT_DEVICE_ID", "EDGE_AGENT_MQTT__HOST", "EDGE_AGENT_MQTT__PORT")
        }
        config = out / "pi-e2e" / "agent.toml"
        argv = [*template.argv, "--config", str(config)]
        agent = ManagedProcess(argv, env, template.log_path).start()
        processes.append(agent)
        wait_until(lambda: "fleet/pi-e2e/telemetry" in controller.topics(), 30, "telemetry")
        assert "fleet/pi-e2e/status" in controller.topics()
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "fleet/pi-e2e/reply"
        props.CorrelationData = b"e2e"
        controller.paho.publish("fleet/pi-e2e/cmd/ping", b"{}", qos=1, properties=props)
        wait_until(lambda: "fleet/pi-e2e/reply" in controller.topics(), 20, "the ping's reply")
        assert "not authorized" not in agent.log().lower()

    def test_controller_and_operator_over_the_locked_broker(
        self, bench: Bench, processes: list[ManagedProcess], tmp_path: Path
    ) -> None:
        """The real controller with its certificate records a provisioned agent's telemetry,
        and an operator's `fleet devices list` (its own certificate) gets the answer: the
        ACL grants the controller's and the operators' RPC topics what they use."""
        url = f"mqtts://127.0.0.1:{bench.port}"

        def tls_env(identity: str) -> dict[str, str]:
            cert, key = bench.identities[identity]
            return {
                "FLEET_TLS__CA_FILE": str(bench.ca_file),
                "FLEET_TLS__CERT_FILE": str(cert),
                "FLEET_TLS__KEY_FILE": str(key),
            }

        template = controller_process(tmp_path, bench.port)
        argv = [url if a.startswith("mqtt://") else a for a in template.argv]
        controller = ManagedProcess(
            argv, template.env | tls_env("controller"), template.log_path
        ).start()
        processes.append(controller)
        wait_until(lambda: b'"mqtt.connected"' in controller.log_path.read_bytes(), 30, "link")
        device = bench.identities["pi-a"]
        agent = agent_process(
            tmp_path,
            bench.port,
            "pi-a",
            mqtt__tls__ca_file=str(bench.ca_file),
            mqtt__tls__cert_file=str(device[0]),
            mqtt__tls__key_file=str(device[1]),
        ).start()
        processes.append(agent)

        clean_env = {
            k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "EDGE_AGENT_"))
        }

        def listed() -> list[dict[str, Any]]:
            result = subprocess.run(
                [sys.executable, "-m", "fleet", "devices", "list", "--json",
                 "--broker", url, "--timeout", "3"],
                env=clean_env | tls_env("operator"),
                capture_output=True, text=True, timeout=30, check=False, cwd=REPO,
            )  # fmt: skip
            devices: list[dict[str, Any]] = json.loads(result.stdout or "[]")
            return devices

        found = wait_until(
            lambda: [d for d in listed() if d["device_id"] == "pi-a" and d.get("cpu_percent")],
            40,
            "pi-a listed with telemetry through the operator's RPC",
        )
        assert found[0]["online"] is True


def _fleet(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleet", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )


class TestCli:
    def test_ca_with_passphrase_csr_provisioning_revoke_renew_and_list(
        self, tmp_path: Path
    ) -> None:
        ca, secret = tmp_path / "ca", tmp_path / "pass"
        secret.write_text("correct horse\n")
        auth = ("--ca-dir", ca, "--passphrase-file", secret)
        assert _fleet("ca", "init", "--dir", ca, "--passphrase-file", secret).returncode == 0
        csr = tmp_path / "pi-1.csr"
        csr.write_bytes(make_csr(new_key(), "pi-1"))
        wrong = _fleet("devices", "provision", "pi-2", *auth, "--out", tmp_path, "--csr", csr)
        assert wrong.returncode == 65 and "is not the device id 'pi-2'" in wrong.stderr
        done = _fleet("devices", "provision", "pi-1", *auth, "--out", tmp_path, "--csr", csr)
        assert done.returncode == 0, done.stderr
        assert not (tmp_path / "pi-1" / "tls" / "device.key").exists()
        no_pass = _fleet("devices", "revoke", "pi-1", "--ca-dir", ca)
        assert no_pass.returncode == 65 and "passphrase" in no_pass.stderr
        assert _fleet("devices", "revoke", "pi-1", *auth).returncode == 0
        renewed = _fleet("certs", "renew", "pi-1", *auth, "--out", tmp_path / "new")
        assert renewed.returncode == 0, renewed.stderr
        assert (tmp_path / "new" / "device.key").exists()
        assert _fleet("certs", "crl", *auth).returncode == 0
        listing = json.loads(_fleet("certs", "list", "--ca-dir", ca, "--json").stdout)
        assert [(c["common_name"], c["revoked_at"] is not None) for c in listing] == [
            ("pi-1", True),
            ("pi-1", False),
        ]
        assert all(c["days_left"] >= 364 and not c["expired"] for c in listing)


class TestSignedDeployThroughTheLockedBroker:
    def test_provisioned_agent_installs_a_signed_deploy(
        self, bench: Bench, processes: list[ManagedProcess], tmp_path: Path
    ) -> None:
        """The whole path on the generated configuration: the controller (its certificate,
        `--repo`) serves the release, an agent from `fleet devices provision --repo` (the
        bundle's TUF root, OTA on) connects with its device certificate, a registered
        operator (its certificate and signing key) accepts and deploys it, and the agent
        fetches through `fleet/<id>/fetch` / `file` and commits digits@1."""
        from fleet.release.publish import publish_model
        from fleet.release.repo import Repository

        repo_dir = tmp_path / "repo"
        repo = Repository.init(repo_dir)
        digits = REPO / "models" / "digits" / "digits-fp32.onnx"
        publish_model(repo, digits, name="digits", version="1", hardware=["generic"])
        out = tmp_path / "bundles"
        provision = _fleet(
            "devices", "provision", "pi-ota", "--ca-dir", bench.ca_dir, "--out", out,
            "--broker-host", "127.0.0.1", "--broker-port", str(bench.port),
            "--install-dir", out / "pi-ota", "--repo", repo_dir,
        )  # fmt: skip
        assert provision.returncode == 0, provision.stderr
        assert (out / "pi-ota" / "root.json").exists()
        url = f"mqtts://127.0.0.1:{bench.port}"

        def tls_env(identity: str) -> dict[str, str]:
            cert, key = bench.identities[identity]
            return {
                "FLEET_TLS__CA_FILE": str(bench.ca_file),
                "FLEET_TLS__CERT_FILE": str(cert),
                "FLEET_TLS__KEY_FILE": str(key),
            }

        operator_key = register_operator(tmp_path, tmp_path / "fleet.sqlite3")
        template = controller_process(tmp_path, bench.port, OTA__REPO=str(repo_dir))
        argv = [url if a.startswith("mqtt://") else a for a in template.argv]
        controller = ManagedProcess(argv, template.env | tls_env("controller"), template.log_path)
        processes.append(controller.start())
        wait_until(lambda: b'"mqtt.connected"' in controller.log_path.read_bytes(), 30, "link")

        # Only the state dir and the test's timings come from the environment; the device
        # id, the broker, the TLS files and the TUF root come from the bundle's agent.toml.
        agent_template = agent_process(
            tmp_path,
            bench.port,
            "pi-ota",
            OTA__HEALTH__DURATION_S="1",
            OTA__HEALTH__MIN_INFERENCES="0",
            OTA__RETRY_S="2",
            INFERENCE__REST="false",
        )
        env = {
            k: v
            for k, v in agent_template.env.items()
            if k not in ("EDGE_AGENT_DEVICE_ID", "EDGE_AGENT_MQTT__HOST", "EDGE_AGENT_MQTT__PORT")
        }
        config = out / "pi-ota" / "agent.toml"
        agent = ManagedProcess(
            [*agent_template.argv, "--config", str(config)], env, agent_template.log_path
        )
        processes.append(agent.start())

        clean_env = {
            k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "EDGE_AGENT_"))
        }
        operator_env = (
            clean_env | tls_env("operator") | {"FLEET_OPERATOR__KEY_FILE": str(operator_key)}
        )

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "fleet", *args, "--broker", url, "--timeout", "5"],
                env=operator_env, capture_output=True, text=True, timeout=30, check=False,
                cwd=REPO,
            )  # fmt: skip

        def shown(document: str) -> dict[str, Any] | None:
            result = cli("devices", "show", "pi-ota", "--json")
            if result.returncode != 0:
                return None
            body: dict[str, Any] | None = json.loads(result.stdout).get(document)
            return body

        def reported() -> dict[str, Any] | None:
            return shown("reported")

        wait_until(reported, 30, "pi-ota and its reported state known to the controller")
        wait_until(lambda: shown("telemetry"), 30, "pi-ota's telemetry recorded")
        accepted = cli("devices", "accept", "pi-ota")
        assert accepted.returncode == 0, accepted.stderr + accepted.stdout
        deployed = cli("deploy", "digits@1", "--device", "pi-ota", "--json")
        assert deployed.returncode == 0, deployed.stderr + deployed.stdout
        assert json.loads(deployed.stdout)["devices"] == ["pi-ota"]

        def active() -> str | None:
            models = (reported() or {}).get("models") or {}
            version: str | None = ((models.get("digits") or {}).get("active") or {}).get("version")
            return version

        wait_until(lambda: active() == "1", 45, "digits@1 active on pi-ota")
        assert "ota_committed" in agent.log()
        assert "not authorized" not in agent.log().lower()
        assert "not authorized" not in controller.log().lower()
