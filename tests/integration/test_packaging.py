"""What each audience's install can run: a missing extra is one line naming it, never a traceback.

A board runs ``pip install .`` (the base install: the agent, its MQTT link, TUF, serial); an
operator's machine adds the ``fleet`` extra, a board that runs models the ``inference`` extra.
Both console scripts are installed either way. The first tests build a real base install
(``python -m venv``, then ``pip install`` of a copy of this tree with its real dependencies
from the package index) once for the run and run the installed commands in it. The last
ones run this environment's interpreter with an extra's modules hidden (``sys.modules[name]
= None``, which is what a missing package looks like to ``import`` and ``find_spec``), for the
installs between base and everything: the fleet extra without ``optimize``, the inference
extra without a runtime.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXIT_MISSING_EXTRA = 78
FLEET_EXTRA = (
    "fleet: the fleet controller and CLI need the 'fleet' extra (typer is not installed): "
    "pip install 'edge-fleet[fleet]'"
)
MODEL = REPO / "models" / "digits" / "digits-int8.onnx"

# Left out of the copy that pip builds: never part of the distribution, and slow to copy.
_TOP_LEVEL_SKIPPED = {"models", "firmware", "bench", "docs", "tests", "build", "dist"}
_SKIPPED_ANYWHERE = {"__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}


def inference_extra(module: str) -> str:
    return (
        "edge-agent: models and `edge-agent serve` need the 'inference' extra "
        f"({module} is not installed): pip install 'edge-fleet[inference]'"
    )


def optimize_extra(module: str) -> str:
    return (
        f"fleet: fleet model optimize needs the 'optimize' extra ({module} is not installed): "
        "pip install 'edge-fleet[optimize]'"
    )


def _ignore(directory: str, names: list[str]) -> set[str]:
    skipped = {n for n in names if n in _SKIPPED_ANYWHERE or n.endswith(".egg-info")}
    skipped |= {n for n in names if n.startswith(".") and n != ".gitignore"}
    if Path(directory) == REPO:
        skipped |= _TOP_LEVEL_SKIPPED & set(names)
    return skipped


def _build_base_install(root: Path) -> None:
    """``python -m venv ROOT/venv`` and ``pip install`` of a copy of this tree into it."""
    source = root / "src"
    # A copy: building in the checkout would leave build/ and *.egg-info in it.
    shutil.copytree(REPO, source, ignore=_ignore)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
    result = subprocess.run(
        [*pip, "--quiet", str(source)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"pip install of the base package failed:\n{result.stderr}"


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with ``pip install .`` and nothing else: a board's install.

    Returns its ``bin`` folder. Built once per run: under pytest-xdist (`make test`) the
    module's tests are spread over the workers, which share this run's temporary directory;
    the first to get the lock builds, the others wait and reuse it (the tests only run its
    commands, with their own working directory and HOME)."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root = shared / "base-install"
    with (shared / "base-install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        installed = root / "installed"
        if not installed.exists():
            shutil.rmtree(root, ignore_errors=True)  # what a failed attempt left
            root.mkdir()
            _build_base_install(root)
            installed.touch()
    return root / "venv" / "bin"


def _clean_env(home: Path, bin_dir: Path | None = None) -> dict[str, str]:
    """No PYTHONPATH (the checkout must not stand in for the install), no EDGE_AGENT_* or
    FLEET_* settings, and a HOME without the developer's configuration."""
    path = os.environ.get("PATH", "/usr/bin:/bin")
    return {
        "PATH": path if bin_dir is None else f"{bin_dir}{os.pathsep}{path}",
        "HOME": str(home),
        "LANG": "C.UTF-8",
    }


