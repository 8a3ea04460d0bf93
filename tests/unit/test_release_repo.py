"""The release repository is real TUF: python-tuf's own ngclient verifies what it writes.

A small fetcher reads the repository directory the way the MQTT transport will serve it
(``mqtt:metadata/x`` -> DIR/metadata/x, ``mqtt:targets/x`` -> DIR/targets/x, missing -> 404).
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.exceptions import DownloadHTTPError, ExpiredMetadataError, UnsignedMetadataError
from tuf.api.metadata import Metadata, Root, Timestamp
from tuf.ngclient import Updater
from tuf.ngclient.fetcher import FetcherInterface

from agent.ota.trust import verify_desired
from edge_contract.desired import DesiredModel, DesiredState
from edge_contract.release import ModelRelease, release_from_custom
from fleet.errors import PublishRefusedError, ReleaseInputError, ReleaseRepositoryError
from fleet.release.publish import publish_model
from fleet.release.repo import ExpiryPolicy, Repository, repository_lock, sign_desired

MODEL = Path(__file__).resolve().parents[2] / "models" / "digits" / "digits-int8.onnx"


class DirectoryFetcher(FetcherInterface):
    """Serves a repository directory under the ``mqtt:`` scheme the agent uses."""

    def __init__(self, repo_dir: Path) -> None:
        self.repo_dir = repo_dir
        self.requested: list[str] = []

    def _fetch(self, url: str) -> Iterator[bytes]:
        scheme, _, relative = url.partition(":")
        assert scheme == "mqtt", url
        self.requested.append(relative)
        path = self.repo_dir / relative
        if not path.is_file():
            raise DownloadHTTPError(f"{relative} not found", 404)
        return iter([path.read_bytes()])


class Client:
    """A device's TUF client state: one trusted metadata dir, a fresh Updater per refresh."""

    def __init__(self, repo: Repository, home: Path, *, root_version: int = 1) -> None:
        self.repo = repo
        self.metadata_dir = home / "metadata"
        self.targets_dir = home / "targets"
        self.metadata_dir.mkdir(parents=True)
        self.bootstrap: bytes | None = repo.root_path(root_version).read_bytes()
        self.fetcher = DirectoryFetcher(repo.directory)

    def refresh(self) -> Updater:
        updater = Updater(
            str(self.metadata_dir),
            "mqtt:metadata/",
            str(self.targets_dir),
            "mqtt:targets/",
            fetcher=self.fetcher,
            bootstrap=self.bootstrap,
        )
        self.bootstrap = None  # later refreshes start from the root this one trusts
        updater.refresh()
        return updater

    def trusted(self, role: str) -> Metadata[Root] | Metadata[Timestamp]:
        return Metadata.from_file(str(self.metadata_dir / f"{role}.json"))


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(tmp_path / "repo")


def _publish(repo: Repository, version: str = "2", **options: Any) -> ModelRelease:
    """Publish the committed digits model (its card says digits@2) as digits@``version``."""
    options.setdefault("hardware", ["generic"])
    return publish_model(repo, MODEL, name="digits", version=version, **options)


