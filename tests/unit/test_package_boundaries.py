"""Which of the shipped packages may import which: the arrows point at the shared ones only.

``agent/`` (the device) and ``fleet/`` (the controller) never import each other; both import
the wire contract (``edge_contract``) and the shared runtime (``edge_runtime``); the contract
imports neither side nor the runtime (it is pure), the runtime neither side.

Why a test and not ruff's banned-api: banned-api bans a module for every file except those
whose per-file-ignores lift TID251 as a whole, and a nested ``fleet/ruff.toml`` that bans
``agent`` replaces the root's banned-api table instead of extending it (paho, tuf, sqlite3 ...
would be allowed again in fleet/). So "this directory may not import that package" is said
here, over the AST: every import counts, a function's lazy one included, and there are no
exceptions (``fleet model optimize`` runs TFLite through its own door,
fleet/modelopt/litert_session.py, not the agent's backend). Pure: reads source.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Each shipped package: the packages of this repository it must never import.
FORBIDDEN: dict[str, frozenset[str]] = {
    "agent": frozenset({"fleet", "devtools"}),
    "fleet": frozenset({"agent", "devtools"}),
    "edge_contract": frozenset({"agent", "fleet", "edge_runtime", "devtools"}),
    "edge_runtime": frozenset({"agent", "fleet", "devtools"}),
}


def _imports(path: Path) -> set[str]:
    """Every absolute module ``path`` imports, nested (lazy) imports included."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
    return modules


def _violations(package: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        wrong = sorted(
            module for module in _imports(path) if module.split(".")[0] in FORBIDDEN[package]
        )
        if wrong:
            found[relative] = wrong
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_only_what_it_may(package: str) -> None:
    assert _violations(package) == {}


def test_the_sides_import_the_shared_packages() -> None:
    """The contract and the runtime are what both sides build on, not dead code beside them."""
    for side in ("agent", "fleet"):
        roots = {
            module.split(".")[0]
            for path in (ROOT / side).rglob("*.py")
            for module in _imports(path)
        }
        assert {"edge_contract", "edge_runtime"} <= roots, side
