"""The OTA test bench: a TUF repository with the committed digits models published, the real
controller serving it (`fleet serve` with `[ota] repo`), a recorder on the device's topics, and
helpers to start the agent, deploy through the real `fleet` CLI and wait for OTA events."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import paho.mqtt.client as paho
from onnx import TensorProto, helper, numpy_helper
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, MetaFile, Snapshot, Targets, Timestamp

from devtools.localbroker import PrivateBroker
from edge_contract.desired import DesiredState
from edge_contract.release import ModelRelease, Target, release_from_custom
from fleet.release.publish import publish_model
from fleet.release.repo import Repository, repository_lock, sign_desired
from tests.integration.harness import (
    REPO,
    ManagedProcess,
    Recorder,
    agent_process,
    fleet_cli,
    register_operator,
    start_controller,
    wait_until,
)

DIGITS = REPO / "models" / "digits"
DEVICE = "ota-dev"
GENERIC = ["generic"]


@dataclass
class Fleet:
    tmp: Path
    broker: PrivateBroker
    repo_dir: Path
    recorder: Recorder
    operator_key: Path | None = None
    agent: ManagedProcess | None = None
    controller: ManagedProcess | None = None
    # More agents on the same broker, by device id (``start_agent_as``; rollouts).
    agents: dict[str, ManagedProcess] = field(default_factory=dict)

    def start_agent(self, **env: str) -> ManagedProcess:
        settings = {
            "OTA__ENABLED": "true",
            "OTA__TRUSTED_ROOT": str(self.repo_dir / "metadata" / "1.root.json"),
            "OTA__HEALTH__DURATION_S": "1",
            "OTA__HEALTH__MIN_INFERENCES": "0",
            "OTA__RETRY_S": "2",
            "INFERENCE__REST": "false",
            **env,
        }
        self.agent = agent_process(self.tmp, self.broker.port, DEVICE, **settings).start()
        return self.agent

    def start_agent_as(self, device_id: str, **env: str) -> ManagedProcess:
        """Another agent with OTA, as ``device_id`` (its own state dir and log)."""
        settings = {
            "OTA__ENABLED": "true",
            "OTA__TRUSTED_ROOT": str(self.repo_dir / "metadata" / "1.root.json"),
            "OTA__HEALTH__DURATION_S": "1",
            "OTA__HEALTH__MIN_INFERENCES": "0",
            "OTA__RETRY_S": "2",
            "INFERENCE__REST": "false",
            **env,
        }
        agent = agent_process(self.tmp, self.broker.port, device_id, **settings).start()
        self.agents[device_id] = agent
        return agent

    def active_version_of(self, device_id: str) -> str | None:
        """The active digits version ``device_id`` last reported (needs a recorder on it)."""
        bodies = [
            body
            for topic, body, _retained in list(self.recorder.messages)
            if topic == f"fleet/{device_id}/reported"
        ]
        model = ((bodies[-1] if bodies else {}).get("models") or {}).get("digits") or {}
        version: str | None = (model.get("active") or {}).get("version")
        return version

    def cli(self, *args: str) -> Any:
        """The `fleet` CLI as the registered operator (its key in FLEET_OPERATOR__KEY_FILE)."""
        env = {"FLEET_OPERATOR__KEY_FILE": str(self.operator_key)} if self.operator_key else {}
        return fleet_cli(self.broker.port, *args, env=env)

    def events(self, name: str) -> list[dict[str, Any]]:
        """The events called ``name``, in arrival order, each once.

        Events are at-least-once: one the broker acknowledged shortly before a ``kill -9``
        is sent again after the restart (its queue row waits for a batched delete,
        docs/mqtt-api.md). The resend is byte-identical, ``ts`` included, so it is dropped
        here; two real emissions differ at least in their millisecond ``ts``.
        """
        seen: set[str] = set()
        unique = []
        for event in self.recorder.bodies("/events"):
            key = json.dumps(event, sort_keys=True)
            if event.get("event") == name and key not in seen:
                seen.add(key)
                unique.append(event)
        return unique

    def wait_event(self, name: str, timeout: float = 40, **match: Any) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            for event in self.events(name):
                if all(event.get(k) == v for k, v in match.items()):
                    return event
            return None

        return wait_until(found, timeout, f"event {name} {match}")

    def reported(self) -> dict[str, Any]:
        bodies = self.recorder.bodies("/reported")
        return bodies[-1] if bodies else {}

    def active_version(self) -> str | None:
        model = (self.reported().get("models") or {}).get("digits") or {}
        return (model.get("active") or {}).get("version")

    def deploy(self, release: str) -> None:
        """`fleet deploy RELEASE --device DEVICE`, checked to succeed."""
        result = self.cli("deploy", release, "--device", DEVICE, "--json")
        assert result.returncode == 0, result.stderr + result.stdout
        assert json.loads(result.stdout)["devices"] == [DEVICE]

    def wait_online(self) -> None:
        """Until the controller knows the device and its reported OTA state, then accept it
        (deploy refuses unknown and pending devices, and devices without OTA)."""

        def known() -> bool:
            shown = self.cli("devices", "show", DEVICE, "--json")
            return shown.returncode == 0 and json.loads(shown.stdout).get("reported") is not None

        wait_until(known, 30, "device and its reported state known to the controller")
        accepted = self.cli("devices", "accept", DEVICE)
        assert accepted.returncode == 0, accepted.stderr + accepted.stdout

    def forge(self, state: DesiredState, *, signer_repo: Repository) -> None:
        """Publish a desired state signed by ``signer_repo``'s online key straight to the broker."""
        payload = sign_desired(state, signer_repo.online_signer("timestamp"))
        self.publish_raw(f"fleet/{DEVICE}/desired", payload)

    def publish_raw(self, topic: str, payload: bytes, *, retain: bool = True) -> None:
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        client.connect("127.0.0.1", self.broker.port)
        client.loop_start()
        try:
            client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)
        finally:
            client.loop_stop()
            client.disconnect()


