"""Deployment files: the systemd units and the example configs stay in step with the code.

The example configs must load through the real loaders and mention every setting of the config
models, so adding a field without documenting it fails here. The units must keep the contract
the daemons rely on (Type=notify, exit code 78 not restarted, state and config directories) and
pass ``systemd-analyze verify`` and a ``systemd-analyze security`` exposure threshold.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

import agent.config
import fleet.config
from agent.config import AgentConfig, TelemetryConfig, load_config
from agent.errors import EXIT_CONFIG, ConfigError
from fleet.config import FleetConfig, load_fleet_config
from fleet.errors import EXIT_CONFIG as FLEET_EXIT_CONFIG
from fleet.errors import FleetConfigError

REPO = Path(__file__).resolve().parents[2]
AGENT_UNIT = REPO / "systemd" / "edge-agent.service"
FLEET_UNIT = REPO / "systemd" / "fleet-controller.service"
AGENT_EXAMPLE = REPO / "docs" / "agent.example.toml"
FLEET_EXAMPLE = REPO / "docs" / "fleet.example.toml"

# Highest acceptable "Overall exposure level" of `systemd-analyze security`. systemd 252 scores
# the units 1.6 and 1.1; dropping SystemCallFilter=, CapabilityBoundingSet= or the Protect*=
# settings of the agent raises its score to 2.7-3.6, so each of those regressions fails, while
# the headroom absorbs small scoring changes between systemd versions.
MAX_EXPOSURE = {AGENT_UNIT.name: 2.0, FLEET_UNIT.name: 1.5}

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is not on PATH (Debian/Ubuntu ship it in the 'systemd' package)",
)

# A setting line of an example config, active ("key = value") or commented out ("# key = value").
_SETTING = re.compile(r"^(?P<hash>#\s?)?(?P<key>[a-z][a-z0-9_]*)\s*=\s*(?P<value>\S.*)$")
_HEADER = re.compile(r"^(?P<hash>#\s?)?\[(?P<array>\[)?(?P<name>[a-z0-9_.]+)\]\]?\s*(#.*)?$")
# A trailing comment after a value is not part of it.
_TRAILING_COMMENT = re.compile(r"\s+#.*$")


# --- helpers: systemd unit files ------------------------------------------------------------


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections of a unit file; a key given several times keeps all its values in order."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: setting outside a section: {line!r}"
        assert not line.endswith("\\"), f"{path.name}: continuation lines are not parsed here"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a key=value line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    """The single value of ``key`` in ``section`` (the last one wins, as in systemd)."""
    values = unit.get(section, {}).get(key)
    assert values, f"[{section}] {key}= is not set"
    return values[-1]


def seconds(value: str) -> float:
    """A systemd time span of the forms used in these units: 60, 60s, 10min."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min|m)?", value)
    assert match, f"unsupported time span {value!r}"
    number = float(match.group(1))
    return number * 60 if match.group(2) in ("min", "m") else number


def unit_for_analysis(unit: Path, tmp_path: Path) -> Path:
    """A copy of ``unit`` whose ExecStart= binary exists here (verify insists), same arguments."""
    true_bin = shutil.which("true") or "/bin/true"
    lines = []
    for line in unit.read_text().splitlines():
        if line.startswith("ExecStart="):
            argv = shlex.split(line.removeprefix("ExecStart="))
            lines.append("ExecStart=" + shlex.join([true_bin, *argv[1:]]))
        else:
            lines.append(line)
    copy = tmp_path / unit.name
    copy.write_text("\n".join(lines) + "\n")
    return copy


def systemd_version() -> int:
    assert SYSTEMD_ANALYZE is not None
    out = subprocess.run(
        [SYSTEMD_ANALYZE, "--version"], capture_output=True, text=True, check=True
    ).stdout
    match = re.match(r"systemd (\d+)", out)
    assert match, f"unexpected `systemd-analyze --version` output: {out!r}"
    return int(match.group(1))


# --- helpers: example configs ---------------------------------------------------------------


