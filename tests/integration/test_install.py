"""Installing on a board: ``make install`` into a scratch root and ``make deb``.

``make install DESTDIR=...`` runs scripts/install.sh against a staging root: a real virtual
environment (``python -m venv`` and ``pip install`` of a wheel built from this tree, its
dependencies from the configured package index), the unit, the config and the state
directory, nothing outside the root. ``make deb`` packages the same layout; the package is
installed with ``dpkg --root`` into a throw-away root whose maintainer scripts run without a
chroot (``--force-script-chrootless``: they see ``DPKG_ROOT`` and stay inside it), so no
container is needed. The units are checked with ``systemd-analyze verify`` and ``security``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PREFIX = "opt/edge-agent"
UNIT = "edge-agent.service"
# The same threshold as the repository's unit (tests/unit/test_deploy_files.py).
MAX_EXPOSURE = 2.0

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _env() -> dict[str, str]:
    """No PYTHONPATH: the installed environment must not import this checkout."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHON"] = shutil.which("python3") or "python3"
    return env


def _make(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every path under ``root``: mode, mtime and (files) content hash, (links) target."""
    listing: dict[str, tuple[int, int, str]] = {}
    for path in [root, *root.rglob("*")]:
        info = path.lstat()
        if path.is_symlink():
            digest = os.readlink(path)
        elif path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            digest = ""
        listing[str(path.relative_to(root))] = (info.st_mode, info.st_mtime_ns, digest)
    return listing


def _run_agent(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed ``edge-agent`` script, run by the environment's interpreter: its shebang
    names /opt/edge-agent/bin/python, the path on the board, not the staging root."""
    bin_dir = root / PREFIX / "bin"
    return subprocess.run(
        [str(bin_dir / "python"), str(bin_dir / "edge-agent"), *args],
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(root)},
        cwd=root,  # not the checkout: `python -c` would import this tree from there
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("destdir")
    output = _make("install", f"DESTDIR={root}").stdout
    # Under a DESTDIR the real system is left alone: the user is named, not created.
    assert "not running: useradd --system" in output, output
    assert "not running systemctl" in output, output
    return root


def test_make_install_lays_out_the_board(installed: Path) -> None:
    root = installed
    assert (root / "etc/edge-agent/agent.toml").read_text() == (
        REPO / "docs/agent.example.toml"
    ).read_text()
    state = root / "var/lib/edge-agent"
    assert state.is_dir() and state.stat().st_mode & 0o777 == 0o700
    script = root / PREFIX / "bin/edge-agent"
    assert script.read_text().splitlines()[0] == "#!/opt/edge-agent/bin/python"
    assert str(root) not in (root / PREFIX / "bin/activate").read_text()
    result = _run_agent(root, "version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("edge-agent "), result.stdout
    # The daemon itself imports from the installed environment (what `run` needs first).
    python = root / PREFIX / "bin/python"
    probe = subprocess.run(
        [str(python), "-c", "import agent.daemon.app, agent; print(agent.__file__)"],
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.startswith(str(root / PREFIX)), probe.stdout
    unit = (root / "etc/systemd/system" / UNIT).read_text()
    assert "ExecStart=/opt/edge-agent/bin/edge-agent run --config" in unit
    assert "\nUser=edge-agent\nGroup=edge-agent\n" in unit and "DynamicUser" not in unit
    # A remote config-set replaces agent.toml: the installed unit opens /etc/edge-agent to
    # the service user (ProtectSystem=strict would keep it read-only), and the directory is
    # group-writable and closed to others (root:edge-agent on a board).
    assert "\nReadWritePaths=/etc/edge-agent\n" in unit and "ConfigurationDirectory" not in unit
    assert (root / "etc/edge-agent").stat().st_mode & 0o777 == 0o770


def test_a_second_install_changes_nothing_and_keeps_the_config(installed: Path) -> None:
    config = installed / "etc/edge-agent/agent.toml"
    config.write_text('device_id = "pi-017"\n')
    before = _snapshot(installed)
    output = _make("install", f"DESTDIR={installed}").stdout
    assert "up to date" in output, output
    assert _snapshot(installed) == before
    assert config.read_text() == 'device_id = "pi-017"\n'


def _jetson_drop_in() -> str:
    """The drop-in docs/install.md shows for Jetson GPU access (its ``ini`` block)."""
    match = re.search(r"```ini\n(.*?)```", (REPO / "docs/install.md").read_text(), re.S)
    assert match, "no ini block in docs/install.md"
    return match.group(1)


def _analysable_unit(installed: Path, tmp_path: Path, *, jetson: bool) -> Path:
    """The installed unit with ExecStart= pointing into the staging root, where the script
    exists (verify insists the binary is there); with the Jetson drop-in's lines appended
    (a second [Service] section: what systemd makes of a drop-in)."""
    text = (installed / "etc/systemd/system" / UNIT).read_text()
    text = text.replace("ExecStart=/opt/", f"ExecStart={installed}/opt/")
    copy = tmp_path / UNIT
    copy.write_text(text + ("\n" + _jetson_drop_in() if jetson else ""))
    return copy


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.parametrize("jetson", [False, True], ids=["unit", "with-jetson-drop-in"])
def test_the_installed_unit_verifies_and_stays_locked_down(
    installed: Path, tmp_path: Path, jetson: bool
) -> None:
    unit = _analysable_unit(installed, tmp_path, jetson=jetson)
    verified = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr
    assert not [line for line in verified.stderr.splitlines() if UNIT in line], verified.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", security.stdout)
    assert match, security.stdout + security.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, security.stdout


def _dpkg(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [
            "dpkg",
            f"--root={root}",
            "--force-script-chrootless",
            "--force-depends",
            "--force-not-root",
            *args,
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="no dpkg-deb")
def test_make_deb_installs_upgrades_and_purges_in_a_scratch_root(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    built = _make("deb", f"INSTALL_ARGS=--out {out}").stdout.strip().splitlines()[-1]
    deb = Path(built)
    assert deb.parent == out and re.fullmatch(r"edge-agent_[^_]+_[a-z0-9]+\.deb", deb.name)

    def deb_query(flag: str, *more: str) -> str:
        return subprocess.run(
            ["dpkg-deb", flag, str(deb), *more],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout

    contents = deb_query("--contents")
    for path in (
        "./opt/edge-agent/bin/edge-agent",
        "./opt/edge-agent/pyvenv.cfg",
        "./lib/systemd/system/edge-agent.service",
        "./etc/edge-agent/agent.toml",
    ):
        assert f" {path}" in contents, path
    assert "./var/lib/edge-agent" not in contents  # postinst makes it
    assert re.search(r"^drwxrwx--- \S+ .* \./etc/edge-agent/$", contents, re.M), contents
    assert deb_query("--info", "conffiles").split() == ["/etc/edge-agent/agent.toml"]

    root = tmp_path / "root"
    (root / "var/lib/dpkg/info").mkdir(parents=True)
    (root / "var/lib/dpkg/updates").mkdir()
    (root / "var/lib/dpkg/status").touch()
    installed = _dpkg(root, "--install", str(deb)).stdout
    # postinst ran (inside the root: DPKG_ROOT) and made the state directory.
    assert "not running: useradd --system" in installed, installed
    assert (root / "var/lib/edge-agent").is_dir()
    assert _run_agent(root, "version").returncode == 0

    # An upgrade (the same package again) keeps a locally changed config.
    config = root / "etc/edge-agent/agent.toml"
    config.write_text('device_id = "pi-017"\n')
    _dpkg(root, "--install", str(deb))
    assert config.read_text() == 'device_id = "pi-017"\n'

    # Remove keeps the config and the state; purge removes both.
    _dpkg(root, "--remove", "edge-agent")
    assert not (root / PREFIX / "bin/edge-agent").exists()
    assert config.exists() and (root / "var/lib/edge-agent").is_dir()
    _dpkg(root, "--purge", "edge-agent")
    assert not config.exists()
    assert not (root / "var/lib/edge-agent").exists()


def test_an_offline_install_from_a_wheel_and_a_wheelhouse(tmp_path: Path) -> None:
    """``--wheel FILE --find-links DIR``: pip gets nothing but that directory (``--no-index``;
    pip's own configuration is switched off and its index is an empty directory, so neither
    a configured index nor find-links can help)."""
    source = tmp_path / "src"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv*", "models", "firmware", "bench", "tests", "dist", "build", "*cache*"
        ),
    )
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        ["python3", "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), str(source)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("edge_fleet-*.whl")
    # The wheelhouse a person copies to the board: the agent's dependencies, fetched here.
    house = tmp_path / "house"
    fetched = subprocess.run(
        ["python3", "-m", "pip", "download", "--quiet", "-d", str(house), str(wheel)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert fetched.returncode == 0, fetched.stderr
    root = tmp_path / "root"
    offline = {k: v for k, v in _env().items() if not k.startswith("PIP_")}
    offline["PIP_CONFIG_FILE"] = os.devnull
    # An index that has nothing: without --no-index pip would look here and find no package.
    offline["PIP_INDEX_URL"] = (tmp_path / "no-index").as_uri()
    result = subprocess.run(
        [
            str(REPO / "scripts/install.sh"),
            "--destdir",
            str(root),
            "--wheel",
            str(wheel),
            "--find-links",
            str(house),
        ],
        env=offline,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Successfully installed" in result.stdout
    assert _run_agent(root, "version").stdout.startswith("edge-agent ")
