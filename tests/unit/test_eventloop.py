"""agent.loop.eventloop: which loop the agent runs on, and what a wrong choice says."""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import EXIT_CONFIG, ConfigError
from agent.loop.eventloop import loop_factory, run


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


@pytest.fixture
def without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import uvloop`` fails, as on a board without a wheel for it."""
    monkeypatch.setitem(sys.modules, "uvloop", None)


def test_auto_takes_uvloop_where_installed() -> None:
    pytest.importorskip("uvloop")  # it ships with the inference extra that make test installs
    assert loop_factory("auto")[0] == "uvloop"
    assert run(_loop_module()) == "uvloop"


@pytest.mark.usefixtures("without_uvloop")
def test_auto_falls_back_to_asyncio_without_uvloop() -> None:
    assert loop_factory("auto")[0] == "asyncio"
    assert run(_loop_module()).startswith("asyncio.")


def test_asyncio_is_asyncio_even_with_uvloop_installed() -> None:
    assert run(_loop_module(), "asyncio").startswith("asyncio.")


@pytest.mark.usefixtures("without_uvloop")
def test_uvloop_required_but_missing_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="event_loop is 'uvloop', not installed") as error:
        loop_factory("uvloop")
    assert error.value.exit_code == EXIT_CONFIG


def test_an_unknown_choice_names_itself_and_never_starts_the_coroutine() -> None:
    coroutine = _loop_module()
    with pytest.raises(ConfigError, match="one of auto, uvloop, asyncio, got 'trio'"):
        run(coroutine, "trio")
    assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED


def test_the_daemon_exits_78_when_its_config_asks_for_a_missing_uvloop(tmp_path: Path) -> None:
    # Its own process: the daemon configures logging for the whole process.
    config = tmp_path / "agent.toml"
    config.write_text(f'event_loop = "uvloop"\nstate_dir = "{tmp_path / "state"}"\n')
    script = (
        "import sys; sys.modules['uvloop'] = None; from agent.cli import main; "
        f"sys.exit(main(['run', '--config', {str(config)!r}]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert "edge-agent: config error: event_loop is 'uvloop', not installed" in result.stderr