def field_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every leaf setting of ``model`` as a key path, nested sections walked recursively."""
    paths: list[tuple[str, ...]] = []
    for name, info in model.model_fields.items():
        annotation = _element_model(info.annotation)
        if annotation is not None:
            paths.extend(field_paths(annotation, (*prefix, name)))
        else:
            paths.append((*prefix, name))
    return paths


def _element_model(annotation: Any) -> type[BaseModel] | None:
    """The model of a section (``Model``) or of an array of tables (``list[Model]``)."""
    if typing.get_origin(annotation) is list:
        (annotation,) = typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def field_info(model: type[BaseModel], path: tuple[str, ...]) -> FieldInfo:
    info = model.model_fields[path[0]]
    if len(path) == 1:
        return info
    section = _element_model(info.annotation)
    assert section is not None
    return field_info(section, path[1:])


def example_settings(text: str) -> dict[tuple[str, ...], tuple[bool, str]]:
    """Key path -> (commented out?, raw TOML value) for each setting line of an example."""
    settings: dict[tuple[str, ...], tuple[bool, str]] = {}
    section: tuple[str, ...] = ()
    for line in text.splitlines():
        if header := _HEADER.match(line):
            section = tuple(header["name"].split("."))
        elif setting := _SETTING.match(line):
            path = (*section, setting["key"])
            assert path not in settings, f"{'.'.join(path)} appears twice in the example"
            value = _TRAILING_COMMENT.sub("", setting["value"])
            settings[path] = (setting["hash"] is not None, value)
    return settings


def uncomment_all(text: str) -> str:
    """The example with every commented-out setting switched on."""
    lines = []
    for raw in text.splitlines():
        if (m := _SETTING.match(raw)) and m["hash"]:
            lines.append(f"{m['key']} = {m['value']}")
        elif (h := _HEADER.match(raw)) and h["hash"]:
            lines.append(raw.lstrip("# "))
        else:
            lines.append(raw)
    return "\n".join(lines)


def _env_path(model: type[BaseModel], path: tuple[str, ...]) -> tuple[str, ...]:
    """An array of tables is set from the environment as one JSON value, not per key."""
    if typing.get_origin(model.model_fields[path[0]].annotation) is list:
        return path[:1]
    return path


def env_var(prefix: str, path: tuple[str, ...]) -> str:
    return prefix + "__".join(part.upper() for part in path)


def static_default(info: FieldInfo) -> Any:
    """The field's fixed default, or PydanticUndefined when it has none (factory, required)."""
    if info.default_factory is not None:
        return PydanticUndefined
    return info.default


def toml_value(raw: str) -> Any:
    return tomllib.loads(f"value = {raw}")["value"]


EXAMPLES = [
    pytest.param(AgentConfig, AGENT_EXAMPLE, agent.config.ENV_PREFIX, id="agent"),
    pytest.param(FleetConfig, FLEET_EXAMPLE, "FLEET_", id="fleet"),
]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loaders read EDGE_AGENT_* and FLEET_* variables; the host's must not leak in."""
    for name in list(os.environ):
        if name.upper().startswith((agent.config.ENV_PREFIX, "FLEET_")):
            monkeypatch.delenv(name)


def _typo_copy(tmp_path: Path, source: Path, section: str, key: str, typo: str) -> Path:
    """A copy of ``source`` whose active ``key`` in ``[section]`` ("" = top level) is misspelt."""
    lines = source.read_text().splitlines()
    current = ""
    for number, line in enumerate(lines):
        if header := _HEADER.match(line):
            current = header["name"]
        elif (
            (m := _SETTING.match(line)) and not m["hash"] and (current, m["key"]) == (section, key)
        ):
            lines[number] = f"{typo} = {m['value']}"
            break
    else:
        pytest.fail(f"no active {key} in [{section}] of {source.name} to misspell")
    bad = tmp_path / f"bad-{source.name}"
    bad.write_text("\n".join(lines) + "\n")
    return bad


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )


# --- tests ----------------------------------------------------------------------------------


