"""The CLI's ``--db`` mode on a real SQLite store in a tmp dir: the same use cases as the
controller (``fleet.app``), no broker. In process (typer's runner), no sockets."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from typer.testing import CliRunner

from fleet.cli import app
from fleet.operators import generate_key, key_id, public_key_text
from fleet.store import Inbound, SqliteFleetStore

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_800_000_000.0


def _db(tmp_path: Path) -> Path:
    db = tmp_path / "fleet.db"
    store = SqliteFleetStore(db)
    store.ingest([Inbound("pi-1", "status", {"state": "online"}, NOW)])
    store.close()
    return db


def _fleet(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_devices_list_show_and_accept_read_and_change_the_database(tmp_path: Path) -> None:
    db = str(_db(tmp_path))
    code, out = _fleet("devices", "list", "--json", "--db", db)
    assert code == 0
    (device,) = json.loads(out)
    assert (device["device_id"], device["admission"]) == ("pi-1", "pending")
    assert _fleet("devices", "accept", "pi-1", "--db", db)[0] == 0
    code, out = _fleet("devices", "show", "pi-1", "--json", "--db", db)
    assert code == 0 and json.loads(out)["summary"]["admission"] == "accepted"


def test_an_unknown_device_exits_2_and_a_malformed_id_names_the_field(tmp_path: Path) -> None:
    db = str(_db(tmp_path))
    code, out = _fleet("devices", "show", "ghost", "--db", db)
    assert code == 2, out
    code, out = _fleet("devices", "show", "Not-An-Id", "--db", db)
    assert code == 1 and "devices-show: device_id:" in out


def test_operators_are_added_listed_and_the_last_removed_with_db(tmp_path: Path) -> None:
    db = str(_db(tmp_path))
    public = public_key_text(generate_key().public_key())
    code, out = _fleet("operators", "add", "alice", public, "--db", db)
    assert code == 0 and key_id(public) in out
    code, out = _fleet("operators", "list", "--json", "--db", db)
    assert [o["name"] for o in json.loads(out)] == ["alice"]
    assert _fleet("operators", "remove", "alice", "--db", db)[0] == 0  # the host's admin may
    assert json.loads(_fleet("operators", "list", "--json", "--db", db)[1]) == []


def test_the_cli_client_does_not_import_the_controller() -> None:
    tree = ast.parse((ROOT / "fleet" / "rpc.py").read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "fleet.broker" in imported and "fleet.service" not in imported
