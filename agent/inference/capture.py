"""Low-confidence capture: a byte-capped ring buffer of model inputs on disk, for retraining.

The monitor hands over each input row whose top-1 confidence is under the configured
threshold (``CaptureBuffer.add``). ``add`` never blocks and never touches the disk: it puts
the record on a bounded queue served by one writer thread, and a full queue drops the record
and counts it. The writer stores each record as one ``.npz`` file (the input arrays plus a
JSON metadata member) named by a sequence number, written atomically by the agent's one
crash-safe writer (``agent.ota.fsutil.atomic_write_with``: temp file beside it, fsync,
rename, fsync of the directory). After each write the oldest records are deleted until the
directory holds at most ``max_bytes`` (counted as evictions).

Records and exported bundles are ``0600`` (fsutil's ``mkstemp`` default): they hold raw
model inputs, which can be private data (camera frames, audio), and only the agent itself
reads them back (``load``, ``export``, the ``capture`` command's upload).

The buffer survives a restart: files already in the directory are indexed at start in
sequence order, and temp files a crash left behind are removed: fsutil's (``fsutil.is_temp``)
and the ``NNNNNNNNNNNN.npz.tmp`` names that agents before it wrote, which a board upgraded
after a crash may still hold. A corrupt record is skipped with a log line wherever records
are read; it still counts against the cap until evicted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import queue
import re
import tarfile
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypedDict

import numpy as np
import numpy.typing as npt
import structlog

from agent.ota import fsutil

log = structlog.get_logger("agent.inference.capture")

_RECORD_NAME = re.compile(r"^(\d{12})\.npz$")
# Temp names of the capture writer before it used fsutil: still swept at start.
_LEGACY_TEMP_NAME = re.compile(r"^\d{12}\.npz\.tmp$")
_META_KEY = "__capture__"
_STOP = object()


@dataclass(frozen=True)
class CaptureRecord:
    """One low-confidence prediction: the input row that caused it and what the model said."""

    model: str
    version: str
    prediction_id: str
    inputs: Mapping[str, npt.NDArray[Any]]  # input name -> that input's row (no batch axis)
    label: str  # predicted label (or class index as text) of the top-1 class
    confidence: float  # top-1 confidence
    ts: float  # Unix time of the prediction


@dataclass(frozen=True)
class CaptureInfo:
    """A stored record as listed by ``CaptureBuffer.records`` (the inputs stay on disk)."""

    path: Path
    sequence: int
    size: int
    model: str
    version: str
    prediction_id: str
    label: str  # the predicted label
    confidence: float
    ts: float
    input_names: tuple[str, ...]


@dataclass(frozen=True)
class CaptureStats:
    """Counters for telemetry and ``/metrics``; read without touching the disk."""

    count: int
    bytes: int
    max_bytes: int
    dropped_queue_full: int
    evicted: int
    write_errors: int

    def as_dict(self) -> dict[str, int]:
        """JSON-ready, for telemetry and command replies."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class _Stored:
    sequence: int
    path: Path
    size: int