class TestExampleConfigs:
    def test_agent_example_loads(self) -> None:
        """docs/agent.example.toml loads through agent.config.load_config."""
        config = load_config(AGENT_EXAMPLE)
        assert config.mqtt.host == tomllib.loads(AGENT_EXAMPLE.read_text())["mqtt"]["host"]

    def test_fleet_example_loads(self) -> None:
        """docs/fleet.example.toml loads through fleet.config.load_fleet_config."""
        config = load_fleet_config(FLEET_EXAMPLE)
        assert config.broker == tomllib.loads(FLEET_EXAMPLE.read_text())["broker"]

    @pytest.mark.parametrize(("model", "example", "prefix"), EXAMPLES)
    def test_every_field_is_documented(
        self, model: type[BaseModel], example: Path, prefix: str
    ) -> None:
        """Every setting of the config model has a line, active or commented, in its section."""
        documented = example_settings(example.read_text())
        missing = [".".join(p) for p in field_paths(model) if p not in documented]
        assert not missing, f"{example.name} does not document: {', '.join(missing)}"

    @pytest.mark.parametrize(("model", "example", "prefix"), EXAMPLES)
    def test_no_setting_is_unknown(
        self, model: type[BaseModel], example: Path, prefix: str
    ) -> None:
        """Every setting line in the example, commented ones too, names a field of the model."""
        known = set(field_paths(model))
        unknown = [".".join(p) for p in example_settings(example.read_text()) if p not in known]
        assert not unknown, f"{example.name} documents unknown settings: {', '.join(unknown)}"

    @pytest.mark.parametrize(("model", "example", "prefix"), EXAMPLES)
    def test_every_env_var_is_documented(
        self, model: type[BaseModel], example: Path, prefix: str
    ) -> None:
        """The environment variable overriding each setting is named in the example."""
        text = example.read_text()
        missing = [
            name
            for name in {env_var(prefix, _env_path(model, p)) for p in field_paths(model)}
            if not re.search(rf"\b{name}\b", text)
        ]
        assert not missing, f"{example.name} does not name: {', '.join(missing)}"

    @pytest.mark.parametrize(("model", "example", "prefix"), EXAMPLES)
    def test_commented_lines_show_the_defaults(
        self, model: type[BaseModel], example: Path, prefix: str
    ) -> None:
        """A commented-out setting with a fixed default in the model shows that default."""
        wrong = []
        for path, (commented, raw) in example_settings(example.read_text()).items():
            default = static_default(field_info(model, path))
            if not commented or default is PydanticUndefined or default is None:
                continue
            shown = toml_value(raw)
            if isinstance(default, Path):
                shown = Path(shown)
            if shown != default:
                wrong.append(f"{'.'.join(path)}: shows {shown!r}, default is {default!r}")
        assert not wrong, f"{example.name}: " + "; ".join(wrong)

    def test_agent_example_with_everything_uncommented_loads(self, tmp_path: Path) -> None:
        """Switching on every commented-out setting of the agent example still loads."""
        full = tmp_path / "agent.toml"
        full.write_text(uncomment_all(AGENT_EXAMPLE.read_text()))
        config = load_config(full)
        assert config.mqtt.tls.enabled
        assert config.mqtt.password is not None

    def test_fleet_example_with_everything_uncommented_loads(self, tmp_path: Path) -> None:
        """Switching on every commented-out setting of the fleet example still loads."""
        full = tmp_path / "fleet.toml"
        full.write_text(uncomment_all(FLEET_EXAMPLE.read_text()))
        config = load_fleet_config(full)
        assert config.tls.ca_file is not None

    def test_agent_typo_names_the_key(self, tmp_path: Path) -> None:
        """A misspelt key in a copy of the agent example fails load_config, naming the key."""
        bad = _typo_copy(tmp_path, AGENT_EXAMPLE, "mqtt", "host", "hots")
        with pytest.raises(ConfigError, match=r"mqtt\.hots: unknown key") as caught:
            load_config(bad)
        assert caught.value.exit_code == EXIT_CONFIG

    def test_fleet_typo_names_the_key(self, tmp_path: Path) -> None:
        """A misspelt key in a copy of the fleet example fails load_fleet_config, naming it."""
        bad = _typo_copy(tmp_path, FLEET_EXAMPLE, "", "broker", "brokr")
        with pytest.raises(FleetConfigError, match=r"brokr: unknown key") as caught:
            load_fleet_config(bad)
        assert caught.value.exit_code == FLEET_EXIT_CONFIG

    def test_check_config_accepts_the_example(self) -> None:
        """`edge-agent check-config` exits 0 on the agent example."""
        result = _run_cli("agent", "check-config", "--config", str(AGENT_EXAMPLE))
        assert result.returncode == 0, result.stderr

    def test_check_config_exits_78_on_a_typo(self, tmp_path: Path) -> None:
        """`edge-agent check-config` exits with EXIT_CONFIG and names the misspelt key."""
        bad = _typo_copy(tmp_path, AGENT_EXAMPLE, "mqtt", "host", "hots")
        result = _run_cli("agent", "check-config", "--config", str(bad))
        assert result.returncode == EXIT_CONFIG, result.stderr
        assert "mqtt.hots" in result.stderr

    def test_fleet_serve_exits_78_on_a_typo(self, tmp_path: Path) -> None:
        """`fleet serve` exits with fleet's EXIT_CONFIG, before any broker I/O, on a typo."""
        bad = _typo_copy(tmp_path, FLEET_EXAMPLE, "", "broker", "brokr")
        result = _run_cli("fleet", "serve", "--config", str(bad))
        assert result.returncode == FLEET_EXIT_CONFIG, result.stderr
        assert "brokr" in result.stderr


