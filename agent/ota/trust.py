"""The agent's one door to TUF: python-tuf's ngclient and securesystemslib's signatures.

No other agent module imports ``tuf`` or ``securesystemslib`` (ruff's banned-api enforces it):
they get TUF-free types and functions from here.

- ``TrustedRepository``: the device's view of the signed repository, ngclient over the MQTT
  fetcher. Synchronous (ngclient is): the updater runs these calls in a worker thread. A new
  ngclient ``Updater`` is made per update cycle (``refresh()`` runs once per instance). The
  trusted metadata lives under ``state_dir/ota/tuf``; on the very first run it is seeded from
  the root file given at provisioning, later runs start from the newest root already trusted,
  so a device that was offline through several root rotations walks the chain when it comes
  back. Targets come out as ``edge_contract.release.Target``, not ngclient's ``TargetFile``.
- ``MqttFetcher``: ngclient's fetcher over ``agent.ota.transport.RepositoryClient``.
- ``verify_file``: a downloaded file against its target's signed length and hashes.
- ``verify_desired`` (``check_signatures``, ``signatures_valid``): the signatures of the
  desired state (``edge_contract.desired``, the pure model and checks) against the keys of
  the trusted root; ``canonical_json`` and ``valid_keyids`` are their primitives. The device
  never signs: the controller does (``fleet.release.repo.sign_desired``).

Every ngclient failure is translated here into an ``UpdateError`` with a ``Reason``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from securesystemslib.formats import encode_canonical
from securesystemslib.signer import Signature
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Key, Metadata, Root, TargetFile, Targets
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

from agent.errors import FetchError, StoreError
from edge_contract.desired import DesiredState, SignedDesired, check_desired, parse_desired
from edge_contract.errors import UpdateError
from edge_contract.fetchcodec import STATUS_NOT_FOUND, URL_SCHEME
from edge_contract.reasons import Reason
from edge_contract.release import DEFAULT_CHUNK_SIZE, Target

if TYPE_CHECKING:
    # Types only: the desired-state signatures (and the controller) need this module without
    # the MQTT client.
    from agent.ota.transport import RangeReply, RepositoryClient

PublicKey: TypeAlias = Key
"""A public key of the trusted root (securesystemslib's ``Key``): it verifies signatures."""

METADATA_BASE = "mqtt:metadata/"
TARGETS_BASE = "mqtt:targets/"


@dataclass(frozen=True)
class OnlineKeys:
    """Keys of the TUF timestamp role: the controller's online key(s) that sign desired state."""

    keys: dict[str, PublicKey]
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

    def target(self, path: str) -> Target:
        """The signed description of ``path``; ``not_a_target`` if the metadata lacks it."""
        if self._updater is None:
            raise RuntimeError("refresh() first")
        with translate_errors(path):
            info = self._updater.get_targetinfo(path)
        if info is None:
            raise UpdateError(Reason.NOT_A_TARGET, f"{path} is not in the signed targets")
        return Target(
            path=info.path, length=info.length, hashes=dict(info.hashes), custom=info.custom
        )

    def targets_under(self, prefix: str) -> list[Target]:
        """Every signed target whose path starts with ``prefix`` (a release's variants).

        The names come from the targets metadata ngclient stored after verifying it in the
        last ``refresh``; each is then resolved through the verified in-memory metadata
        (``target``), so a name that is not signed there is left out.
        """
        if self._updater is None:
            raise RuntimeError("refresh() first")
        try:
            stored = Metadata[Targets].from_file(str(self._dir / "targets.json")).signed
        except (OSError, ValueError) as exc:
            raise StoreError(
                f"cannot read the targets metadata ({exc})", path=str(self._dir)
            ) from exc
        found = []
        for path in sorted(stored.targets):
            if path.startswith(prefix):
                with contextlib.suppress(UpdateError):
                    found.append(self.target(path))
        return found

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


def verify_file(target: Target, path: Path) -> None:
    """The whole file against its signed length and hashes (python-tuf reads and hashes it);
    ``tampered`` if not."""
    signed = TargetFile(target.length, dict(target.hashes), target.path)
    try:
        with path.open("rb") as handle:
            signed.verify_length_and_hashes(handle)
    except tuf_errors.LengthOrHashMismatchError as exc:
        raise UpdateError(Reason.TAMPERED, f"{target.path}: {exc}") from exc


# -- signatures of the desired state ---------------------------------------------------------


def canonical_json(value: Mapping[str, Any]) -> bytes:
    """Canonical JSON (TUF's): the bytes that are signed and verified."""
    encoded = encode_canonical(dict(value))
    assert isinstance(encoded, str)  # encode_canonical returns str when given no writer
    return encoded.encode()


def valid_keyids(data: bytes, signatures: list[Any], keys: Mapping[str, PublicKey]) -> set[str]:
    """The ids of ``keys`` with a valid signature over ``data`` among ``signatures`` (as sent:
    anything malformed, by an unknown key or not verifying is skipped)."""
    valid: set[str] = set()
    for raw in signatures:
        try:
            signature = Signature.from_dict(dict(raw))
        except (TypeError, ValueError, KeyError):
            continue
        key = keys.get(signature.keyid)
        if key is None:
            continue
        try:
            key.verify_signature(signature, data)
        except Exception:  # noqa: S112 - any failure means "not a valid signature"
            continue
        valid.add(signature.keyid)
    return valid


def verify_desired(
    payload: bytes,
    *,
    keys: Mapping[str, PublicKey],
    threshold: int,
    device_id: str,
    last_counter: int,
    now: datetime,
) -> DesiredState:
    """Check an envelope against the trusted online keys and this device's state.

    Raises:
        UpdateError: reason ``malformed_desired``, ``desired_unsigned``,
            ``desired_other_device``, ``desired_replayed`` or ``desired_expired``.
    """
    parsed = parse_desired(payload)
    check_desired(parsed.state, device_id=device_id, last_counter=last_counter, now=now)
    check_signatures(parsed, keys=keys, threshold=threshold)
    return parsed.state


def signatures_valid(
    parsed: SignedDesired, *, keys: Mapping[str, PublicKey], threshold: int
) -> bool:
    """Whether at least ``threshold`` of ``keys`` signed the envelope (no IO)."""
    return len(valid_keyids(canonical_json(parsed.signed), parsed.signatures, keys)) >= threshold


def check_signatures(
    parsed: SignedDesired, *, keys: Mapping[str, PublicKey], threshold: int
) -> None:
    """Raises:
    UpdateError: ``desired_unsigned`` unless ``threshold`` of ``keys`` signed it."""
    valid = valid_keyids(canonical_json(parsed.signed), parsed.signatures, keys)
    if len(valid) < threshold:
        raise UpdateError(
            Reason.DESIRED_UNSIGNED,
            f"{len(valid)} valid signature(s) by the online key(s), {threshold} needed",
        )


# -- ngclient's fetcher ----------------------------------------------------------------------


class MqttFetcher(FetcherInterface):
    """``tuf.ngclient`` fetcher for ``mqtt:<path>`` URLs, backed by a ``RepositoryClient``.

    ngclient calls it from a worker thread; each range is fetched on ``loop`` (the agent's)
    and handed back. ``FetcherInterface`` enforces the maximum lengths: it stops reading
    after the cap, so an endless file costs at most one range more.
    """

    def __init__(
        self,
        client: RepositoryClient,
        loop: asyncio.AbstractEventLoop,
        *,
        range_length: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        self._client = client
        self._loop = loop
        self._range_length = range_length
        # A range may wait for every retry; beyond that the loop itself is stuck.
        self._call_timeout_s = (client.retries + 1) * client.timeout_s + 5.0

    def _fetch(self, url: str) -> Iterator[bytes]:
        if not url.startswith(URL_SCHEME):
            raise tuf_errors.DownloadError(f"not an {URL_SCHEME} URL: {url!r}")
        if _on_loop_thread(self._loop):
            raise tuf_errors.DownloadError(
                f"{url}: MqttFetcher must not be called on the loop thread"
            )
        path = url.removeprefix(URL_SCHEME)
        # The first range is fetched now, so a missing file fails the call itself.
        first = self._range(path, 0)
        return self._rest(path, first)

    def _rest(self, path: str, reply: RangeReply) -> Iterator[bytes]:
        offset = 0
        while True:
            if reply.data:
                yield bytes(reply.data)
            offset += len(reply.data)
            if not reply.data or offset >= reply.size:
                return
            reply = self._range(path, offset)

    def _range(self, path: str, offset: int) -> RangeReply:
        future = asyncio.run_coroutine_threadsafe(
            self._client.fetch_range(path, offset, self._range_length), self._loop
        )
        try:
            return future.result(self._call_timeout_s)
        except FetchError as exc:
            if exc.status == STATUS_NOT_FOUND:
                raise tuf_errors.DownloadHTTPError(str(exc), STATUS_NOT_FOUND) from exc
            raise tuf_errors.DownloadError(str(exc)) from exc
        except TimeoutError as exc:
            future.cancel()
            raise tuf_errors.DownloadError(
                f"{path}: no answer from the agent loop at {offset}"
            ) from exc
        except (
            Exception
        ) as exc:  # the iterator must raise only tuf_errors.DownloadError (ngclient's contract)
            raise tuf_errors.DownloadError(f"{path} at {offset}: {exc!r}") from exc


def _on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
