"""Chunk staging: only verified chunks are kept, resumable across reopen, strict on disk."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.errors import StoreError, UpdateError
from agent.inference.card import ModelCard, TensorSpec
from agent.ota.fsutil import TEMP_PREFIX
from agent.ota.reasons import Reason
from agent.ota.release import ModelRelease, chunk_hashes
from agent.ota.staging import ChunkStaging, sweep

CHUNK = 1024
DATA = bytes((index * 7) % 251 for index in range(2 * CHUNK + 500))  # 3 chunks, last short
SHA = hashlib.sha256(DATA).hexdigest()


def make_release(data: bytes = DATA, *, release: int = 1, version: str = "1.0") -> ModelRelease:
    card = ModelCard(
        name="kws",
        version=version,
        runtime="onnx",
        inputs=(TensorSpec(name="x", dtype="float32", shape=(1, 4)),),
        outputs=(TensorSpec(name="y", dtype="float32", shape=(1, 2)),),
    )
    blocks = [data[offset : offset + CHUNK] for offset in range(0, len(data), CHUNK)]
    return ModelRelease(
        name="kws",
        version=version,
        release=release,
        hardware=("test",),
        min_agent_version="0.1",
        file_name="kws.onnx",
        length=len(data),
        chunk_size=CHUNK,
        chunks=tuple(chunk_hashes(blocks)),
        card=card,
    )


def _chunk(index: int) -> bytes:
    return DATA[index * CHUNK : (index + 1) * CHUNK]


def _staging(root: Path) -> ChunkStaging:
    return ChunkStaging(root, make_release(), SHA)


def test_store_progress_and_assemble(tmp_path: Path) -> None:
    staging = _staging(tmp_path)
    assert staging.missing() == [0, 1, 2]
    staging.store(2, _chunk(2))
    assert staging.missing() == [0, 1]
    assert staging.progress() == pytest.approx(500 / len(DATA))
    staging.store(0, _chunk(0))
    staging.store(1, _chunk(1))
    assert staging.progress() == 1.0
    dest = tmp_path / "out" / "kws.onnx"
    assert staging.assemble(dest) == dest
    assert dest.read_bytes() == DATA
    staging.discard()
    assert not (tmp_path / SHA).exists()


def test_reopen_resumes_where_it_stopped(tmp_path: Path) -> None:
    """A download cut after two chunks resumes with only the third missing."""
    first = _staging(tmp_path)
    first.store(0, _chunk(0))
    first.store(1, _chunk(1))
    again = _staging(tmp_path)
    assert again.missing() == [2]
    assert again.progress() == pytest.approx(2 * CHUNK / len(DATA))


def test_tampered_chunk_is_refused_by_index_and_not_stored(tmp_path: Path) -> None:
    staging = _staging(tmp_path)
    bad = bytearray(_chunk(1))
    bad[10] ^= 0xFF
    with pytest.raises(UpdateError) as caught:
        staging.store(1, bytes(bad))
    assert caught.value.reason == Reason.TAMPERED
    assert "chunk 1" in caught.value.detail
    assert caught.value.fields["chunk"] == 1
    assert staging.missing() == [0, 1, 2]
    assert not (tmp_path / SHA / "chunk-1").exists()


def test_short_chunk_is_tampered_and_long_chunk_too_long(tmp_path: Path) -> None:
    staging = _staging(tmp_path)
    with pytest.raises(UpdateError) as short:
        staging.store(0, _chunk(0)[:-1])
    assert short.value.reason == Reason.TAMPERED
    with pytest.raises(UpdateError) as long:
        staging.store(2, _chunk(2) + b"\x00")
    assert long.value.reason == Reason.TOO_LONG
    assert "501 bytes, signed length 500" in long.value.detail
    with pytest.raises(UpdateError) as beyond:
        staging.store(3, b"x")
    assert beyond.value.reason == Reason.TOO_LONG
    assert staging.missing() == [0, 1, 2]


def test_reopen_deletes_bad_chunks_temps_and_strangers(tmp_path: Path) -> None:
    staging = _staging(tmp_path)
    staging.store(0, _chunk(0))
    staging.store(1, _chunk(1))
    directory = tmp_path / SHA
    (directory / "chunk-1").write_bytes(b"garbage")  # damaged between runs
    (directory / f"{TEMP_PREFIX}abc").write_bytes(b"half a chunk")  # interrupted write
    (directory / "chunk-9").write_bytes(b"beyond the signed chunks")
    with capture_logs() as logs:
        again = _staging(tmp_path)
    assert again.missing() == [1, 2]
    assert sorted(entry.name for entry in directory.iterdir()) == ["chunk-0"]
    cleaned = [entry for entry in logs if entry["event"] == "ota.staging_cleaned"]
    assert sorted(cleaned[0]["removed"]) == [f"{TEMP_PREFIX}abc", "chunk-1", "chunk-9"]


def test_assemble_refuses_incomplete_staging(tmp_path: Path) -> None:
    staging = _staging(tmp_path)
    staging.store(0, _chunk(0))
    with pytest.raises(StoreError, match=r"chunks \[1, 2\] missing"):
        staging.assemble(tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_assemble_rechecks_chunks_changed_on_disk(tmp_path: Path) -> None:
    staging = _staging(tmp_path)
    for index in range(3):
        staging.store(index, _chunk(index))
    (tmp_path / SHA / "chunk-1").write_bytes(b"flipped after store")
    dest = tmp_path / "out.onnx"
    with pytest.raises(UpdateError) as caught:
        staging.assemble(dest)
    assert caught.value.reason == Reason.TAMPERED
    assert caught.value.fields["chunk"] == 1
    assert staging.missing() == [1]
    assert not dest.exists()


def test_assemble_checks_the_whole_file_hash(tmp_path: Path) -> None:
    """Chunks that match their hashes but not the signed file hash are refused."""
    wrong_sha = hashlib.sha256(b"another file").hexdigest()
    staging = ChunkStaging(tmp_path, make_release(), wrong_sha)
    for index in range(3):
        staging.store(index, _chunk(index))
    dest = tmp_path / "out.onnx"
    with pytest.raises(UpdateError) as caught:
        staging.assemble(dest)
    assert caught.value.reason == Reason.TAMPERED
    assert wrong_sha in caught.value.detail
    assert not dest.exists()


def test_sha256_must_be_hex(tmp_path: Path) -> None:
    with pytest.raises(UpdateError) as caught:
        ChunkStaging(tmp_path, make_release(), "../../etc")
    assert caught.value.reason == Reason.MALFORMED_RELEASE


def test_sweep_keeps_named_releases_and_removes_the_rest(tmp_path: Path) -> None:
    kept = _staging(tmp_path)
    kept.store(0, _chunk(0))
    (tmp_path / SHA / f"{TEMP_PREFIX}x").write_bytes(b"stray")
    other = ChunkStaging(tmp_path, make_release(), "0" * 64)
    (other.directory).mkdir()
    (tmp_path / f"{TEMP_PREFIX}y").write_bytes(b"stray")
    (tmp_path / "kws-1.0.assembled").write_bytes(b"left over")
    removed = sweep(tmp_path, {SHA})
    assert sorted(removed) == sorted(
        [f"{SHA}/{TEMP_PREFIX}x", "0" * 64, f"{TEMP_PREFIX}y", "kws-1.0.assembled"]
    )
    assert [entry.name for entry in tmp_path.iterdir()] == [SHA]
    assert _staging(tmp_path).missing() == [1, 2]
    assert sweep(tmp_path / "missing", set()) == []
