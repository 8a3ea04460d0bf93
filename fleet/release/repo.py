"""The TUF repository of model releases on the controller's host: metadata, targets, keys.

Layout of a repository directory ``DIR`` (consistent snapshots, as ngclient fetches them)::

    DIR/metadata/<v>.root.json            every root version; root.json = copy of the latest
    DIR/metadata/<v>.targets.json         versioned, never overwritten
    DIR/metadata/<v>.snapshot.json        versioned, never overwritten
    DIR/metadata/timestamp.json           unversioned, re-signed often by the online key
    DIR/targets/<dir>/<sha256>.<name>     hash-prefixed target files
    DIR/keys/<role>/<keyid>.pem           Ed25519 private keys (see fleet.release.keys)

``Repository`` is the only writer. Each change writes the new files first (durably) and
only then updates its in-memory view, timestamp last, so a client reading the directory
at any moment sees a complete, consistently signed repository. Roles: root (offline,
N keys with a threshold), targets (the release key), snapshot and timestamp (online keys,
used by ``fleet serve``; the timestamp key also signs the desired-state messages).

The controller's one door to TUF: no other ``fleet`` module imports ``tuf`` or
``securesystemslib`` (ruff's banned-api enforces it). Targets come out as the TUF-free
``edge_contract.release.Target``; ``fleet.release.keys`` stores the private keys as PEM bytes and
the signers are made here.
"""

from __future__ import annotations

import fcntl
import hashlib
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import structlog
from securesystemslib.formats import encode_canonical
from securesystemslib.signer import CryptoSigner, Key, Signer, SSlibKey
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization import DeserializationError

from edge_contract import desired
from edge_contract.release import Target
from fleet.errors import ReleaseInputError, ReleaseRepositoryError
from fleet.release import keys

log = structlog.get_logger("fleet.release.repo")

TOP_LEVEL_ROLES = (Root.type, Targets.type, Snapshot.type, Timestamp.type)
ONLINE_ROLES = (Snapshot.type, Timestamp.type)
_VERSIONED = re.compile(r"(\d+)\.(root|targets|snapshot)\.json")
_SignedT = TypeVar("_SignedT", Root, Targets, Snapshot, Timestamp)


@dataclass(frozen=True)
class NewTarget:
    """A file to add as a target: its path in the repository and its custom fields."""

    path: str
    data_file: Path
    custom: Mapping[str, Any]
    expected_sha256: str | None = None


@contextmanager
def repository_lock(directory: Path) -> Iterator[None]:
    """Exclusive lock (``flock`` on ``DIR/.lock``) for a change, across processes.

    Hold it around ``Repository.open`` and the change: the CLI and ``fleet serve`` (which
    re-signs the timestamp) must not interleave their writes.
    """
    _require_repository(directory)
    with (directory / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True)
class ExpiryPolicy:
    """How long each role's metadata stays valid after it is signed."""

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=90)
    snapshot: timedelta = timedelta(days=30)
    timestamp: timedelta = timedelta(days=1)

    def expires(self, role: str) -> datetime:
        lifetime: timedelta = getattr(self, role)
        return _utc_now() + lifetime


