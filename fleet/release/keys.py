"""Private signing keys of the TUF repository on disk, and the durable writes they share.

Keys are Ed25519, stored as unencrypted PEM PKCS#8 at ``DIR/keys/<role>/<keyid>.pem`` with
mode 0600 in 0700 directories (owner only). Which keys a role uses is decided by the root
metadata, not by the files: a stray key file (from a rotation cut short) is simply never
loaded. Every file is written durably: temp file, fsync, rename or link, fsync of the
directory, so a power cut leaves either the old file or the complete new one. The same
primitives copy target files under their content hash (``copy_by_content``).

TUF-free: key ids and PEM bytes in, ``cryptography`` keys out. The signers made of them
(securesystemslib's ``CryptoSigner``) are ``fleet.release.repo``'s, the controller's only
module that imports ``tuf`` or ``securesystemslib``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from fleet.errors import ReleaseRepositoryError

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700
PUBLIC_FILE_MODE = 0o644
KEY_SUFFIX = ".pem"
_COPY_BLOCK = 1024 * 1024


def key_path(keys_dir: Path, role: str, keyid: str) -> Path:
    return keys_dir / role / f"{keyid}{KEY_SUFFIX}"


def store_private_key(keys_dir: Path, role: str, keyid: str, private_pem: bytes) -> Path:
    """Write the private key ``keyid`` of ``role``, owner-only; never replaces a key file."""
    for directory in (keys_dir, keys_dir / role):
        directory.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
        directory.chmod(PRIVATE_DIR_MODE)  # mkdir's mode is masked by the umask
    path = key_path(keys_dir, role, keyid)
    write_new_file(path, private_pem, mode=PRIVATE_FILE_MODE)
    return path


def read_private_key(keys_dir: Path, role: str, keyid: str) -> bytes | None:
    """The PEM bytes of ``keyid``'s private key for ``role``, or None if it is not here."""
    path = key_path(keys_dir, role, keyid)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ReleaseRepositoryError(f"cannot read key ({exc.strerror})", path=str(path)) from exc


def parse_private_key(pem: bytes, path: Path) -> Ed25519PrivateKey:
    """An unencrypted PEM Ed25519 private key (read from ``path``, named in errors)."""
    try:
        private_key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ReleaseRepositoryError(
            "key file is not an unencrypted PEM key", path=str(path)
        ) from exc
    if not isinstance(private_key, Ed25519PrivateKey):
        raise ReleaseRepositoryError("key file is not an Ed25519 key", path=str(path))
    return private_key


def remove_private_key(keys_dir: Path, role: str, keyid: str) -> None:
    """Delete a retired key (after a rotation is complete); missing is fine."""
    path = key_path(keys_dir, role, keyid)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
        fsync_dir(path.parent)


def write_new_file(path: Path, data: bytes, *, mode: int = PUBLIC_FILE_MODE) -> None:
    """Create ``path`` durably with ``data``; ``FileExistsError`` if it already exists.

    Linking the complete temp file into place is atomic and refuses to replace, so a
    versioned metadata file or a key is never overwritten, not even by a race.
    """
    temp = _durable_temp(path, data, mode)
    try:
        os.link(temp, path)
    finally:
        temp.unlink()
    fsync_dir(path.parent)


def replace_file(path: Path, data: bytes, *, mode: int = PUBLIC_FILE_MODE) -> None:
    """Write ``path`` durably with ``data``, atomically replacing any previous content."""
    temp = _durable_temp(path, data, mode)
    try:
        temp.replace(path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def copy_by_content(
    source: Path, directory: Path, name_for: Callable[[str], str]
) -> tuple[int, str]:
    """Copy ``source`` durably into ``directory`` as ``name_for(sha256)``; (length, sha256).

    The bytes are hashed as they are copied, so the name always matches the content, even
    if the source changes meanwhile. Same name means same content: replacing is harmless.
    """
    descriptor, name = tempfile.mkstemp(prefix=".copy.", suffix=".tmp", dir=directory)
    temp = Path(name)
    digest = hashlib.sha256()
    length = 0
    try:
        with os.fdopen(descriptor, "wb") as writer, source.open("rb") as reader:
            os.fchmod(writer.fileno(), PUBLIC_FILE_MODE)
            while block := reader.read(_COPY_BLOCK):
                digest.update(block)
                writer.write(block)
                length += len(block)
            writer.flush()
            os.fsync(writer.fileno())
        temp.replace(directory / name_for(digest.hexdigest()))
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(directory)
    return length, digest.hexdigest()


def fsync_dir(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _durable_temp(path: Path, data: bytes, mode: int) -> Path:
    """A fsynced temp file beside ``path`` holding ``data``, with permissions ``mode``."""
    descriptor, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    temp = Path(name)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp
