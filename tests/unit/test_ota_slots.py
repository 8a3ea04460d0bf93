"""A/B slots: transitions, refusals, the anti-rollback floor and recovery of a bad state file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.errors import SlotError, StoreError
from agent.ota.slots import SlotState, SlotStore
from edge_contract.errors import UpdateError
from edge_contract.reasons import Reason
from edge_contract.release import ModelRelease
from tests.unit.test_ota_staging import make_release


class Version:
    """A model file on disk with its release."""

    def __init__(self, tmp_path: Path, release: int, version: str) -> None:
        self.data = f"model {version} ".encode() * (200 + release)
        self.sha256 = hashlib.sha256(self.data).hexdigest()
        self.release: ModelRelease = make_release(self.data, release=release, version=version)
        self.source = tmp_path / "downloads" / f"{version}.onnx"
        self.source.parent.mkdir(exist_ok=True)
        self.source.write_bytes(self.data)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "models"


def _on_disk(root: Path) -> SlotState:
    return SlotState.model_validate_json((root / "kws" / "state.json").read_bytes())


def _install_and_commit(store: SlotStore, version: Version) -> str:
    slot = store.install(version.release, version.source, version.sha256)
    store.begin_activation(slot)
    store.commit()
    return slot


def test_fresh_store_has_nothing_active(root: Path) -> None:
    store = SlotStore(root, "kws")
    assert store.state() == SlotState()
    assert store.inactive_slot() == "a"
    assert not (root / "kws").exists()


def test_install_activate_commit(root: Path, tmp_path: Path) -> None:
    v1 = Version(tmp_path, 1, "1.0")
    store = SlotStore(root, "kws")
    slot = store.install(v1.release, v1.source, v1.sha256)
    assert slot == "a"
    assert store.model_path("a").read_bytes() == v1.data
    card = json.loads(store.card_path("a").read_text())
    assert (card["name"], card["version"]) == ("kws", "1.0")
    info = store.state().slots["a"]
    assert info is not None
    assert (info.version, info.release, info.committed) == ("1.0", 1, False)
    assert store.state().active is None
    assert _on_disk(root) == store.state()

    state = store.begin_activation("a")
    assert (state.pending, state.attempts) == ("a", 1)
    state = store.commit()
    assert state == store.state()
    committed = state.slots["a"]
    assert committed is not None
    assert committed.committed
    assert (state.active, state.pending, state.attempts, state.max_release) == ("a", None, 0, 1)
    assert state.last_result is not None
    assert (state.last_result["outcome"], state.last_result["version"]) == ("committed", "1.0")
    assert _on_disk(root) == state


def test_attempts_count_across_restarts(root: Path, tmp_path: Path) -> None:
    v1 = Version(tmp_path, 1, "1.0")
    store = SlotStore(root, "kws")
    slot = store.install(v1.release, v1.source, v1.sha256)
    store.begin_activation(slot)
    again = SlotStore(root, "kws")  # the agent crashed during activation and restarted
    assert again.begin_activation(slot).attempts == 2
    assert SlotStore(root, "kws").state().attempts == 2


def test_second_install_goes_beside_and_leaves_active_untouched(root: Path, tmp_path: Path) -> None:
    v1, v2 = Version(tmp_path, 1, "1.0"), Version(tmp_path, 2, "2.0")
    store = SlotStore(root, "kws")
    _install_and_commit(store, v1)
    before = store.model_path("a").stat()
    assert store.install(v2.release, v2.source, v2.sha256) == "b"
    after = store.model_path("a").stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert store.state().active == "a"
    store.begin_activation("b")
    state = store.abandon(Reason.HEALTH_LATENCY)
    assert (state.active, state.pending, state.attempts, state.max_release) == ("a", None, 0, 1)
    assert state.last_result is not None
    assert state.last_result["outcome"] == "rolled_back"
    assert state.last_result["reason"] == "health_latency"
    assert state.last_result["version"] == "2.0"


def test_reinstall_of_the_committed_release_is_a_noop(root: Path, tmp_path: Path) -> None:
    v1 = Version(tmp_path, 1, "1.0")
    store = SlotStore(root, "kws")
    _install_and_commit(store, v1)
    before = store.state()
    assert store.install(v1.release, v1.source, v1.sha256) == "a"
    assert store.state() == before
    assert store.state().slots["b"] is None


def test_reinstall_of_a_pending_release_is_a_noop(root: Path, tmp_path: Path) -> None:
    """After a crash mid-activation the same install finds its slot again."""
    v1, v2 = Version(tmp_path, 1, "1.0"), Version(tmp_path, 2, "2.0")
    store = SlotStore(root, "kws")
    _install_and_commit(store, v1)
    store.begin_activation(store.install(v2.release, v2.source, v2.sha256))
    assert SlotStore(root, "kws").install(v2.release, v2.source, v2.sha256) == "b"


def test_rollback_floor(root: Path, tmp_path: Path) -> None:
    v1, v2 = Version(tmp_path, 1, "1.0"), Version(tmp_path, 2, "2.0")
    store = SlotStore(root, "kws")
    _install_and_commit(store, v1)
    _install_and_commit(store, v2)
    with pytest.raises(UpdateError) as lower:
        store.install(v1.release, v1.source, v1.sha256)
    assert lower.value.reason == Reason.RELEASE_ROLLBACK
    assert (lower.value.fields["release"], lower.value.fields["floor"]) == (1, 2)
    other = Version(tmp_path, 2, "2.0-other")  # same counter, different bytes
    with pytest.raises(UpdateError) as same:
        store.install(other.release, other.source, other.sha256)
    assert same.value.reason == Reason.RELEASE_ROLLBACK
    store.switch_back()  # the floor does not follow an operator rollback down
    assert store.state().max_release == 2


def test_abandoned_release_below_floor_is_refused(root: Path, tmp_path: Path) -> None:
    v1, v2, v3 = (Version(tmp_path, n, f"{n}.0") for n in (1, 2, 3))
    store = SlotStore(root, "kws")
    _install_and_commit(store, v1)
    store.begin_activation(store.install(v3.release, v3.source, v3.sha256))
    store.abandon(Reason.HEALTH_ERRORS)
    _install_and_commit(store, v2)  # replaces the abandoned 3.0 in slot b
    assert store.state().max_release == 2
    store.install(v3.release, v3.source, v3.sha256)  # 3 > 2 again: allowed, into slot a


def test_tampered_source_is_refused_and_the_slot_keeps_its_content(
    root: Path, tmp_path: Path
) -> None:
    v1, v2, v3 = (Version(tmp_path, n, f"{n}.0") for n in (1, 2, 3))
    store = SlotStore(root, "kws")
    _install_and_commit(store, v1)
    _install_and_commit(store, v2)
    v3.source.write_bytes(v3.data[:-1] + b"X")
    with pytest.raises(UpdateError) as caught:
        store.install(v3.release, v3.source, v3.sha256)
    assert caught.value.reason == Reason.TAMPERED
    assert store.slot_complete("a")
    assert store.model_path("a").read_bytes() == v1.data
    assert sorted(entry.name for entry in (root / "kws" / "a").iterdir()) == [
        "kws.onnx",
        "kws.onnx.card.json",
        "slot.json",
    ]


def test_switch_back(root: Path, tmp_path: Path) -> None:
    v1, v2 = Version(tmp_path, 1, "1.0"), Version(tmp_path, 2, "2.0")
    store = SlotStore(root, "kws")
    with pytest.raises(UpdateError) as empty:
        store.switch_back()
    assert empty.value.reason == Reason.NOTHING_TO_ROLL_BACK
    _install_and_commit(store, v1)
    store.install(v2.release, v2.source, v2.sha256)
    with pytest.raises(UpdateError) as uncommitted:
        store.switch_back()
    assert uncommitted.value.reason == Reason.NOTHING_TO_ROLL_BACK
    store.begin_activation("b")
    store.commit()
    info = store.switch_back()
    assert info.version == "1.0"
    state = store.state()
    assert state.active == "a"
    assert state.last_result is not None
    assert state.last_result["reason"] == "operator_rollback"
    assert _on_disk(root) == state


def test_refused_slot_operations(root: Path, tmp_path: Path) -> None:
    v1, v2 = Version(tmp_path, 1, "1.0"), Version(tmp_path, 2, "2.0")
    store = SlotStore(root, "kws")
    with pytest.raises(SlotError, match="slot b: is empty"):
        store.begin_activation("b")
    with pytest.raises(SlotError, match="no slot is pending"):
        store.commit()
    with pytest.raises(SlotError, match="no slot is pending"):
        store.abandon(Reason.HEALTH_ERRORS)
    _install_and_commit(store, v1)
    with pytest.raises(SlotError, match=r"holds the active version 1\.0"):
        store.begin_activation("a")
    store.begin_activation(store.install(v2.release, v2.source, v2.sha256))
    v3 = Version(tmp_path, 3, "3.0")
    with pytest.raises(SlotError, match="pending activation"):
        store.install(v3.release, v3.source, v3.sha256)
    other = make_release(v1.data).model_copy(update={"name": "other"})
    with pytest.raises(UpdateError) as wrong_model:
        store.install(other, v1.source, v1.sha256)
    assert wrong_model.value.reason == Reason.MALFORMED_RELEASE


def test_record_result(root: Path) -> None:
    store = SlotStore(root, "kws")
    state = store.record_result("rejected", Reason.TAMPERED, "9.9")
    assert state.last_result is not None
    assert (state.last_result["outcome"], state.last_result["reason"]) == ("rejected", "tampered")
    assert SlotStore(root, "kws").state() == state


@pytest.mark.parametrize("damage", ["truncate", "delete", "nonsense"])
def test_unreadable_state_recovers_from_slot_records(
    root: Path, tmp_path: Path, damage: str
) -> None:
    v1, v2, v3 = (Version(tmp_path, n, f"{n}.0") for n in (1, 2, 3))
    store = SlotStore(root, "kws")
    _install_and_commit(store, v1)
    _install_and_commit(store, v2)
    store.begin_activation(store.install(v3.release, v3.source, v3.sha256))  # into a, pending
    path = root / "kws" / "state.json"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:40])
    elif damage == "delete":
        path.unlink()
    else:
        path.write_text('{"active": "c"}')
    with capture_logs() as logs:
        recovered = SlotStore(root, "kws").state()
    assert [entry["event"] for entry in logs] == ["ota.slot_state_recovered"]
    assert (recovered.active, recovered.pending, recovered.max_release) == ("b", None, 2)
    installed = recovered.slots["a"]
    assert installed is not None
    assert (installed.version, installed.committed) == ("3.0", False)
    assert _on_disk(root) == recovered  # the rebuilt state is written back


def test_unreadable_state_without_complete_slot_has_no_active(root: Path, tmp_path: Path) -> None:
    v1 = Version(tmp_path, 1, "1.0")
    store = SlotStore(root, "kws")
    _install_and_commit(store, v1)
    store.model_path("a").write_bytes(v1.data[:10])  # the only slot file is damaged too
    (root / "kws" / "state.json").write_bytes(b"{")
    recovered = SlotStore(root, "kws").state()
    assert (recovered.active, recovered.slots["a"], recovered.max_release) == (None, None, 1)
    assert recovered.last_result is not None
    assert recovered.last_result["outcome"] == "recovered"


def test_model_name_must_be_plain(root: Path) -> None:
    with pytest.raises(StoreError, match="not a plain name"):
        SlotStore(root, "../etc")


def test_open_removes_temp_files_of_killed_writes(root: Path, tmp_path: Path) -> None:
    v1 = Version(tmp_path, 1, "1.0")
    _install_and_commit(SlotStore(root, "kws"), v1)
    strays = [root / "kws" / ".tmp-state", root / "kws" / "b" / ".tmp-incoming-kws.onnx"]
    for stray in strays:
        stray.parent.mkdir(exist_ok=True)
        stray.write_bytes(b"half")
    store = SlotStore(root, "kws")
    assert [stray.exists() for stray in strays] == [False, False]
    assert store.slot_complete("a")
