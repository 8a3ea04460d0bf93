"""Which missing module is an extra to install and which is a bug to show in full.

The commands' behaviour on a real install is in tests/integration/test_packaging.py; here,
the choice itself: a third-party module names its extra, a module of the package is left to
its traceback, and the daemon's TaskGroup does not hide a missing module.
"""

from __future__ import annotations

import importlib.util

import pytest

from agent import cli as agent_cli
from fleet import __main__ as fleet_main


def _missing(name: str) -> ModuleNotFoundError:
    return ModuleNotFoundError(f"No module named {name!r}", name=name)


@pytest.mark.parametrize(
    "name", ["numpy", "numpy.typing", "onnxruntime", "aiohttp", "grpc", "google.protobuf"]
)
def test_an_inference_module_names_the_inference_extra(name: str) -> None:
    message = agent_cli.missing_extra_message(_missing(name))
    assert message is not None
    assert f"({name.partition('.')[0]} is not installed)" in message
    assert message.endswith("pip install 'edge-fleet[inference]'")


def test_a_base_dependency_says_to_reinstall_the_package() -> None:
    assert agent_cli.missing_extra_message(_missing("psutil")) == (
        "edge-agent: psutil is not installed (a base dependency): pip install edge-fleet"
    )


@pytest.mark.parametrize(
    "name", ["agent.inference.gone", "agent", "", "edge_contract.gone", "edge_runtime.mqtt"]
)
def test_a_module_of_the_agent_itself_is_a_bug_not_an_extra(name: str) -> None:
    assert agent_cli.missing_extra_message(_missing(name)) is None


@pytest.mark.parametrize(
    "name", ["fleet.gone", "agent.config", "edge_runtime.log", "edge_contract.topics"]
)
def test_a_module_of_the_package_itself_is_a_bug_for_fleet_too(name: str) -> None:
    assert fleet_main.missing_extra_message(_missing(name)) is None


@pytest.mark.parametrize("name", ["typer", "rich.console", "shellingham"])
def test_any_other_module_names_the_fleet_extra(name: str) -> None:
    assert fleet_main.missing_extra_message(_missing(name)) == (
        f"fleet: the fleet controller and CLI need the 'fleet' extra "
        f"({name.partition('.')[0]} is not installed): pip install 'edge-fleet[fleet]'"
    )


@pytest.mark.parametrize("name", ["sqlalchemy", "alembic"])
def test_the_database_libraries_are_looked_for_before_any_command(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI imports them only where a command opens the database: an install without
    them says so at the start, one line and exit 78, not a traceback from ``fleet serve``."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda module, *a: None if module == name else real(module, *a)
    )
    assert fleet_main.main() == 78
    assert capsys.readouterr().err == f"{fleet_main.missing_extra_message(_missing(name))}\n"


def test_a_missing_module_inside_the_daemons_task_group_is_found() -> None:
    inner = _missing("onnxruntime")
    group = ExceptionGroup("unhandled errors in a TaskGroup", [ValueError("x"), inner])
    assert agent_cli._module_not_found(ExceptionGroup("outer", [group])) is inner
    assert agent_cli._module_not_found(ExceptionGroup("other", [ValueError("x")])) is None


def test_a_group_with_a_missing_module_is_one_line_and_exit_78(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def command() -> int:
        raise ExceptionGroup("unhandled errors in a TaskGroup", [_missing("onnxruntime")])

    assert agent_cli._needing_extras(command) == 78
    expected = agent_cli.missing_extra_message(_missing("onnxruntime"))
    assert capsys.readouterr().err == f"{expected}\n"


def test_any_other_failure_keeps_its_traceback() -> None:
    def command() -> int:
        raise ExceptionGroup("unhandled errors in a TaskGroup", [ValueError("a bug")])

    def own_module() -> int:
        raise _missing("agent.gone")

    with pytest.raises(ExceptionGroup):
        agent_cli._needing_extras(command)
    with pytest.raises(ModuleNotFoundError):
        agent_cli._needing_extras(own_module)
