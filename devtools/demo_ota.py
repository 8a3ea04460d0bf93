"""The demo's OTA act: a signed release of the digits model in a staged rollout.

Before the controller starts, a TUF repository is made in the demo's work dir with the
release code (``fleet.release``) and the committed fp32 digits model is published in it as
digits@3 (the model devices, ``MODEL_DEVICES``, start on the int8 model from their config).
The controller serves it (``fleet serve --repo``, its rollout driver ticking every
``TICK_S``); part-way through the demo, ``fleet rollout start digits@3 --all --stages 1,100%
--health-window 5s --min-accuracy-drop 5pt --max-p95-regression 50%`` runs as an operator
would type it. ``--all`` is every accepted device
with OTA on: the model devices. The controller sends the canary its signed desired state;
the agent checks the signed metadata, downloads the model over MQTT, installs it in an A/B
slot, switches to it while the demo keeps sending it requests, and commits it after a short
health check of its own. Then the controller's gate watches the canary against the devices
still on digits@2 for the health window (p95 latency, error rate, non-finite outputs, drift,
accuracy from feedback) and promotes the rollout to the rest, or halts it and rolls the
canary back. The demo prints each transition of the rollout, read from the controller's
database, with the gate's figures against the thresholds; the line under the table follows
the rollout's phase and the version each model device reports active.

The controller acts only for operators it trusts, and deploys only to accepted devices: the
demo creates an operator key (``operator.pem`` in its work dir, as ``fleet operators keygen``
does), registers it in the controller's database before the controller starts (the ``fleet
operators add --db`` bootstrap), and before the rollout accepts every device the controller
has seen with a signed ``fleet devices accept ID``, then signs the rollout with the same key.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from rich.console import Console

from devtools.demo_model import MODEL_DEVICES, REPO
from fleet.errors import FleetError
from fleet.operators import generate_key, key_id, private_key_pem, public_key_text
from fleet.release.publish import publish_model
from fleet.release.repo import Repository
from fleet.rollouts.model import GateResult, Phase, Transition
from fleet.store import SqliteFleetStore

RELEASE_FILE = REPO / "models" / "digits" / "digits-fp32.onnx"
RELEASE = ("digits", "3")
# The version the rollout replaces: the int8 file the devices start with, as a signed
# release, so the devices run it from an OTA slot (a version to compare with and go back to).
CURRENT_FILE = REPO / "models" / "digits" / "digits-int8.onnx"
CURRENT = ("digits", "2")
OPERATOR = "demo-operator"
TICK_S = 0.5  # the controller's [rollouts] tick_s
WINDOW = "5s"
# A 5 s window holds about 50 labelled predictions per device, where one wrong answer is
# 2 points of accuracy: the demo allows a drop of 5 points (the default is 2). Its p95 is of
# batches of one row, a fraction of a millisecond, on a machine running everything else the
# demo starts: from run to run it moved by more than the default 20% between two copies of
# the same work, so the demo allows 50% (a version twice as slow still halts).
ROLLOUT = (
    "--all", "--stages", "1,100%", "--health-window", WINDOW,
    "--min-accuracy-drop", "5pt", "--max-p95-regression", "50%",
)  # fmt: skip
ACTIVE = {Phase.INSTALLING, Phase.WATCHING, Phase.AWAITING_APPROVAL, Phase.PAUSED}


class DemoRelease:
    """The demo's repository, the agent settings that follow it, and the rollout."""

    def __init__(self, workdir: Path) -> None:
        self.repo_dir = workdir / "repo"
        repo = Repository.init(self.repo_dir)
        for (name, version), source in ((CURRENT, CURRENT_FILE), (RELEASE, RELEASE_FILE)):
            publish_model(repo, source, name=name, version=version, hardware=["generic"])
        self.db = workdir / "fleet.sqlite3"
        self.key_file, self.key_id = _register_operator(workdir)
        self.deployed = False
        self.rolled_out = False
        self.accepted: list[str] = []
        self.deploy_error = ""
        self.current_sent = False
        self.rollout_id: str | None = None
        self.phase: Phase | None = None
        self.stage = ""
        self._shown = 0  # transitions already printed
        Console().print(
            f"operator key {self.key_file} (key id {self.key_id}) registered as {OPERATOR!r}: "
            "the controller refuses rollouts, deploys and devices accept unless signed with it",
            highlight=False,
        )

    def agent_env(self) -> dict[str, str]:
        return {
            "EDGE_AGENT_OTA__ENABLED": "true",
            "EDGE_AGENT_OTA__TRUSTED_ROOT": str(self.repo_dir / "metadata" / "1.root.json"),
            "EDGE_AGENT_OTA__HEALTH__DURATION_S": "2",
            "EDGE_AGENT_OTA__HEALTH__MIN_INFERENCES": "4",
            # The device's own check compares a few dozen sub-millisecond batches with the
            # previous version's: on a shared machine noise alone moves their p95 past the
            # default 1.5x limit, which rolled a device back and halted the rollout. The
            # controller's gate, over the whole window and both groups, is what the demo shows.
            "EDGE_AGENT_OTA__HEALTH__LATENCY_FACTOR": "5",
        }

    def deploy(self, broker_url: str) -> None:
        """Accept the devices, ``fleet deploy digits@2 --all``, then ``fleet rollout start
        digits@3 ...``, as an operator would; in a thread, so the demo's display keeps moving
        meanwhile."""
        self.deployed = True
        threading.Thread(target=self._rollout, args=(broker_url,), daemon=True).start()

    def _rollout(self, broker_url: str) -> None:
        listed = self._fleet("devices", "list", "--json", broker=broker_url)
        if listed.returncode != 0:
            self._failed(listed)
            return
        for device in json.loads(listed.stdout):
            if device.get("admission") != "accepted":
                accepted = self._fleet("devices", "accept", device["device_id"], broker=broker_url)
                if accepted.returncode != 0:
                    self._failed(accepted)
                    return
                self.accepted.append(device["device_id"])
        current = "@".join(CURRENT)
        deployed = self._fleet("deploy", current, "--all", broker=broker_url)
        if deployed.returncode != 0:
            self._failed(deployed)
            return
        self.current_sent = True
        if not self._wait_current():
            self.deploy_error = f"the model devices did not all commit {current} in time"
            return
        release = "@".join(RELEASE)
        started = self._fleet("rollout", "start", release, *ROLLOUT, "--json", broker=broker_url)
        if started.returncode != 0:
            self._failed(started)
            return
        self.rollout_id = json.loads(started.stdout)["summary"]["rollout_id"]
        self.rolled_out = True

    def _wait_current(self, timeout_s: float = 60.0) -> bool:
        """Until every model device reports ``CURRENT`` active (its own store connection:
        this runs on the rollout's thread)."""
        store = SqliteFleetStore(self.db)
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                since = dict.fromkeys(MODEL_DEVICES, 0.0)
                installs = store.installs(CURRENT[0], CURRENT[1], since)
                if all(i.active_version == CURRENT[1] for i in installs.values()):
                    return True
                time.sleep(0.2)
            return False
        finally:
            store.close()

    def _fleet(self, *args: str, broker: str) -> subprocess.CompletedProcess[str]:
        """The ``fleet`` CLI signing as the demo's operator (``FLEET_OPERATOR__KEY_FILE``)."""
        env = {**os.environ, "FLEET_OPERATOR__KEY_FILE": str(self.key_file)}
        return subprocess.run(
            [sys.executable, "-m", "fleet", *args, "--broker", broker],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=env,
        )

    def _failed(self, result: subprocess.CompletedProcess[str]) -> None:
        self.deploy_error = " ".join((result.stderr or result.stdout).strip().splitlines()[-1:])
        self.rolled_out = True

    @property
    def finished(self) -> bool:
        """The rollout has ended (or could not start); False before it starts."""
        return bool(self.deploy_error) or (self.phase is not None and self.phase not in ACTIVE)

    def transitions(self, store: SqliteFleetStore) -> list[str]:
        """A line for each transition of the rollout not shown yet, with the gate's figures."""
        if self.rollout_id is None:
            return []
        try:
            history = store.rollout_history(self.rollout_id)
            state = store.rollout(self.rollout_id)
        except FleetError:
            return []
        self.phase = state.phase if state is not None else None
        self.stage = f"stage {state.stage + 1}/{len(state.spec.stages)}" if state else ""
        new, self._shown = history[self._shown :], len(history)
        return [transition_line(self.rollout_id, t) for t in new]

    def status_line(self, active: dict[str, str | None]) -> str:
        """The rollout's phase and the version each model device reports active."""
        release = "@".join(RELEASE)
        if not self.deployed:
            return (
                f"OTA: signed release {release} published; operator key {self.key_id[:8]} "
                "registered; the staged rollout starts soon"
            )
        if self.deploy_error:
            return f"OTA: fleet rollout start {release} failed: {self.deploy_error}"
        current = "@".join(CURRENT)
        if not self.current_sent:
            return f"OTA: operator {OPERATOR} accepting the devices, then fleet deploy {current}"
        if self.rollout_id is None:
            return (
                f"OTA: fleet deploy {current} --all (signed by {OPERATOR}): the version the "
                f"staged rollout of {release} replaces"
            )
        versions = ", ".join(f"{d} v{active.get(d) or '?'}" for d in MODEL_DEVICES)
        where = f"{self.phase} ({self.stage})" if self.phase in ACTIVE else str(self.phase)
        return f"OTA: rollout {self.rollout_id} of {release} {where}; active: {versions}"


def transition_line(rollout_id: str, t: Transition) -> str:
    """``rollout r-..: watching -> installing: stage 1/2 (1) passed ...; gate pass: ...``."""
    line = f"rollout {rollout_id}: {t.from_phase or 'start'} -> {t.to_phase}: {t.reason}"
    if t.gate is not None:
        line += f" | {gate_line(t.gate)}"
    return line


def gate_line(gate: GateResult) -> str:
    """The gate's outcome and, per metric both versions report, its figures and threshold."""
    figures = "; ".join(v.detail for v in gate.verdicts if v.verdict != "not_reported")
    return f"gate {gate.outcome}: {figures}"


def _register_operator(workdir: Path) -> tuple[Path, str]:
    """An operator key in ``workdir`` (mode 0600), trusted by the demo's controller database."""
    key = generate_key()
    key_file = workdir / "operator.pem"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_key_pem(key))
    public = public_key_text(key.public_key())
    store = SqliteFleetStore(workdir / "fleet.sqlite3")
    try:
        store.add_operator(OPERATOR, public, now=time.time())
    finally:
        store.close()
    return key_file, key_id(public)
