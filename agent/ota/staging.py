"""Resumable download staging: the verified chunks of one release, kept until assembled.

``root/<sha256>/part`` is the file being downloaded (signed sha256 ``<sha256>``): each chunk
is written at its offset only after its bytes matched the per-chunk hash of the signed
release, so no unverified byte is ever stored and nothing beyond a chunk's signed length.
``part`` is fdatasynced at most every ``SYNC_INTERVAL_S`` while chunks come in, which bounds
the progress a power cut can lose; it is not synced when it is assembled, because the slot
install copies the verified file and syncs that copy (an fsync per 256 KiB chunk, or a sync
of the whole file before the copy, cost the transfer much of its rate: bench/bench_ota.py,
docs/benchmarks.md, "OTA: model transfer goodput and verification time").

Opening a staging hashes every chunk range of ``part`` and keeps the chunks whose bytes match
their signed hash, whether or not they were synced: a killed agent resumes exactly where it
stopped (a download cut at 90 % resumes at 90 %), a power cut from what reached the disk, and
damaged or tampered bytes are fetched again. Other files in the directory are deleted.
``assemble`` renames ``part`` into place (no copy) once every chunk is in, after checking
its size against the signed length.

The whole file's sha256 is not computed here. A complete ``part`` is already the signed file:
every chunk range matched its hash from the same signed targets metadata that signs the
whole-file hash, the chunk size and the length, and ``assemble`` checks the length. TUF's own
whole-file check runs once, when the slot install copies the file (``SlotStore.install``
hashes what it copies and refuses a mismatch), before anything loads it. A second whole-file
hash during the download would add CPU to every MiB of a CPU-bound transfer, and more on a
board without SHA instructions (bench/bench_ota.py; docs/benchmarks.md, "OTA: model transfer
goodput and verification time").
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import structlog

from agent.errors import StoreError
from agent.ota.fsutil import fsync_dir, is_temp, remove_file
from edge_contract.errors import UpdateError
from edge_contract.reasons import Reason
from edge_contract.release import ModelRelease

log = structlog.get_logger("agent.ota.staging")

PART = "part"
SYNC_INTERVAL_S = 1.0
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ChunkStaging:
    """The verified chunks of one release's file under ``root/<sha256>/``."""

    def __init__(self, root: Path, release: ModelRelease, sha256: str) -> None:
        if not _SHA256.fullmatch(sha256):
            raise UpdateError(Reason.MALFORMED_RELEASE, f"sha256 {sha256!r} is not lowercase hex")
        self.release = release
        self.sha256 = sha256
        self.directory = root / sha256
        self._stored: set[int] = set()
        self._unsynced_bytes = 0
        self._synced_at = time.monotonic()
        self._fd: int | None = None
        self._scan()

    def missing(self) -> list[int]:
        """Indices of the chunks not stored yet, in order."""
        return [index for index in range(len(self.release.chunks)) if index not in self._stored]

    def progress(self) -> float:
        """Fraction of the file's bytes stored, 0.0 to 1.0."""
        stored = sum(self.release.chunk_range(index)[1] for index in self._stored)
        return stored / self.release.length

    def store_all(
        self, pieces: Sequence[tuple[int, bytes | memoryview]]
    ) -> list[tuple[int, UpdateError]]:
        """``store`` each (index, data); the chunks refused for their hash are returned.

        One call per reply instead of one per chunk: each call is a trip to a worker thread.
        ``too_long`` still raises: it ends the download rather than one chunk.
        """
        refused: list[tuple[int, UpdateError]] = []
        for index, data in pieces:
            try:
                self.store(index, data)
            except UpdateError as exc:
                if exc.reason == Reason.TOO_LONG:
                    raise
                refused.append((index, exc))
        return refused

    def store(self, index: int, data: bytes | memoryview) -> None:
        """Keep chunk ``index`` if ``data`` is exactly the signed chunk; refuse it otherwise."""
        offset, length = self._range(index)
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
        try:
            os.pwrite(self._part_fd(), data, offset)
        except OSError as exc:
            raise StoreError(f"cannot write a staged chunk ({exc})", path=str(self._part)) from exc
        self._stored.add(index)
        self._unsynced_bytes += len(data)
        if time.monotonic() - self._synced_at >= SYNC_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        """Make every stored chunk durable (fdatasync of ``part``)."""
        if self._fd is None or not self._unsynced_bytes:
            return
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            raise StoreError(f"cannot sync staged chunks ({exc})", path=str(self._part)) from exc
        self._unsynced_bytes = 0
        self._synced_at = time.monotonic()

    def assemble(self, dest: Path) -> Path:
        """Move the complete file to ``dest`` (a rename).

        Neither the file's bytes nor the directories are synced here, because everything in
        staging is checked again after a restart. A power cut that loses the rename leaves
        ``part``, whose chunks are checked one by one and kept; one that loses bytes leaves
        a file that fails its hash check and is fetched again. The slot install syncs its own
        copy. (The two directory syncs were a small but measurable part of a fast download
        in the OTA benchmark, and an SD card takes far longer: docs/benchmarks.md, "OTA: model
        transfer goodput and verification time".)
        """
        missing = self.missing()
        if missing:
            raise StoreError(f"staging incomplete, chunks {missing} missing", path=str(dest))
        self._close()
        total = self._part.stat().st_size
        if total != self.release.length:
            reason = Reason.TOO_LONG if total > self.release.length else Reason.TAMPERED
            raise UpdateError(
                reason,
                f"{self.release.target_path} staged as {total} bytes, signed {self.release.length}",
            )
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._part, dest)
        except OSError as exc:
            raise StoreError(f"cannot move the staged file ({exc})", path=str(dest)) from exc
        self._stored.clear()
        return dest

    def discard(self) -> None:
        """Delete this staging directory and everything in it.

        Not synced: a directory that a power cut brings back is checked chunk by chunk, or
        swept, like any other staging left behind.
        """
        self._close()
        shutil.rmtree(self.directory, ignore_errors=True)
        self._stored.clear()

    @property
    def _part(self) -> Path:
        return self.directory / PART

    def _part_fd(self) -> int:
        if self._fd is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            try:
                self._fd = os.open(self._part, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                raise StoreError(
                    f"cannot open the staging file ({exc})", path=str(self._part)
                ) from exc
        return self._fd

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _scan(self) -> None:
        """Keep the chunks of ``part`` that match their signed hash; delete every other file."""
        if not self.directory.is_dir():
            return
        removed = [
            entry.name
            for entry in sorted(self.directory.iterdir())
            if entry.name != PART or entry.is_symlink() or not entry.is_file()
        ]
        for name in removed:
            _remove_entry(self.directory / name)
        if removed:
            fsync_dir(self.directory)
            log.warning("ota.staging_cleaned", dir=str(self.directory), removed=removed)
        self._stored = self._verified_chunks()

    def _verified_chunks(self) -> set[int]:
        """Indices of the chunks in ``part`` whose bytes match their signed hash (one read)."""
        good: set[int] = set()
        try:
            with self._part.open("rb") as handle:
                for index, signed in enumerate(self.release.chunks):
                    data = handle.read(self.release.chunk_range(index)[1])
                    if hashlib.sha256(data).hexdigest() == signed:
                        good.add(index)
        except OSError:
            pass  # a part file that cannot be read keeps what verified before the error
        return good

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


def sweep(root: Path, keep: set[str]) -> list[str]:
    """Delete staging dirs and files not named in ``keep``; returns what was removed."""
    if not root.is_dir():
        return []
    removed = []
    for entry in sorted(root.iterdir()):
        if entry.name in keep and not entry.is_symlink():
            if entry.is_dir():
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