class CaptureBuffer:
    """The on-disk ring buffer; see the module docstring for its guarantees.

    ``autostart=False`` leaves the writer stopped until ``start()``: records queue up (and
    overflow the queue) but nothing is written, for an owner that starts serving later.
    """

    def __init__(
        self, directory: Path, *, max_bytes: int, max_queue: int = 256, autostart: bool = True
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        if max_queue <= 0:
            raise ValueError(f"max_queue must be positive, got {max_queue}")
        self.directory = directory
        self.max_bytes = max_bytes
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queue)
        self._lock = threading.Lock()  # guards the index and counters, never held for IO
        self._drained = threading.Condition(self._lock)
        self._pending = 0
        self._index: deque[_Stored] = deque()
        self._bytes = 0
        self._dropped_queue_full = 0
        self._evicted = 0
        self._write_errors = 0
        self._closed = False
        directory.mkdir(parents=True, exist_ok=True)
        self._next_sequence = self._scan() + 1
        self._writer = threading.Thread(target=self._run, name="capture-writer", daemon=True)
        if autostart:
            self.start()

    def start(self) -> None:
        """Start the writer thread (done by the constructor unless ``autostart=False``)."""
        if not self._writer.is_alive() and not self._closed:
            self._writer.start()

    def add(self, record: CaptureRecord) -> bool:
        """Queue ``record`` for writing; False (and counted) if the queue is full or closed."""
        with self._lock:
            if self._closed:
                return False
            try:
                self._queue.put_nowait(record)
            except queue.Full:
                self._dropped_queue_full += 1
                return False
            self._pending += 1
            return True

    def stats(self) -> CaptureStats:
        """Counters, from memory (cheap enough for the event loop)."""
        with self._lock:
            return CaptureStats(
                count=len(self._index),
                bytes=self._bytes,
                max_bytes=self.max_bytes,
                dropped_queue_full=self._dropped_queue_full,
                evicted=self._evicted,
                write_errors=self._write_errors,
            )

    def flush(self, timeout: float) -> bool:
        """Wait until every queued record is written (or failed); False on timeout."""
        with self._drained:
            return self._drained.wait_for(lambda: self._pending == 0, timeout=timeout)

    def records(self) -> list[CaptureInfo]:
        """The stored records, oldest first; unreadable ones are logged and left out."""
        with self._lock:
            stored = list(self._index)
        infos = (_read_info(item) for item in stored)
        return [info for info in infos if info is not None]

    def load(self, info: CaptureInfo) -> dict[str, npt.NDArray[Any]]:
        """The input arrays of a listed record (``FileNotFoundError`` once it is evicted)."""
        with info.path.open("rb") as handle, np.load(handle, allow_pickle=False) as archive:
            return {name: archive[f"input_{i}"] for i, name in enumerate(info.input_names)}

    def remove(self, info: CaptureInfo) -> bool:
        """Delete one listed record (after its upload); False if it is already gone."""
        with self._lock:
            stored = next((item for item in self._index if item.sequence == info.sequence), None)
            if stored is None:
                return False
            self._index.remove(stored)
            self._bytes -= stored.size
        stored.path.unlink(missing_ok=True)
        return True

    def clear(self) -> int:
        """Delete every stored record; the number deleted."""
        with self._lock:
            removed = list(self._index)
            self._index.clear()
            self._bytes = 0
        for item in removed:
            item.path.unlink(missing_ok=True)
        return len(removed)

    def export(self, dest: Path) -> Path:
        """Bundle every readable record into one tar (with a ``manifest.json``) for upload.

        ``dest`` is the tar file to write, or an existing directory to write
        ``capture-<first>-<last>.tar`` into. Written atomically; the records stay in place.
        """
        infos = self.records()
        if dest.is_dir():
            first = infos[0].sequence if infos else 0
            last = infos[-1].sequence if infos else 0
            dest = dest / f"capture-{first:012d}-{last:012d}.tar"
        fsutil.atomic_write_with(dest, lambda handle: _write_bundle(handle, infos))
        return dest

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the writer thread (waiting at most ``timeout``)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if not self._writer.is_alive():
            return
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            log.warning("capture_close_timeout", queued=self._queue.qsize(), timeout_s=timeout)
            return
        self._writer.join(timeout)

    # -- writer thread --------------------------------------------------------------------

    def _run(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            assert isinstance(item, CaptureRecord)
            try:
                self._store(item)
            except Exception:  # the writer must outlive any one bad record or full disk
                log.exception("capture_write_failed", model=item.model, id=item.prediction_id)
                with self._lock:
                    self._write_errors += 1
            finally:
                with self._drained:
                    self._pending -= 1
                    self._drained.notify_all()

    def _store(self, record: CaptureRecord) -> None:
        sequence = self._next_sequence
        self._next_sequence += 1
        path = self.directory / f"{sequence:012d}.npz"
        members = _archive_members(record)
        # Raises StoreError (disk full, ...) or numpy's error (e.g. an object array); either
        # way no temp file is left, and _run counts it.
        fsutil.atomic_write_with(
            path, lambda handle: np.savez(handle, allow_pickle=False, **members)
        )
        self._admit(_Stored(sequence, path, path.stat().st_size))

    def _admit(self, stored: _Stored) -> None:
        evicted: list[_Stored] = []
        with self._lock:
            self._index.append(stored)
            self._bytes += stored.size
            while self._bytes > self.max_bytes and self._index:
                oldest = self._index.popleft()
                self._bytes -= oldest.size
                evicted.append(oldest)
            self._evicted += len(evicted)
        for item in evicted:
            item.path.unlink(missing_ok=True)

    # -- start-up -------------------------------------------------------------------------

    def _scan(self) -> int:
        """Index existing records, remove crash leftovers; the highest sequence seen."""
        highest = 0
        found: list[_Stored] = []
        for entry in self.directory.iterdir():
            if fsutil.is_temp(entry) or _LEGACY_TEMP_NAME.match(entry.name):
                log.info("capture_temp_removed", path=str(entry))
                entry.unlink(missing_ok=True)
            elif match := _RECORD_NAME.match(entry.name):
                sequence = int(match.group(1))
                highest = max(highest, sequence)
                found.append(_Stored(sequence, entry, entry.stat().st_size))
        found.sort(key=lambda item: item.sequence)
        self._index.extend(found)
        self._bytes = sum(item.size for item in found)
        return highest


def _archive_members(record: CaptureRecord) -> dict[str, npt.NDArray[Any]]:
    meta = {
        "model": record.model,
        "version": record.version,
        "prediction_id": record.prediction_id,
        "label": record.label,
        "confidence": float(record.confidence),
        "ts": float(record.ts),
        "inputs": list(record.inputs),
    }
    # Inputs are stored under positional keys: model input names may hold characters that
    # are not safe as zip member names (":" and "/" in TF signatures).
    members: dict[str, npt.NDArray[Any]] = {
        f"input_{i}": np.asarray(array) for i, array in enumerate(record.inputs.values())
    }
    members[_META_KEY] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    return members


def _read_info(stored: _Stored) -> CaptureInfo | None:
    try:
        # Our own handle: np.load leaks the file it opened when the zip is corrupt.
        with stored.path.open("rb") as handle, np.load(handle, allow_pickle=False) as archive:
            meta = json.loads(archive[_META_KEY].tobytes())
        return CaptureInfo(
            path=stored.path,
            sequence=stored.sequence,
            size=stored.size,
            model=str(meta["model"]),
            version=str(meta["version"]),
            prediction_id=str(meta["prediction_id"]),
            label=str(meta["label"]),
            confidence=float(meta["confidence"]),
            ts=float(meta["ts"]),
            input_names=tuple(str(name) for name in meta["inputs"]),
        )
    except FileNotFoundError:
        return None  # evicted or cleared since it was listed: not an error
    except Exception as exc:  # a corrupt file must not hide the others
        log.warning("capture_record_unreadable", path=str(stored.path), error=repr(exc))
        return None


class ManifestEntry(TypedDict):
    """One record in a capture bundle's manifest."""

    file: str
    model: str
    version: str
    prediction_id: str
    label: str
    confidence: float
    ts: float
    inputs: list[str]


def _manifest_entry(info: CaptureInfo) -> ManifestEntry:
    return {
        "file": info.path.name,
        "model": info.model,
        "version": info.version,
        "prediction_id": info.prediction_id,
        "label": info.label,
        "confidence": info.confidence,
        "ts": info.ts,
        "inputs": list(info.input_names),
    }


def _write_bundle(handle: BinaryIO, infos: list[CaptureInfo]) -> None:
    """The export's tar, written into ``handle`` (fsutil's temp file; it stays open)."""
    manifest = [_manifest_entry(info) for info in infos]
    with tarfile.open(fileobj=handle, mode="w") as bundle:
        for info in infos:
            with contextlib.suppress(FileNotFoundError):  # evicted since it was listed
                bundle.add(info.path, arcname=info.path.name)
        _add_bytes(bundle, "manifest.json", json.dumps(manifest, indent=1).encode())


def _add_bytes(bundle: tarfile.TarFile, name: str, data: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.size = len(data)
    member.mtime = int(time.time())
    bundle.addfile(member, io.BytesIO(data))