class TestAgentUnit:
    unit = parse_unit(AGENT_UNIT)

    def test_type_is_notify(self) -> None:
        """The agent unit is Type=notify, since the agent sends READY=1 and STOPPING=1."""
        assert one(self.unit, "Service", "Type") == "notify"
        assert one(self.unit, "Service", "NotifyAccess") == "main"

    def test_execstart_runs_edge_agent_run(self) -> None:
        """ExecStart runs `edge-agent run` with the agent's default config path."""
        argv = shlex.split(one(self.unit, "Service", "ExecStart"))
        assert Path(argv[0]).is_absolute()
        assert Path(argv[0]).name == "edge-agent"
        assert argv[1] == "run"
        assert argv[argv.index("--config") + 1] == str(agent.config.DEFAULT_CONFIG_PATH)

    def test_config_errors_are_not_restarted(self) -> None:
        """RestartPreventExitStatus lists agent.errors.EXIT_CONFIG, with Restart=on-failure."""
        assert one(self.unit, "Service", "Restart") == "on-failure"
        statuses = one(self.unit, "Service", "RestartPreventExitStatus").split()
        assert str(EXIT_CONFIG) in statuses

    def test_start_limit_can_trip(self) -> None:
        """The start-limit interval is longer than a burst of restarts takes, so it can trip."""
        burst = int(one(self.unit, "Unit", "StartLimitBurst"))
        interval = seconds(one(self.unit, "Unit", "StartLimitIntervalSec"))
        restart_sec = seconds(one(self.unit, "Service", "RestartSec"))
        assert interval > burst * restart_sec

    def test_watchdog_allows_two_telemetry_intervals(self) -> None:
        """WatchdogSec is at least two default telemetry intervals, so a live agent is kept."""
        interval = TelemetryConfig.model_fields["interval_s"].default
        assert seconds(one(self.unit, "Service", "WatchdogSec")) >= 2 * interval

    def test_directories_match_the_config_defaults(self) -> None:
        """StateDirectory and ConfigurationDirectory are the agent's default directories."""
        state = Path("/var/lib") / one(self.unit, "Service", "StateDirectory")
        assert state == AgentConfig.model_fields["state_dir"].default
        config_dir = Path("/etc") / one(self.unit, "Service", "ConfigurationDirectory")
        assert config_dir == agent.config.DEFAULT_CONFIG_PATH.parent
        assert one(self.unit, "Service", "DynamicUser") == "yes"

    def test_serial_ports_stay_reachable(self) -> None:
        """Serial ports are allowed and no setting hides devices from the agent."""
        allowed = self.unit["Service"].get("DeviceAllow", [])
        assert "char-ttyACM rw" in allowed
        assert "char-ttyUSB rw" in allowed
        assert "dialout" in one(self.unit, "Service", "SupplementaryGroups").split()
        assert self.unit["Service"].get("PrivateDevices", ["no"])[-1] == "no"


