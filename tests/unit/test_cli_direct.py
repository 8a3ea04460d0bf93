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


def test_tags_and_selectors_with_db(tmp_path: Path) -> None:
    db = str(_db(tmp_path))
    code, out = _fleet("devices", "tag", "pi-1", "site=lab", "board=pi4", "--db", db)
    assert code == 0 and "board=pi4, site=lab" in out
    code, out = _fleet("devices", "list", "--select", "site=lab", "--json", "--db", db)
    assert code == 0
    (device,) = json.loads(out)
    assert device["tags"] == {"device": "pi-1", "site": "lab", "board": "pi4"}
    code, out = _fleet("devices", "list", "--select", "site!=lab", "--json", "--db", db)
    assert code == 0 and json.loads(out) == []
    code, out = _fleet("devices", "untag", "pi-1", "site", "nope", "--db", db)
    assert code == 0 and "board=pi4" in out and "not set: nope" in out
    # A bad selector: one line naming the clause.
    code, out = _fleet("devices", "list", "--select", "site=lab,Bad=1", "--db", db)
    assert code == 65 and "'Bad=1'" in out and len(out.strip().splitlines()) == 1
    code, out = _fleet("devices", "tag", "pi-1", "nokey", "--db", db)
    assert code == 1 and "key=value" in out


def test_rollout_reads_with_db_and_clear_errors(tmp_path: Path) -> None:
    db = str(_db(tmp_path))
    code, out = _fleet("rollout", "list", "--json", "--db", db)
    assert code == 0 and json.loads(out) == []
    code, out = _fleet("rollout", "status", "r-0000abcd", "--db", db)
    assert code == 65 and "unknown rollout r-0000abcd" in out
    code, out = _fleet("rollout", "history", "r-0000abcd", "--db", db)
    assert code == 65 and "unknown rollout r-0000abcd" in out
    code, out = _fleet("rollout", "status", "--db", db)
    assert code == 65 and "no rollout yet" in out


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30.0), ("10m", 600.0), ("1h", 3600.0), ("45", 45.0)]
)
def test_durations(text: str, seconds: float) -> None:
    from fleet.cli.rollout import parse_duration

    assert parse_duration(text, "--x") == seconds


def test_shares_and_bad_values() -> None:
    from fleet.cli.rollout import parse_duration, parse_share, selection
    from fleet.errors import FleetError

    assert parse_share("5%", "--x") == pytest.approx(0.05)
    assert parse_share("0.05", "--x") == 0.05
    assert parse_share("2pt", "--x", points=True) == pytest.approx(0.02)
    for bad in ("ten", "-1", "nan"):
        with pytest.raises(FleetError, match="--x"):
            parse_share(bad, "--x")
    with pytest.raises(FleetError, match="--x"):
        parse_duration("5 weeks", "--x")
    assert selection(None, True, None) == "*"
    assert selection(None, False, "a, b") == "device=a|b"
    with pytest.raises(FleetError, match="exactly one"):
        selection("site=lab", True, None)


def _rollout(db: str, phase: str) -> str:
    from fleet.rollouts.model import (
        Member,
        Phase,
        RolloutSpec,
        RolloutState,
        StageSize,
        Transition,
    )

    spec = RolloutSpec(
        rollout_id="r-0000abcd",
        model="digits",
        version="2",
        selector="*",
        stages=(StageSize(count=1), StageSize(percent=100.0)),
        created_at=NOW,
    )
    state = RolloutState(
        spec=spec,
        phase=Phase(phase),
        stage_started_at=NOW,
        members={"pi-1": Member(stage=0, previous_version="1", sent_at=NOW, outcome="committed")},
        reason="stage 1/2 (1) passed; completed",
        updated_at=NOW + 1,
    )
    start = Transition(at=NOW, from_phase=None, to_phase=Phase.INSTALLING, stage=0, reason="go")
    store = SqliteFleetStore(db)
    store.save_rollout(state, [start])
    store.close()
    return spec.rollout_id


def test_rollout_status_watch_ends_at_a_terminal_phase_with_plain_lines(tmp_path: Path) -> None:
    """Not a terminal (the runner's output is a pipe): one plain line per change, and the
    watch ends by itself once the rollout is completed."""
    db = str(_db(tmp_path))
    rid = _rollout(db, "completed")
    code, out = _fleet("rollout", "status", rid, "--watch", "--db", db)
    assert code == 0, out
    assert out.splitlines() == [
        f"{rid} completed stage 1/2 [1:1 1c/0f/0p/0n] [2:100% 0c/0f/0p/0n] - "
        "stage 1/2 (1) passed; completed"
    ]
    code, out = _fleet("rollout", "status", "--db", db)
    assert code == 0 and "digits@2" in out and "committed" in out
    code, out = _fleet("rollout", "history", rid, "--json", "--db", db)
    assert code == 0 and [t["reason"] for t in json.loads(out)["transitions"]] == ["go"]
