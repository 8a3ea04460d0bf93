"""The agent package's layout: a few named rooms, and a root that holds only the entry points.

The root keeps the command line (``cli``, ``__main__``), the configuration and the error
hierarchy; everything else lives in a room that says what it does (``uplink``, ``control``,
``loop``, ``pipelines``, ``daemon``, ``telemetry``, ``inference``, ``ota``, ``serial``). A new
flat module at the root fails here, and so does an import of a module path that no longer
exists (read from the source with ``ast``, nothing imported).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
AGENT = REPO / "agent"

ROOT_MODULES = frozenset({"__init__.py", "__main__.py", "cli.py", "config.py", "errors.py"})
ROOMS = frozenset(
    {"control", "daemon", "inference", "loop", "ota", "pipelines", "serial", "telemetry", "uplink"}
)
SOURCE_TREES = ("agent", "fleet", "edge_contract", "edge_runtime", "devtools", "tests", "bench")


def test_the_agent_root_holds_only_the_entry_points_config_and_errors() -> None:
    modules = {p.name for p in AGENT.glob("*.py")}
    assert modules == ROOT_MODULES, f"move {sorted(modules - ROOT_MODULES)} into a room"


def test_the_agent_root_has_only_the_named_rooms_each_a_package() -> None:
    rooms = {p.name for p in AGENT.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert rooms == ROOMS
    for room in rooms:
        init = AGENT / room / "__init__.py"
        assert init.is_file(), f"agent/{room}/ is not a package"
        docstring = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert docstring, f"agent/{room}/__init__.py does not say what the room holds"


def _module_exists(dotted: str) -> bool:
    path = REPO.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imported_agent_modules(tree: ast.AST) -> set[str]:
    """Every ``agent...`` module path an import statement names (``from X import y`` may name a
    module ``X.y`` or an attribute of ``X``: either one must exist)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.split(".")[0] == "agent")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.update({node.module} if node.module.split(".")[0] == "agent" else set())
    return names


def test_every_import_of_an_agent_module_names_one_that_exists() -> None:
    missing: list[str] = []
    for tree_name in SOURCE_TREES:
        for path in sorted((REPO / tree_name).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            missing.extend(
                f"{path.relative_to(REPO)}: {name}"
                for name in sorted(_imported_agent_modules(tree))
                if not _module_exists(name)
            )
    assert not missing, missing
