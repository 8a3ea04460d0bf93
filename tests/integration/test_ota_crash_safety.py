"""kill -9 at random points of chunk staging and slot installs leaves a consistent store.

A child process (``sys.executable -c CHILD``) stages a model chunk by chunk, assembles it,
installs it into the inactive slot, activates and commits (or abandons) it, in a loop that
alternates two model files with a growing release counter; every other run installs straight
from the file, without staging, so that more kills land inside the install steps. The test
kills it with SIGKILL after a random delay, a bounded number of times, and after each kill
checks, from the raw files (without the repairing code paths): state.json parses; every slot
the state names holds a complete file with the recorded sha256 (so the active one does); the
anti-rollback floor never went down; staging holds only chunks that match their signed hashes
(temp files of an interrupted write aside). A last child run then finishes one update on
that store and leaves no temp file behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.ota.fsutil import is_temp
from agent.ota.slots import SlotState
from edge_contract.card import ModelCard, TensorSpec
from edge_contract.release import ModelRelease, chunk_hashes

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
KILLS = 20
CHUNK = 1024
SIZE = 48 * CHUNK + 100

CHILD = """
import json, random, sys
from pathlib import Path
import structlog
structlog.configure(logger_factory=structlog.ReturnLoggerFactory())
from agent.ota import fsutil
from edge_contract.release import ModelRelease
from agent.ota.slots import SlotStore
from agent.ota.staging import ChunkStaging, sweep

state_dir, spec_path, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
once, stage = mode == "once", mode != "install"
variants = [
    (ModelRelease.model_validate(v["release"]), Path(v["data"]), v["sha256"])
    for v in json.loads(spec_path.read_text())
]
store = SlotStore(state_dir / "models", "kws")
staging_root = state_dir / "staging"
print("ready", flush=True)
while True:
    counter = store.state().max_release + 1
    template, source, sha256 = variants[counter % 2]
    release = template.model_copy(update={"release": counter})
    if stage:
        data = source.read_bytes()
        sweep(staging_root, {sha256})
        staging = ChunkStaging(staging_root, release, sha256)
        for index in staging.missing():
            offset, length = release.chunk_range(index)
            staging.store(index, data[offset : offset + length])
        source = staging.assemble(staging_root / f"kws-{counter}.assembled")
    slot = store.install(release, source, sha256)
    if stage:
        fsutil.remove_file(source)
        staging.discard()
    store.begin_activation(slot)
    if not once and random.random() < 0.25:
        store.abandon("health_errors")
        continue
    store.commit()
    if once:
        break
"""


def _variant(directory: Path, seed: int) -> dict[str, object]:
    data = random.Random(seed).randbytes(SIZE)
    path = directory / f"model-{seed}.bin"
    path.write_bytes(data)
    version = f"{seed}.0"
    card = ModelCard(
        name="kws",
        version=version,
        runtime="onnx",
        inputs=(TensorSpec(name="x", dtype="float32", shape=(1, 4)),),
        outputs=(TensorSpec(name="y", dtype="float32", shape=(1, 2)),),
    )
    blocks = [data[offset : offset + CHUNK] for offset in range(0, SIZE, CHUNK)]
    release = ModelRelease(
        name="kws",
        version=version,
        release=1,
        hardware=("test",),
        min_agent_version="0.1",
        file_name="kws.onnx",
        length=SIZE,
        chunk_size=CHUNK,
        chunks=tuple(chunk_hashes(blocks)),
        card=card,
    )
    return {
        "release": release.model_dump(mode="json"),
        "data": str(path),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def _start(state_dir: Path, spec: Path, mode: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-c", CHILD, str(state_dir), str(spec), mode]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _ready(child: subprocess.Popen[bytes]) -> bool:
    """True once the child said it is about to enter its loop; False if it died first."""
    assert child.stdout is not None
    return child.stdout.readline().strip() == b"ready"


def _check_slots(state_dir: Path) -> SlotState | None:
    path = state_dir / "models" / "kws" / "state.json"
    if not path.exists():
        return None
    state = SlotState.model_validate_json(path.read_bytes())
    for slot, info in state.slots.items():
        if info is None:
            continue
        data = (path.parent / slot / info.file_name).read_bytes()
        assert len(data) == info.length, f"slot {slot} is {len(data)} of {info.length} bytes"
        assert hashlib.sha256(data).hexdigest() == info.sha256, f"slot {slot} is not {info}"
    return state


def _check_staging(state_dir: Path, releases: dict[str, ModelRelease]) -> None:
    root = state_dir / "staging"
    if not root.is_dir():
        return
    for directory in root.iterdir():
        if not directory.is_dir():
            assert is_temp(directory) or directory.name.endswith(".assembled"), directory
            continue
        release = releases[directory.name]  # only known releases are ever staged
        names = {entry.name for entry in directory.iterdir() if not is_temp(entry)}
        assert names <= {"part"}, names
        if names:
            # Nothing beyond the signed length is ever staged.
            assert (directory / "part").stat().st_size <= release.length


def test_kill_nine_during_staging_and_install_leaves_a_consistent_store(tmp_path: Path) -> None:
    spec_path = tmp_path / "spec.json"
    variants = [_variant(tmp_path, seed) for seed in (1, 2)]
    spec_path.write_text(json.dumps(variants))
    releases = {str(v["sha256"]): ModelRelease.model_validate(v["release"]) for v in variants}
    state_dir = tmp_path / "state"
    chooser = random.Random(4)
    floor = 0
    for kill in range(KILLS):
        # Every other run skips staging so that more kills land inside the slot install.
        child = _start(state_dir, spec_path, "stage" if kill % 2 else "install")
        try:
            ready = _ready(child)
            if ready:
                time.sleep(chooser.uniform(0.0, 0.25))  # the kill lands anywhere in the loop
            died_early = not ready or child.poll() is not None
        finally:
            if child.poll() is None:
                child.send_signal(signal.SIGKILL)
            _, err = child.communicate(timeout=10)
        assert not died_early, err.decode(errors="replace")[-2000:]
        state = _check_slots(state_dir)
        _check_staging(state_dir, releases)
        if state is not None:
            assert state.max_release >= floor
            floor = state.max_release

    final = _start(state_dir, spec_path, "once")
    _, err = final.communicate(timeout=30)
    assert final.returncode == 0, err.decode(errors="replace")[-2000:]
    state = _check_slots(state_dir)
    assert state is not None
    assert state.active is not None
    assert state.pending is None
    assert state.max_release > floor
    active = state.slots[state.active]
    assert active is not None
    assert active.committed
    assert active.sha256 in releases
    leftovers = [entry for entry in (state_dir / "models").rglob("*") if is_temp(entry)]
    assert leftovers == []
