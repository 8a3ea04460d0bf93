"""Resumable download staging: verified chunks of one release, kept on disk until assembled.

``root/<sha256>/chunk-<index>`` holds chunk ``index`` of the file whose signed sha256 is
``<sha256>``. A chunk is written (atomically, fsynced) only after its bytes matched the
per-chunk hash of the signed release, so the directory never holds an unverified byte under
a chunk name: a download cut at 90% resumes at 90%, and a bad chunk is refused alone.
Opening a staging re-verifies what is there and deletes anything else (temp files of an
interrupted write, chunks that no longer match), because the disk may have been tampered
with or damaged between runs. Nothing beyond the signed length is ever stored.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import structlog

from agent.errors import StoreError, UpdateError
from agent.ota.fsutil import (
    atomic_write_blocks,
    atomic_write_bytes,
    fsync_dir,
    is_temp,
    remove_file,
)
from agent.ota.reasons import Reason
from agent.ota.release import ModelRelease

log = structlog.get_logger("agent.ota.staging")

CHUNK_PREFIX = "chunk-"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK_NAME = re.compile(r"chunk-(0|[1-9][0-9]*)")


class ChunkStaging:
    """The verified chunks of one release's file under ``root/<sha256>/``."""

    def __init__(self, root: Path, release: ModelRelease, sha256: str) -> None:
        if not _SHA256.fullmatch(sha256):
            raise UpdateError(Reason.MALFORMED_RELEASE, f"sha256 {sha256!r} is not lowercase hex")
        self.release = release
        self.sha256 = sha256
        self.directory = root / sha256
        self._stored: set[int] = set()
        self._scan()

    def missing(self) -> list[int]:
        """Indices of the chunks not stored yet, in order."""
        return [index for index in range(len(self.release.chunks)) if index not in self._stored]

    def progress(self) -> float:
        """Fraction of the file's bytes stored, 0.0 to 1.0."""
        stored = sum(self.release.chunk_range(index)[1] for index in self._stored)
        return stored / self.release.length

    def store(self, index: int, data: bytes) -> None:
        """Keep chunk ``index`` if ``data`` is exactly the signed chunk; refuse it otherwise."""
        _, length = self._range(index)
        if len(data) > length:
            raise UpdateError(
                Reason.TOO_LONG,
                f"chunk {index} of {self.release.target_path} is {len(data)} bytes, "
                f"signed length {length}",
                chunk=index,
            )
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.release.chunks[index]:
            raise UpdateError(
                Reason.TAMPERED,
                f"chunk {index} of {self.release.target_path} ({len(data)} bytes) has sha256 "
                f"{digest}, signed {self.release.chunks[index]}",
                chunk=index,
            )
        atomic_write_bytes(self._chunk_path(index), data)
        self._stored.add(index)

    def assemble(self, dest: Path) -> Path:
        """Concatenate every chunk into ``dest`` atomically, checking length and sha256."""
        missing = self.missing()
        if missing:
            raise StoreError(f"staging incomplete, chunks {missing} missing", path=str(dest))
        digest = atomic_write_blocks(dest, self._verified_chunks())
        total = dest.stat().st_size
        if total != self.release.length or digest != self.sha256:
            remove_file(dest)
            fsync_dir(dest.parent)
            reason = Reason.TOO_LONG if total > self.release.length else Reason.TAMPERED
            raise UpdateError(
                reason,
                f"{self.release.target_path} assembled to {total} bytes with sha256 {digest}, "
                f"signed {self.release.length} bytes with sha256 {self.sha256}",
            )
        return dest

    def discard(self) -> None:
        """Delete this staging directory and everything in it."""
        shutil.rmtree(self.directory, ignore_errors=True)
        if self.directory.parent.is_dir():
            fsync_dir(self.directory.parent)
        self._stored.clear()

    def _verified_chunks(self) -> Iterator[bytes]:
        """Each chunk's bytes, re-checked as read (the disk may have changed since store)."""
        for index in range(len(self.release.chunks)):
            data = self._read_chunk(index)
            if data is None:
                self._stored.discard(index)
                remove_file(self._chunk_path(index))
                raise UpdateError(
                    Reason.TAMPERED,
                    f"staged chunk {index} of {self.release.target_path} changed on disk",
                    chunk=index,
                )
            yield data

    def _scan(self) -> None:
        """Keep the chunks that still verify; delete everything else in the directory."""
        if not self.directory.is_dir():
            return
        removed = []
        for entry in sorted(self.directory.iterdir()):
            index = self._chunk_index(entry)
            if index is not None and self._read_chunk(index) is not None:
                self._stored.add(index)
                continue
            removed.append(entry.name)
            _remove_entry(entry)
        if removed:
            fsync_dir(self.directory)
            log.warning("ota.staging_cleaned", dir=str(self.directory), removed=removed)

    def _chunk_index(self, entry: Path) -> int | None:
        match = _CHUNK_NAME.fullmatch(entry.name)
        if match is None or not entry.is_file() or entry.is_symlink():
            return None
        index = int(match.group(1))
        return index if index < len(self.release.chunks) else None

    def _read_chunk(self, index: int) -> bytes | None:
        """The stored bytes of chunk ``index`` if they match the signed hash, else None."""
        _, length = self.release.chunk_range(index)
        try:
            with self._chunk_path(index).open("rb") as handle:
                data = handle.read(length + 1)  # one byte more reveals an overlong file
        except OSError:
            return None
        if hashlib.sha256(data).hexdigest() != self.release.chunks[index]:
            return None
        return data

    def _range(self, index: int) -> tuple[int, int]:
        try:
            return self.release.chunk_range(index)
        except IndexError as exc:
            raise UpdateError(
                Reason.TOO_LONG,
                f"chunk {index} is beyond the {len(self.release.chunks)} signed chunks of "
                f"{self.release.target_path}",
                chunk=index,
            ) from exc

    def _chunk_path(self, index: int) -> Path:
        return self.directory / f"{CHUNK_PREFIX}{index}"


def sweep(root: Path, keep: set[str]) -> list[str]:
    """Delete staging dirs not named in ``keep`` and stray files; returns what was removed."""
    if not root.is_dir():
        return []
    removed = []
    for entry in sorted(root.iterdir()):
        if entry.name in keep and entry.is_dir() and not entry.is_symlink():
            removed.extend(_sweep_temps(entry))
            continue
        removed.append(entry.name)
        _remove_entry(entry)
    if removed:
        fsync_dir(root)
        log.info("ota.staging_swept", root=str(root), removed=removed)
    return removed


def _sweep_temps(directory: Path) -> list[str]:
    """Remove temp files of interrupted chunk writes inside a kept staging dir."""
    temps = [entry for entry in sorted(directory.iterdir()) if is_temp(entry)]
    for entry in temps:
        _remove_entry(entry)
    if temps:
        fsync_dir(directory)
    return [f"{directory.name}/{entry.name}" for entry in temps]


def _remove_entry(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        remove_file(entry)
