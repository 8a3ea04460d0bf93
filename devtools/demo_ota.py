"""The demo's OTA act: a signed release of the digits model rolled out to ``pi-kitchen``.

Before the controller starts, a TUF repository is made in the demo's work dir with the
release code (``fleet.release``) and the committed fp32 digits model is published in it as
digits@3 (pi-kitchen starts on the int8 model from its config). The controller serves it
(``fleet serve --repo``); part-way through the demo, ``fleet deploy digits@3 --device
pi-kitchen`` runs as an operator would type it. The agent checks the signed metadata,
downloads the model over MQTT, installs it in an A/B slot, switches to it while the demo
keeps sending it requests, and commits it after a short health window. The line under the
table follows the retained reported state the agent publishes at every step.

The controller acts only for operators it trusts, and deploys only to accepted devices: the
demo creates an operator key (``operator.pem`` in its work dir, as ``fleet operators keygen``
does), registers it in the controller's database before the controller starts (the ``fleet
operators add --db`` bootstrap), and before the rollout accepts every device the controller
has seen with a signed ``fleet devices accept ID``, then signs the deploy with the same key.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from devtools.demo_model import MODEL_DEVICE, REPO
from fleet.operators import generate_key, key_id, private_key_pem, public_key_text
from fleet.release.publish import publish_model
from fleet.release.repo import Repository
from fleet.store import SqliteFleetStore

RELEASE_FILE = REPO / "models" / "digits" / "digits-fp32.onnx"
RELEASE = ("digits", "3")
OPERATOR = "demo-operator"


class DemoRelease:
    """The demo's repository, the agent settings that follow it, and the rollout."""

    def __init__(self, workdir: Path) -> None:
        self.repo_dir = workdir / "repo"
        repo = Repository.init(self.repo_dir)
        name, version = RELEASE
        publish_model(repo, RELEASE_FILE, name=name, version=version, hardware=["generic"])
        self.key_file, self.key_id = _register_operator(workdir)
        self.deployed = False
        self.rolled_out = False
        self.accepted: list[str] = []
        self.deploy_error = ""
        Console().print(
            f"operator key {self.key_file} (key id {self.key_id}) registered as {OPERATOR!r}: "
            "the controller refuses deploy, rollback and devices accept unless signed with it",
            highlight=False,
        )

    def agent_env(self) -> dict[str, str]:
        return {
            "EDGE_AGENT_OTA__ENABLED": "true",
            "EDGE_AGENT_OTA__TRUSTED_ROOT": str(self.repo_dir / "metadata" / "1.root.json"),
            "EDGE_AGENT_OTA__HEALTH__DURATION_S": "4",
            "EDGE_AGENT_OTA__HEALTH__MIN_INFERENCES": "4",
        }

    def deploy(self, broker_url: str) -> None:
        """Accept the devices, then ``fleet deploy digits@3 --device pi-kitchen``, as an
        operator would; in a thread, so the demo's display keeps moving meanwhile."""
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
        release = "@".join(RELEASE)
        deployed = self._fleet("deploy", release, "--device", MODEL_DEVICE, broker=broker_url)
        if deployed.returncode != 0:
            self._failed(deployed)
        self.rolled_out = True

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

    def status_line(self, reported: dict[str, Any] | None) -> str:
        release = "@".join(RELEASE)
        if not self.deployed:
            return (
                f"OTA: signed release {release} published; operator key {self.key_id[:8]} "
                "registered; the rollout starts soon"
            )
        if self.deploy_error:
            return f"OTA: fleet deploy {release} failed: {self.deploy_error}"
        if not self.rolled_out:
            return f"OTA: operator {OPERATOR} accepting the devices, then fleet deploy {release}"
        model = ((reported or {}).get("models") or {}).get(RELEASE[0]) or {}
        step = model.get("step") or "requested"
        progress = model.get("progress")
        active = (model.get("active") or {}).get("version")
        result = model.get("last_result") or {}
        line = f"OTA on {MODEL_DEVICE}: fleet deploy {release} (signed by {OPERATOR}) -> {step}"
        if progress is not None:
            line += f" {progress}%"
        if result.get("reason"):
            line += f" ({result['reason']}: {result.get('detail')})"
        if active:
            line += f"; active version {active}"
        return line


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
