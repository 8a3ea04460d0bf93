"""Chunk staging: only verified chunks are kept, resumable across reopen, strict on disk."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.errors import StoreError
from agent.ota import staging as staging_module
from agent.ota.fsutil import TEMP_PREFIX
from agent.ota.slots import SlotStore
from agent.ota.staging import ChunkStaging, sweep
from agent.ota.trust import verify_file
from agent.ota.updater import assemble_download
from edge_contract.card import ModelCard, TensorSpec
from edge_contract.errors import UpdateError
from edge_contract.reasons import Reason
from edge_contract.release import ModelRelease, Target, chunk_hashes

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


def test_reopen_resumes_exactly_where_it_stopped(tmp_path: Path) -> None:
    """A download killed after two chunks resumes with only the third missing, synced or not
    (a killed process leaves its writes in the page cache; the hashes decide what is kept)."""
    first = _staging(tmp_path)
    first.store(0, _chunk(0))
    first.store(1, _chunk(1))
    again = _staging(tmp_path)
    assert again.missing() == [2]
    assert again.progress() == pytest.approx(2 * CHUNK / len(DATA))


def test_store_syncs_at_most_every_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real = staging_module.os.fdatasync
    monkeypatch.setattr(staging_module.os, "fdatasync", lambda fd: synced.append(fd) or real(fd))
    staging = _staging(tmp_path)
    staging.store(0, _chunk(0))
    assert synced == []  # within the interval
    monkeypatch.setattr(staging_module, "SYNC_INTERVAL_S", 0.0)
    staging.store(1, _chunk(1))
    assert len(synced) == 1
    staging.flush()
    assert len(synced) == 1  # nothing new to sync
    monkeypatch.setattr(staging_module, "SYNC_INTERVAL_S", 3600.0)
    staging.store(2, _chunk(2))
    staging.assemble(tmp_path / "out.onnx")  # the install syncs its own copy
    assert len(synced) == 1


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
    part = tmp_path / SHA / "part"
    assert not part.exists() or bytes(bad) not in part.read_bytes()


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


def test_reopen_forgets_damaged_chunks_and_deletes_strangers(tmp_path: Path) -> None:
    staging = _staging(tmp_path)
    staging.store(0, _chunk(0))
    staging.store(1, _chunk(1))
    staging.flush()
    directory = tmp_path / SHA
    with (directory / "part").open("r+b") as part:  # damaged between runs
        part.seek(CHUNK + 10)
        part.write(b"garbage")
    (directory / f"{TEMP_PREFIX}abc").write_bytes(b"half a write")  # interrupted write
    (directory / "chunk-9").write_bytes(b"a stranger")
    with capture_logs() as logs:
        again = _staging(tmp_path)
    assert again.missing() == [1, 2]
    assert sorted(entry.name for entry in directory.iterdir()) == ["part"]
    cleaned = [entry for entry in logs if entry["event"] == "ota.staging_cleaned"]
    assert sorted(cleaned[0]["removed"]) == [f"{TEMP_PREFIX}abc", "chunk-9"]
    again.store(1, _chunk(1))  # the damaged chunk is fetched again and written over
    assert _staging(tmp_path).missing() == [2]


def test_assemble_refuses_incomplete_staging(tmp_path: Path) -> None:
    staging = _staging(tmp_path)
    staging.store(0, _chunk(0))
    with pytest.raises(StoreError, match=r"chunks \[1, 2\] missing"):
        staging.assemble(tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_assemble_moves_the_part_file_without_a_copy(tmp_path: Path) -> None:
    staging = _staging(tmp_path)
    for index in range(3):
        staging.store(index, _chunk(index))
    inode = (tmp_path / SHA / "part").stat().st_ino
    dest = tmp_path / f"{SHA}.complete"
    staging.assemble(dest)
    assert dest.stat().st_ino == inode
    assert dest.read_bytes() == DATA
    assert not (tmp_path / SHA / "part").exists()


def test_assemble_download_moves_the_checked_file_and_clears_the_staging(tmp_path: Path) -> None:
    staging = _staging(tmp_path / "staging")
    for index in (2, 0, 1):
        staging.store(index, _chunk(index))
    dest = tmp_path / "kws.onnx.complete"
    signed = Target.from_data("models/kws/1.0/kws.onnx", DATA)
    assert assemble_download(staging, signed, dest) == dest
    assert dest.read_bytes() == DATA
    assert not (tmp_path / "staging" / SHA).exists()


def test_chunks_that_match_but_not_the_signed_file_hash_are_refused_at_install(
    tmp_path: Path,
) -> None:
    """Per-chunk hashes signed inconsistently with the whole-file hash (a publishing bug; an
    attacker cannot sign either): the download completes, since every chunk matches, and the
    slot install refuses the file, whose copy it hashes against the signed sha256 (TUF's
    whole-file check, made once there, not during the download)."""
    staging = _staging(tmp_path / "staging")
    for index in range(3):
        staging.store(index, _chunk(index))
    wrong_sha = hashlib.sha256(b"another file").hexdigest()
    signed = Target("models/kws/1.0/kws.onnx", len(DATA), {"sha256": wrong_sha})
    dest = assemble_download(staging, signed, tmp_path / "kws.onnx.complete")
    store = SlotStore(tmp_path / "slots", "kws")
    with pytest.raises(UpdateError) as caught:
        store.install(make_release(), dest, wrong_sha)
    assert caught.value.reason == Reason.TAMPERED
    assert store.state().slots == {"a": None, "b": None}
    assert not store.slot_complete("a")
    assert not store.slot_complete("b")


def test_other_signed_hashes_are_checked_by_python_tuf_when_assembling(tmp_path: Path) -> None:
    """The install checks sha256 only: a target signed with sha512 as well is read and checked
    in full right after the download, and a mismatch leaves nothing behind."""
    both = Target.from_data("models/kws/1.0/kws.onnx", DATA, ["sha256", "sha512"])
    staging = _staging(tmp_path / "staging")
    for index in range(3):
        staging.store(index, _chunk(index))
    assert assemble_download(staging, both, tmp_path / "good").read_bytes() == DATA

    sha512 = Target.from_data("models/kws/1.0/kws.onnx", b"x" * len(DATA), ["sha512"])
    # the chunks and sha256 fit, sha512 does not
    other = Target(sha512.path, sha512.length, {**sha512.hashes, "sha256": SHA})
    staging = _staging(tmp_path / "staging")
    for index in range(3):
        staging.store(index, _chunk(index))
    dest = tmp_path / "bad"
    with pytest.raises(UpdateError) as caught:
        assemble_download(staging, other, dest)
    assert caught.value.reason == Reason.TAMPERED
    assert not dest.exists()
    assert not (tmp_path / "staging" / SHA).exists()


def test_verify_file_reads_the_whole_file(tmp_path: Path) -> None:
    """The check of a downloaded file found at start-up (python-tuf's, reading the file)."""
    path = tmp_path / "kws.onnx"
    path.write_bytes(DATA)
    verify_file(Target.from_data("models/kws/1.0/kws.onnx", DATA), path)
    path.write_bytes(DATA[:-1] + bytes([DATA[-1] ^ 1]))
    with pytest.raises(UpdateError) as caught:
        verify_file(Target.from_data("models/kws/1.0/kws.onnx", DATA), path)
    assert caught.value.reason == Reason.TAMPERED


def test_store_all_returns_refused_chunks_and_keeps_the_others(tmp_path: Path) -> None:
    staging = _staging(tmp_path)
    bad = bytearray(_chunk(1))
    bad[0] ^= 1
    refused = staging.store_all([(0, _chunk(0)), (1, memoryview(bytes(bad))), (2, _chunk(2))])
    assert [(index, exc.reason) for index, exc in refused] == [(1, Reason.TAMPERED)]
    assert staging.missing() == [1]
    with pytest.raises(UpdateError) as caught:
        staging.store_all([(1, _chunk(1) + b"x")])
    assert caught.value.reason == Reason.TOO_LONG


def test_sha256_must_be_hex(tmp_path: Path) -> None:
    with pytest.raises(UpdateError) as caught:
        ChunkStaging(tmp_path, make_release(), "../../etc")
    assert caught.value.reason == Reason.MALFORMED_RELEASE


def test_sweep_keeps_named_releases_and_removes_the_rest(tmp_path: Path) -> None:
    kept = _staging(tmp_path)
    kept.store(0, _chunk(0))
    (tmp_path / SHA / f"{TEMP_PREFIX}x").write_bytes(b"stray")
    (tmp_path / f"{SHA}.complete").write_bytes(b"assembled before a restart")
    other = ChunkStaging(tmp_path, make_release(), "0" * 64)
    (other.directory).mkdir()
    (tmp_path / f"{TEMP_PREFIX}y").write_bytes(b"stray")
    (tmp_path / "kws-1.0.assembled").write_bytes(b"left over")
    removed = sweep(tmp_path, {SHA, f"{SHA}.complete"})
    assert sorted(removed) == sorted(
        [f"{SHA}/{TEMP_PREFIX}x", "0" * 64, f"{TEMP_PREFIX}y", "kws-1.0.assembled"]
    )
    assert sorted(entry.name for entry in tmp_path.iterdir()) == [SHA, f"{SHA}.complete"]
    assert _staging(tmp_path).missing() == [1, 2]
    assert sweep(tmp_path / "missing", set()) == []