def test_init_writes_the_layout_with_owner_only_keys(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo", root_keys=3, root_threshold=2)
    names = sorted(path.name for path in repo.metadata_dir.iterdir())
    assert names == [
        "1.root.json",
        "1.snapshot.json",
        "1.targets.json",
        "root.json",
        "timestamp.json",
    ]
    assert repo.root_path(1).read_bytes() == (repo.metadata_dir / "root.json").read_bytes()
    root = repo.root
    assert root.consistent_snapshot is True
    assert root.roles["root"].threshold == 2
    assert len(root.roles["root"].keyids) == 3
    for role in ("root", "targets", "snapshot", "timestamp"):
        role_dir = repo.keys_dir / role
        assert stat.S_IMODE(role_dir.stat().st_mode) == 0o700
        key_files = sorted(path.stem for path in role_dir.iterdir())
        assert key_files == sorted(root.roles[role].keyids)
        for path in role_dir.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(repo.keys_dir.stat().st_mode) == 0o700


def test_init_refuses_a_directory_with_a_repository(repo: Repository) -> None:
    with pytest.raises(ReleaseRepositoryError, match="already exists") as caught:
        Repository.init(repo.directory)
    assert caught.value.path == str(repo.metadata_dir)


def test_init_refuses_a_threshold_above_the_key_count(tmp_path: Path) -> None:
    with pytest.raises(ReleaseInputError, match="3 of 2"):
        Repository.init(tmp_path / "repo", root_keys=2, root_threshold=3)


def test_open_reports_a_missing_or_corrupt_repository(tmp_path: Path) -> None:
    with pytest.raises(ReleaseRepositoryError, match="fleet keys init"):
        Repository.open(tmp_path / "nothing")
    repo = Repository.init(tmp_path / "repo")
    (repo.metadata_dir / "timestamp.json").write_text("{not json")
    with pytest.raises(ReleaseRepositoryError, match="corrupt metadata"):
        Repository.open(repo.directory)


def test_open_refuses_metadata_whose_signature_does_not_verify(repo: Repository) -> None:
    path = repo.metadata_dir / "timestamp.json"
    document = json.loads(path.read_text())
    document["signed"]["version"] += 1
    path.write_text(json.dumps(document))
    with pytest.raises(ReleaseRepositoryError, match="does not verify"):
        Repository.open(repo.directory)


def test_open_loads_what_init_wrote(repo: Repository) -> None:
    reopened = Repository.open(repo.directory)
    assert reopened.root_version == 1
    assert reopened.targets() == {}
    assert reopened.online_signer().public_key.keyid == repo.keyids("timestamp")[0]


def test_published_model_verifies_and_downloads_with_ngclient(
    repo: Repository, tmp_path: Path
) -> None:
    progress: list[tuple[int, int]] = []
    release = _publish(
        repo, chunk_size=4096, progress=lambda done, total: progress.append((done, total))
    )
    size = MODEL.stat().st_size
    assert release.length == size
    assert len(release.chunks) == -(-size // 4096)
    assert progress[-1] == (len(release.chunks), len(release.chunks))

    client = Client(repo, tmp_path / "device")
    updater = client.refresh()
    info = updater.get_targetinfo("models/digits/2/digits-int8.onnx")
    assert info is not None
    assert release_from_custom(info.custom, target=info.path) == release
    downloaded = Path(updater.download_target(info, str(tmp_path / "got.onnx")))
    assert downloaded.read_bytes() == MODEL.read_bytes()
    assert f"targets/models/digits/2/{info.hashes['sha256']}.digits-int8.onnx" in (
        client.fetcher.requested
    )


def test_card_is_renamed_to_the_published_name_and_version(repo: Repository) -> None:
    release = _publish(repo, version="3")
    assert (release.card.name, release.card.version) == ("digits", "3")
    assert release.target_path == "models/digits/3/digits-int8.onnx"


def test_release_counter_grows_and_duplicates_are_refused(repo: Repository) -> None:
    assert _publish(repo).release == 1
    with pytest.raises(PublishRefusedError, match="already published: digits@2"):
        _publish(repo)
    assert _publish(repo, version="5", release=7).release == 7
    with pytest.raises(PublishRefusedError, match="not above the highest published \\(7\\)"):
        _publish(repo, version="6", release=7)
    assert _publish(repo, version="6").release == 8
    assert sorted(Repository.open(repo.directory).targets()) == [
        "models/digits/2/digits-int8.onnx",
        "models/digits/5/digits-int8.onnx",
        "models/digits/6/digits-int8.onnx",
    ]


def test_bad_publish_input_is_refused_before_signing(repo: Repository, tmp_path: Path) -> None:
    with pytest.raises(ReleaseInputError, match="no model file"):
        publish_model(repo, tmp_path / "missing.onnx", name="d", version="1", hardware=["x"])
    with pytest.raises(ReleaseInputError, match="hardware"):
        _publish(repo, hardware=["Not An Id"])
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(b"onnx")
    with pytest.raises(ReleaseInputError, match="unusable model card"):
        publish_model(repo, bare, name="d", version="1", hardware=["x"])
    with pytest.raises(ReleaseInputError, match="plain relative target path"):
        repo.add_target("../escape.onnx", bare, {})
    assert repo.timestamp_version == 1


def test_devices_follow_root_rotations_while_offline(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo", root_keys=3, root_threshold=2)
    _publish(repo)
    online = Client(repo, tmp_path / "online")
    online.refresh()
    offline = Client(repo, tmp_path / "offline")  # provisioned with 1.root.json, never ran
    old_root_keys = set(repo.keyids("root"))
    old_targets_key = repo.keyids("targets")[0]

    assert repo.rotate("root") == 2
    assert repo.rotate("root") == 3
    assert repo.rotate("targets") == 4
    assert not old_root_keys & set(repo.keyids("root"))
    assert not (repo.keys_dir / "targets" / f"{old_targets_key}.pem").exists()
    assert len(list((repo.keys_dir / "root").iterdir())) == 3
    _publish(repo, version="3")

    for client in (online, offline):
        updater = client.refresh()
        assert client.trusted("root").signed.version == 4
        assert updater.get_targetinfo("models/digits/3/digits-int8.onnx") is not None
    reopened = Repository.open(repo.directory)
    assert reopened.root_version == 4
    assert (repo.metadata_dir / "root.json").read_bytes() == repo.root_path(4).read_bytes()


def test_new_root_is_signed_by_old_and_new_root_thresholds(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo", root_keys=2, root_threshold=2)
    old_keys = set(repo.keyids("root"))
    repo.rotate("root")
    new_root = Metadata[Root].from_file(str(repo.root_path(2)))
    signed_by = set(new_root.signatures)
    assert old_keys <= signed_by
    assert set(repo.keyids("root")) <= signed_by


def test_online_roles_rotate_and_clients_accept_the_resigned_metadata(
    repo: Repository, tmp_path: Path
) -> None:
    client = Client(repo, tmp_path / "device")
    client.refresh()
    assert repo.rotate("snapshot") == 2
    assert repo.rotate("timestamp") == 3
    client.refresh()
    trusted_root = client.trusted("root").signed
    assert isinstance(trusted_root, Root)
    assert trusted_root.roles["timestamp"].keyids == repo.keyids("timestamp")
    assert client.trusted("timestamp").signed.version == repo.timestamp_version


def test_refresh_timestamp_bumps_the_version_and_clients_accept_it(
    repo: Repository, tmp_path: Path
) -> None:
    client = Client(repo, tmp_path / "device")
    client.refresh()
    before = repo.timestamp_version
    version = repo.refresh_timestamp(timedelta(minutes=5))
    assert version == before + 1
    client.refresh()
    trusted = client.trusted("timestamp").signed
    assert trusted.version == version
    assert trusted.expires <= datetime.now(UTC) + timedelta(minutes=5)


def test_timestamp_signed_by_a_key_not_in_root_is_refused(repo: Repository, tmp_path: Path) -> None:
    path = repo.metadata_dir / "timestamp.json"
    forged = Metadata[Timestamp].from_file(str(path))
    forged.signed.version += 1
    forged.sign(CryptoSigner.generate_ed25519())
    path.write_bytes(forged.to_bytes())
    with pytest.raises(UnsignedMetadataError):
        Client(repo, tmp_path / "device").refresh()


def test_expired_timestamp_is_refused(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo", expiry=ExpiryPolicy(timestamp=timedelta(0)))
    with pytest.raises(ExpiredMetadataError):
        Client(repo, tmp_path / "device").refresh()


def test_online_signer_signs_desired_state_the_device_verifies(repo: Repository) -> None:
    now = datetime.now(UTC)
    state = DesiredState(
        device_id="dev-1",
        counter=1,
        expires=now + timedelta(minutes=5),
        action="deploy",
        model=DesiredModel(name="digits", version="2", target="models/digits/2/digits-int8.onnx"),
    )
    payload = sign_desired(state, repo.online_signer())
    role = repo.root.roles["timestamp"]
    trusted_keys = {keyid: repo.root.keys[keyid] for keyid in role.keyids}
    verified = verify_desired(
        payload,
        keys=trusted_keys,
        threshold=role.threshold,
        device_id="dev-1",
        last_counter=0,
        now=now,
    )
    assert verified == state
    with pytest.raises(ReleaseInputError, match="not an online role"):
        repo.online_signer("targets")


def test_a_long_lived_repository_signs_over_what_another_process_published(
    repo: Repository, tmp_path: Path
) -> None:
    controller = Repository.open(repo.directory)  # as `fleet serve` holds it
    with repository_lock(repo.directory):
        _publish(Repository.open(repo.directory))  # as `fleet model publish` does
    with repository_lock(repo.directory):
        controller.refresh_timestamp()
    updater = Client(repo, tmp_path / "device").refresh()
    assert updater.get_targetinfo("models/digits/2/digits-int8.onnx") is not None


def test_repository_lock_needs_a_repository(tmp_path: Path) -> None:
    with pytest.raises(ReleaseRepositoryError, match="fleet keys init"), repository_lock(tmp_path):
        pytest.fail("locked a directory without a repository")
