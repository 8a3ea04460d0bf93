"""The libraries with one door per side are imported through that door only.

ruff's banned-api (TID251, pyproject.toml) refuses these imports everywhere but in the door
modules. ruff can only lift TID251 for a file as a whole, so these tests add what it cannot
say: which banned library each exempt file may import (a door to python-tuf must not open
SQLite too), and every import counts, a function's lazy one included. Pure: reads the source.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("agent", "fleet", "edge_contract", "edge_runtime")

# The banned libraries each exempt file may import (paths relative to the repository root).
DOORS: dict[str, frozenset[str]] = {
    "edge_runtime/mqtt/link.py": frozenset({"paho"}),
    "edge_runtime/mqtt/paho_client.py": frozenset({"paho"}),
    "agent/serial/transport.py": frozenset({"serial"}),
    "agent/inference/backends/onnx.py": frozenset({"onnxruntime"}),
    "agent/inference/backends/litert.py": frozenset({"ai_edge_litert", "tflite_runtime"}),
    "agent/inference/oip_http.py": frozenset({"aiohttp"}),
    "agent/inference/rest.py": frozenset({"aiohttp"}),
    "agent/inference/grpc_server.py": frozenset({"grpc"}),
    "agent/telemetry/metrics_http.py": frozenset({"aiohttp"}),
    "agent/ota/trust.py": frozenset({"tuf", "securesystemslib"}),
    "agent/uplink/outbox.py": frozenset({"sqlite3"}),
    "fleet/modelopt/session.py": frozenset({"onnxruntime"}),
    "fleet/modelopt/litert_session.py": frozenset({"ai_edge_litert", "tflite_runtime"}),
    "fleet/modelopt/tflite.py": frozenset({"tensorflow"}),
    "fleet/release/repo.py": frozenset({"tuf", "securesystemslib"}),
    # The controller's database: SQLAlchemy in the store and its schema package, Alembic in
    # the migration runner and the revisions. No module of fleet/ opens sqlite3 itself.
    "fleet/store.py": frozenset({"sqlalchemy"}),
    "fleet/db/engine.py": frozenset({"sqlalchemy"}),
    "fleet/db/tables.py": frozenset({"sqlalchemy"}),
    "fleet/db/base.py": frozenset({"sqlalchemy"}),
    "fleet/db/access.py": frozenset({"sqlalchemy"}),
    "fleet/db/rollout_records.py": frozenset({"sqlalchemy"}),
    "fleet/db/migrate.py": frozenset({"sqlalchemy", "alembic"}),
    "fleet/db/migrations/env.py": frozenset({"sqlalchemy", "alembic"}),
    "fleet/db/migrations/versions/0001_schema_before_migrations.py": frozenset(
        {"sqlalchemy", "alembic"}
    ),
    "fleet/db/migrations/versions/0002_desired_by_device_and_model.py": frozenset(
        {"sqlalchemy", "alembic"}
    ),
    "fleet/db/migrations/versions/0003_64_bit_ids.py": frozenset({"sqlalchemy", "alembic"}),
    "fleet/db/migrations/versions/0004_rollouts.py": frozenset({"sqlalchemy", "alembic"}),
    # The controller's HTTP side: FastAPI's routes and app, uvicorn in the server alone.
    "fleet/http/api.py": frozenset({"fastapi"}),
    "fleet/http/api_rollouts.py": frozenset({"fastapi"}),
    "fleet/http/app.py": frozenset({"fastapi", "starlette"}),
    "fleet/http/context.py": frozenset({"fastapi"}),
    "fleet/http/server.py": frozenset({"uvicorn"}),
    "fleet/http/metrics.py": frozenset({"fastapi"}),
    "fleet/http/dashboard.py": frozenset({"fastapi"}),
}


def _ruff_lint() -> dict[str, object]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    lint: dict[str, object] = config["tool"]["ruff"]["lint"]
    return lint


def _banned() -> set[str]:
    lint = _ruff_lint()
    tidy = lint["flake8-tidy-imports"]
    assert isinstance(tidy, dict)
    return set(tidy["banned-api"])


def _exempt_files() -> set[str]:
    """The files of ``agent``/``fleet`` for which pyproject.toml lifts TID251."""
    ignores = _ruff_lint()["per-file-ignores"]
    assert isinstance(ignores, dict)
    return {
        pattern
        for pattern, rules in ignores.items()
        if "TID251" in rules and pattern.split("/")[0] in PACKAGES
    }


def _imported_roots(path: Path) -> set[str]:
    """The top-level names of every absolute import in ``path``, nested ones included."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def _banned_imports() -> dict[str, set[str]]:
    """Each source file of ``agent``/``fleet`` that imports a banned library: which ones."""
    banned = _banned()
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            hits = _imported_roots(path) & banned
            if hits:
                found[path.relative_to(ROOT).as_posix()] = hits
    return found


def test_every_exempt_file_is_a_named_door() -> None:
    """An exemption added to pyproject.toml without saying here what it is for fails."""
    assert _exempt_files() <= set(DOORS)


@pytest.mark.parametrize(
    "library",
    [
        "tuf",
        "securesystemslib",
        "sqlite3",
        "onnxruntime",
        "paho",
        "serial",
        "sqlalchemy",
        "alembic",
    ],
)
def test_the_one_door_libraries_are_banned(library: str) -> None:
    assert library in _banned()


def test_banned_libraries_are_imported_only_through_their_doors() -> None:
    wrong = {
        path: sorted(hits - DOORS.get(path, frozenset()))
        for path, hits in _banned_imports().items()
        if hits - DOORS.get(path, frozenset())
    }
    assert wrong == {}


@pytest.mark.parametrize(
    ("library", "doors"),
    [
        ("tuf", {"agent/ota/trust.py", "fleet/release/repo.py"}),
        ("securesystemslib", {"agent/ota/trust.py", "fleet/release/repo.py"}),
        ("onnxruntime", {"agent/inference/backends/onnx.py", "fleet/modelopt/session.py"}),
        ("sqlite3", {"agent/uplink/outbox.py"}),
    ],
)
def test_one_module_per_side_imports(library: str, doors: set[str]) -> None:
    importers = {path for path, hits in _banned_imports().items() if library in hits}
    assert importers == doors
