"""Crash-safe file writes for the agent: temp file, fsync, rename, fsync the directory.

Every file the update path leaves on disk (chunks, slot files, state files) goes through
here, and so do the config file and its companions that ``config-set`` writes
(``agent.control.configfile``) and the inference capture's records and export
(``agent.inference.capture``, through ``atomic_write_with``), so a ``kill -9`` or a power
cut at any instant leaves either the old file or the new one complete under the final name,
never a mix. What a crash can leave behind is a temp file named ``TEMP_PREFIX...`` in the
same directory; ``is_temp`` recognises them so that sweepers can delete them. A new file is
``0600`` (``mkstemp``) unless the writer is given a ``mode``.

OS errors are wrapped in ``StoreError`` naming the path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from agent.errors import StoreError

TEMP_PREFIX = ".tmp-"
COPY_BLOCK = 1024 * 1024


def is_temp(path: Path) -> bool:
    """True for a temp file that an interrupted atomic write left behind."""
    return path.name.startswith(TEMP_PREFIX)


def fsync_dir(path: Path) -> None:
    """Make renames and creations inside directory ``path`` durable."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise StoreError(f"cannot open directory ({exc.strerror})", path=str(path)) from exc
    try:
        os.fsync(descriptor)
    except OSError as exc:
        raise StoreError(f"cannot fsync directory ({exc.strerror})", path=str(path)) from exc
    finally:
        os.close(descriptor)


def ensure_dir(path: Path) -> None:
    """Create ``path`` (and parents) if needed, making each new entry durable."""
    if path.is_dir():
        return
    ensure_dir(path.parent)
    try:
        path.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create directory ({exc.strerror})", path=str(path)) from exc
    fsync_dir(path.parent)


def atomic_write_blocks(path: Path, blocks: Iterable[bytes], *, mode: int | None = None) -> str:
    """Write ``blocks`` to ``path`` atomically; returns the sha256 hex of what was written.

    ``mode``: as in ``atomic_write_with``.
    """
    digest = hashlib.sha256()

    def write(handle: BinaryIO) -> None:
        for block in blocks:
            digest.update(block)
            handle.write(block)

    atomic_write_with(path, write, mode=mode)
    return digest.hexdigest()


def atomic_write_with(
    path: Path, write: Callable[[BinaryIO], None], *, mode: int | None = None
) -> None:
    """Replace ``path`` with what ``write`` writes into the temp file's handle, all or nothing.

    For writers that want a file object (``np.savez``, ``tarfile``). ``write`` must not close
    the handle. An ``OSError`` it raises becomes ``StoreError``; any other exception is
    passed on unchanged. Either way the temp file is deleted and ``path`` is untouched.

    ``mode``: the permission bits the file gets (else ``mkstemp``'s ``0600``), set on the
    temp file before the rename, so that the final name never has other bits.
    """
    ensure_dir(path.parent)
    with _temp_beside(path) as (handle, temp):
        try:
            if mode is not None:
                os.fchmod(handle.fileno(), mode)
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        except OSError as exc:
            raise StoreError(f"cannot write ({exc.strerror})", path=str(temp)) from exc
        handle.close()
        rename_into_place(temp, path)
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Replace ``path`` with ``data``, all or nothing (``mode`` as in ``atomic_write_blocks``)."""
    atomic_write_blocks(path, [data], mode=mode)


def atomic_write_json(path: Path, value: Any) -> None:
    """Replace ``path`` with ``value`` as JSON (sorted keys, trailing newline)."""
    text = json.dumps(value, sort_keys=True, indent=1) + "\n"
    atomic_write_bytes(path, text.encode())


def atomic_copy(src: Path, dest: Path, *, chunk: int = COPY_BLOCK) -> str:
    """Copy ``src`` to ``dest`` atomically, streaming; returns the sha256 hex of the bytes."""
    try:
        source = src.open("rb")
    except OSError as exc:
        raise StoreError(f"cannot open for copying ({exc.strerror})", path=str(src)) from exc
    with source:
        return atomic_write_blocks(dest, _read_blocks(source, src, chunk))


def read_json(path: Path) -> Any | None:
    """The JSON value in ``path``; None if the file does not exist, ``StoreError`` if corrupt."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"cannot read ({exc.strerror})", path=str(path)) from exc
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"not valid JSON ({exc})", path=str(path)) from exc


def file_sha256(path: Path, *, chunk: int = COPY_BLOCK) -> str | None:
    """sha256 hex of the file at ``path``; None if it cannot be read."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def remove_file(path: Path) -> None:
    """Delete ``path`` if it exists (the caller fsyncs the directory when it matters)."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot delete ({exc.strerror})", path=str(path)) from exc


@contextlib.contextmanager
def _temp_beside(path: Path) -> Iterator[tuple[BinaryIO, Path]]:
    """An open temp file in ``path``'s directory; deleted again unless it was renamed."""
    try:
        descriptor, name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
    except OSError as exc:
        raise StoreError(f"cannot create temp file ({exc.strerror})", path=str(path)) from exc
    temp = Path(name)
    handle = os.fdopen(descriptor, "wb")
    try:
        yield handle, temp
    finally:
        handle.close()
        # After a successful replace the temp name is gone and this is a no-op.
        temp.unlink(missing_ok=True)


def rename_into_place(temp: Path, path: Path) -> None:
    """``os.replace`` wrapped in ``StoreError`` (the caller fsyncs the directory)."""
    try:
        os.replace(temp, path)
    except OSError as exc:
        raise StoreError(
            f"cannot rename {temp.name} into place ({exc.strerror})", path=str(path)
        ) from exc


def _read_blocks(source: Any, src: Path, chunk: int) -> Iterator[bytes]:
    while True:
        try:
            block: bytes = source.read(chunk)
        except OSError as exc:
            raise StoreError(f"cannot read ({exc.strerror})", path=str(src)) from exc
        if not block:
            return
        yield block
