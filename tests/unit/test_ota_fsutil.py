"""Atomic writes of the OTA store: all or nothing, no temp file left, errors name the path."""

from __future__ import annotations

import errno
import hashlib
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from agent.errors import StoreError
from agent.ota.fsutil import (
    TEMP_PREFIX,
    atomic_copy,
    atomic_write_blocks,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_with,
    file_sha256,
    fsync_dir,
    is_temp,
    read_json,
)


def _temps(directory: Path) -> list[str]:
    return [entry.name for entry in directory.iterdir() if is_temp(entry)]


def test_write_creates_parents_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "file.bin"
    atomic_write_bytes(path, b"first")
    atomic_write_bytes(path, b"second, longer")
    assert path.read_bytes() == b"second, longer"
    assert _temps(path.parent) == []


def test_a_new_file_is_private_unless_a_mode_is_given(tmp_path: Path) -> None:
    path = tmp_path / "file.bin"
    atomic_write_bytes(path, b"first")
    assert path.stat().st_mode & 0o777 == 0o600
    atomic_write_bytes(path, b"second", mode=0o640)
    assert path.stat().st_mode & 0o777 == 0o640
    assert path.read_bytes() == b"second"


def test_interrupted_write_keeps_the_old_file(tmp_path: Path) -> None:
    """A failure mid-write (here: the producer raises) leaves the previous content whole."""
    path = tmp_path / "state.json"
    atomic_write_bytes(path, b"old")

    def blocks() -> Iterator[bytes]:
        yield b"new half"
        raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        atomic_write_blocks(path, blocks())
    assert path.read_bytes() == b"old"
    assert _temps(tmp_path) == []


def test_write_with_hands_the_writer_a_file_object(tmp_path: Path) -> None:
    """For writers that want a file object: tarfile writes into the temp file's handle."""
    path = tmp_path / "out" / "bundle.tar"

    def write(handle: BinaryIO) -> None:
        with tarfile.open(fileobj=handle, mode="w") as bundle:
            member = tarfile.TarInfo("a.txt")
            member.size = 2
            bundle.addfile(member, io.BytesIO(b"hi"))

    atomic_write_with(path, write)
    with tarfile.open(path) as bundle:
        assert bundle.getnames() == ["a.txt"]
    assert path.stat().st_mode & 0o777 == 0o600
    assert _temps(path.parent) == []


def test_write_with_an_os_error_is_a_store_error_and_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "record.npz"
    atomic_write_bytes(path, b"old")

    def write(handle: BinaryIO) -> None:
        handle.write(b"new half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StoreError, match="cannot write \\(No space left on device\\)") as caught:
        atomic_write_with(path, write)
    assert is_temp(Path(caught.value.path))
    assert path.read_bytes() == b"old"
    assert _temps(tmp_path) == []


def test_write_with_passes_other_errors_on_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "record.npz"

    def write(handle: BinaryIO) -> None:
        raise ValueError("object arrays cannot be saved")

    with pytest.raises(ValueError, match="object arrays"):
        atomic_write_with(path, write)
    assert list(tmp_path.iterdir()) == []


def test_json_round_trip_and_missing_is_none(tmp_path: Path) -> None:
    path = tmp_path / "v.json"
    assert read_json(path) is None
    atomic_write_json(path, {"b": [1, 2], "a": None})
    assert read_json(path) == {"a": None, "b": [1, 2]}


@pytest.mark.parametrize("content", [b'{"active": "a", "pend', b"\xff\xfe", b""])
def test_corrupt_json_raises_store_error_naming_the_path(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(StoreError, match="not valid JSON") as caught:
        read_json(path)
    assert caught.value.path == str(path)


def test_copy_streams_and_returns_the_sha256(tmp_path: Path) -> None:
    source = tmp_path / "src.bin"
    data = bytes(range(256)) * 100
    source.write_bytes(data)
    dest = tmp_path / "slot" / "model.onnx"
    digest = atomic_copy(source, dest, chunk=1000)  # many blocks, last one short
    assert dest.read_bytes() == data
    assert digest == hashlib.sha256(data).hexdigest() == file_sha256(dest)
    assert _temps(dest.parent) == []


def test_copy_of_a_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open for copying") as caught:
        atomic_copy(tmp_path / "nope", tmp_path / "dest")
    assert caught.value.path == str(tmp_path / "nope")
    assert not (tmp_path / "dest").exists()


def test_fsync_dir_of_a_missing_dir_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open directory"):
        fsync_dir(tmp_path / "missing")


def test_temp_names_are_recognised(tmp_path: Path) -> None:
    assert is_temp(tmp_path / f"{TEMP_PREFIX}abc")
    assert not is_temp(tmp_path / "chunk-0")
    assert file_sha256(tmp_path / "missing") is None
