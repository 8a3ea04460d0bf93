"""Repository files over a real Mosquitto: FileService on one MqttLink, RepositoryClient and
ngclient's MqttFetcher on another."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from securesystemslib.signer import CryptoSigner
from tuf.api.exceptions import DownloadHTTPError, DownloadLengthMismatchError
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.ngclient import Updater

from agent.errors import FetchError
from agent.ota.transport import ChunkRange, RepositoryClient
from agent.ota.trust import MqttFetcher
from devtools.localbroker import PrivateBroker
from edge_contract.fetchcodec import decode_reply
from edge_contract.topics import Channel, parse, topic_for
from edge_runtime.mqtt.base import ConnectionInfo, InboundMessage, LinkSettings
from edge_runtime.mqtt.link import MqttLink
from fleet.release.fileserver import FileService, RepositoryFiles
from tests.integration.harness import running_link

DEVICE = "pi-1"
OTHER_DEVICE = "pi-2"
CHUNK = 256 * 1024


@dataclass
class Pair:
    """The controller side (FileService) and the device side (RepositoryClient), connected."""

    service: FileService
    client: RepositoryClient
    device_link: MqttLink
    reply_sizes: list[int] = field(default_factory=list)


def _settings(port: int, client_id: str) -> LinkSettings:
    return LinkSettings(
        host="127.0.0.1", port=port, client_id=client_id, clean_start=True, session_expiry_s=0
    )


@contextlib.asynccontextmanager
async def _pair(
    port: int, repo: Path, *, workers: int = 4, timeout_s: float = 5.0
) -> AsyncIterator[Pair]:
    controller = MqttLink(_settings(port, "controller-test"))
    service = FileService(controller, RepositoryFiles(repo), workers=workers)

    def route_controller(msg: InboundMessage) -> None:
        if parse(msg.topic).channel is Channel.FETCH:
            service.on_message(msg)

    controller.set_message_handler(route_controller)
    controller.add_subscription(service.subscription())
    device = MqttLink(_settings(port, DEVICE))
    client = RepositoryClient(device, DEVICE, timeout_s=timeout_s, retries=1)
    pair = Pair(service, client, device)

    def route_device(msg: InboundMessage) -> None:
        pair.reply_sizes.append(len(msg.payload))
        client.on_message(msg)

    device.set_message_handler(route_device)
    device.add_subscription(client.subscription())
    async with running_link(controller), running_link(device):
        try:
            yield pair
        finally:
            service.close()


def _write_target(repo: Path, relative: str, data: bytes) -> None:
    path = repo / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "metadata").mkdir(parents=True)
    (root / "targets").mkdir()
    return root


def _model_bytes(size: int) -> bytes:
    return os.urandom(size)


class TestRangesOverMqtt:
    def test_a_3mb_file_arrives_in_chunks_in_order(self, broker: PrivateBroker, repo: Path) -> None:
        data = _model_bytes(3 * 1000 * 1000 + 17)
        _write_target(repo, "targets/models/m/1/abc.m.onnx", data)
        asyncio.run(self._fetch_all(broker.port, repo, data))

    async def _fetch_all(self, port: int, repo: Path, data: bytes) -> None:
        ranges = [
            ChunkRange(index, offset, min(CHUNK, len(data) - offset))
            for index, offset in enumerate(range(0, len(data), CHUNK))
        ]
        got: list[tuple[int, bytes]] = []

        async def on_chunks(pieces: list[tuple[int, memoryview]]) -> None:
            got.extend((index, bytes(chunk)) for index, chunk in pieces)

        async with _pair(port, repo) as pair:
            await pair.client.fetch_chunks("targets/models/m/1/abc.m.onnx", ranges, on_chunks)
        assert [index for index, _ in got] == list(range(len(ranges)))
        assert b"".join(chunk for _, chunk in got) == data

    def test_missing_file_is_404_and_a_too_long_file_413(
        self, broker: PrivateBroker, repo: Path
    ) -> None:
        _write_target(repo, "metadata/1.root.json", b"x" * 5000)
        asyncio.run(self._refusals(broker.port, repo))

    async def _refusals(self, port: int, repo: Path) -> None:
        async with _pair(port, repo) as pair:
            with pytest.raises(FetchError) as missing:
                await pair.client.fetch_range("metadata/2.root.json", 0, 1024)
            assert missing.value.status == 404
            with pytest.raises(FetchError) as bad:
                await pair.client.fetch_range("metadata/../x", 0, 1024)
            assert bad.value.status == 400
            with pytest.raises(FetchError) as too_long:
                await pair.client.fetch_file("metadata/1.root.json", 4999)
            assert too_long.value.status == 413
            whole = await pair.client.fetch_file("metadata/1.root.json", 5000, piece=1000)
            assert whole == b"x" * 5000

    def test_a_small_broker_packet_limit_gives_smaller_replies(
        self, tmp_path: Path, repo: Path
    ) -> None:
        data = _model_bytes(600 * 1024)
        _write_target(repo, "targets/models/m/1/abc.m.onnx", data)
        limit = 64 * 1024
        with PrivateBroker(tmp_path / "small", extra_config=[f"max_packet_size {limit}"]) as small:
            sizes = asyncio.run(self._fetch_with_limit(small.port, repo, data))
        assert max(sizes) < limit
        assert len(sizes) >= len(data) // limit + 1

    async def _fetch_with_limit(self, port: int, repo: Path, data: bytes) -> list[int]:
        ranges = [
            ChunkRange(index, offset, min(CHUNK, len(data) - offset))
            for index, offset in enumerate(range(0, len(data), CHUNK))
        ]
        parts: dict[int, bytes] = {}

        async def on_chunks(pieces: list[tuple[int, memoryview]]) -> None:
            parts.update((index, bytes(chunk)) for index, chunk in pieces)

        async with _pair(port, repo) as pair:
            info = pair.device_link.info
            assert info is not None
            assert info.max_packet_size == 64 * 1024
            await pair.client.fetch_chunks("targets/models/m/1/abc.m.onnx", ranges, on_chunks)
            sizes = list(pair.reply_sizes)
        assert b"".join(parts[i] for i in sorted(parts)) == data
        return sizes


class _Subscriber:
    """A plain paho client that records the correlation of each reply on one topic."""

    def __init__(self, port: int, topic: str) -> None:
        self.received: list[bytes] = []
        self.arrived = threading.Condition()
        self._subscribed = threading.Event()
        self._topic = topic
        self._client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5
        )
        self._client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        assert self._subscribed.wait(10)

    def _on_message(self, _client: paho.Client, _userdata: object, msg: paho.MQTTMessage) -> None:
        with self.arrived:
            self.received.append(decode_reply(bytes(msg.payload)).correlation or b"")
            self.arrived.notify_all()

    def publish_request(self, topic: str, response_topic: str, correlation: bytes) -> None:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = response_topic
        props.CorrelationData = correlation
        request = {"path": "metadata/1.root.json", "offset": 0, "length": 100}
        self._client.publish(
            topic, json.dumps(request).encode(), qos=1, properties=props
        ).wait_for_publish(10)

    def wait_for(self, correlation: bytes, timeout: float = 10.0) -> bool:
        with self.arrived:
            return self.arrived.wait_for(lambda: correlation in self.received, timeout)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class TestResponseTopicRule:
    def test_a_request_naming_another_devices_topic_is_not_answered(
        self, broker: PrivateBroker, repo: Path
    ) -> None:
        _write_target(repo, "metadata/1.root.json", b"{}")
        asyncio.run(self._exercise(broker.port, repo))

    async def _exercise(self, port: int, repo: Path) -> None:
        # One worker: replies leave in request order, so once the control reply is in, a
        # reply to the forged request (sent first) would have arrived before it.
        async with _pair(port, repo, workers=1):
            victim = await asyncio.to_thread(
                _Subscriber, port, topic_for(OTHER_DEVICE, Channel.FILE)
            )
            try:
                forged, control = b"forged-request-1", b"control-request1"
                victim.publish_request(
                    topic_for(DEVICE, Channel.FETCH), topic_for(OTHER_DEVICE, Channel.FILE), forged
                )
                victim.publish_request(
                    topic_for(OTHER_DEVICE, Channel.FETCH),
                    topic_for(OTHER_DEVICE, Channel.FILE),
                    control,
                )
                assert await asyncio.to_thread(victim.wait_for, control)
                assert forged not in victim.received
            finally:
                await asyncio.to_thread(victim.close)


def _build_tuf_repo(repo: Path, targets: dict[str, bytes]) -> dict[str, CryptoSigner]:
    """A minimal consistent-snapshot TUF repository: root v1, targets, snapshot, timestamp."""
    signers = {
        role: CryptoSigner.generate_ed25519()
        for role in ("root", "targets", "snapshot", "timestamp")
    }
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    root = Metadata(Root(expires=expires, consistent_snapshot=True))
    for role, signer in signers.items():
        root.signed.add_key(signer.public_key, role)
    target_meta = Metadata(Targets(expires=expires))
    for path, data in targets.items():
        info = TargetFile.from_data(path, data, ["sha256"])
        target_meta.signed.targets[path] = info
        directory, _, name = path.rpartition("/")
        _write_target(repo, f"targets/{directory}/{info.hashes['sha256']}.{name}", data)
    snapshot = Metadata(Snapshot(expires=expires))
    snapshot.signed.meta["targets.json"] = MetaFile(version=target_meta.signed.version)
    timestamp = Metadata(Timestamp(expires=expires))
    timestamp.signed.snapshot_meta = MetaFile(version=snapshot.signed.version)
    root.sign(signers["root"])
    target_meta.sign(signers["targets"])
    snapshot.sign(signers["snapshot"])
    timestamp.sign(signers["timestamp"])
    metadata = repo / "metadata"
    root.to_file(str(metadata / "1.root.json"))
    target_meta.to_file(str(metadata / "1.targets.json"))
    snapshot.to_file(str(metadata / "1.snapshot.json"))
    timestamp.to_file(str(metadata / "timestamp.json"))
    return signers


def _rotate_root(repo: Path, signers: dict[str, CryptoSigner]) -> None:
    """Root v2: same keys, signed by the v1 root key (enough for the walk to accept it)."""
    root = Metadata[Root].from_file(str(repo / "metadata" / "1.root.json"))
    root.signed.version = 2
    root.signatures.clear()
    root.sign(signers["root"])
    root.to_file(str(repo / "metadata" / "2.root.json"))


def _trusted_root_version(metadata_dir: Path) -> int:
    return int(json.loads((metadata_dir / "root.json").read_bytes())["signed"]["version"])


class TestNgclientOverMqtt:
    def test_refresh_and_download_and_the_root_walk(
        self, broker: PrivateBroker, repo: Path, tmp_path: Path
    ) -> None:
        model = _model_bytes(700 * 1024)
        signers = _build_tuf_repo(repo, {"models/m/1/m.onnx": model})
        asyncio.run(self._exercise(broker.port, repo, tmp_path, model, signers))

    async def _exercise(
        self,
        port: int,
        repo: Path,
        tmp_path: Path,
        model: bytes,
        signers: dict[str, CryptoSigner],
    ) -> None:
        trusted = tmp_path / "device-tuf"
        trusted.mkdir()
        (trusted / "root.json").write_bytes((repo / "metadata" / "1.root.json").read_bytes())
        downloads = tmp_path / "downloads"
        downloads.mkdir()
        async with _pair(port, repo) as pair:
            fetcher = MqttFetcher(pair.client, asyncio.get_running_loop())

            def updater() -> Updater:
                return Updater(
                    metadata_dir=str(trusted),
                    metadata_base_url="mqtt:metadata/",
                    target_dir=str(downloads),
                    target_base_url="mqtt:targets/",
                    fetcher=fetcher,
                    bootstrap=None,  # the device's provisioned root.json in metadata_dir
                )

            def refresh_and_download() -> str:
                client = updater()
                client.refresh()  # 2.root.json is missing: 404 must end the root walk
                info = client.get_targetinfo("models/m/1/m.onnx")
                assert info is not None
                return client.download_target(info)

            path = await asyncio.to_thread(refresh_and_download)
            assert await asyncio.to_thread(Path(path).read_bytes) == model
            assert _trusted_root_version(trusted) == 1

            _rotate_root(repo, signers)
            await asyncio.to_thread(lambda: updater().refresh())
            assert _trusted_root_version(trusted) == 2

            def missing() -> None:
                fetcher.download_bytes("mqtt:metadata/9.root.json", 1000)

            with pytest.raises(DownloadHTTPError) as raised:
                await asyncio.to_thread(missing)
            assert raised.value.status_code == 404

    def test_endless_data_stops_at_the_cap(self, broker: PrivateBroker, repo: Path) -> None:
        _write_target(repo, "targets/big.bin", b"z" * (3 * CHUNK))
        asyncio.run(self._endless(broker.port, repo))

    async def _endless(self, port: int, repo: Path) -> None:
        async with _pair(port, repo) as pair:
            fetcher = MqttFetcher(pair.client, asyncio.get_running_loop())
            with pytest.raises(DownloadLengthMismatchError):
                await asyncio.to_thread(fetcher.download_bytes, "mqtt:targets/big.bin", CHUNK + 1)
            data = await asyncio.to_thread(
                fetcher.download_bytes, "mqtt:targets/big.bin", 3 * CHUNK
            )
            assert data == b"z" * (3 * CHUNK)


class _DownWatch:
    """Sets ``down`` when the link reports a lost connection."""

    def __init__(self) -> None:
        self.down = asyncio.Event()

    def link_up(self, info: ConnectionInfo) -> None:
        return None

    def link_down(self, reason: str) -> None:
        self.down.set()


class TestLinkTrouble:
    def test_no_answer_is_504_after_the_retries(self, broker: PrivateBroker) -> None:
        asyncio.run(self._unanswered(broker.port))

    async def _unanswered(self, port: int) -> None:
        device = MqttLink(_settings(port, DEVICE))
        client = RepositoryClient(device, DEVICE, timeout_s=0.2, retries=2)
        device.set_message_handler(client.on_message)
        device.add_subscription(client.subscription())
        async with running_link(device):
            with pytest.raises(FetchError) as raised:
                await client.fetch_range("metadata/1.root.json", 0, 100)
        assert raised.value.status == 504
        assert "3 tries" in str(raised.value)

    @pytest.mark.slow
    def test_a_request_made_while_the_broker_is_down_waits_for_it(
        self, broker: PrivateBroker, repo: Path
    ) -> None:
        _write_target(repo, "metadata/1.root.json", b"root")
        asyncio.run(self._outage(broker, repo))

    async def _outage(self, broker: PrivateBroker, repo: Path) -> None:
        async with _pair(broker.port, repo, timeout_s=3.0) as pair:
            watch = _DownWatch()
            pair.device_link.add_listener(watch)
            await asyncio.to_thread(broker.stop)
            await asyncio.wait_for(watch.down.wait(), 10)
            fetch = asyncio.create_task(pair.client.fetch_range("metadata/1.root.json", 0, 100))
            await asyncio.sleep(0)
            assert not fetch.done()  # waiting for the link, not failed at once
            await asyncio.to_thread(broker.start)
            reply = await fetch
        assert reply.data == b"root"
