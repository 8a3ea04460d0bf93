"""The agent's OTA updater: follows the signed desired state to a verified, committed model.

One update, step by step (each reported as it happens, see ``agent.ota.report``):

1. A retained ``fleet/<id>/desired`` envelope arrives. Junk costs nothing: the size, the
   JSON (within the payload limits) and the envelope's shape are checked first, then (with
   the clock set; with it obviously unset the update is deferred, not judged) this device id,
   the last accepted counter, the expiry and the signature against the online keys of the
   TUF root already trusted on disk, all without a fetch (``desired``). Only a signature that
   does not verify with those keys may refresh the TUF metadata early, in case the key was
   rotated, and such refreshes are rate-limited (``ota.rekey_interval_s``). A message that
   passes is checked once more against the freshly refreshed metadata (a revoked key) and
   accepted atomically (``device.json``). Every refused message is recorded in the agent's
   rejection ledger.
2. The release it names (``name@version``; or one target, as older controllers send) must
   be signed targets whose custom fields (``release``) fit this device: the best variant for
   its hardware id and runtimes (``variants``; none fits: ``wrong_hardware``, reported with
   the device's hardware id and runtimes, nothing changed), agent version, length cap, a
   release counter not below the installed one.
3. Download: only the chunks not yet staged are requested, each checked against its signed
   hash before it is kept (``staging``); a bad chunk is fetched again alone, a repeatedly bad
   one ends the update. The complete file is the signed target: every chunk matched its
   signed hash and its length is the signed one (``assemble_download``).
4. Install into the inactive A/B slot (``slots``): the copy is hashed and checked against the
   target's signed sha256 and length (TUF's whole-file check), then activation (``activation``): the
   registry loads it beside the serving version (golden check, warm-up), switches, and a
   health window decides: commit, or roll back to what served before.

A crash or power cut anywhere resumes from what is on disk: the accepted-but-unfinished
desired state is replayed from ``device.json``; staged chunks are kept; a pending slot is
activated again until its attempts run out (a crash loop), then rolled back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from agent import __version__
from agent.config import OtaConfig
from agent.control.inbound import InboundRejections
from agent.inference.registry import ModelRegistry
from agent.loop.background import BackgroundTasks
from agent.ota import fsutil
from agent.ota.activation import Activator
from agent.ota.report import Reporter
from agent.ota.slots import SlotStore
from agent.ota.staging import ChunkStaging, sweep
from agent.ota.transport import ChunkRange, RepositoryClient
from agent.ota.trust import (
    MqttFetcher,
    TrustedRepository,
    check_signatures,
    signatures_valid,
    verify_file,
)
from agent.ota.variants import Capabilities, choose_variant
from agent.ota.watch import RequestWatch
from edge_contract.desired import DesiredState, SignedDesired, check_desired, parse_desired
from edge_contract.errors import TopicError, UpdateError
from edge_contract.reasons import Reason
from edge_contract.release import (
    ModelRelease,
    Target,
    release_from_custom,
    release_prefix,
    version_tuple,
)
from edge_contract.topics import Channel, parse, topic_for
from edge_runtime.mqtt.base import InboundMessage
from edge_runtime.mqtt.link import MqttLink
from edge_runtime.mqtt.rejections import EXCERPT_BYTES

log = structlog.get_logger("agent.ota.updater")

# A chunk whose bytes fail their hash this many times in a row ends the update as tampered.
CHUNK_ATTEMPTS = 3
# Progress events at most every this many percent.
PROGRESS_STEP = 10
# Failures that may go away by themselves (the controller is down, its timestamp lapsed while
# it was, the clock is not set yet): the same desired state is tried again every retry_s.
# The others are properties of the message or the release and would fail the same way.
RETRIED = frozenset({Reason.TRANSPORT, Reason.METADATA_EXPIRED, Reason.CLOCK_UNSET})
# Refusals of the message itself: what the rejection ledger counts for the desired topic.
MESSAGE_REASONS = frozenset(
    {
        Reason.MALFORMED_DESIRED,
        Reason.DESIRED_UNSIGNED,
        Reason.DESIRED_OTHER_DEVICE,
        Reason.DESIRED_REPLAYED,
        Reason.DESIRED_EXPIRED,
    }
)


class RefreshLimiter:
    """At most one early metadata refresh (for a rotated key) per ``interval_s``.

    A message whose signature does not verify with the trusted keys is either signed by a key
    the device has not learnt yet or forged; only the first case is worth a refresh, and it
    cannot be told from the second without one. Limiting them keeps a flood of forged
    messages from turning into a flood of fetches. ``admitted`` and ``refused`` count both
    outcomes.
    """

    def __init__(self, interval_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._last: float | None = None
        self.admitted = 0
        self.refused = 0

    def admit(self) -> bool:
        now = self._clock()
        if self._last is not None and now - self._last < self._interval_s:
            self.refused += 1
            return False
        self._last = now
        self.admitted += 1
        return True


class OtaUpdater:
    """Follows this device's desired state; see the module docstring."""

    def __init__(
        self,
        config: OtaConfig,
        *,
        device_id: str,
        state_dir: Path,
        link: MqttLink,
        registry: ModelRegistry,
        watch: RequestWatch,
        reporter: Reporter,
        clock: Callable[[], datetime] | None = None,
        rejections: InboundRejections | None = None,
        capabilities: Capabilities | None = None,
    ) -> None:
        self._config = config
        self._capabilities = capabilities or Capabilities(
            hardware_id=config.hardware_ids[0] if config.hardware_ids else "generic",
            accepted_ids=config.hardware_ids,
            onnx_providers=("CPUExecutionProvider",),
        )
        self._device_id = device_id
        self._root = state_dir / "ota"
        self._registry = registry
        self._reporter = reporter
        self._clock = clock or (lambda: datetime.now(UTC))
        self._device_file = self._root / "device.json"
        self._rejections = rejections or InboundRejections()
        self.client = RepositoryClient(
            link,
            device_id,
            window=config.fetch_window,
            timeout_s=config.fetch_timeout_s,
            rejections=self._rejections,
        )
        self.rekey = RefreshLimiter(config.rekey_interval_s)
        self._activator = Activator(registry, watch, reporter, config.health)
        self._desired_topic = topic_for(device_id, Channel.DESIRED)
        # (payload, retained): only the newest desired state waits.
        self._inbox: asyncio.Queue[tuple[bytes, bool]] = asyncio.Queue(maxsize=1)
        self._trust: TrustedRepository | None = None
        self._last_notice: tuple[str, str] | None = None
        self._tasks = BackgroundTasks()

    def subscriptions(self) -> list[str]:
        return [self._desired_topic, self.client.subscription()]

    def on_message(self, message: InboundMessage) -> bool:
        """Take desired-state and repository-file messages; False for anything else."""
        if message.topic == self._desired_topic:
            if message.payload:  # an empty retained message only clears the topic
                self._take_desired(message)
            return True
        try:
            channel = parse(message.topic).channel
        except TopicError:
            return False
        if channel is Channel.FILE:
            self.client.on_message(message)
            return True
        return False

    def _take_desired(self, message: InboundMessage) -> None:
        """Refuse junk here, as it arrives (size, JSON, shape: no disk, no keys), so each
        refused message is counted even in a burst; queue the rest for ``_handle``."""
        try:
            parse_desired(message.payload)
        except UpdateError as exc:
            # The first bytes are enough to report and dead-letter it.
            excerpt = bytes(message.payload[:EXCERPT_BYTES])
            self._tasks.spawn(self._refuse(excerpt, message.retain, exc))
            return
        self._offer(bytes(message.payload), retained=message.retain)

    def _offer(self, payload: bytes, *, retained: bool = False) -> None:
        """Keep only the newest desired state waiting: older ones are superseded anyway."""
        with contextlib.suppress(asyncio.QueueEmpty):
            self._inbox.get_nowait()
        self._inbox.put_nowait((payload, retained))

    # -- start-up ----------------------------------------------------------------------------

    async def restore(self) -> None:
        """Before serving: load every model's active slot; pending activations resume in run()."""
        for store in await asyncio.to_thread(self._stores):
            state = await asyncio.to_thread(store.state)
            await self._activator.restore(store, state)
            self._reporter.set_slots(store.name, **self._activator.slot_summary(state))
        accepted = await asyncio.to_thread(fsutil.read_json, self._device_file)
        if isinstance(accepted, dict):
            self._reporter.desired_counter = int(accepted.get("counter", 0))
            if not accepted.get("done", True) and isinstance(accepted.get("payload"), str):
                self._offer(accepted["payload"].encode())

    def _stores(self) -> list[SlotStore]:
        models = self._root / "models"
        if not models.is_dir():
            return []
        return [
            SlotStore(models, entry.name) for entry in sorted(models.iterdir()) if entry.is_dir()
        ]

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Resume interrupted activations, then handle desired states one at a time."""
        for store in await asyncio.to_thread(self._stores):
            rolled_back = await self._activator.resume(store)
            if rolled_back is not None:
                await self._settle_accepted(store.name, rolled_back)
        await self._reporter.publish()
        while True:
            payload, retained = await self._inbox.get()
            try:
                retry = await self._handle(payload, retained=retained)
            except Exception as exc:  # a retained message that crashed us would at every start
                log.exception("ota.handle_failed")
                message = InboundMessage(self._desired_topic, payload, qos=1, retain=retained)
                self._rejections.reject(message, "handler_failed", f"{type(exc).__name__}: {exc}")
                retry = False
            if retry:
                asyncio.get_running_loop().call_later(self._config.retry_s, self._retry, payload)

    async def _settle_accepted(self, name: str, version: str) -> None:
        """An interrupted update of ``name@version`` was rolled back at start-up (a crash loop):
        the desired state that asked for it is done, or the agent would install it again."""
        accepted = await asyncio.to_thread(fsutil.read_json, self._device_file)
        if not isinstance(accepted, dict) or accepted.get("done", True):
            return
        model = (
            (json.loads(accepted.get("payload") or "{}").get("signed") or {}).get("model")
        ) or {}
        if (model.get("name"), model.get("version")) == (name, version):
            accepted["done"] = True
            await asyncio.to_thread(fsutil.atomic_write_json, self._device_file, accepted)

    def _retry(self, payload: bytes) -> None:
        if self._inbox.empty():  # a newer desired state wins over a retry
            self._inbox.put_nowait((payload, False))

    async def _handle(self, payload: bytes, *, retained: bool = False) -> bool:
        """One desired state; True when it should be tried again later."""
        accepted = await asyncio.to_thread(fsutil.read_json, self._device_file) or {}
        resuming = accepted.get("payload") == payload.decode(errors="replace")
        if resuming and accepted.get("done"):
            return False  # the retained copy of what was already done
        try:
            parsed = parse_desired(payload)  # junk goes no further, whatever the clock says
        except UpdateError as exc:
            await self._refuse(payload, retained, exc)
            return False
        now = self._clock()
        if now < self._config.clock_floor:
            if self._first_notice(payload, Reason.CLOCK_UNSET):
                await self._reporter.deferred(
                    Reason.CLOCK_UNSET,
                    f"system time {now.isoformat()} is before "
                    f"{self._config.clock_floor.isoformat()}; waiting for time sync",
                )
            return True
        try:
            desired = await self._accept(parsed, payload, accepted, resuming=resuming)
        except UpdateError as exc:
            await self._refuse(payload, retained, exc)
            return exc.reason in RETRIED
        try:
            if desired.action == "rollback":
                await self._activator.operator_rollback(self._store(desired.model.name))
            else:
                await self._deploy(desired)
        except UpdateError as exc:
            model = desired.model
            if self._first_notice(payload, exc.reason):
                await self._reporter.outcome(
                    model.name,
                    model.version,
                    "rejected",
                    reason=exc.reason,
                    detail=exc.detail,
                    **self._device_facts(exc.reason),
                )
            if exc.reason in RETRIED:
                return True
        await self._record_accepted(desired, payload, done=True)
        return False

    async def _refuse(self, payload: bytes, retained: bool, exc: UpdateError) -> None:
        """Count a refused message in the ledger and report it (once per payload and reason)."""
        if exc.reason in MESSAGE_REASONS:
            message = InboundMessage(self._desired_topic, payload, qos=1, retain=retained)
            self._rejections.reject(message, exc.reason, exc.detail)
        if self._first_notice(payload, exc.reason):
            await self._reporter.refused(exc.reason, exc.detail)

    def _device_facts(self, reason: str) -> dict[str, Any]:
        """What a ``wrong_hardware`` refusal tells the fleet about this device."""
        if reason != Reason.WRONG_HARDWARE:
            return {}
        device = self._capabilities
        return {"hardware_id": device.hardware_id, "runtimes": device.runtimes}

    def _first_notice(self, payload: bytes, reason: str) -> bool:
        """Report a deferral or a retried failure once, not at every retry."""
        notice = (hashlib.sha256(payload).hexdigest(), reason)
        if notice == self._last_notice:
            return False
        self._last_notice = notice
        return True

    async def _accept(
        self, parsed: SignedDesired, payload: bytes, accepted: dict[str, Any], *, resuming: bool
    ) -> DesiredState:
        """Every check of the message, the signature against the keys trusted on disk first;
        then the metadata refresh an accepted message needs (and a check against it)."""
        last = int(accepted.get("counter", 0))
        check_desired(
            parsed.state,
            device_id=self._device_id,
            last_counter=last - 1 if resuming else last,
            now=self._clock(),
        )
        trust = self._trusted()
        online = await asyncio.to_thread(trust.online_keys)
        if not signatures_valid(parsed, keys=online.keys, threshold=online.threshold):
            if not self.rekey.admit():
                raise UpdateError(
                    Reason.DESIRED_UNSIGNED,
                    "not signed by the trusted online key(s); no metadata refresh for a "
                    f"rotated key within {self._config.rekey_interval_s:g} s of the last one",
                )
            log.info("ota.rekey_refresh", reason="signature does not verify with trusted keys")
        await asyncio.to_thread(trust.refresh)
        # Against the refreshed root: a rotated key now verifies, a revoked one no longer does.
        online = await asyncio.to_thread(trust.online_keys)
        check_signatures(parsed, keys=online.keys, threshold=online.threshold)
        desired = parsed.state
        if not resuming:
            await self._record_accepted(desired, payload, done=False)
        return desired

    async def _record_accepted(self, desired: DesiredState, payload: bytes, *, done: bool) -> None:
        record = {"counter": desired.counter, "payload": payload.decode(), "done": done}
        await asyncio.to_thread(fsutil.atomic_write_json, self._device_file, record)
        self._reporter.desired_counter = desired.counter

    def _trusted(self) -> TrustedRepository:
        if self._trust is None:
            root = self._config.trusted_root
            if root is None:
                raise UpdateError(Reason.UNTRUSTED_METADATA, "ota.trusted_root is not set")
            fetcher = MqttFetcher(self.client, asyncio.get_running_loop())
            self._trust = TrustedRepository(self._root / "tuf", root, fetcher)
        return self._trust

    def _store(self, name: str) -> SlotStore:
        return SlotStore(self._root / "models", name)

    # -- deploy ------------------------------------------------------------------------------

    async def _deploy(self, desired: DesiredState) -> None:
        info, release = await self._resolve(desired)
        store = self._store(release.name)
        state = await asyncio.to_thread(store.state)
        sha256 = info.hashes["sha256"]
        if self._activator.is_active(state, release, sha256):
            await self._reporter.outcome(release.name, release.version, "committed", noop=True)
            return
        if release.release < state.max_release:
            raise UpdateError(
                Reason.RELEASE_ROLLBACK,
                f"release {release.release} is below the installed {state.max_release}",
            )
        assembled = await self._download(release, info, sha256)
        slot = await asyncio.to_thread(store.install, release, assembled, sha256)
        await asyncio.to_thread(sweep, self._root / "staging", set())  # the file included
        await self._reporter.step(
            release.name, release.version, "installed", slot=slot, variant=release.variant_name
        )
        await self._activator.activate(store, slot)

    async def _resolve(self, desired: DesiredState) -> tuple[Target, ModelRelease]:
        """The signed target to install and its release facts: the one the desired state
        names, or the best of the release's variants for this device."""
        trust = self._trusted()
        model = desired.model
        if model.target is not None:
            targets = [await asyncio.to_thread(trust.target, model.target)]
        else:
            prefix = release_prefix(model.name, model.version)
            targets = await asyncio.to_thread(trust.targets_under, prefix)
            if not targets:
                raise UpdateError(
                    Reason.NOT_A_TARGET, f"no signed target of {model.name}@{model.version}"
                )
        by_path = {info.path: (info, self._release_of(desired, info)) for info in targets}
        chosen = choose_variant([release for _, release in by_path.values()], self._capabilities)
        info, release = by_path[chosen.target_path]
        self._check_release(info, release)
        log.info(
            "ota.variant_chosen",
            model=release.name,
            version=release.version,
            variant=release.variant_name,
            target=info.path,
        )
        return info, release

    @staticmethod
    def _release_of(desired: DesiredState, info: Target) -> ModelRelease:
        release = release_from_custom(info.custom, target=info.path)
        if (release.name, release.version) != (desired.model.name, desired.model.version):
            raise UpdateError(
                Reason.MALFORMED_RELEASE,
                f"target {info.path} is {release.name}@{release.version}, "
                f"desired names {desired.model.name}@{desired.model.version}",
            )
        return release

    def _check_release(self, info: Target, release: ModelRelease) -> None:
        if version_tuple(__version__) < version_tuple(release.min_agent_version):
            raise UpdateError(
                Reason.AGENT_TOO_OLD,
                f"release needs agent {release.min_agent_version}, this is {__version__}",
            )
        if info.length != release.length or info.length > self._config.max_model_bytes:
            raise UpdateError(
                Reason.TOO_LONG
                if info.length > self._config.max_model_bytes
                else Reason.MALFORMED_RELEASE,
                f"signed length {info.length}, release says {release.length}, "
                f"limit {self._config.max_model_bytes}",
            )

    async def _download(self, release: ModelRelease, info: Target, sha256: str) -> Path:
        staging_root = self._root / "staging"
        complete = staging_root / f"{sha256}.complete"
        await asyncio.to_thread(sweep, staging_root, {sha256, complete.name})
        if await asyncio.to_thread(_verified, info, complete):
            return complete  # downloaded and checked before a restart, not installed yet
        staging = await asyncio.to_thread(ChunkStaging, staging_root, release, sha256)
        path = repository_path(info.path, sha256)
        progress = _Progress(self._reporter, release)
        for attempt in range(1, CHUNK_ATTEMPTS + 1):
            missing = await asyncio.to_thread(staging.missing)
            if not missing:
                break
            await progress.report(staging.progress())
            bad = await self._fetch_missing(staging, path, missing, progress)
            if bad and attempt == CHUNK_ATTEMPTS:
                await asyncio.to_thread(staging.discard)
                raise UpdateError(
                    Reason.TAMPERED,
                    f"chunk(s) {bad[:5]} of {info.path} failed their signed hash "
                    f"{CHUNK_ATTEMPTS} times",
                )
        await self._reporter.step(release.name, release.version, "verifying")
        return await asyncio.to_thread(assemble_download, staging, info, complete)

    async def _fetch_missing(
        self, staging: ChunkStaging, path: str, missing: list[int], progress: _Progress
    ) -> list[int]:
        """Fetch and stage ``missing`` chunks; return the ones whose bytes were refused."""
        bad: list[int] = []
        ranges = [ChunkRange(index, *staging.release.chunk_range(index)) for index in missing]

        async def on_chunks(pieces: list[tuple[int, memoryview]]) -> None:
            for index, exc in await asyncio.to_thread(staging.store_all, pieces):
                log.warning("ota.chunk_refused", chunk=index, reason=exc.reason, detail=exc.detail)
                bad.append(index)
            await progress.report(staging.progress())

        try:
            await self.client.fetch_chunks(
                path, ranges, on_chunks, expected_size=staging.release.length
            )
        except UpdateError as exc:
            if exc.reason in (Reason.TOO_LONG, Reason.TAMPERED):
                await asyncio.to_thread(staging.discard)  # endless data: no partial kept
            raise
        return bad


