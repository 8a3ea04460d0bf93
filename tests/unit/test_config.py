"""Agent configuration: TOML, environment overrides, clear errors and exit code 78."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent import config as config_module
from agent.config import load_config, masked_dump, unknown_env_keys
from agent.errors import EXIT_CONFIG, ConfigError
from agent.inference.backends import BackendOptions
from agent.inference.backends.onnx import session_options_for


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("EDGE_AGENT_"):
            monkeypatch.delenv(name)
    # The packaged default path must not leak in from the machine running the tests.
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", tmp_path / "absent.toml")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


class TestLoading:
    def test_defaults_without_any_file(self) -> None:
        """With no default file the agent runs on built-in defaults."""
        config = load_config()
        assert config.mqtt.port == 1883
        assert config.telemetry.interval_s == 10.0
        assert config.state_dir == Path("/var/lib/edge-agent")

    def test_file_values_and_the_five_documented_env_names(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The five documented EDGE_AGENT_* names override the file."""
        path = _write(
            tmp_path,
            'device_id = "from-file"\n[mqtt]\nhost = "file-host"\nport = 1000\n'
            "[telemetry]\ninterval_s = 5\n",
        )
        assert load_config(path).mqtt.host == "file-host"
        monkeypatch.setenv("EDGE_AGENT_DEVICE_ID", "from-env")
        monkeypatch.setenv("EDGE_AGENT_MQTT__HOST", "env-host")
        monkeypatch.setenv("EDGE_AGENT_MQTT__PORT", "2000")
        monkeypatch.setenv("EDGE_AGENT_STATE_DIR", str(tmp_path / "state"))
        monkeypatch.setenv("EDGE_AGENT_TELEMETRY__INTERVAL_S", "1.5")
        config = load_config(path)
        assert (config.device_id, config.mqtt.host, config.mqtt.port) == (
            "from-env",
            "env-host",
            2000,
        )
        assert config.state_dir == tmp_path / "state"
        assert config.telemetry.interval_s == 1.5

    def test_config_is_frozen(self) -> None:
        """Settings cannot be changed after load."""
        config = load_config()
        with pytest.raises(ValueError, match="frozen"):
            config.mqtt.port = 1  # type: ignore[misc]


class TestErrors:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("[mqtt]\nhots = 'x'\n", "mqtt.hots: unknown key"),
            ("[mqtt]\nport = 70000\n", "mqtt.port: Input should be less than or equal to 65535"),
            ("[telemetry]\ninterval_s = 0\n", "telemetry.interval_s"),
            ("device_id = 'Bad Id'\n", "device_id"),
            ("[queue]\nmax_bytes = 'lots'\n", "queue.max_bytes"),
            ("device_id = 'x\n", "not valid TOML"),
            ("event_loop = 'trio'\n", "event_loop: Input should be 'auto', 'uvloop' or 'asyncio'"),
            (
                "[inference]\nonnx_thread_pools = 'global'\n",
                "inference.onnx_thread_pools: Input should be 'shared' or 'per-model'",
            ),
            (
                "[inference]\nmax_body_bytes = 4096\nbody_budget_bytes = 2048\n",
                "body_budget_bytes (2048) must hold one body of max_body_bytes (4096)",
            ),
            (
                "[inference]\nintra_op_spinning = false\n",
                "intra_op_spinning = false needs onnx_thread_pools = 'per-model'",
            ),
        ],
    )
    def test_bad_files_name_the_key(self, tmp_path: Path, text: str, expected: str) -> None:
        """Each problem names the key (or the TOML line) and the file."""
        path = _write(tmp_path, text)
        with pytest.raises(ConfigError) as error:
            load_config(path)
        assert expected in str(error.value)
        assert str(path) in str(error.value)
        assert error.value.exit_code == EXIT_CONFIG

    def test_missing_explicit_file_is_an_error(self, tmp_path: Path) -> None:
        """--config naming a file that does not exist is refused."""
        with pytest.raises(ConfigError, match="does not exist"):
            load_config(tmp_path / "nope.toml")

    def test_env_typos_are_refused(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """An EDGE_AGENT_ variable that names no setting is an error, not silently ignored."""
        monkeypatch.setenv("EDGE_AGENT_TELEMETRY__INTERVAL", "3")
        with pytest.raises(ConfigError, match="EDGE_AGENT_TELEMETRY__INTERVAL: unknown setting"):
            load_config()
        assert unknown_env_keys({"EDGE_AGENT_MQTT__TLS__CA_FILE": "x", "OTHER": "y"}) == []

    def test_secrets_are_masked(self, tmp_path: Path) -> None:
        """check-config output never shows the broker password."""
        dumped = masked_dump(load_config(_write(tmp_path, "[mqtt]\npassword = 'hunter2'\n")))
        assert dumped["mqtt"]["password"] == "**********"
        assert "hunter2" not in str(dumped)


class TestCommandLine:
    def test_check_config_exit_codes(self, tmp_path: Path) -> None:
        """check-config prints the effective config (exit 0) or one clear error (exit 78)."""
        good = _write(tmp_path, "[mqtt]\nport = 1884\n")
        ok = subprocess.run(
            [sys.executable, "-m", "agent", "check-config", "--config", str(good)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert ok.returncode == 0, ok.stderr
        assert '"port": 1884' in ok.stdout
        bad = tmp_path / "bad.toml"
        bad.write_text("[telemetry]\nintervall_s = 3\n")
        for command in ("check-config", "run"):
            result = subprocess.run(
                [sys.executable, "-m", "agent", command, "--config", str(bad)],
                capture_output=True,
                text=True,
                check=False,
                timeout=30,
            )
            assert result.returncode == EXIT_CONFIG
            assert "telemetry.intervall_s: unknown key" in result.stderr


class TestSpinning:
    @pytest.mark.parametrize(("spinning", "entry"), [(False, "0"), (True, "1"), (None, "")])
    def test_per_model_sessions_get_the_spinning_asked_for(
        self, tmp_path: Path, spinning: bool | None, entry: str
    ) -> None:
        text = "[inference]\nonnx_thread_pools = 'per-model'\n"
        if spinning is not None:
            text += f"intra_op_spinning = {str(spinning).lower()}\n"
        inference = load_config(_write(tmp_path, text)).inference
        assert inference.intra_op_spinning is spinning
        options = BackendOptions(
            intra_op_spinning=inference.intra_op_spinning,
            onnx_thread_pools=inference.onnx_thread_pools,
        )
        session = session_options_for(options, tmp_path / "model.onnx")
        key = "session.intra_op.allow_spinning"
        if spinning is None:  # the runtime's own default stands
            with pytest.raises(RuntimeError, match="does not have configuration"):
                session.get_session_config_entry(key)
        else:
            assert session.get_session_config_entry(key) == entry