def _run(
    argv: Sequence[str], *, cwd: Path, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _assert_one_line(result: subprocess.CompletedProcess[str], expected: str) -> None:
    """Exit 78, no traceback, and the line naming the extra as the only non-log line."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    # The agent's structured log lines (JSON) may come first; the message is the one other line.
    lines = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert lines == [expected], output
    assert result.stdout == "", output
    assert result.returncode == EXIT_MISSING_EXTRA, output


def _agent_config(tmp_path: Path, *, with_model: bool) -> Path:
    config = tmp_path / "agent.toml"
    text = (
        'device_id = "pkg-test"\n'
        f'state_dir = "{tmp_path / "state"}"\n'
        '[mqtt]\nhost = "127.0.0.1"\nport = 1\n'  # never reached: port 1 on loopback
        "[inference]\nport = 0\n"
    )
    if with_model:
        text += f'[[models]]\npath = "{MODEL}"\n'
    config.write_text(text)
    return config


def test_the_base_install_is_a_boards(base_venv: Path, tmp_path: Path) -> None:
    """Without extras: no typer, rich or numpy; cryptography is there, so the agent verifies
    TUF and signed directives with pyca/cryptography, not securesystemslib's pure-Python
    fallback."""
    probe = (
        "import importlib.util as u; "
        "print(' '.join(m for m in ('typer', 'rich', 'numpy', 'onnxruntime', 'aiohttp', "
        "'cryptography', 'tuf', 'paho') if u.find_spec(m)))"
    )
    result = _run([str(base_venv / "python"), "-c", probe], cwd=tmp_path, env=_clean_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["cryptography", "tuf", "paho"]


def test_the_dashboards_pages_and_assets_are_installed(base_venv: Path, tmp_path: Path) -> None:
    """The controller serves its dashboard from the installed package (package data in
    pyproject.toml), not from the checkout: templates, scripts, styles, uPlot and its licence."""
    probe = (
        "import importlib.util as u, pathlib; "
        "root = pathlib.Path(u.find_spec('fleet').submodule_search_locations[0]) / 'http'; "
        "print(' '.join(sorted(str(f.relative_to(root)) for f in root.rglob('*') "
        "if f.is_file() and f.suffix != '.py' and '__pycache__' not in f.parts)))"
    )
    result = _run([str(base_venv / "python"), "-c", probe], cwd=tmp_path, env=_clean_env(tmp_path))
    assert result.returncode == 0, result.stderr
    installed = set(result.stdout.split())
    source = REPO / "fleet" / "http"
    shipped = {
        str(f.relative_to(source))
        for directory in ("templates", "static")
        for f in (source / directory).rglob("*")
        if f.is_file()
    }
    assert "static/vendor/uPlot.LICENSE" in shipped and "templates/base.html" in shipped
    assert shipped <= installed, sorted(shipped - installed)


def test_the_agent_runs_on_the_base_install(base_venv: Path, tmp_path: Path) -> None:
    env = _clean_env(tmp_path, base_venv)
    helped = _run([str(base_venv / "edge-agent"), "--help"], cwd=tmp_path, env=env)
    assert helped.returncode == 0, helped.stderr
    assert "check-config" in helped.stdout
    config = _agent_config(tmp_path, with_model=False)
    checked = _run(
        [str(base_venv / "edge-agent"), "check-config", "--config", str(config)],
        cwd=tmp_path,
        env=env,
    )
    assert checked.returncode == 0, checked.stderr
    assert '"device_id": "pkg-test"' in checked.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["fleet", "--help"],
        ["fleet", "--version"],
        ["fleet", "devices", "list", "--broker", "mqtt://127.0.0.1:1"],
        ["python", "-m", "fleet", "devices", "list"],
    ],
    ids=["help", "version", "devices-list", "python-m-fleet"],
)
def test_fleet_without_its_extra_names_it(base_venv: Path, tmp_path: Path, argv: list[str]) -> None:
    command = [str(base_venv / argv[0]), *argv[1:]]
    result = _run(command, cwd=tmp_path, env=_clean_env(tmp_path, base_venv))
    _assert_one_line(result, FLEET_EXTRA)


def test_serve_without_the_inference_extra_names_it(base_venv: Path, tmp_path: Path) -> None:
    command = [str(base_venv / "edge-agent"), "serve", "--model", f"digits={MODEL}", "--port", "0"]
    result = _run(command, cwd=tmp_path, env=_clean_env(tmp_path, base_venv))
    _assert_one_line(result, inference_extra("numpy"))


def test_run_with_a_model_without_the_inference_extra_names_it(
    base_venv: Path, tmp_path: Path
) -> None:
    config = _agent_config(tmp_path, with_model=True)
    command = [str(base_venv / "edge-agent"), "run", "--config", str(config)]
    result = _run(command, cwd=tmp_path, env=_clean_env(tmp_path, base_venv))
    _assert_one_line(result, inference_extra("numpy"))


def _with_hidden(hidden: Sequence[str], module: str, *args: str) -> list[str]:
    """This interpreter running ``python -m module args`` as if ``hidden`` were not installed."""
    code = (
        "import runpy, sys\n"
        f"for name in {list(hidden)!r}:\n"
        "    sys.modules[name] = None\n"
        f"sys.argv = [{module!r}, *sys.argv[1:]]\n"
        f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n"
    )
    return [sys.executable, "-c", code, *args]


@pytest.mark.parametrize(
    ("hidden", "named"),
    [
        (["onnx"], "onnx"),  # imported with the pipeline
        (["matplotlib"], "matplotlib"),  # imported only to draw the report at the end
        (["numpy", "onnxruntime", "onnx", "matplotlib"], "matplotlib"),  # the fleet extra alone
    ],
    ids=["onnx", "matplotlib", "fleet-extra-only"],
)
def test_model_optimize_without_its_extra_names_it(
    tmp_path: Path, hidden: list[str], named: str
) -> None:
    """Before any work is done: no variant files, no report."""
    out = tmp_path / "out"
    argv = _with_hidden(
        hidden,
        "fleet",
        *("model", "optimize", str(REPO / "models" / "digits" / "digits-fp32.onnx")),
        *("--eval", str(REPO / "models" / "digits" / "data" / "eval.npz"), "--out", str(out)),
    )
    env = {**_clean_env(tmp_path), "PYTHONPATH": str(REPO), "COLUMNS": "80"}
    _assert_one_line(_run(argv, cwd=tmp_path, env=env), optimize_extra(named))
    assert not out.exists()


@pytest.mark.parametrize("command", ["serve", "run"])
def test_a_model_without_its_runtime_names_the_inference_extra(
    tmp_path: Path, command: str
) -> None:
    """numpy and the REST service are there, ONNX Runtime is not: the model's load says so."""
    if command == "serve":
        args = ["serve", "--model", f"digits={MODEL}", "--port", "0"]
    else:
        args = ["run", "--config", str(_agent_config(tmp_path, with_model=True))]
    env = {**_clean_env(tmp_path), "PYTHONPATH": str(REPO)}
    result = _run(_with_hidden(["onnxruntime"], "agent", *args), cwd=tmp_path, env=env)
    _assert_one_line(result, inference_extra("onnxruntime"))