def repository_path(target: str, sha256: str) -> str:
    """Where the repository keeps a target (consistent snapshots: hash-prefixed file name)."""
    directory, _, name = target.rpartition("/")
    prefix = f"{directory}/" if directory else ""
    return f"targets/{prefix}{sha256}.{name}"


def _verified(info: Target, path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        verify_file(info, path)
    except UpdateError:
        fsutil.remove_file(path)
        return False
    return True


def assemble_download(staging: ChunkStaging, info: Target, dest: Path) -> Path:
    """Worker thread: move the fully staged file to ``dest``; ``tampered`` (and nothing kept)
    if it is not the signed target.

    Every chunk was checked against its signed hash as it came in, and ``assemble`` checks the
    signed length: with sha256 the only signed hash, the file is the signed bytes and is not
    read again here. TUF's whole-file check (sha256 and length) runs once, in the install's
    copy (``SlotStore.install``). A target signed with other hashes as well is read and
    checked here by python-tuf (``trust.verify_file``), since the install checks sha256 only.
    """
    try:
        staging.assemble(dest)
        if set(info.hashes) != {"sha256"}:
            verify_file(info, dest)
    except UpdateError:
        staging.discard()
        fsutil.remove_file(dest)
        raise
    staging.discard()
    return dest


class _Progress:
    """``downloading`` events every PROGRESS_STEP percent, not per chunk."""

    def __init__(self, reporter: Reporter, release: ModelRelease) -> None:
        self._reporter = reporter
        self._release = release
        self._last: int | None = None

    async def report(self, fraction: float) -> None:
        percent = int(fraction * 100)
        if self._last is not None and percent < min(100, self._last + PROGRESS_STEP):
            return
        self._last = percent
        await self._reporter.step(
            self._release.name, self._release.version, "downloading", percent=percent
        )
