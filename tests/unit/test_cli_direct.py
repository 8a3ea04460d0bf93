"""The CLI's ``--db`` mode on a real SQLite store in a tmp dir: the same use cases as the
controller (``fleet.app``), no broker. In process (typer's runner), no sockets."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
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


def test_db_takes_a_database_url_too(tmp_path: Path) -> None:
    """``--db sqlite:///path`` is the same database as ``--db path`` (a PostgreSQL URL goes
    the same way: tests/integration/test_store_postgres.py runs the store on one)."""
    url = f"sqlite:///{_db(tmp_path)}"
    code, out = _fleet("devices", "list", "--json", "--db", url)
    assert code == 0, out
    assert [d["device_id"] for d in json.loads(out)] == ["pi-1"]


def test_the_store_url_comes_from_the_config_file_and_a_bad_one_exits_78(tmp_path: Path) -> None:
    from fleet.config import database, load_fleet_config
    from fleet.errors import FleetConfigError

    db = _db(tmp_path)
    config = tmp_path / "fleet.toml"
    config.write_text(f'db = "{tmp_path / "unused.db"}"\n[store]\nurl = "sqlite:///{db}"\n')
    assert database(load_fleet_config(config)) == f"sqlite:///{db}"
    assert database(load_fleet_config(None, db=db)) == db  # the file path form, as before
    config.write_text('[store]\nurl = "mysql://fleet:hunter2@db/fleet"\n')
    with pytest.raises(FleetConfigError, match=r"store\.url.*'mysql'") as refused:
        load_fleet_config(config)
    assert refused.value.exit_code == 78
    assert "hunter2" not in str(refused.value)
    code, out = _fleet("devices", "list", "--db", "mysql://fleet@db/fleet")
    assert code == 78 and "store.url" in out
