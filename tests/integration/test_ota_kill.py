"""kill -9 of the real agent at each step of an update, then a restart on the same state dir.

Mid-download (a 16 MB model, killed once 2 MiB are staged),
after staging (at ``ota_verifying`` / ``ota_installed``), and in the health window (a long
window, killed at ``ota_health_check``). After the restart the agent must end on a consistent
model: it finishes the update (fetching only the chunks it did not have, activation attempts
counted across restarts) or rolls it back (``crash_loop`` once the attempts are used up).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest

from edge_contract.reasons import Reason
from edge_contract.release import ModelRelease, release_from_custom
from tests.integration.ota_harness import (
    DIGITS,
    Fleet,
    assert_serving,
    big_model,
    commit_v1,
    fetch_requests,
    publish_cli,
    restart_agent,
    settled_fetch_count,
    sigstop,
    staged_chunks,
    state_dir,
    target_of,
    trickle,
    wait_count,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LONG_WINDOW = {"OTA__HEALTH__DURATION_S": "60"}


def slot_state(fleet: Fleet) -> dict[str, Any]:
    path = state_dir(fleet) / "ota" / "models" / "digits" / "state.json"
    state: dict[str, Any] = json.loads(path.read_text())
    return state


def matching_chunks(part: Path, release: ModelRelease) -> set[int]:
    """The chunks of a staged part file whose bytes match their signed hashes."""
    data = part.read_bytes()
    kept = set()
    for index, digest in enumerate(release.chunks):
        start, length = release.chunk_range(index)
        if hashlib.sha256(data[start : start + length]).hexdigest() == digest:
            kept.add(index)
    return kept


def assert_active_file(fleet: Fleet, source: Path) -> None:
    """The active slot holds exactly ``source``'s bytes, and nothing is pending."""
    state = slot_state(fleet)
    assert state["pending"] is None, state
    info = state["slots"][state["active"]]
    slot_file = state_dir(fleet) / "ota" / "models" / "digits" / state["active"] / info["file_name"]
    assert slot_file.read_bytes() == source.read_bytes()


def test_kill_mid_download_resumes_from_the_staged_chunks(fleet: Fleet) -> None:
    """A 16 MB model killed once 2 MiB are staged: the restarted agent keeps the chunks of
    its part file that match their signed hashes and fetches only the others."""
    model = big_model(fleet.tmp / "big", hidden=56_000)
    publish_cli(fleet.repo_dir, model, "3")
    target = target_of(fleet.repo_dir, "3")
    release = release_from_custom(target.custom, target=target.path)
    part = state_dir(fleet) / "ota" / "staging" / target.hashes["sha256"] / "part"
    commit_v1(fleet)
    assert fleet.agent is not None
    # The agent runs in short slices from before the deploy on, so the kill lands mid-download
    # however fast this machine moves 16 MB: the deploy command alone can take as long to
    # return as the whole download takes, and a poll of the part file can miss all of it.
    sigstop(fleet.agent)
    fleet.deploy("digits@3")
    trickle(
        fleet.agent,
        lambda: part.exists() and part.stat().st_size >= 2 * 1024 * 1024,
        40,
        "2 MiB of digits@3 staged",
    )
    fleet.agent.kill()
    kept = matching_chunks(part, release)
    assert 0 < len(kept) < len(release.chunks), f"{len(kept)} of {len(release.chunks)} staged"
    asked_before = settled_fetch_count(fleet)

    fleet.start_agent()
    fleet.wait_event("ota_committed", version="3")
    again = {
        (r["offset"], r["length"])
        for r in fetch_requests(fleet)[asked_before:]
        if r["path"].startswith("targets/")
    }
    for index in kept:
        start, length = release.chunk_range(index)
        overlapping = [r for r in again if r[0] < start + length and start < r[0] + r[1]]
        assert not overlapping, f"verified chunk {index} fetched again: {overlapping}"
    kept_bytes = sum(release.chunk_range(index)[1] for index in kept)
    assert sum(length for _, length in again) <= release.length - kept_bytes
    assert_active_file(fleet, model)
    assert staged_chunks(fleet) == []
    assert_serving(fleet, "3")


@pytest.mark.parametrize("step", ["ota_verifying", "ota_installed"])
def test_kill_after_staging_finishes_the_update(fleet: Fleet, step: str) -> None:
    commit_v1(fleet)
    fleet.deploy("digits@2")
    fleet.wait_event(step, version="2")
    assert fleet.agent is not None
    fleet.agent.kill()
    state = slot_state(fleet)  # consistent on disk: v1 still the committed, active slot
    assert state["slots"][state["active"]]["version"] == "1", state

    fleet.start_agent()
    fleet.wait_event("ota_committed", version="2")
    assert_active_file(fleet, DIGITS / "digits-int8.onnx")
    assert staged_chunks(fleet) == []
    assert_serving(fleet, "2")


def test_kill_in_the_health_window_resumes_the_activation(fleet: Fleet) -> None:
    commit_v1(fleet)
    restart_agent(fleet, kill=False, **LONG_WINDOW)
    fleet.deploy("digits@2")
    fleet.wait_event("ota_health_check", version="2")
    assert fleet.agent is not None
    fleet.agent.kill()
    state = slot_state(fleet)
    assert (state["pending"], state["attempts"]) == (other(state["active"]), 1), state

    fleet.start_agent()  # a short window this time
    fleet.wait_event("ota_activating", version="2", attempt=2)
    fleet.wait_event("ota_committed", version="2")
    assert_active_file(fleet, DIGITS / "digits-int8.onnx")
    assert_serving(fleet, "2")


def _crash_loop(fleet: Fleet) -> dict[str, Any]:
    """digits@2 activated twice with OTA__HEALTH__MAX_ATTEMPTS=2, the agent killed in both
    health windows, then started again; returns the rollback event."""
    env = {**LONG_WINDOW, "OTA__HEALTH__MAX_ATTEMPTS": "2"}
    commit_v1(fleet)
    restart_agent(fleet, kill=False, **env)
    fleet.deploy("digits@2")
    for attempt in (1, 2):
        wait_count(fleet, "ota_health_check", attempt, version="2")
        restart_agent(fleet, **env)  # kill -9, then start again
    return fleet.wait_event("ota_rolled_back", version="2")


def test_kill_in_every_health_window_is_a_crash_loop_rolled_back(fleet: Fleet) -> None:
    event = _crash_loop(fleet)
    assert event["reason"] == Reason.CRASH_LOOP, event
    activations = [e["attempt"] for e in fleet.events("ota_activating") if e["version"] == "2"]
    assert activations[:2] == [1, 2], activations
    state = slot_state(fleet)
    assert state["slots"][state["active"]]["version"] == "1", state
    assert state["last_result"]["reason"] == Reason.CRASH_LOOP, state


def test_crash_loop_rollback_is_not_undone_by_the_pending_desired_state(fleet: Fleet) -> None:
    _crash_loop(fleet)
    time.sleep(2)  # room for a re-activation to start (it comes within milliseconds)
    state = slot_state(fleet)
    assert state["pending"] is None, state
    # Events are at-least-once across a kill -9 (the outbox resends what it had not deleted),
    # so attempts are counted by number, not by message.
    attempts = {e["attempt"] for e in fleet.events("ota_activating") if e["version"] == "2"}
    assert attempts == {1, 2}, attempts
    assert_active_file(fleet, DIGITS / "digits-fp32.onnx")
    assert_serving(fleet, "1")


def other(slot: str) -> str:
    return "b" if slot == "a" else "a"
