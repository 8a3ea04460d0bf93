"""The controller's part of OTA: repository files over MQTT, a fresh timestamp, desired states.

Built by ``fleet serve`` when ``[ota] repo`` is set. It answers the devices' file requests
(``fleet.release.fileserver``), re-signs the TUF timestamp with the online key every
``timestamp_refresh_s`` (each one expires after ``timestamp_expiry_s``), and turns
the typed ``deploy`` / ``rollback`` requests (``edge_contract.controller``) into signed,
retained desired-state messages, one per device, each with the next value of that device's
counter (kept in the controller's store). The use cases (``fleet.app``) call
``deploy``/``rollback`` only for requests signed by a trusted operator (``fleet.operators``);
here a target must also be an accepted device with a reported OTA state, and ``deploy
--all`` names every device it leaves out and why.

The repository is re-read from disk for every operation: ``fleet model publish`` and
``fleet keys rotate`` change it from another process, and a timestamp signed over a stale
snapshot would look like a rollback to the devices. An exclusive lock on ``DIR/.lock``
keeps the controller's writes and the CLI's apart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import structlog
from pydantic import JsonValue

from edge_contract.controller import (
    DeployReply,
    DeployRequest,
    JsonObject,
    RollbackReply,
    RollbackRequest,
    Skipped,
)
from edge_contract.desired import DesiredModel, DesiredState
from edge_contract.errors import TopicError, UpdateError
from edge_contract.http_api import (
    ReleaseSummary,
    ReleaseVariant,
)
from edge_contract.release import CUSTOM_KEY, ModelRelease, Target, release_from_custom
from edge_contract.topics import Channel, parse, topic_for
from edge_runtime.mqtt.base import InboundMessage, PublishOptions
from edge_runtime.mqtt.link import MqttLink
from fleet.app.replies import Publish
from fleet.config import OtaOptions
from fleet.errors import (
    DeviceNotAcceptedError,
    DeviceRevokedError,
    FleetError,
    UnknownDeviceError,
)
from fleet.records import Directive
from fleet.release.allocator import keep_large_buffers
from fleet.release.fileserver import FileService, RepositoryFiles
from fleet.release.repo import Repository, repository_lock, sign_desired
from fleet.store import ACCEPTED, PENDING, REVOKED, FleetStore, Sign

log = structlog.get_logger("fleet.ota")


class ReleaseService:
    """File server, timestamp refresher and desired-state signer of the controller."""

    def __init__(self, options: OtaOptions, link: MqttLink, store: FleetStore) -> None:
        if options.repo is None:
            raise FleetError("[ota] repo is not set")
        self._options = options
        self._dir = options.repo
        self._link = link
        self._store = store
        with repository_lock(self._dir):
            Repository.open(self._dir)  # fail at start-up, not at the first request
        keep_large_buffers()  # each reply moves megabyte buffers (fleet.release.allocator)
        self.files = FileService(link, RepositoryFiles(self._dir))
        link.add_subscription(self.files.subscription(), qos=1)

    def on_message(self, message: InboundMessage) -> bool:
        """Take repository requests (``fleet/<id>/fetch``); False for anything else."""
        try:
            channel = parse(message.topic).channel
        except TopicError:
            return False
        if channel is not Channel.FETCH:
            return False
        self.files.on_message(message)
        return True

    async def run(self) -> None:
        """Keep the timestamp fresh until cancelled."""
        while True:
            try:
                version = await asyncio.to_thread(self.refresh_timestamp)
                log.info("ota.timestamp_signed", version=version)
            except FleetError as exc:
                log.error("ota.timestamp_failed", error=str(exc))
            await asyncio.sleep(self._options.timestamp_refresh_s)

    def refresh_timestamp(self) -> int:
        with repository_lock(self._dir):
            repo = Repository.open(self._dir)
            return repo.refresh_timestamp(timedelta(seconds=self._options.timestamp_expiry_s))

    def close(self) -> None:
        self.files.close()

    # -- desired states (run in the controller's store thread) -----------------------------

    def deploy(self, request: DeployRequest) -> tuple[DeployReply, list[Publish]]:
        """The release desired on the request's devices -> reply, messages to send.

        The reply's ``skipped`` names each device ``--all`` left out and why.
        """
        name, version = request.model, request.version
        with repository_lock(self._dir):
            repo = Repository.open(self._dir)
            target = _find_target(repo, name, version)
            devices, skipped = self._devices(request)
            messages = [self._desired(repo, d, "deploy", name, version, target) for d in devices]
        reply = DeployReply(
            model=name,
            version=version,
            target=target,
            devices=devices,
            skipped=[Skipped(device_id=d, reason=r) for d, r in skipped],
        )
        return reply, messages

    def rollback(self, request: RollbackRequest) -> tuple[RollbackReply, list[Publish]]:
        """Back to the device's previous committed version of the model (its only one when
        the request names none)."""
        device_id = request.device_id
        self._require_accepted(device_id)
        detail = self._store.device_detail(device_id, events=0)
        models = _object((detail.reported or {}).get("models"))
        name = request.model or (next(iter(models)) if len(models) == 1 else None)
        if not isinstance(name, str) or name not in models:
            raise FleetError(
                f"{device_id} reports no OTA model {name!r} (it reports {sorted(models)})"
            )
        previous = _object(_object(models[name]).get("previous"))
        if not previous:
            raise FleetError(f"{device_id} reports no previous committed version of {name}")
        version = str(previous.get("version"))
        with repository_lock(self._dir):
            repo = Repository.open(self._dir)
            target = _find_target(repo, name, version)
            message = self._desired(repo, device_id, "rollback", name, version, target)
        return RollbackReply(device_id=device_id, model=name, version=version), [message]

    # -- what the repository holds (the HTTP API's releases list) -------------------------------

    def releases(self) -> list[ReleaseSummary]:
        """Every model release the repository's targets sign, with each of its variants, by
        model then release counter (a target that is not a model release is left out)."""
        with repository_lock(self._dir):
            targets = Repository.open(self._dir).targets()
        found: dict[tuple[str, str], list[tuple[ModelRelease, Target]]] = {}
        for path, target in targets.items():
            try:
                release = release_from_custom(target.custom, target=path)
            except UpdateError:
                continue
            found.setdefault((release.name, release.version), []).append((release, target))
        summaries = [_release_summary(files) for files in found.values()]
        return sorted(summaries, key=lambda r: (r.model, r.release, r.version))

    # -- desired states of a rollout (fleet.app.rollouts; no DeployRequest) --------------------

    def check_release(self, name: str, version: str) -> str | None:
        """The target path of the signed release ``name@version`` (None: several variants).

        Raises:
            FleetError: no such release in the repository.
        """
        with repository_lock(self._dir):
            return _find_target(Repository.open(self._dir), name, version)

    @contextmanager
    def signer(self, name: str, versions: Iterable[str]) -> Iterator[Sign]:
        """A ``Sign`` for directives of ``name`` at any of ``versions``, under the repository
        lock for as long as it is used (the store's transaction calls it with each counter).

        Raises:
            FleetError: a version has no signed release.
        """
        with repository_lock(self._dir):
            repo = Repository.open(self._dir)
            targets = {v: _find_target(repo, name, v) for v in sorted(set(versions))}
            key = repo.online_signer("timestamp")
            expiry = timedelta(seconds=self._options.desired_expiry_s)

            def sign(directive: Directive, counter: int) -> bytes:
                state = DesiredState(
                    device_id=directive.device_id,
                    counter=counter,
                    expires=datetime.now(UTC) + expiry,
                    action=directive.action,  # type: ignore[arg-type]
                    model=DesiredModel(
                        name=name, version=directive.version, target=targets[directive.version]
                    ),
                )
                return sign_desired(state, key)

            yield sign

    def _devices(self, request: DeployRequest) -> tuple[list[str], list[tuple[str, str]]]:
        """Targets and (device, reason) skipped. ``--all``: accepted devices with OTA on;
        named devices: each must be one of those, or the whole deploy is refused."""
        if request.all:
            admission = self._store.admissions()
            with_ota = self._store.ota_devices()
            targets, skipped = [], []
            for device_id in (d.device_id for d in self._store.list_devices()):
                reason = _not_a_target(admission.get(device_id), device_id in with_ota)
                if reason:
                    skipped.append((device_id, reason))
                else:
                    targets.append(device_id)
            if not targets:
                why = "; ".join(f"{d}: {r}" for d, r in skipped) or "no device seen"
                raise FleetError(f"no accepted device with OTA enabled ({why})")
            return targets, skipped
        if not request.devices:
            raise FleetError("deploy needs --device ID (one or more) or --all")
        for device_id in request.devices:
            self._require_accepted(device_id)
            if device_id not in self._store.ota_devices():
                raise FleetError(f"device {device_id!r}: {OTA_DISABLED}; nothing deployed")
        return list(dict.fromkeys(request.devices)), []

    def _require_accepted(self, device_id: str) -> None:
        state = self._store.admission(device_id)
        if state is None:
            raise UnknownDeviceError(device_id)
        if state == REVOKED:
            raise DeviceRevokedError(device_id)
        if state != ACCEPTED:
            raise DeviceNotAcceptedError(device_id)

    def _desired(
        self,
        repo: Repository,
        device_id: str,
        action: str,
        name: str,
        version: str,
        target: str | None,
    ) -> Publish:
        counter = self._store.next_desired(
            device_id, model=name, version=version, action=action, now=time.time()
        )
        state = DesiredState(
            device_id=device_id,
            counter=counter,
            expires=datetime.now(UTC) + timedelta(seconds=self._options.desired_expiry_s),
            action=action,  # type: ignore[arg-type]
            model=DesiredModel(name=name, version=version, target=target),
        )
        payload = sign_desired(state, repo.online_signer("timestamp"))
        return topic_for(device_id, Channel.DESIRED), payload

    def publish(self, messages: list[Publish]) -> None:
        """On the loop: retained, QoS 1, so a device that is offline gets it when it is back."""
        options = PublishOptions(content_type="application/json")
        for topic, payload in messages:
            self._link.publish(topic, payload, qos=1, retain=True, options=options)


OTA_DISABLED = "OTA disabled (no reported state)"


def _not_a_target(admission: str | None, has_reported: bool) -> str | None:
    """Why ``deploy --all`` leaves a device out, or None when it is a target."""
    if admission == REVOKED:
        return REVOKED
    if admission != ACCEPTED:
        return PENDING
    if not has_reported:
        return OTA_DISABLED
    return None


def _find_target(repo: Repository, name: str, version: str) -> str | None:
    """The target the desired state names: the release's one file (so an agent from before
    variants can follow it), or None for a release with several variants, among which each
    device picks the one its signed hardware and runtime fields fit."""
    paths = []
    for path, target in repo.targets().items():
        fields = (target.custom or {}).get(CUSTOM_KEY) or {}
        if fields.get("name") == name and fields.get("version") == version:
            paths.append(path)
    if not paths:
        raise FleetError(f"no signed release {name}@{version} in {repo.metadata_dir.parent}")
    return paths[0] if len(paths) == 1 else None


def _release_summary(files: list[tuple[ModelRelease, Target]]) -> ReleaseSummary:
    first = files[0][0]
    variants = [
        ReleaseVariant(
            target=target.path,
            variant=release.variant_name,
            hardware=list(release.hardware),
            runtime=release.required_runtime,
            providers=list(release.providers),
            precision=release.precision,
            length=target.length,
            sha256=target.hashes.get("sha256", ""),
        )
        for release, target in sorted(files, key=lambda f: f[0].variant_name)
    ]
    return ReleaseSummary(
        model=first.name, version=first.version, release=first.release, variants=variants
    )


def _object(value: JsonValue) -> JsonObject:
    """``value`` if it is a JSON object (the stored reported state is read defensively)."""
    return value if isinstance(value, dict) else {}
