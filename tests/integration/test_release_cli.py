"""``fleet keys`` and ``fleet model publish`` as real processes on a real repository directory.

Runs ``python -m fleet`` once ``fleet.cli`` registers the release commands; until then the same
typer apps run through a two-line shim registered the way ``fleet.cli`` will register them.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "digits" / "digits-int8.onnx"
_SHIM = (
    "import typer\n"
    "from edge_runtime.log import configure_logging\n"
    "from fleet.release.cli import keys_app, register_model_commands\n"
    "app = typer.Typer()\n"
    "app.add_typer(keys_app, name='keys')\n"
    "model_app = typer.Typer()\n"
    "register_model_commands(model_app)\n"
    "app.add_typer(model_app, name='model')\n"
    "configure_logging('warning', 'console')\n"
    "app()\n"
)


def _fleet_command() -> list[str]:
    from fleet.cli import app  # only to see whether the lead registered ours

    if "keys" in {group.name for group in app.registered_groups}:
        return [sys.executable, "-m", "fleet"]
    return [sys.executable, "-c", _SHIM]


def fleet(*args: str | Path) -> subprocess.CompletedProcess[str]:
    # Wide: the messages name paths, which must not wrap however deep pytest's tmp_path is
    # (under pytest-xdist it gains a popen-gwN level).
    return subprocess.run(
        [*_fleet_command(), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "300"},
    )


def test_keys_init_then_publish_the_committed_model(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    init = fleet(
        "keys", "init", "--repo", repo, "--root-keys", "3", "--root-threshold", "2", "--json"
    )
    assert init.returncode == 0, init.stderr
    created = json.loads(init.stdout)
    assert created["trusted_root"] == str(repo / "metadata" / "1.root.json")
    assert Path(created["trusted_root"]).is_file()
    assert len(created["roles"]["root"]["keyids"]) == 3
    assert created["roles"]["root"]["threshold"] == 2
    timestamp_key = (
        repo / "keys" / "timestamp" / f"{created['roles']['timestamp']['keyids'][0]}.pem"
    )
    assert stat.S_IMODE(timestamp_key.stat().st_mode) == 0o600

    publish = fleet(
        "model", "publish", MODEL, "--name", "digits", "--version", "2",
        "--hardware", "generic", "--repo", repo, "--json",
    )  # fmt: skip
    assert publish.returncode == 0, publish.stderr
    published = json.loads(publish.stdout)
    data = MODEL.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    assert published["target"] == "models/digits/2/digits-int8.onnx"
    assert (published["length"], published["sha256"]) == (len(data), digest)
    assert (published["release"], published["hardware"]) == (1, ["generic"])
    stored = repo / "targets" / "models" / "digits" / "2" / f"{digest}.digits-int8.onnx"
    assert stored.read_bytes() == data

    small_chunks = fleet(
        "model", "publish", MODEL, "--name", "digits", "--version", "3", "--hardware", "generic",
        "--chunk-size", "1024", "--repo", repo,
    )  # fmt: skip
    assert small_chunks.returncode == 0, small_chunks.stderr
    assert "release 2" in small_chunks.stdout
    assert f"chunks: {-(-len(data) // 1024)} of 1024 bytes" in small_chunks.stdout

    rotate = fleet("keys", "rotate", "targets", "--repo", repo)
    assert rotate.returncode == 0, rotate.stderr
    assert "root version 2" in rotate.stdout
    assert (repo / "metadata" / "2.root.json").is_file()


def test_bad_input_exits_non_zero_with_one_clear_line(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert fleet("keys", "init", "--repo", repo).returncode == 0

    again = fleet("keys", "init", "--repo", repo)
    assert again.returncode == 78
    assert "a TUF repository already exists here" in again.stderr
    assert str(repo / "metadata") in again.stderr

    missing = fleet(
        "model", "publish", tmp_path / "nope.onnx", "--name", "digits", "--version", "2",
        "--hardware", "generic", "--repo", repo,
    )  # fmt: skip
    assert missing.returncode == 78
    assert "no model file" in missing.stderr

    no_repo = fleet(
        "model", "publish", MODEL, "--name", "digits", "--version", "2",
        "--hardware", "generic", "--repo", tmp_path / "elsewhere",
    )  # fmt: skip
    assert no_repo.returncode == 78
    assert "fleet keys init" in no_repo.stderr

    args = (
        "model",
        "publish",
        MODEL,
        "--name",
        "digits",
        "--version",
        "2",
        "--hardware",
        "generic",
    )
    assert fleet(*args, "--repo", repo).returncode == 0
    duplicate = fleet(*args, "--repo", repo)
    assert duplicate.returncode == 65
    assert "already published: digits@2" in duplicate.stderr

    bad_role = fleet("keys", "rotate", "mirror", "--repo", repo)
    assert bad_role.returncode == 78
    assert "unknown role" in bad_role.stderr
    for result in (again, missing, no_repo, duplicate, bad_role):
        assert "Traceback" not in result.stderr
