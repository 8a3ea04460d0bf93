"""The demo's OTA act: a signed release of the digits model rolled out to ``pi-kitchen``.

Before the controller starts, a TUF repository is made in the demo's work dir with the
release code (``fleet.release``) and the committed fp32 digits model is published in it as
digits@3 (pi-kitchen starts on the int8 model from its config). The controller serves it
(``fleet serve --repo``); part-way through the demo, ``fleet deploy digits@3 --device
pi-kitchen`` runs as an operator would type it. The agent checks the signed metadata,
downloads the model over MQTT, installs it in an A/B slot, switches to it while the demo
keeps sending it requests, and commits it after a short health window. The line under the
table follows the retained reported state the agent publishes at every step.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from fleet.demo_model import MODEL_DEVICE, REPO
from fleet.release.publish import publish_model
from fleet.release.repo import Repository

RELEASE_FILE = REPO / "models" / "digits" / "digits-fp32.onnx"
RELEASE = ("digits", "3")


class DemoRelease:
    """The demo's repository, the agent settings that follow it, and the rollout."""

    def __init__(self, workdir: Path) -> None:
        self.repo_dir = workdir / "repo"
        repo = Repository.init(self.repo_dir)
        name, version = RELEASE
        publish_model(repo, RELEASE_FILE, name=name, version=version, hardware=["generic"])
        self.deployed = False
        self.deploy_error = ""

    def agent_env(self) -> dict[str, str]:
        return {
            "EDGE_AGENT_OTA__ENABLED": "true",
            "EDGE_AGENT_OTA__TRUSTED_ROOT": str(self.repo_dir / "metadata" / "1.root.json"),
            "EDGE_AGENT_OTA__HEALTH__DURATION_S": "4",
            "EDGE_AGENT_OTA__HEALTH__MIN_INFERENCES": "4",
        }

    def deploy(self, broker_url: str) -> None:
        """``fleet deploy digits@3 --device pi-kitchen``, as an operator would run it."""
        self.deployed = True
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "fleet",
                "deploy",
                "@".join(RELEASE),
                "--device",
                MODEL_DEVICE,
                "--broker",
                broker_url,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            self.deploy_error = " ".join((result.stderr or result.stdout).strip().splitlines()[-1:])

    def status_line(self, reported: dict[str, Any] | None) -> str:
        release = "@".join(RELEASE)
        if not self.deployed:
            return f"OTA: signed release {release} published; the rollout starts soon"
        if self.deploy_error:
            return f"OTA: fleet deploy {release} failed: {self.deploy_error}"
        model = ((reported or {}).get("models") or {}).get(RELEASE[0]) or {}
        step = model.get("step") or "requested"
        progress = model.get("progress")
        active = (model.get("active") or {}).get("version")
        result = model.get("last_result") or {}
        line = f"OTA on {MODEL_DEVICE}: fleet deploy {release} -> {step}"
        if progress is not None:
            line += f" {progress}%"
        if result.get("reason"):
            line += f" ({result['reason']}: {result.get('detail')})"
        if active:
            line += f"; active version {active}"
        return line
