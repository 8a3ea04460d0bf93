"""The issue's attacks on signed OTA delivery, each through the real agent, Mosquitto, controller
and `fleet` CLI, each starting from digits@1 committed.

The attacker changes files in the repository dir (metadata signed by the wrong key, older or
expired metadata, overlong files, releases a device must not take) or publishes to the broker
(malformed desired states and repository requests). Every attack must be refused with its
machine-readable reason in an ``ota_rejected`` / ``ota_rolled_back`` event, while the device
keeps serving the version it had (its reported state, and the controller's view of it).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner

from edge_contract.desired import DesiredModel, DesiredState
from edge_contract.reasons import Reason
from fleet.release.repo import Repository, repository_lock
from tests.integration.harness import wait_until
from tests.integration.ota_harness import (
    DEVICE,
    DIGITS,
    Fleet,
    Hammer,
    assert_serving,
    commit_v1,
    craft_release,
    fetch_requests,
    forge_targets_chain,
    free_port,
    golden_rows,
    latest_version,
    nan_model,
    predict,
    publish_burst,
    publish_cli,
    release_cli,
    restart_agent,
    slow_model,
    snapshot_meta,
    staged_chunks,
    stored_target,
    target_of,
    timestamp_version,
    wait_count,
    wait_outcome,
    with_wrong_golden,
    write_timestamp,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LATER = timedelta(hours=1)


def never_downloaded(fleet: Fleet, version: str) -> None:
    steps = [e for e in fleet.events("ota_downloading") if e.get("version") == version]
    assert not steps, steps


def test_targets_signed_by_an_unknown_key_or_below_threshold_are_refused(fleet: Fleet) -> None:
    commit_v1(fleet)
    real = Repository.open(fleet.repo_dir)  # lends the real online keys to the forgery
    model = DesiredModel(name="digits", version="2", target=target_of(fleet.repo_dir, "2").path)
    next_timestamp = real.timestamp_version + 1
    cases = [[CryptoSigner.generate_ed25519()], []]  # a key root does not name; no signature
    for count, signers in enumerate(cases, start=1):
        forge_targets_chain(real, targets_signers=signers, timestamp=next_timestamp)
        next_timestamp += 1
        state = DesiredState(
            device_id=DEVICE,
            counter=50 + count,
            expires=datetime.now(UTC) + LATER,
            action="deploy",
            model=model,
        )
        fleet.forge(state, signer_repo=real)
        wait_count(fleet, "ota_rejected", count, reason=Reason.UNTRUSTED_METADATA)
    never_downloaded(fleet, "2")
    assert_serving(fleet, "1")


def test_older_timestamp_snapshot_or_targets_metadata_is_refused(fleet: Fleet) -> None:
    commit_v1(fleet)
    metadata = fleet.repo_dir / "metadata"
    old_timestamp = (metadata / "timestamp.json").read_bytes()
    with repository_lock(fleet.repo_dir):
        real = Repository.open(fleet.repo_dir)
        real.refresh_timestamp()
    fleet.deploy("digits@1")  # the device refreshes, trusts the newer timestamp: a no-op deploy
    wait_count(fleet, "ota_committed", 2, version="1")
    trusted = timestamp_version(metadata)
    trusted_snapshot = latest_version(metadata, "snapshot")

    # 1. The timestamp the device trusted before, put back.
    (metadata / "timestamp.json").write_bytes(old_timestamp)
    fleet.deploy("digits@2")
    wait_count(fleet, "ota_rejected", 1, reason=Reason.METADATA_ROLLBACK)
    # 2. A newer timestamp naming an older snapshot (targets v2: digits@1 only).
    write_timestamp(real, snapshot_meta(metadata, trusted_snapshot - 1), version=trusted + 1)
    fleet.deploy("digits@1")
    wait_count(fleet, "ota_rejected", 2, reason=Reason.METADATA_ROLLBACK)
    # 3. A newer timestamp and snapshot naming an older targets version.
    older_targets = latest_version(metadata, "targets") - 1
    forge_targets_chain(
        real, targets_signers=[], timestamp=trusted + 2, targets_version=older_targets
    )
    fleet.deploy("digits@1")
    wait_count(fleet, "ota_rejected", 3, reason=Reason.METADATA_ROLLBACK)
    never_downloaded(fleet, "2")
    assert_serving(fleet, "1")


def test_expired_timestamp_is_refused(fleet: Fleet) -> None:
    commit_v1(fleet)
    with repository_lock(fleet.repo_dir):
        Repository.open(fleet.repo_dir).refresh_timestamp(timedelta(seconds=-60))
    fleet.deploy("digits@2")
    fleet.wait_event("ota_rejected", reason=Reason.METADATA_EXPIRED)
    never_downloaded(fleet, "2")
    assert_serving(fleet, "1")


def test_lower_release_counter_is_refused_and_only_operator_rollback_goes_back(
    fleet: Fleet,
) -> None:
    commit_v1(fleet)
    fleet.deploy("digits@2")
    fleet.wait_event("ota_committed", version="2")
    refused = release_cli(
        "model",
        "publish",
        str(DIGITS / "digits-fp32.onnx"),
        *("--name", "digits", "--version", "3", "--hardware", "generic"),
        *("--release", "1", "--repo", str(fleet.repo_dir)),
    )
    assert refused.returncode == 65, refused.stderr + refused.stdout
    assert "release counter 1" in refused.stderr, refused.stderr
    craft_release(fleet.repo_dir, "3", release=1)  # signed anyway, by whoever holds the key

    fleet.deploy("digits@3")
    event = fleet.wait_event("ota_rejected", version="3")
    assert event["reason"] == Reason.RELEASE_ROLLBACK, event
    fleet.deploy("digits@1")  # an older release is not "new" either
    event = fleet.wait_event("ota_rejected", version="1")
    assert event["reason"] == Reason.RELEASE_ROLLBACK, event
    never_downloaded(fleet, "3")
    assert_serving(fleet, "2")

    result = fleet.cli("rollback", "--device", DEVICE, "--json")
    assert result.returncode == 0, result.stderr
    fleet.wait_event("ota_rolled_back", reason=Reason.OPERATOR_ROLLBACK, version="1")
    assert_serving(fleet, "1")


def test_model_for_another_hardware_id_is_refused(fleet: Fleet) -> None:
    commit_v1(fleet)
    publish_cli(fleet.repo_dir, DIGITS / "digits-fp32.onnx", "3", hardware="jetson-orin")
    fleet.deploy("digits@3")
    event = fleet.wait_event("ota_rejected", version="3")
    assert event["reason"] == Reason.WRONG_HARDWARE, event
    never_downloaded(fleet, "3")
    assert_serving(fleet, "1")


def test_target_file_longer_than_signed_is_refused(fleet: Fleet) -> None:
    commit_v1(fleet)
    stored = stored_target(fleet.repo_dir, "2")
    with stored.open("ab") as handle:
        handle.write(b"\0" * 300_000)  # beyond the signed length: more than a chunk's worth
    fleet.deploy("digits@2")
    event = wait_outcome(fleet, "2")
    assert (event["event"], event.get("reason")) == ("ota_rejected", Reason.TOO_LONG), event
    assert staged_chunks(fleet) == []
    assert_serving(fleet, "1")


def test_metadata_longer_than_its_limit_is_refused(fleet: Fleet) -> None:
    """Endless data in metadata: ngclient stops at the signed (snapshot) or configured
    (timestamp) length. Spaces keep the JSON valid, so the controller still opens it."""
    commit_v1(fleet)
    publish_cli(fleet.repo_dir, DIGITS / "digits-fp32.onnx", "3")
    metadata = fleet.repo_dir / "metadata"
    snapshot = metadata / f"{latest_version(metadata, 'snapshot')}.snapshot.json"
    with snapshot.open("ab") as handle:
        handle.write(b" " * 64 * 1024)
    fleet.deploy("digits@3")
    wait_count(fleet, "ota_rejected", 1, reason=Reason.TOO_LONG)
    with (metadata / "timestamp.json").open("ab") as handle:
        handle.write(b" " * 64 * 1024)
    fleet.deploy("digits@3")
    wait_count(fleet, "ota_rejected", 2, reason=Reason.TOO_LONG)
    never_downloaded(fleet, "3")
    assert_serving(fleet, "1")


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("digits-int8.onnx", id="another-model"),
        # The bytes of the serving v1 under a new release: checked, not taken as a no-op.
        pytest.param("digits-fp32.onnx", id="same-bytes-as-v1"),
    ],
)
def test_model_failing_its_golden_check_is_rolled_back(fleet: Fleet, source: str) -> None:
    commit_v1(fleet)
    model = with_wrong_golden(fleet.tmp / "golden", DIGITS / source)
    publish_cli(fleet.repo_dir, model, "3")
    fleet.deploy("digits@3")
    event = wait_outcome(fleet, "3")
    assert (event["event"], event.get("reason")) == ("ota_rolled_back", Reason.GOLDEN_FAILED)
    assert_serving(fleet, "1")


def _health_window_rolls_back(fleet: Fleet, model: Path, rows: list[list[float]]) -> dict[str, Any]:
    """digits@1 then ``model`` as digits@3 under predict traffic of ``rows``; the event."""
    port = free_port()
    publish_cli(fleet.repo_dir, model, "3")
    with Hammer(port, rows) as hammer:  # traffic for both windows and v1's latency baseline
        commit_v1(
            fleet,
            INFERENCE__REST="true",
            INFERENCE__PORT=str(port),
            OTA__HEALTH__DURATION_S="2",
            OTA__HEALTH__MIN_INFERENCES="20",
        )
        fleet.deploy("digits@3")
        event = fleet.wait_event("ota_rolled_back", version="3")
    assert 200 in hammer.statuses
    status, body = predict(port, golden_rows())
    assert status == 200, body
    assert body["model_spec"]["version"] == "1", body
    assert_serving(fleet, "1")
    return event


def test_latency_regression_in_the_health_window_is_rolled_back(fleet: Fleet) -> None:
    event = _health_window_rolls_back(fleet, slow_model(fleet.tmp / "slow"), golden_rows())
    assert event["reason"] == Reason.HEALTH_LATENCY, event


def test_nonfinite_outputs_in_the_health_window_are_rolled_back(fleet: Fleet) -> None:
    zeros = [[0.0] * 64]  # the golden input passes; all zeros make log(0) -> NaN
    event = _health_window_rolls_back(fleet, nan_model(fleet.tmp / "nan"), zeros)
    assert event["reason"] == Reason.HEALTH_NONFINITE, event


def test_malformed_desired_state_and_repository_requests(fleet: Fleet) -> None:
    commit_v1(fleet)
    garbage = [b"\xff\xfe{not json", b"[1, 2, 3]", b'{"signed": "x", "signatures": {}}']
    for count, payload in enumerate(garbage, start=1):
        fleet.publish_raw(f"fleet/{DEVICE}/desired", payload)
        wait_count(fleet, "ota_rejected", count, reason=Reason.MALFORMED_DESIRED)
    junk = [b"\xff\x00garbage", b"[]", b'{"path": 7}', b'{"path": "../../etc/passwd"}']
    publish_burst(fleet, [(f"fleet/{DEVICE}/fetch", p) for p in junk], request=False)
    replies = len(fleet.recorder.bodies("/file"))
    publish_burst(fleet, [(f"fleet/{DEVICE}/fetch", p) for p in junk], request=True)
    wait_until(
        lambda: len(fleet.recorder.bodies("/file")) >= replies + len(junk),
        10,
        "the controller's answers (400) to the junk requests",
    )
    publish_burst(fleet, [(f"fleet/{DEVICE}/file", p) for p in junk], request=False)
    assert_serving(fleet, "1")
    fleet.deploy("digits@2")  # the controller still serves files, the agent still updates
    fleet.wait_event("ota_committed", version="2")
    assert fleet.controller is not None and fleet.controller.alive
    assert fleet.agent is not None and fleet.agent.alive
    assert_serving(fleet, "2")


def test_unset_clock_defers_without_downloading(fleet: Fleet) -> None:
    commit_v1(fleet)
    restart_agent(fleet, kill=False, OTA__CLOCK_FLOOR="2100-01-01T00:00:00Z", OTA__RETRY_S="0.5")
    requests_before = len(fetch_requests(fleet))
    fleet.deploy("digits@2")
    event = fleet.wait_event("ota_deferred")
    assert event["reason"] == Reason.CLOCK_UNSET, event
    time.sleep(2)  # several silent retries (OTA__RETRY_S), none of which may fetch anything
    assert len(fetch_requests(fleet)) == requests_before, "nothing was fetched"
    never_downloaded(fleet, "2")
    assert not fleet.events("ota_rejected")
    assert_serving(fleet, "1")
    restart_agent(fleet, kill=False)  # time synced: the deferred update goes ahead
    fleet.wait_event("ota_committed", version="2")
    assert_serving(fleet, "2")
