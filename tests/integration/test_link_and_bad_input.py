"""The MQTT link's limits, TLS with client certificates, commands, and bad input, for real."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from devtools.localbroker import BrokerError, PrivateBroker, free_port
from edge_contract import payloads
from edge_runtime.errors import PacketTooLargeError
from edge_runtime.mqtt.base import LinkSettings, publish_packet_size
from edge_runtime.mqtt.link import MqttLink
from tests.integration.harness import (
    ManagedProcess,
    Recorder,
    agent_process,
    controller_process,
    fleet_devices,
    wait_until,
)


def _raw_client(port: int) -> paho.Client:
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


class TestMaximumPacketSize:
    def test_oversized_publish_is_refused_locally_without_a_disconnect(
        self, tmp_path: Path
    ) -> None:
        """At the broker's limit a publish goes through; one byte more is refused, link stays up."""
        limit = 1024
        with PrivateBroker(tmp_path / "b", extra_config=[f"max_packet_size {limit}"]) as broker:
            asyncio.run(self._exercise(broker.port, limit))

    async def _exercise(self, port: int, limit: int) -> None:
        link = MqttLink(LinkSettings(host="127.0.0.1", port=port, client_id="size-test"))
        runner = asyncio.create_task(link.run())
        try:
            info = await link.wait_connected(10)
            assert info.max_packet_size == limit
            topic = "fleet/size-test/telemetry"
            fits = max(n for n in range(limit) if publish_packet_size(topic, n, 1, 0) <= limit)
            await asyncio.wait_for(link.publish(topic, b"x" * fits), 5)
            with pytest.raises(PacketTooLargeError) as refused:
                link.publish(topic, b"x" * (fits + 1))
            assert refused.value.size == limit + 1
            assert refused.value.limit == limit
            await asyncio.sleep(0.5)
            assert link.connected
            await asyncio.wait_for(link.publish(topic, b"small"), 5)
        finally:
            await link.close()
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    san: str | None = None,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer if issuer else (name, key)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write_pki(directory: Path) -> dict[str, Path]:
    directory.mkdir()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("fleet test CA", ca_key, None, ca=True)
    files: dict[str, Path] = {}
    for name, key, cert in (
        ("ca", ca_key, ca),
        (
            "server",
            (k := ec.generate_private_key(ec.SECP256R1())),
            _cert("localhost", k, (ca.subject, ca_key), san="localhost"),
        ),
        (
            "device",
            (d := ec.generate_private_key(ec.SECP256R1())),
            _cert("pi-tls", d, (ca.subject, ca_key)),
        ),
    ):
        files[f"{name}_cert"] = directory / f"{name}.crt"
        files[f"{name}_key"] = directory / f"{name}.key"
        files[f"{name}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{name}_key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return files


class TestTls:
    def test_agent_connects_with_a_client_certificate_and_not_without(
        self, tmp_path: Path, processes: list[ManagedProcess]
    ) -> None:
        """A broker requiring client certs accepts the configured agent and refuses a bare one."""
        pki = _write_pki(tmp_path / "pki")
        tls_port = free_port()
        tls_listener = [
            f"listener {tls_port} 127.0.0.1",
            f"cafile {pki['ca_cert']}",
            f"certfile {pki['server_cert']}",
            f"keyfile {pki['server_key']}",
            "require_certificate true",
        ]
        with PrivateBroker(tmp_path / "b", extra_config=tls_listener) as broker:
            recorder = Recorder(broker.port, "fleet/+/status").start()
            good = agent_process(
                tmp_path,
                tls_port,
                "pi-tls",
                mqtt__host="localhost",
                mqtt__tls__ca_file=str(pki["ca_cert"]),
                mqtt__tls__cert_file=str(pki["device_cert"]),
                mqtt__tls__key_file=str(pki["device_key"]),
            ).start()
            bare = agent_process(
                tmp_path,
                tls_port,
                "pi-nocert",
                mqtt__host="localhost",
                mqtt__tls__ca_file=str(pki["ca_cert"]),
            ).start()
            processes.extend([good, bare])

            wait_until(
                lambda: any(
                    b["device_id"] == "pi-tls" and b["state"] == "online"
                    for b in recorder.bodies("/status")
                ),
                20,
                "pi-tls online over TLS",
            )
            wait_until(lambda: bare.log().count("mqtt.connect_failed") >= 2, 20, "refusals")
            assert not any(b["device_id"] == "pi-nocert" for b in recorder.bodies("/status"))
            recorder.stop()


class TestCommands:
    def test_ping_and_malformed_commands_get_correlated_replies(
        self, tmp_path: Path, broker: PrivateBroker, processes: list[ManagedProcess]
    ) -> None:
        """cmd/ping answers ok on the response topic; a malformed body gets ok=false, no crash."""
        agent = agent_process(tmp_path, broker.port, "pi-20").start()
        processes.append(agent)
        replies = Recorder(broker.port, "test/replies", client_id="replies").start()
        status = Recorder(broker.port, "fleet/pi-20/status", client_id="status").start()
        wait_until(lambda: status.bodies("/status"), 20, "agent online")
        client = _raw_client(broker.port)
        for correlation, payload in ((b"one", b"{}"), (b"two", b"{not json"), (b"three", b"[1]")):
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = "test/replies"
            props.CorrelationData = correlation
            client.publish("fleet/pi-20/cmd/ping", payload, qos=1, properties=props)
        got = wait_until(
            lambda: len(replies.bodies("test/replies")) >= 3 and replies.bodies("test/replies"),
            10,
            "three replies",
        )
        assert [r["ok"] for r in got] == [True, False, False]
        assert got[0]["pong"] is True
        assert "not valid JSON" in got[1]["error"]
        assert agent.alive
        client.loop_stop()
        client.disconnect()
        replies.stop()
        status.stop()


class TestBadInput:
    def test_controller_survives_malformed_oversized_and_forged_messages(
        self, tmp_path: Path, broker: PrivateBroker, processes: list[ManagedProcess]
    ) -> None:
        """Garbage on device topics is logged and counted; the rest of the fleet is unaffected."""
        controller = controller_process(tmp_path, broker.port).start()
        processes.append(controller)
        processes.append(agent_process(tmp_path, broker.port, "pi-30").start())
        wait_until(
            lambda: any(d["device_id"] == "pi-30" for d in fleet_devices(broker.port)),
            30,
            "pi-30 listed",
        )
        client = _raw_client(broker.port)
        garbage = [
            ("fleet/pi-31/telemetry", b"\xff\xfe not json"),
            ("fleet/pi-31/telemetry", json.dumps({"seq": "one", "ts": 1}).encode()),
            ("fleet/pi-31/telemetry", b"{" + b" " * 400_000 + b"}"),
            ("fleet/Bad_Id/telemetry", b'{"seq": 1, "ts": "2026-01-01T00:00:00Z"}'),
            ("fleet/pi-31/nonsense", b"{}"),
            (
                "fleet/pi-31/telemetry",
                json.dumps({"device_id": "pi-30", "seq": 1, "ts": payloads.utc_now()}).encode(),
            ),
        ]
        for topic, payload in garbage:
            client.publish(topic, payload, qos=1).wait_for_publish(5)
        # Five reasons (not_utf8, schema, too_large, topic, device_mismatch), each logged once.
        wait_until(lambda: controller.log().count("controller.rejected") >= 5, 10, "rejections")
        assert controller.alive
        time.sleep(1.5)
        devices = {d["device_id"]: d for d in fleet_devices(broker.port)}
        assert "pi-31" not in devices and "Bad_Id" not in devices
        before = devices["pi-30"]["last_seq"]
        wait_until(
            lambda: any(
                d["device_id"] == "pi-30" and d["last_seq"] > before
                for d in fleet_devices(broker.port)
            ),
            10,
            "telemetry still flowing",
        )
        log = controller.log()
        assert "does not match the topic" in log
        assert "exceeds" in log
        client.loop_stop()
        client.disconnect()

    def test_taken_port_is_a_clear_error(self, tmp_path: Path, broker: PrivateBroker) -> None:
        """Starting a broker on a port that is in use names the port instead of hanging."""
        second = PrivateBroker(tmp_path / "second", port=broker.port)
        with pytest.raises(BrokerError, match=f"port {broker.port} .* already taken"):
            second.start()