@contextlib.contextmanager
def ota_fleet(
    tmp_path: Path,
    broker: PrivateBroker,
    *,
    record: str = f"fleet/{DEVICE}/#",
    **controller_env: str,
) -> Iterator[Fleet]:
    """digits@1 (fp32) and digits@2 (int8) published; the controller serving the repository.

    ``record``: the topics the recorder keeps; ``controller_env``: more ``FLEET_*`` settings."""
    repo_dir = tmp_path / "repo"
    repo = Repository.init(repo_dir)
    publish_model(repo, DIGITS / "digits-fp32.onnx", name="digits", version="1", hardware=GENERIC)
    publish_model(repo, DIGITS / "digits-int8.onnx", name="digits", version="2", hardware=GENERIC)
    operator_key = register_operator(tmp_path, tmp_path / "fleet.sqlite3")
    controller = start_controller(tmp_path, broker.port, OTA__REPO=str(repo_dir), **controller_env)
    recorder = Recorder(broker.port, record).start()
    state = Fleet(tmp_path, broker, repo_dir, recorder, operator_key)
    state.controller = controller
    try:
        yield state
    finally:
        recorder.stop()
        if state.agent is not None:
            state.agent.stop()
        for agent in state.agents.values():
            agent.stop()
        if state.controller is not None:
            state.controller.stop()


# -- helpers for the attack, kill and rotation tests (test_ota_attacks/kill/rotation.py) ----------