class TestFleetUnit:
    unit = parse_unit(FLEET_UNIT)

    def test_type_is_notify_with_a_watchdog(self) -> None:
        """`fleet serve` sends READY=1, STOPPING=1 and WATCHDOG=1 (fleet/service.py)."""
        assert one(self.unit, "Service", "Type") == "notify"
        assert one(self.unit, "Service", "NotifyAccess") == "main"
        assert seconds(one(self.unit, "Service", "WatchdogSec")) >= 30

    def test_execstart_runs_fleet_serve(self) -> None:
        """ExecStart runs `fleet serve` with the controller's default config path."""
        argv = shlex.split(one(self.unit, "Service", "ExecStart"))
        assert Path(argv[0]).is_absolute()
        assert Path(argv[0]).name == "fleet"
        assert argv[1] == "serve"
        assert argv[argv.index("--config") + 1] == str(fleet.config.DEFAULT_CONFIG_PATH)

    def test_config_errors_are_not_restarted(self) -> None:
        """RestartPreventExitStatus lists fleet.errors.EXIT_CONFIG."""
        statuses = one(self.unit, "Service", "RestartPreventExitStatus").split()
        assert str(FLEET_EXIT_CONFIG) in statuses

    def test_database_lives_in_the_state_directory(self) -> None:
        """FLEET_DB points into /var/lib/<StateDirectory>, the only writable place."""
        env = dict(
            item.split("=", 1)
            for value in self.unit["Service"].get("Environment", [])
            for item in shlex.split(value)
        )
        state = Path("/var/lib") / one(self.unit, "Service", "StateDirectory")
        assert Path(env["FLEET_DB"]).parent == state
        config_dir = Path("/etc") / one(self.unit, "Service", "ConfigurationDirectory")
        assert config_dir == fleet.config.DEFAULT_CONFIG_PATH.parent


@needs_systemd_analyze
class TestSystemdAnalyze:
    @pytest.mark.parametrize("unit", [AGENT_UNIT, FLEET_UNIT], ids=lambda p: p.name)
    def test_verify_passes(self, unit: Path, tmp_path: Path) -> None:
        """`systemd-analyze verify` accepts the unit without a warning about the unit itself."""
        assert SYSTEMD_ANALYZE is not None
        copy = unit_for_analysis(unit, tmp_path)
        result = subprocess.run(
            [SYSTEMD_ANALYZE, "verify", str(copy)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        # Lines about other units of this host (their own quirks) are not ours to judge;
        # anything naming our file (an unknown key, a bad value) is.
        ours = [line for line in result.stderr.splitlines() if unit.name in line]
        assert not ours, "\n".join(ours)

    @pytest.mark.parametrize("unit", [AGENT_UNIT, FLEET_UNIT], ids=lambda p: p.name)
    def test_security_exposure_is_low(self, unit: Path, tmp_path: Path) -> None:
        """`systemd-analyze security --offline` rates the unit below its exposure threshold."""
        assert SYSTEMD_ANALYZE is not None
        if systemd_version() < 250:
            pytest.skip("systemd-analyze security --offline needs systemd >= 250")
        copy = unit_for_analysis(unit, tmp_path)
        result = subprocess.run(
            [SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(copy)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        match = re.search(
            rf"Overall exposure level for {re.escape(unit.name)}: (\d+(?:\.\d+)?)", result.stdout
        )
        assert match, f"no overall exposure level in:\n{result.stdout}\n{result.stderr}"
        assert float(match.group(1)) < MAX_EXPOSURE[unit.name], result.stdout
