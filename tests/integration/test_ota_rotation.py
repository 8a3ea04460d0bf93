"""Key rotation while a device is offline: it follows the root chain when it comes back.

A device provisioned with ``1.root.json`` commits digits@1 and is stopped. Through the real
CLI the root keys are rotated twice and the targets (release) key once (``fleet keys rotate``:
each writes a new root version signed by the old and the new keys), and a new release is
published with the new targets key and deployed. Started again, the device walks
``2.root.json``, ``3.root.json``, ... (the missing next one answers 404, which ends the walk),
trusts the newest root and commits the new release.
"""

from __future__ import annotations

import json

import pytest
from tuf.api.metadata import Metadata, Root

from fleet.release.repo import Repository
from tests.integration.ota_harness import (
    DIGITS,
    Fleet,
    assert_serving,
    commit_v1,
    fetch_requests,
    publish_cli,
    release_cli,
    state_dir,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_offline_device_follows_root_rotations_when_it_returns(fleet: Fleet) -> None:
    commit_v1(fleet)
    assert fleet.agent is not None
    fleet.agent.terminate()
    old_targets_keys = Repository.open(fleet.repo_dir).keyids("targets")

    root_versions = []
    for role in ("root", "root", "targets"):
        result = release_cli("keys", "rotate", role, "--repo", str(fleet.repo_dir), "--json")
        assert result.returncode == 0, result.stderr + result.stdout
        root_versions.append(json.loads(result.stdout)["root_version"])
    assert root_versions == [2, 3, 4]  # every rotation, targets' too, is a new root version
    repo = Repository.open(fleet.repo_dir)
    assert repo.keyids("targets") != old_targets_keys
    publish_cli(fleet.repo_dir, DIGITS / "digits-student-fp32.onnx", "3")
    fleet.deploy("digits@3")  # retained: the device is offline

    asked_before = len(fetch_requests(fleet))
    fleet.start_agent()
    fleet.wait_event("ota_committed", version="3")
    assert_serving(fleet, "3")
    trusted = Metadata[Root].from_file(str(state_dir(fleet) / "ota" / "tuf" / "root.json"))
    assert trusted.signed.version == repo.root_version == 4
    asked = [r["path"] for r in fetch_requests(fleet)[asked_before:]]
    walked = [p for p in asked if p.endswith(".root.json")]
    assert walked[:4] == [f"metadata/{v}.root.json" for v in (2, 3, 4, 5)], asked
