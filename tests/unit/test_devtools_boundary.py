"""The demo and the test rigs stay out of the product: not in the wheel, not imported by fleet.

The packages are the ones setuptools itself discovers from pyproject.toml (the same
``[tool.setuptools.packages.find]`` expansion ``pip install .`` runs), read in-process: no
build, no subprocess.
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest
from setuptools.config.pyprojecttoml import read_configuration

REPO = Path(__file__).resolve().parents[2]
PRODUCT = ("agent", "fleet", "edge_contract", "edge_runtime")
# The modules that moved to devtools/: none of them may ship again under another package.
RIG_MODULES = ("localbroker", "emulated_board")


def _shipped_packages() -> list[str]:
    with warnings.catch_warnings():
        # setuptools < 69 warns that [tool.setuptools] in pyproject.toml is "beta".
        warnings.simplefilter("ignore")
        config = read_configuration(REPO / "pyproject.toml")
    packages = config["tool"]["setuptools"]["packages"]
    assert isinstance(packages, list), packages
    return sorted(packages)


def _package_dir(package: str) -> Path:
    return REPO.joinpath(*package.split("."))


def _imported_modules(source: Path) -> set[str]:
    """Every absolute module name ``source`` imports, and every string naming a dotted module."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"), filename=str(source))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            # importlib.import_module("devtools.x") or ["-m", "devtools.demo"].
            names.add(node.value)
    return names


def test_the_wheel_ships_the_agent_the_controller_and_their_shared_packages_only() -> None:
    packages = _shipped_packages()

    assert {p.split(".")[0] for p in packages} == set(PRODUCT), packages
    assert "devtools" not in {p.split(".")[0] for p in packages}


def test_no_demo_or_rig_module_ships_in_a_product_package() -> None:
    shipped = [
        f"{package}.{module.stem}"
        for package in _shipped_packages()
        for module in _package_dir(package).glob("*.py")
    ]
    rigs = [
        name
        for name in shipped
        if name.rsplit(".", 1)[1].startswith("demo") or name.rsplit(".", 1)[1] in RIG_MODULES
    ]

    assert rigs == []


@pytest.mark.parametrize("package", PRODUCT)
def test_the_product_imports_nothing_from_devtools(package: str) -> None:
    offenders = {
        str(source.relative_to(REPO)): sorted(
            name
            for name in _imported_modules(source)
            if name == "devtools" or name.startswith("devtools.")
        )
        for source in (REPO / package).rglob("*.py")
    }

    assert {path: names for path, names in offenders.items() if names} == {}


def test_the_rigs_are_importable_from_the_checkout() -> None:
    """The tests, the benchmarks and ``make demo`` find them at the repository root."""
    import devtools.demo
    import devtools.emulated_board
    import devtools.localbroker

    for module in (devtools.demo, devtools.emulated_board, devtools.localbroker):
        assert Path(module.__file__ or "").parent == REPO / "devtools"
