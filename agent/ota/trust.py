"""The device's view of the signed repository: python-tuf's ngclient over the MQTT fetcher.

Synchronous (ngclient is): the updater runs these calls in a worker thread. A new ngclient
``Updater`` is made per update cycle (``refresh()`` runs once per instance). The trusted
metadata lives under ``state_dir/ota/tuf``; on the very first run it is seeded from the root
file given at provisioning, later runs start from the newest root already trusted, so a
device that was offline through several root rotations walks the chain when it comes back.

Every ngclient failure is translated here into an ``UpdateError`` with a ``Reason``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Key, Metadata, Root, TargetFile
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

from agent.errors import StoreError, UpdateError
from agent.ota.reasons import Reason

METADATA_BASE = "mqtt:metadata/"
TARGETS_BASE = "mqtt:targets/"


@dataclass(frozen=True)
class OnlineKeys:
    """Keys of the TUF timestamp role: the controller's online key(s) that sign desired state."""

    keys: dict[str, Key]
    threshold: int


class TrustedRepository:
    """Refreshes the TUF metadata and answers questions about signed targets."""

    def __init__(self, metadata_dir: Path, provisioned_root: Path, fetcher: FetcherInterface):
        self._dir = metadata_dir
        self._provisioned_root = provisioned_root
        self._fetcher = fetcher
        self._updater: Updater | None = None

    def refresh(self) -> None:
        """Fetch and verify root (walking rotations), timestamp, snapshot and targets."""
        bootstrap = self._bootstrap()
        with translate_errors("refresh"):
            updater = Updater(
                str(self._dir),
                METADATA_BASE,
                None,
                TARGETS_BASE,
                fetcher=self._fetcher,
                config=UpdaterConfig(),
                bootstrap=bootstrap,
            )
            updater.refresh()
        self._updater = updater

    def target(self, path: str) -> TargetFile:
        """The signed description of ``path``; ``not_a_target`` if the metadata lacks it."""
        if self._updater is None:
            raise RuntimeError("refresh() first")
        with translate_errors(path):
            info = self._updater.get_targetinfo(path)
        if info is None:
            raise UpdateError(Reason.NOT_A_TARGET, f"{path} is not in the signed targets")
        return info

    def online_keys(self) -> OnlineKeys:
        """The timestamp role's keys and threshold in the newest trusted root."""
        root = self._trusted_root()
        role = root.roles["timestamp"]
        return OnlineKeys({keyid: root.keys[keyid] for keyid in role.keyids}, role.threshold)

    def root_version(self) -> int:
        return self._trusted_root().version

    def _trusted_root(self) -> Root:
        # Before the first refresh the provisioned root is the trusted one: reading it here
        # lets a desired state be checked without any fetch even on a fresh device.
        path = self._dir / "root.json"
        if not path.exists():
            path = self._provisioned_root
        try:
            return Metadata[Root].from_file(str(path)).signed
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read the trusted root ({exc})", path=str(self._dir)) from exc

    def _bootstrap(self) -> bytes | None:
        """None once the metadata dir has a trusted root (ngclient then starts from it)."""
        if (self._dir / "root.json").exists():
            return None
        self._dir.mkdir(parents=True, exist_ok=True)
        try:
            return self._provisioned_root.read_bytes()
        except OSError as exc:
            raise StoreError(
                f"cannot read the provisioned root ({exc})", path=str(self._provisioned_root)
            ) from exc


# ngclient's exceptions and the reason each means, most specific first (the subclasses of
# DownloadError and RepositoryError come before them).
_REASONS: tuple[tuple[type[Exception], Reason], ...] = (
    (tuf_errors.UnsignedMetadataError, Reason.UNTRUSTED_METADATA),
    (tuf_errors.BadVersionNumberError, Reason.METADATA_ROLLBACK),
    (tuf_errors.ExpiredMetadataError, Reason.METADATA_EXPIRED),
    (tuf_errors.LengthOrHashMismatchError, Reason.TAMPERED),
    (tuf_errors.DownloadLengthMismatchError, Reason.TOO_LONG),
    (tuf_errors.DownloadError, Reason.TRANSPORT),
    # Any other verification failure (bad metadata shape, wrong type, ...).
    (tuf_errors.RepositoryError, Reason.UNTRUSTED_METADATA),
)


@contextlib.contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """ngclient's exceptions as ``UpdateError`` reasons."""
    try:
        yield
    except UpdateError:
        raise
    except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as exc:
        reason = next(reason for kind, reason in _REASONS if isinstance(exc, kind))
        raise UpdateError(reason, f"{what}: {exc}") from exc
    except (ValueError, TypeError, KeyError) as exc:
        raise UpdateError(Reason.UNTRUSTED_METADATA, f"{what}: malformed metadata ({exc})") from exc