def release_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m fleet ARGS`` for the commands that take no broker (keys, model publish)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_AGENT_", "FLEET_"))}
    return subprocess.run(
        [sys.executable, "-m", "fleet", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


def publish_cli(
    repo_dir: Path, model_file: Path, version: str, *extra: str, hardware: str = "generic"
) -> dict[str, Any]:
    """``fleet model publish MODEL --name digits --version VERSION``, checked to succeed."""
    result = release_cli(
        "model",
        "publish",
        str(model_file),
        "--name",
        "digits",
        "--version",
        version,
        "--hardware",
        hardware,
        "--repo",
        str(repo_dir),
        "--json",
        *extra,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    published: dict[str, Any] = json.loads(result.stdout)
    return published


def wait_count(fleet: Fleet, name: str, count: int, timeout: float = 40, **match: Any) -> None:
    """Until ``count`` events ``name`` matching ``match`` were recorded."""

    def enough() -> bool:
        found = [e for e in fleet.events(name) if all(e.get(k) == v for k, v in match.items())]
        return len(found) >= count

    wait_until(enough, timeout, f"{count} x event {name} {match}")


def assert_serving(fleet: Fleet, version: str) -> None:
    """The device reports ``version`` active, and the controller shows the same."""
    wait_until(lambda: fleet.active_version() == version, 10, f"reported active {version}")
    shown = json.loads(fleet.cli("devices", "show", DEVICE, "--json").stdout)
    models = (shown.get("reported") or {}).get("models") or {}
    assert ((models.get("digits") or {}).get("active") or {}).get("version") == version, shown


def commit_v1(fleet: Fleet, **env: str) -> None:
    """Start the agent and bring it to digits@1 committed."""
    fleet.start_agent(**env)
    fleet.wait_online()
    fleet.deploy("digits@1")
    fleet.wait_event("ota_committed", version="1")
    assert_serving(fleet, "1")


def restart_agent(fleet: Fleet, *, kill: bool = True, **env: str) -> ManagedProcess:
    """``kill -9`` (or SIGTERM) the agent and start it again on the same state dir."""
    assert fleet.agent is not None
    if kill:
        fleet.agent.kill()
    else:
        fleet.agent.terminate()
    return fleet.start_agent(**env)


def state_dir(fleet: Fleet) -> Path:
    return fleet.tmp / f"state-{DEVICE}"


def staged_chunks(fleet: Fleet) -> list[Path]:
    """Every file under the agent's download staging dir."""
    staging = state_dir(fleet) / "ota" / "staging"
    return sorted(p for p in staging.rglob("*") if p.is_file()) if staging.is_dir() else []


def fetch_requests(fleet: Fleet) -> list[dict[str, Any]]:
    """The repository requests the device published (``fleet/<id>/fetch``), in order."""
    return fleet.recorder.bodies("/fetch")


def settled_fetch_count(fleet: Fleet, quiet_s: float = 0.5, timeout: float = 10) -> int:
    """How many repository requests the recorder holds once none has arrived for ``quiet_s``.

    A killed agent's last requests are already at the broker but may reach the recorder a
    moment later; counting them before they land would charge them to the next agent.
    """
    deadline = time.monotonic() + timeout
    count, since = len(fetch_requests(fleet)), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = len(fetch_requests(fleet))
        if now != count:
            count, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return count
    raise AssertionError(f"repository requests still arriving after {timeout}s")


def target_of(repo_dir: Path, version: str) -> Target:
    """The signed target of digits@``version``."""
    repo = Repository.open(repo_dir)
    return next(t for p, t in repo.targets().items() if p.startswith(f"models/digits/{version}/"))


def stored_target(repo_dir: Path, version: str) -> Path:
    """Where the controller keeps the bytes of digits@``version`` (DIR/targets/...)."""
    return Repository.open(repo_dir).target_file_path(target_of(repo_dir, version))


# -- hand-made metadata, as an attacker or a broken release tool would write it ------------------


def _meta_file(version: int, data: bytes) -> MetaFile:
    return MetaFile(version, len(data), {"sha256": hashlib.sha256(data).hexdigest()})


def latest_version(metadata_dir: Path, role: str) -> int:
    """The highest ``<v>.<role>.json`` on disk."""
    return max(int(path.name.split(".", 1)[0]) for path in metadata_dir.glob(f"*.{role}.json"))


def timestamp_version(metadata_dir: Path) -> int:
    return Metadata[Timestamp].from_file(str(metadata_dir / "timestamp.json")).signed.version


def forge_targets_chain(
    repo: Repository,
    *,
    targets_signers: list[CryptoSigner],
    timestamp: int,
    targets_version: int | None = None,
) -> None:
    """Write a new targets version signed by ``targets_signers`` (none: unsigned), then a new
    snapshot and timestamp version ``timestamp`` signed by the real online keys, naming it.

    ``repo`` is opened before any tampering (it refuses to open a repository that does not
    verify) and only lends its online signers. ``targets_version``: name this existing
    targets version instead of writing a new one (an older one makes a targets rollback).
    """
    metadata = repo.metadata_dir
    if targets_version is None:
        current = latest_version(metadata, "targets")
        targets = Metadata[Targets].from_file(str(metadata / f"{current}.targets.json"))
        targets.signed.version = current + 1
        targets.signatures.clear()
        for signer in targets_signers:
            targets.sign(signer, append=True)
        (metadata / f"{current + 1}.targets.json").write_bytes(targets.to_bytes())
        targets_version = current + 1
    targets_bytes = (metadata / f"{targets_version}.targets.json").read_bytes()
    newest = latest_version(metadata, "snapshot")
    snapshot = Metadata[Snapshot].from_file(str(metadata / f"{newest}.snapshot.json"))
    snapshot.signed.version = newest + 1
    snapshot.signed.meta["targets.json"] = _meta_file(targets_version, targets_bytes)
    snapshot.sign(repo.online_signer("snapshot"))
    snapshot_bytes = snapshot.to_bytes()
    (metadata / f"{newest + 1}.snapshot.json").write_bytes(snapshot_bytes)
    write_timestamp(repo, _meta_file(newest + 1, snapshot_bytes), version=timestamp)


def snapshot_meta(metadata_dir: Path, version: int) -> MetaFile:
    """The timestamp's description of the existing ``<version>.snapshot.json``."""
    return _meta_file(version, (metadata_dir / f"{version}.snapshot.json").read_bytes())


def write_timestamp(
    repo: Repository,
    snapshot: MetaFile,
    *,
    version: int,
    expires_in: timedelta = timedelta(hours=1),
) -> None:
    """timestamp.json version ``version`` naming ``snapshot``, signed by the real online key."""
    timestamp = Metadata(
        Timestamp(
            version=version,
            expires=datetime.now(UTC).replace(microsecond=0) + expires_in,
            snapshot_meta=snapshot,
        )
    )
    timestamp.sign(repo.online_signer("timestamp"))
    (repo.metadata_dir / "timestamp.json").write_bytes(timestamp.to_bytes())


def craft_release(repo_dir: Path, version: str, release: int) -> str:
    """Sign digits-fp32.onnx as digits@``version`` with release counter ``release`` whatever
    was published before (what `fleet model publish` refuses: a broken or hostile release
    tool holding the targets key). Returns the target path."""
    model = DIGITS / "digits-fp32.onnx"
    base = target_of(repo_dir, "1")
    facts = release_from_custom(base.custom, target=base.path)
    card = facts.card.model_copy(update={"version": version})
    crafted = ModelRelease.model_validate(
        facts.model_dump() | {"version": version, "release": release, "card": card}
    )
    with repository_lock(repo_dir):
        Repository.open(repo_dir).add_target(crafted.target_path, model, crafted.custom())
    return crafted.target_path


# -- hand-made models with the digits I/O contract ------------------------------------------------

GOLDEN_SOURCE = DIGITS / "digits-fp32.onnx.card.json"


def write_model(
    directory: Path, file_name: str, graph_nodes: list[Any], weights: dict[str, Any]
) -> Path:
    """An ONNX model ``pixels`` float32 [-1, 64] -> ``probabilities`` float32 [-1, 10] from
    ``graph_nodes``, with a card (digits' contract) whose golden output is what onnxruntime
    computes for digits' golden input."""

    graph = helper.make_graph(
        graph_nodes,
        file_name,
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 10])],
        [numpy_helper.from_array(np.asarray(v), name=k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / file_name
    path.write_bytes(model.SerializeToString())
    card = json.loads(GOLDEN_SOURCE.read_text())
    golden_input = np.asarray(card["golden"]["inputs"]["pixels"], dtype=np.float32)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = session.run(["probabilities"], {"pixels": golden_input})
    card["golden"]["outputs"] = {"probabilities": output.tolist()}
    card["golden"]["atol"] = 1e-3
    card.pop("reference", None)
    card["description"] = f"test model {file_name}"
    Path(f"{path}.card.json").write_text(json.dumps(card, indent=1))
    return path


def _dense_nodes(hidden: int, seed: int) -> tuple[list[Any], dict[str, Any]]:

    rng = np.random.default_rng(seed)
    weights = {
        "w1": rng.standard_normal((64, hidden)).astype(np.float32) * 0.1,
        "w2": rng.standard_normal((hidden, 10)).astype(np.float32) * 0.1,
    }
    nodes = [
        helper.make_node("MatMul", ["pixels", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["logits"]),
    ]
    return nodes, weights


def big_model(directory: Path, hidden: int = 4096) -> Path:
    """A fast model whose file is large (``hidden`` x 74 float32 weights: 4096 -> 1.2 MB)."""

    nodes, weights = _dense_nodes(hidden, seed=1)
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1))
    return write_model(directory, "digits-big.onnx", nodes, weights)


def slow_model(directory: Path, size: int = 256, rounds: int = 8) -> Path:
    """A small file that takes milliseconds per inference: ``rounds`` input-dependent
    ``size`` x ``size`` matrix products per example (nothing for the optimizer to fold)."""

    rng = np.random.default_rng(2)
    weights = {
        "w1": rng.standard_normal((64, size)).astype(np.float32) * 0.1,
        "c": rng.standard_normal((size, size)).astype(np.float32) * 0.1,
        "tiles": np.asarray([1, size, 1], dtype=np.int64),
        "axis1": np.asarray([1], dtype=np.int64),
        "scale": np.asarray(1.0 / size, dtype=np.float32),
        "w2": rng.standard_normal((size, 10)).astype(np.float32) * 0.1,
    }
    nodes = [
        helper.make_node("MatMul", ["pixels", "w1"], ["h"]),
        helper.make_node("Tanh", ["h"], ["t"]),
        helper.make_node("Unsqueeze", ["t", "axis1"], ["row"]),
        helper.make_node("Tile", ["row", "tiles"], ["tiled"]),
        helper.make_node("Add", ["tiled", "c"], ["m0"]),
    ]
    current = "m0"
    for index in range(rounds):
        nodes += [
            helper.make_node("MatMul", [current, current], [f"p{index}"]),
            helper.make_node("Mul", [f"p{index}", "scale"], [f"s{index}"]),
            helper.make_node("Tanh", [f"s{index}"], [f"m{index + 1}"]),
        ]
        current = f"m{index + 1}"
    nodes += [
        helper.make_node("ReduceMean", [current], ["mean"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["mean", "w2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    return write_model(directory, "digits-slow.onnx", nodes, weights)


def nan_model(directory: Path) -> Path:
    """Passes its golden check, but an all-zero input gives NaN: the output is
    ``softmax + 0 * log(sum(pixels))``, and log 0 = -inf, 0 * -inf = NaN."""

    nodes, weights = _dense_nodes(32, seed=3)
    weights["zero"] = np.asarray(0.0, dtype=np.float32)
    weights["axis1"] = np.asarray([1], dtype=np.int64)
    nodes += [
        helper.make_node("Softmax", ["logits"], ["p"], axis=-1),
        helper.make_node("ReduceSum", ["pixels", "axis1"], ["total"], keepdims=1),
        helper.make_node("Log", ["total"], ["log_total"]),
        helper.make_node("Mul", ["log_total", "zero"], ["poison"]),
        helper.make_node("Add", ["p", "poison"], ["probabilities"]),
    ]
    return write_model(directory, "digits-nan.onnx", nodes, weights)


def with_wrong_golden(directory: Path, source: Path) -> Path:
    """A copy of model ``source`` whose card's golden output is changed (the argmax moved)."""
    directory.mkdir(parents=True, exist_ok=True)
    model = directory / source.name
    shutil.copyfile(source, model)
    card = json.loads(Path(f"{source}.card.json").read_text())
    row = card["golden"]["outputs"]["probabilities"][0]
    card["golden"]["outputs"]["probabilities"][0] = row[1:] + row[:1]
    Path(f"{model}.card.json").write_text(json.dumps(card, indent=1))
    return model


# -- the local inference API ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def predict(port: int, rows: list[list[float]], timeout: float = 10) -> tuple[int, dict[str, Any]]:
    """``POST /v1/models/digits:predict``; (HTTP status, JSON body)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/models/digits:predict",
        data=json.dumps({"instances": rows}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


class Hammer:
    """Predict requests in a background thread until stopped (bounded by ``max_s``)."""

    def __init__(self, port: int, rows: list[list[float]], max_s: float = 40) -> None:
        self.port = port
        self.rows = rows
        self.max_s = max_s
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Hammer:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                status, _ = predict(self.port, self.rows, timeout=5)
            except OSError:
                status = 0  # the API not up (yet): try again
                time.sleep(0.05)
            self.statuses.append(status)


def golden_rows() -> list[list[float]]:
    card = json.loads(GOLDEN_SOURCE.read_text())
    rows: list[list[float]] = card["golden"]["inputs"]["pixels"]
    return rows


def sigstop(process: ManagedProcess) -> None:
    assert process.process is not None
    process.process.send_signal(signal.SIGSTOP)


def sigcont(process: ManagedProcess) -> None:
    assert process.process is not None
    process.process.send_signal(signal.SIGCONT)


def trickle(
    process: ManagedProcess,
    done: Callable[[], bool],
    timeout: float,
    what: str,
    slice_s: float = 0.002,
) -> None:
    """Let a ``sigstop``ped ``process`` run ``slice_s`` at a time until ``done()``; it is left
    stopped. A transfer then advances a little per slice, however fast the machine is."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        sigcont(process)
        time.sleep(slice_s)
        sigstop(process)
        time.sleep(0.02)  # what it sent in its slice lands before the next look


def wait_outcome(fleet: Fleet, version: str, timeout: float = 40) -> dict[str, Any]:
    """The first event that ends an update of ``version``: committed, rejected, rolled back."""
    endings = ("ota_committed", "ota_rejected", "ota_rolled_back")

    def found() -> dict[str, Any] | None:
        for event in fleet.recorder.bodies("/events"):
            if event.get("event") in endings and event.get("version") == version:
                return event
        return None

    outcome: dict[str, Any] = wait_until(found, timeout, f"end of the update to {version}")
    return outcome


def publish_burst(fleet: Fleet, messages: list[tuple[str, bytes]], *, request: bool) -> None:
    """Publish ``messages`` (not retained) from one client; ``request``: as MQTT v5 requests
    with a response topic and correlation data, the way a device asks for files."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.connect("127.0.0.1", fleet.broker.port)
    client.loop_start()
    try:
        for topic, payload in messages:
            props = None
            if request:
                props = Properties(PacketTypes.PUBLISH)
                props.ResponseTopic = f"fleet/{DEVICE}/file"
                props.CorrelationData = os.urandom(16)
            client.publish(topic, payload, qos=1, properties=props).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()
