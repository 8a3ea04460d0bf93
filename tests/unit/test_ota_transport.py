"""Repository files over MQTT without a broker: the server's request handling and path rules,
reply sizing, and the client's reading and matching of replies."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import FetchError
from agent.ota.transport import RepositoryClient, _parse_reply
from edge_contract.fetchcodec import MAX_REPLY_PACKET, REPLY_HEADER_MAX, DecodedReply, decode_reply
from edge_runtime.mqtt.base import InboundMessage, PublishOptions, publish_packet_size
from edge_runtime.mqtt.link import MqttLink
from fleet.release.fileserver import (
    FileReply,
    RepositoryFiles,
    max_reply_bytes,
)

CONTENT = bytes(range(256)) * 40  # 10240 bytes


def _request(path: str, offset: int = 0, length: int = 4096) -> bytes:
    return json.dumps({"path": path, "offset": offset, "length": length}).encode()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "metadata").mkdir(parents=True)
    (root / "targets" / "models" / "m" / "1").mkdir(parents=True)
    (root / "metadata" / "1.root.json").write_bytes(b'{"signed": {}}')
    (root / "targets" / "models" / "m" / "1" / "abc.m.onnx").write_bytes(CONTENT)
    (root / "keys").mkdir()
    (root / "keys" / "secret.pem").write_bytes(b"PRIVATE")
    (tmp_path / "outside.txt").write_bytes(b"outside")
    return root


def _decoded(reply: FileReply) -> DecodedReply:
    return decode_reply(reply.encode(b"x" * 16))


class TestRanges:
    def test_reads_the_requested_range(self, repo: Path) -> None:
        files = RepositoryFiles(repo)
        reply = files.answer(_request("targets/models/m/1/abc.m.onnx", 1000, 3000), 1 << 20)
        assert reply == FileReply(200, CONTENT[1000:4000], len(CONTENT), 1000)
        decoded = decode_reply(reply.encode(b"\x01" * 16))
        assert decoded.fields == {"status": 200, "size": len(CONTENT), "offset": 1000}
        assert decoded.correlation == b"\x01" * 16
        assert decoded.data == CONTENT[1000:4000]

    def test_reply_is_cut_at_max_reply_and_at_the_end_of_the_file(self, repo: Path) -> None:
        files = RepositoryFiles(repo)
        path = "targets/models/m/1/abc.m.onnx"
        assert files.answer(_request(path, 0, 5000), 700).data == CONTENT[:700]
        tail = files.answer(_request(path, 10000, 5000), 1 << 20)
        assert (tail.status, tail.data) == (200, CONTENT[10000:])

    def test_offset_at_the_end_is_an_empty_range_and_beyond_it_416(self, repo: Path) -> None:
        files = RepositoryFiles(repo)
        path = "targets/models/m/1/abc.m.onnx"
        at_end = files.answer(_request(path, len(CONTENT)), 1 << 20)
        assert (at_end.status, at_end.data, at_end.size) == (200, b"", len(CONTENT))
        beyond = files.answer(_request(path, len(CONTENT) + 1), 1 << 20)
        assert (beyond.status, beyond.size, beyond.offset) == (416, None, len(CONTENT) + 1)
        assert b"beyond" in beyond.data

    @pytest.mark.parametrize(
        "path",
        ["metadata/2.root.json", "targets/models/m/1/missing.onnx", "metadata/1.root.json/x"],
    )
    def test_missing_files_are_404(self, repo: Path, path: str) -> None:
        reply = RepositoryFiles(repo).answer(_request(path), 1 << 20)
        assert reply.status == 404
        assert path.encode() in reply.data or b"not a file" in reply.data

    def test_a_directory_is_404(self, repo: Path) -> None:
        reply = RepositoryFiles(repo).answer(_request("targets/models/m"), 1 << 20)
        assert reply.status == 404


class TestPathRules:
    @pytest.mark.parametrize(
        "path",
        [
            "../keys/secret.pem",
            "metadata/../keys/secret.pem",
            "targets/models/../../keys/secret.pem",
            "/etc/passwd",
            "metadata\\1.root.json",
            "metadata/1.root.json\x00",
            "metadata/\x01",
            "keys/secret.pem",
            "metadata",
            "metadata/",
            "metadata//1.root.json",
            "metadata/./1.root.json",
            "",
            "metadata/" + "a" * 2000,
            "metadata/\ud800",
        ],
    )
    def test_refused_with_400(self, repo: Path, path: str) -> None:
        reply = RepositoryFiles(repo).answer(_request(path), 1 << 20)
        assert reply.status == 400, reply
        assert reply.size is None
        assert reply.data  # a message saying why

    def test_symlink_pointing_outside_is_refused(self, repo: Path) -> None:
        os.symlink(repo.parent / "outside.txt", repo / "metadata" / "evil.json")
        os.symlink(repo / "keys", repo / "targets" / "keys")
        files = RepositoryFiles(repo)
        assert files.answer(_request("metadata/evil.json"), 1 << 20).status == 400
        assert files.answer(_request("targets/keys/secret.pem"), 1 << 20).status == 400

    def test_symlink_across_served_dirs_is_refused(self, repo: Path) -> None:
        """metadata/ serves metadata only: a link into targets/ does not make it metadata."""
        os.symlink(repo / "targets" / "models" / "m" / "1" / "abc.m.onnx", repo / "metadata" / "x")
        assert RepositoryFiles(repo).answer(_request("metadata/x"), 1 << 20).status == 400

    def test_symlink_inside_its_dir_is_served(self, repo: Path) -> None:
        os.symlink("1.root.json", repo / "metadata" / "root.json")
        reply = RepositoryFiles(repo).answer(_request("metadata/root.json"), 1 << 20)
        assert (reply.status, reply.data) == (200, b'{"signed": {}}')


class TestMalformedRequests:
    @pytest.mark.parametrize(
        ("payload", "words"),
        [
            (b"", b"not JSON"),
            (b"\xff\xfe", b"not JSON"),
            (b"{", b"not JSON"),
            (b"[]", b"not a JSON object"),
            (b"[" * 3000, b"not JSON"),
            (b'{"path": "metadata/1.root.json", "offset": 0}', b"length"),
            (b'{"offset": 0, "length": 10}', b"path"),
            (b'{"path": 7, "offset": 0, "length": 10}', b"path"),
            (b'{"path": "metadata/1.root.json", "offset": -1, "length": 10}', b"offset"),
            (b'{"path": "metadata/1.root.json", "offset": 1.5, "length": 10}', b"offset"),
            (b'{"path": "metadata/1.root.json", "offset": true, "length": 10}', b"offset"),
            (b'{"path": "metadata/1.root.json", "offset": 0, "length": 0}', b"length"),
            (b'{"path": "metadata/1.root.json", "offset": 0, "length": 1e9}', b"length"),
            (b'{"path": "metadata/1.root.json", "offset": 0, "length": 99999999999}', b"length"),
            (b'{"path": "metadata/1.root.json", "offset": 0, "length": 1, "x": 1}', b"unexpected"),
            (b" " * 5000, b"limit"),
        ],
    )
    def test_answered_with_400_and_a_reason(self, repo: Path, payload: bytes, words: bytes) -> None:
        reply = RepositoryFiles(repo).answer(payload, 1 << 20)
        assert reply.status == 400
        assert words in reply.data

    @settings(
        max_examples=300,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(
        payload=st.one_of(
            st.binary(max_size=300),
            st.builds(
                lambda path, offset, length: json.dumps(
                    {"path": path, "offset": offset, "length": length}
                ).encode(),
                st.one_of(
                    st.text(max_size=60),
                    st.sampled_from(["metadata/1.root.json", "targets/models/m/1/abc.m.onnx"]),
                    st.builds(
                        lambda d, t: f"{d}/{t}", st.sampled_from(["metadata", "targets"]), st.text()
                    ),
                ),
                st.one_of(st.integers(min_value=-5, max_value=20000), st.none(), st.text()),
                st.one_of(st.integers(min_value=-5, max_value=1 << 30), st.floats(), st.none()),
            ),
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                lambda inner: (
                    st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4)
                ),
                max_leaves=12,
            ).map(lambda value: json.dumps(value).encode()),
        ),
        max_reply=st.integers(min_value=1, max_value=1 << 20),
    )
    def test_any_payload_gives_a_reply_never_an_exception(
        self, repo: Path, payload: bytes, max_reply: int
    ) -> None:
        reply = RepositoryFiles(repo).answer(payload, max_reply)
        assert reply.status in {200, 400, 404, 416}
        if reply.status == 200:
            assert reply.size is not None
            assert len(reply.data) <= max_reply
            assert reply.offset + len(reply.data) <= reply.size
        else:
            assert reply.size is None
            assert 0 < len(reply.data) <= 500


class TestReplySize:
    @pytest.mark.parametrize("limit", [None, 300, 1024, 70_000, 300_000, 16 * 1024 * 1024])
    def test_the_widest_reply_fits_the_packet_limit_exactly(self, limit: int | None) -> None:
        topic = "fleet/pi-1/file"
        room = max_reply_bytes(topic, limit)
        cap = min(limit or MAX_REPLY_PACKET, MAX_REPLY_PACKET)
        properties = 0  # a reply has no v5 properties
        header = 2 + REPLY_HEADER_MAX  # the widest header the payload can carry
        assert publish_packet_size(topic, room + header, 1, properties) <= cap
        assert publish_packet_size(topic, room + header + 1, 1, properties) > cap

    def test_the_widest_header_fits_reply_header_max(self) -> None:
        widest = FileReply(416, b"", 10**20 - 1, 10**20 - 1).encode(b"\xff" * 64)
        assert len(widest) - 2 <= REPLY_HEADER_MAX
        with pytest.raises(ValueError, match="number_range"):  # beyond 64 bits: refused
            decode_reply(widest)
        largest = FileReply(416, b"", 2**63 - 1, 2**63 - 1).encode(b"\xff" * 64)
        assert decode_reply(largest).fields["size"] == 2**63 - 1


class TestClientReadsReplies:
    def test_a_good_reply(self) -> None:
        reply = _parse_reply("p", 10, 100, _decoded(FileReply(200, b"abc", 13, 10)))
        assert (reply.data, reply.size) == (b"abc", 13)

    @pytest.mark.parametrize(
        ("reply", "status"),
        [
            (FileReply(404, b"no file p", None, 0), 404),
            (FileReply(416, b"beyond", None, 10), 416),
            (FileReply(400, b"bad", None, 0), 400),
            (FileReply(200, b"abc", 13, 11), 502),  # wrong offset
            (FileReply(200, b"abc", 12, 10), 502),  # past the end of the file
            (FileReply(200, b"", 20, 10), 502),  # empty before the end: would loop forever
            (FileReply(200, b"x" * 101, 1000, 10), 502),  # more than asked
        ],
    )
    def test_bad_replies_raise_fetch_error_with_the_status(
        self, reply: FileReply, status: int
    ) -> None:
        with pytest.raises(FetchError) as raised:
            _parse_reply("p", 10, 100, _decoded(reply))
        assert raised.value.status == status
        assert raised.value.path == "p"

    def test_a_reply_without_status_is_502(self) -> None:
        with pytest.raises(FetchError) as raised:
            _parse_reply("p", 0, 10, decode_reply(b'\x00\x0c{"offset":0}x'))
        assert raised.value.status == 502
        assert "without a status" in raised.value.detail


REPLY_TOPIC = "fleet/pi-1/file"


def _with_header(text: str) -> bytes:
    return len(text).to_bytes(2, "big") + text.encode() + b"x"


MALFORMED_PAYLOADS = [
    b"",
    b"\x00",
    b"\x00\x05{}",  # header longer than the payload
    b"\x00\x02[]data",  # not an object
    b'\x00\x0e{"status":-1}x',  # negative
    b"\x00\x04nope",  # not JSON
    _with_header('{"status":200,"offset":0,"correlation":"zz"}'),  # not hex
    _with_header('{"status":200,"offset":0,"correlation":12}'),  # not a string
    _with_header('{"status":200,"offset":0,"correlation":"' + "ab" * 65 + '"}'),  # over 64 bytes
]


class _AnsweringLink:
    """Stands in for the agent's ``MqttLink``: each request gets ``answer(correlation)`` handed
    to the client's ``on_message``, as the link would deliver the controller's reply."""

    def __init__(self, answer: Callable[[bytes], InboundMessage]) -> None:
        self.answer = answer
        self.client: RepositoryClient | None = None

    async def wait_connected(self, timeout: float | None = None) -> None:
        return None

    def publish(self, _topic: str, _payload: bytes, *, options: PublishOptions) -> Any:
        assert self.client is not None and options.correlation_data is not None
        loop = asyncio.get_running_loop()
        loop.call_soon(self.client.on_message, self.answer(options.correlation_data))
        acked = loop.create_future()
        acked.set_result(None)
        return acked


def _fetch(answer: Callable[[bytes], InboundMessage]) -> tuple[bytes, int]:
    """``fetch_range("p", 10, 100)`` through a client whose every request gets ``answer``."""

    async def run() -> tuple[bytes, int]:
        link = _AnsweringLink(answer)
        client = RepositoryClient(cast(MqttLink, link), "pi-1", timeout_s=0.05, retries=0)
        link.client = client
        reply = await client.fetch_range("p", 10, 100)
        return bytes(reply.data), reply.size

    return asyncio.run(run())


def _reply(payload: bytes, correlation_data: bytes | None = None) -> InboundMessage:
    return InboundMessage(REPLY_TOPIC, payload, 1, False, correlation_data=correlation_data)


class TestClientMatchesReplies:
    def test_a_reply_names_its_request_by_the_correlation_in_its_header(self) -> None:
        good = FileReply(200, b"abc", 13, 10)
        assert _fetch(lambda corr: _reply(good.encode(corr))) == (b"abc", 13)

    def test_a_reply_with_v5_correlation_data_instead_is_matched_too(self) -> None:
        good = FileReply(200, b"abc", 13, 10)
        assert _fetch(lambda corr: _reply(good.encode(), correlation_data=corr)) == (b"abc", 13)

    def test_a_reply_for_another_request_is_dropped_and_the_request_times_out(self) -> None:
        other = FileReply(200, b"abc", 13, 10).encode(b"o" * 16)
        with pytest.raises(FetchError) as raised:
            _fetch(lambda corr: _reply(other, correlation_data=corr[::-1]))
        assert raised.value.status == 504

    def test_a_reply_on_another_topic_is_dropped(self) -> None:
        good = FileReply(200, b"abc", 13, 10)
        with pytest.raises(FetchError) as raised:
            _fetch(lambda corr: InboundMessage("fleet/pi-2/file", good.encode(corr), 1, False))
        assert raised.value.status == 504

    @pytest.mark.parametrize("payload", MALFORMED_PAYLOADS)
    def test_a_malformed_reply_to_a_request_is_502(self, payload: bytes) -> None:
        with pytest.raises(FetchError) as raised:
            _fetch(lambda corr: _reply(payload, correlation_data=corr))
        assert raised.value.status == 502
        assert "malformed reply" in raised.value.detail

    @pytest.mark.parametrize("payload", MALFORMED_PAYLOADS)
    def test_a_malformed_reply_naming_no_request_is_dropped(self, payload: bytes) -> None:
        with pytest.raises(FetchError) as raised:
            _fetch(lambda _corr: _reply(payload))
        assert raised.value.status == 504