class Repository:
    """A TUF repository directory with its signing keys; see the module docstring."""

    def __init__(
        self,
        directory: Path,
        *,
        root: Metadata[Root],
        targets: Metadata[Targets],
        snapshot: Metadata[Snapshot],
        timestamp: Metadata[Timestamp],
        signers: dict[str, list[CryptoSigner]],
        expiry: ExpiryPolicy,
    ) -> None:
        self.directory = directory
        self.expiry = expiry
        self._root = root
        self._targets = targets
        self._snapshot = snapshot
        self._timestamp = timestamp
        self._signers = signers

    # Creating and opening.

    @classmethod
    def init(
        cls,
        directory: Path,
        *,
        root_keys: int = 1,
        root_threshold: int = 1,
        expiry: ExpiryPolicy | None = None,
    ) -> Repository:
        """Create keys and version 1 of every role's metadata in ``directory``."""
        policy = expiry or ExpiryPolicy()
        _check_root_keys(root_keys, root_threshold)
        directory = directory.absolute()
        _refuse_existing(directory)
        for sub in ("metadata", "targets"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        signers = {
            role: [_generate_signer() for _ in range(root_keys if role == Root.type else 1)]
            for role in TOP_LEVEL_ROLES
        }
        for role, role_signers in signers.items():
            for signer in role_signers:
                _store_signer(directory / "keys", role, signer)
        root = Metadata(Root(expires=policy.expires(Root.type), consistent_snapshot=True))
        for role, role_signers in signers.items():
            for signer in role_signers:
                root.signed.add_key(signer.public_key, role)
        root.signed.roles[Root.type].threshold = root_threshold
        repo = cls(
            directory,
            root=root,
            targets=Metadata(Targets(expires=policy.expires(Targets.type))),
            snapshot=Metadata(Snapshot(expires=policy.expires(Snapshot.type))),
            timestamp=Metadata(Timestamp(expires=policy.expires(Timestamp.type))),
            signers=signers,
            expiry=policy,
        )
        _sign(root, signers[Root.type])
        repo._write_root(root)
        repo._publish_targets(repo._targets, first=True)
        log.info("repository created", path=str(directory), root_keys=root_keys)
        return repo

    @classmethod
    def open(cls, directory: Path, *, expiry: ExpiryPolicy | None = None) -> Repository:
        """Load the latest metadata and the private keys present; checks every signature."""
        directory = directory.absolute()
        _require_repository(directory)
        root, targets, snapshot, timestamp = _load_latest(directory / "metadata")
        repo = cls(
            directory,
            root=root,
            targets=targets,
            snapshot=snapshot,
            timestamp=timestamp,
            signers=_load_signers(directory / "keys", root.signed),
            expiry=expiry or ExpiryPolicy(),
        )
        repo._verify_all()
        return repo

    # Reading.

    @property
    def metadata_dir(self) -> Path:
        return self.directory / "metadata"

    @property
    def targets_dir(self) -> Path:
        return self.directory / "targets"

    @property
    def keys_dir(self) -> Path:
        return self.directory / "keys"

    @property
    def root_version(self) -> int:
        return self._root.signed.version

    @property
    def timestamp_version(self) -> int:
        return self._timestamp.signed.version

    @property
    def root(self) -> Root:
        return self._root.signed

    def root_path(self, version: int = 1) -> Path:
        """The file of root ``version``: what a device is provisioned with (any version)."""
        return self.metadata_dir / f"{version}.root.json"

    def keyids(self, role: str) -> list[str]:
        return list(self._root.signed.roles[_check_role(role)].keyids)

    def targets(self) -> dict[str, Target]:
        return {path: _target(info) for path, info in self._targets.signed.targets.items()}

    def target_file_path(self, target: Target) -> Path:
        """Where the bytes of ``target`` lie in DIR/targets (hash-prefixed name)."""
        return _stored_target_path(self.targets_dir, target.path, target.hashes["sha256"])

    def online_signer(self, role: str = Timestamp.type) -> CryptoSigner:
        """The signer of an online role (snapshot or timestamp) for the controller."""
        if role not in ONLINE_ROLES:
            raise ReleaseInputError("not an online role (snapshot or timestamp)", value=role)
        return self._signers_for(role)[0]

    # Changing.

    def add_target(
        self,
        path_in_repo: str,
        data_file: Path,
        custom: dict[str, Any],
        *,
        expected_sha256: str | None = None,
    ) -> Target:
        """Store ``data_file`` as target ``path_in_repo``; signs targets, snapshot, timestamp.

        ``expected_sha256``: refuse (before signing anything) if the bytes copied differ, e.g.
        because the file changed after the caller hashed its chunks.
        """
        return self.add_targets([NewTarget(path_in_repo, data_file, custom, expected_sha256)])[0]

    def add_targets(self, new: list[NewTarget]) -> list[Target]:
        """Store several files as targets in ONE new targets version (a release's variants
        appear together or not at all); the checks of ``add_target`` for each."""
        for entry in new:
            _check_target_path(entry.path)
        self._reload()
        files: list[TargetFile] = []
        for entry in new:
            length, digest = self._store_target_bytes(entry.path, entry.data_file)
            if entry.expected_sha256 is not None and digest != entry.expected_sha256:
                _stored_target_path(self.targets_dir, entry.path, digest).unlink(missing_ok=True)
                raise ReleaseInputError(
                    f"file changed while publishing (sha256 {digest}, "
                    f"expected {entry.expected_sha256})",
                    value=str(entry.data_file),
                )
            custom = {"custom": dict(entry.custom)}
            files.append(
                TargetFile(length, {"sha256": digest}, entry.path, unrecognized_fields=custom)
            )
        targets = _copy(self._targets)
        for target in files:
            targets.signed.targets[target.path] = target
        self._publish_targets(targets)
        for target in files:
            log.info("target added", target=target.path, length=target.length)
        return [_target(target) for target in files]

    def refresh_timestamp(self, expiry: timedelta | None = None) -> int:
        """Sign a new timestamp version for the same snapshot; returns its version."""
        lifetime = expiry if expiry is not None else self.expiry.timestamp
        self._reload()
        self._write_timestamp(self._next_timestamp(lifetime))
        return self._timestamp.signed.version

    def rotate(self, role: str) -> int:
        """Replace ``role``'s keys by new ones in a new root version; returns that version.

        The new root is signed by the old root keys (threshold) and the new ones (threshold),
        so devices that trust the old root accept it (TUF spec 6.1). Metadata the old key
        signed is re-signed with the new one; the retired private keys are deleted last.
        """
        _check_role(role)
        self._reload()
        old_root = self._root
        old_keyids = list(old_root.signed.roles[role].keyids)
        new_signers = [_generate_signer() for _ in old_keyids]
        for signer in new_signers:
            _store_signer(self.keys_dir, role, signer)
        root = _copy(old_root)
        root.signed.version += 1
        root.signed.expires = self.expiry.expires(Root.type)
        for keyid in old_keyids:
            root.signed.revoke_key(keyid, role)
        for signer in new_signers:
            root.signed.add_key(signer.public_key, role)
        old_root_signers = self._signers_for(Root.type)
        signers = dict(self._signers, **{role: new_signers})
        root_signers = old_root_signers + (new_signers if role == Root.type else [])
        _sign(root, root_signers)
        old_root.signed.verify_delegate(Root.type, root.signed_bytes, root.signatures)
        root.signed.verify_delegate(Root.type, root.signed_bytes, root.signatures)
        self._write_root(root)
        self._root, self._signers = root, signers
        self._resign_after_rotation(role)
        for keyid in old_keyids:
            keys.remove_private_key(self.keys_dir, role, keyid)
        log.info("key rotated", role=role, root_version=root.signed.version)
        return root.signed.version

    # Internals: signing and writing.

    def _reload(self) -> None:
        """Start each change from the disk: another process may have changed it since open.

        (A timestamp signed over a stale snapshot would look like a rollback to devices.
        Exclusion between processes is the caller's: ``repository_lock``.)
        """
        root, self._targets, self._snapshot, self._timestamp = _load_latest(self.metadata_dir)
        if root.signed.version != self._root.signed.version:
            self._signers = _load_signers(self.keys_dir, root.signed)
        self._root = root

    def _next_timestamp(self, lifetime: timedelta) -> Metadata[Timestamp]:
        return Metadata(
            Timestamp(
                version=self._timestamp.signed.version + 1,
                expires=_utc_now() + lifetime,
                snapshot_meta=self._timestamp.signed.snapshot_meta,
            )
        )

    def _resign_after_rotation(self, role: str) -> None:
        if role == Targets.type:
            self._publish_targets(_copy(self._targets))
        elif role == Snapshot.type:
            version = self._targets.signed.version
            targets_bytes = (self.metadata_dir / f"{version}.targets.json").read_bytes()
            self._publish_snapshot(self._targets, targets_bytes)
        elif role == Timestamp.type:
            self._write_timestamp(self._next_timestamp(self.expiry.timestamp))

    def _publish_targets(self, targets: Metadata[Targets], *, first: bool = False) -> None:
        """Sign and write ``targets`` as its next version, then snapshot and timestamp."""
        targets.signed.version = self._next_version(Targets.type, first=first)
        targets.signed.expires = self.expiry.expires(Targets.type)
        self._sign_as(targets, Targets.type)
        targets_bytes = self._write_versioned(targets, Targets.type)
        self._publish_snapshot(targets, targets_bytes, first=first)

    def _publish_snapshot(
        self, targets: Metadata[Targets], targets_bytes: bytes, *, first: bool = False
    ) -> None:
        snapshot = _copy(self._snapshot)
        snapshot.signed.version = self._next_version(Snapshot.type, first=first)
        snapshot.signed.expires = self.expiry.expires(Snapshot.type)
        snapshot.signed.meta["targets.json"] = _meta_file(targets.signed.version, targets_bytes)
        self._sign_as(snapshot, Snapshot.type)
        snapshot_bytes = self._write_versioned(snapshot, Snapshot.type)
        timestamp = Metadata(
            Timestamp(
                version=1 if first else self._timestamp.signed.version + 1,
                expires=self.expiry.expires(Timestamp.type),
                snapshot_meta=_meta_file(snapshot.signed.version, snapshot_bytes),
            )
        )
        self._write_timestamp(timestamp)
        self._targets, self._snapshot = targets, snapshot

    def _write_timestamp(self, timestamp: Metadata[Timestamp]) -> None:
        self._sign_as(timestamp, Timestamp.type)
        keys.replace_file(self.metadata_dir / "timestamp.json", timestamp.to_bytes())
        self._timestamp = timestamp

    def _write_root(self, root: Metadata[Root]) -> None:
        data = self._write_versioned(root, Root.type)
        keys.replace_file(self.metadata_dir / "root.json", data)

    def _write_versioned(self, metadata: Metadata[Any], role: str) -> bytes:
        data = metadata.to_bytes()
        path = self.metadata_dir / f"{metadata.signed.version}.{role}.json"
        try:
            keys.write_new_file(path, data)
        except FileExistsError as exc:
            raise ReleaseRepositoryError("refusing to overwrite metadata", path=str(path)) from exc
        return data

    def _next_version(self, role: str, *, first: bool = False) -> int:
        """One above both the current version and any file left by an interrupted change."""
        if first:
            return 1
        latest = self._targets if role == Targets.type else self._snapshot
        current = latest.signed.version
        on_disk = max(_versions_on_disk(self.metadata_dir, role), default=0)
        return max(current, on_disk) + 1

    def _sign_as(self, metadata: Metadata[Any], role: str) -> None:
        _sign(metadata, self._signers_for(role))

    def _signers_for(self, role: str) -> list[CryptoSigner]:
        signers = self._signers.get(role, [])
        threshold = self._root.signed.roles[role].threshold
        if len(signers) < threshold:
            raise ReleaseRepositoryError(
                f"{len(signers)} of the {threshold} {role} keys needed are present",
                path=str(self.keys_dir / role),
            )
        return signers

    def _verify_all(self) -> None:
        root = self._root.signed
        try:
            root.verify_delegate(Root.type, self._root.signed_bytes, self._root.signatures)
            for role, metadata in (
                (Targets.type, self._targets),
                (Snapshot.type, self._snapshot),
                (Timestamp.type, self._timestamp),
            ):
                root.verify_delegate(role, metadata.signed_bytes, metadata.signatures)
        except UnsignedMetadataError as exc:
            raise ReleaseRepositoryError(
                f"metadata does not verify against root v{root.version} ({exc})",
                path=str(self.metadata_dir),
            ) from exc

    def _store_target_bytes(self, path_in_repo: str, data_file: Path) -> tuple[int, str]:
        """Copy ``data_file`` under its hash-prefixed name, hashing what is copied."""
        relative = PurePosixPath(path_in_repo)
        destination_dir = self.targets_dir / relative.parent
        try:
            destination_dir.mkdir(parents=True, exist_ok=True)
            return keys.copy_by_content(
                data_file, destination_dir, lambda digest: f"{digest}.{relative.name}"
            )
        except OSError as exc:
            raise ReleaseInputError(
                f"cannot copy target ({exc.strerror})", value=str(data_file)
            ) from exc


def _sign(metadata: Metadata[Any], signers: list[CryptoSigner]) -> None:
    metadata.signatures.clear()
    for signer in signers:
        metadata.sign(signer, append=True)


def _copy(metadata: Metadata[_SignedT]) -> Metadata[_SignedT]:
    """An independent copy, so a failed change leaves the in-memory view untouched."""
    copied: Metadata[Any] = Metadata.from_bytes(metadata.to_bytes())
    return copied


def _meta_file(version: int, data: bytes) -> MetaFile:
    return MetaFile(version, len(data), {"sha256": hashlib.sha256(data).hexdigest()})


def _load(path: Path, signed_type: type[_SignedT]) -> Metadata[_SignedT]:
    try:
        metadata: Metadata[Any] = Metadata.from_bytes(path.read_bytes())
    except FileNotFoundError as exc:
        raise ReleaseRepositoryError("metadata file missing", path=str(path)) from exc
    except OSError as exc:
        raise ReleaseRepositoryError(
            f"cannot read metadata ({exc.strerror})", path=str(path)
        ) from exc
    except DeserializationError as exc:
        raise ReleaseRepositoryError(f"corrupt metadata ({exc})", path=str(path)) from exc
    if not isinstance(metadata.signed, signed_type):
        raise ReleaseRepositoryError(
            f"expected {signed_type.type} metadata, found {metadata.signed.type}", path=str(path)
        )
    return metadata


def _load_latest(
    metadata_dir: Path,
) -> tuple[Metadata[Root], Metadata[Targets], Metadata[Snapshot], Metadata[Timestamp]]:
    """The newest root, and the targets and snapshot the current timestamp leads to."""
    root_version = max(_versions_on_disk(metadata_dir, Root.type), default=0)
    if root_version == 0:
        raise ReleaseRepositoryError("no root metadata (1.root.json)", path=str(metadata_dir))
    root = _load(metadata_dir / f"{root_version}.root.json", Root)
    timestamp = _load(metadata_dir / "timestamp.json", Timestamp)
    snapshot_version = timestamp.signed.snapshot_meta.version
    snapshot = _load(metadata_dir / f"{snapshot_version}.snapshot.json", Snapshot)
    targets_meta = snapshot.signed.meta.get("targets.json")
    if targets_meta is None:
        raise ReleaseRepositoryError(
            "snapshot lists no targets.json", path=str(metadata_dir / f"{snapshot_version}")
        )
    targets = _load(metadata_dir / f"{targets_meta.version}.targets.json", Targets)
    return root, targets, snapshot, timestamp


def _target(info: TargetFile) -> Target:
    return Target(path=info.path, length=info.length, hashes=dict(info.hashes), custom=info.custom)


def _generate_signer() -> CryptoSigner:
    """A new Ed25519 key pair (keyid = sha256 of the public key, as TUF computes it)."""
    return CryptoSigner.generate_ed25519()


def _store_signer(keys_dir: Path, role: str, signer: CryptoSigner) -> Path:
    """Write ``signer``'s private key for ``role``, owner-only; never replaces a key file."""
    return keys.store_private_key(keys_dir, role, signer.public_key.keyid, signer.private_bytes)


def _load_signer(keys_dir: Path, role: str, public_key: Key) -> CryptoSigner | None:
    """The signer of ``public_key`` for ``role``, or None if its private key is not here."""
    pem = keys.read_private_key(keys_dir, role, public_key.keyid)
    if pem is None:
        return None
    path = keys.key_path(keys_dir, role, public_key.keyid)
    if not isinstance(public_key, SSlibKey):
        raise ReleaseRepositoryError(
            f"unsupported key type {type(public_key).__name__}", path=str(path)
        )
    private_key = keys.parse_private_key(pem, path)
    try:
        return CryptoSigner(private_key, public_key)
    except ValueError as exc:  # includes KeyMismatchError: file name and content disagree
        raise ReleaseRepositoryError(
            f"key file does not match its key id ({exc})", path=str(path)
        ) from exc


def _load_signers(keys_dir: Path, root: Root) -> dict[str, list[CryptoSigner]]:
    """The private keys present for each role's current key ids."""
    signers: dict[str, list[CryptoSigner]] = {}
    for role in TOP_LEVEL_ROLES:
        keyids = root.roles[role].keyids
        found = (_load_signer(keys_dir, role, root.get_key(keyid)) for keyid in keyids)
        signers[role] = [signer for signer in found if signer is not None]
    return signers


def _versions_on_disk(metadata_dir: Path, role: str) -> list[int]:
    versions = []
    for path in metadata_dir.glob(f"*.{role}.json"):
        match = _VERSIONED.fullmatch(path.name)
        if match:
            versions.append(int(match.group(1)))
    return versions


def _stored_target_path(targets_dir: Path, path_in_repo: str, sha256: str) -> Path:
    relative = PurePosixPath(path_in_repo)
    return targets_dir / relative.parent / f"{sha256}.{relative.name}"


def _check_target_path(path_in_repo: str) -> None:
    relative = PurePosixPath(path_in_repo)
    if (
        not path_in_repo
        or relative.is_absolute()
        or any(part in ("", ".", "..") for part in path_in_repo.split("/"))
        or "\\" in path_in_repo
        or "\x00" in path_in_repo
    ):
        raise ReleaseInputError("not a plain relative target path", value=repr(path_in_repo))


def _check_role(role: str) -> str:
    if role not in TOP_LEVEL_ROLES:
        raise ReleaseInputError(f"unknown role (one of {', '.join(TOP_LEVEL_ROLES)})", value=role)
    return role


def _check_root_keys(root_keys: int, root_threshold: int) -> None:
    if root_keys < 1 or not 1 <= root_threshold <= root_keys:
        raise ReleaseInputError(
            "root threshold must be between 1 and the number of root keys",
            value=f"{root_threshold} of {root_keys}",
        )


def _require_repository(directory: Path) -> None:
    if not (directory / "metadata").is_dir():
        raise ReleaseRepositoryError(
            "no TUF repository here (create one with `fleet keys init`)", path=str(directory)
        )


def _refuse_existing(directory: Path) -> None:
    for sub in ("metadata", "keys"):
        path = directory / sub
        if path.is_dir() and any(path.iterdir()):
            raise ReleaseRepositoryError("a TUF repository already exists here", path=str(path))


def _utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def sign_desired(state: desired.DesiredState, signer: Signer) -> bytes:
    """The desired-state envelope to publish, signed by ``signer`` (the controller's online
    key) over the canonical JSON (TUF's) of the state: what ``agent.ota.trust`` verifies."""
    encoded = encode_canonical(state.model_dump(mode="json"))
    assert isinstance(encoded, str)  # encode_canonical returns str when given no writer
    signature = signer.sign(encoded.encode()).to_dict()
    return desired.envelope(state, [signature])
