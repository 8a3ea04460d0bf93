"""What an operator sees: ``fleet --version``, ``fleet devices show`` and ``make demo`` piped."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from devtools.demo_model import EVAL_SPLIT, MODEL_FILE
from devtools.localbroker import PrivateBroker, free_port
from fleet.store import SqliteFleetStore
from tests.integration.harness import (
    REPO,
    ManagedProcess,
    agent_process,
    start_controller,
    wait_until,
)

DEMO_DEVICES = ("pi-kitchen", "pi-garage", "pi-porch", "jetson-yard")
MODEL_DEVICES = ("pi-kitchen", "pi-garage", "pi-porch")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_AGENT_", "FLEET_"))}
    # A pipe at 80 columns, whatever the terminal running the tests says.
    for name in ("COLUMNS", "LINES", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        env.pop(name, None)
    return env | extra


def _fleet(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleet", *args],
        env=_env(COLUMNS="80"),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


def test_fleet_version_prints_the_package_version() -> None:
    result = _fleet("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"fleet {importlib.metadata.version('edge-fleet')}\n"


def _predict(rest_port: int) -> bool:
    rows = np.load(EVAL_SPLIT)["x"][:4].tolist()
    request = urllib.request.Request(
        f"http://127.0.0.1:{rest_port}/v1/models/digits:predict",
        data=json.dumps({"instances": rows}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def _detail_with_requests(port: int, device_id: str) -> dict[str, Any] | None:
    result = _fleet("devices", "show", device_id, "--raw", "--broker", f"mqtt://127.0.0.1:{port}")
    if result.returncode != 0:
        return None
    detail: dict[str, Any] = json.loads(result.stdout)
    telemetry = detail.get("telemetry") or {}
    models = (telemetry.get("inference") or {}).get("models") or []
    # A sample taken before the agent's first connection says "disconnected" (and waited in
    # its outbox): true, but not the steady state this test reads.
    connected = (telemetry.get("link") or {}).get("connected") is True
    return detail if connected and any(m.get("requests") for m in models) else None


def test_devices_show_is_a_short_human_view_and_raw_is_the_json(
    tmp_path: Path, broker: PrivateBroker, processes: list[ManagedProcess]
) -> None:
    rest_port = free_port()
    processes.append(start_controller(tmp_path, broker.port))
    agent = agent_process(
        tmp_path,
        broker.port,
        "pi-view",
        models=json.dumps([{"path": str(MODEL_FILE)}]),
        inference__port=str(rest_port),
    )
    processes.append(agent.start())
    wait_until(lambda: _predict(rest_port), 60, "the digits model answering")
    detail = wait_until(
        lambda: _detail_with_requests(broker.port, "pi-view"), 30, "telemetry with requests"
    )
    # What --raw prints is the whole detail: the long JSON the human view replaces.
    assert detail["telemetry"]["seq"] >= 1 and len(json.dumps(detail, indent=2).splitlines()) > 60

    shown = _fleet("devices", "show", "pi-view", "--broker", broker.url)

    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert 10 <= len(lines) <= 25, shown.stdout
    assert all(len(line) <= 80 for line in lines), shown.stdout
    assert "{" not in shown.stdout and "\x1b" not in shown.stdout
    assert lines[0].startswith("pi-view  online since ")
    assert lines[0].endswith(", agent 0.1.0, pending acceptance")  # never accepted here
    rows = {line[:11].strip(): line[11:] for line in lines[1:] if line[:11].strip()}
    assert rows["health"].startswith(("ok", "degraded"))
    assert "% of " in rows["cpu"] and " cores" in rows["cpu"]
    assert " GiB" in rows["memory"] and " free" in rows["disk"]
    assert rows["mqtt"].startswith("connected, 0 outages; queue ")
    assert rows["telemetry"].startswith("seq ")
    assert rows["model"].startswith("digits v2: p50 ") and " ms, p95 " in rows["model"]
    assert " requests, 0 errors" in rows["model"]
    assert "agent_started" in rows["events"] or "agent_started" in shown.stdout

    as_json = _fleet("devices", "show", "pi-view", "--json", "--broker", broker.url)
    assert as_json.returncode == 0, as_json.stderr
    assert set(json.loads(as_json.stdout)) == set(detail)


def test_piped_demo_prints_plain_change_lines_and_stores_every_first_message(
    tmp_path: Path,
) -> None:
    """`make demo | cat`: no escape codes, lines of at most 80 columns, a line per change;
    the controller is subscribed before the agents start, so nothing they send is lost; the
    staged rollout prints each transition with the gate's figures and ends."""
    seen: list[str] = []
    dashboard: dict[str, Any] = {}
    errors = tmp_path / "demo.stderr"
    with (
        errors.open("w") as stderr,
        subprocess.Popen(
            [sys.executable, "-m", "devtools.demo"],
            env=_env(DEMO_SECONDS="30", DEMO_KEEP="1", TMPDIR=str(tmp_path)),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=REPO,
        ) as demo,
    ):
        try:
            assert demo.stdout is not None
            for line in demo.stdout:  # ends when the demo exits (bounded by DEMO_SECONDS)
                seen.append(line)
                if "] rollout r-" in line and not dashboard:
                    # The rollout is under way: what the printed link shows now.
                    dashboard = _dashboard_while_running("".join(seen))
            returncode = demo.wait(timeout=180)
        finally:
            if demo.poll() is None:  # a failed check: Ctrl-C, so the demo stops what it started
                demo.send_signal(signal.SIGINT)
                try:
                    demo.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    demo.kill()
    out = "".join(seen)
    assert returncode == 0, out + errors.read_text()
    _assert_dashboard_showed(dashboard)
    lines = out.splitlines()
    assert "\x1b" not in out
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    for device in DEMO_DEVICES:
        assert any(
            line.endswith(f"] {device}: online") or f"] {device}: online," in line for line in lines
        ), out
    assert any("jetson-yard killed with SIGKILL" in line for line in lines), out
    assert any(line.endswith("] jetson-yard: online -> offline") for line in lines), out
    assert any("] pi-garage: pin B5 ON" in line for line in lines), out
    assert any("] OTA" in line for line in lines), out
    # It ends with the summary, the OTA line last.
    assert [line for line in lines if not line.startswith(" ")][-1].startswith("OTA"), out
    _assert_rollout_shown(out)

    (workdir,) = tmp_path.glob("edge-fleet-demo-*")
    store = SqliteFleetStore(workdir / "fleet.sqlite3")
    try:
        for device in DEMO_DEVICES:
            assert min(store.telemetry_seqs(device)) == 1, device
            events = store.device_detail(device, events=1000).events
            assert "agent_started" in [e and e["event"] for e in events], device
    finally:
        store.close()


def _dashboard_while_running(out: str) -> dict[str, Any]:
    """Follow the dashboard link the demo printed (its operator token sets the cookie) and
    read the device list, the rollouts page, a model device's API detail and the live feed."""
    [link] = re.findall(r"^(http://127\.0\.0\.1:\d+/\?token=flt_[A-Za-z0-9_-]+)$", out, re.M)
    base = link.split("/?", 1)[0]
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    with opener.open(link, timeout=10) as page:
        devices_html = page.read().decode()
    with opener.open(base + "/rollouts", timeout=10) as page:
        rollouts_html = page.read().decode()
    with opener.open(base + "/api/v1/devices/pi-kitchen", timeout=10) as reply:
        detail = json.loads(reply.read())
    live: list[dict[str, Any]] = []
    with opener.open(base + "/api/v1/live", timeout=10) as stream:
        for raw in stream:  # the feed never ends by itself: stop at the first model telemetry
            if raw.startswith(b"data: "):
                event = json.loads(raw[6:])
                inference = (event["data"].get("inference") or {}).get("models") or []
                if event["kind"] == "telemetry" and inference:
                    live.append(event)
                    break
    return {"devices": devices_html, "rollouts": rollouts_html, "detail": detail, "live": live}


def _assert_dashboard_showed(shown: dict[str, Any]) -> None:
    """The demo's devices, its model traffic and its rollout, on the dashboard."""
    assert shown, "the demo printed no rollout line to look at the dashboard by"
    for device in DEMO_DEVICES:
        assert f'data-device="{device}"' in shown["devices"], device
    assert "digits@3" in shown["rollouts"] and 'data-rollout="r-' in shown["rollouts"]
    models = shown["detail"]["device"]["telemetry"]["inference"]["models"]
    assert any(m["requests"] > 0 for m in models), models
    [event] = shown["live"]
    assert event["subject"] in MODEL_DEVICES, event


def _assert_rollout_shown(out: str) -> None:
    """The rollout's transitions, one (wrapped) line each, with the gate's figures against
    the thresholds, and its end: completed with every model device on digits@3, or halted
    by the gate (a canary slower than the rest on a busy machine) with every one on digits@2.
    """
    # Lines joined back: a change wraps onto indented continuation lines at 80 columns.
    joined = out.replace("\n         ", " ").replace("\n  ", " ")
    changes = [line for line in joined.splitlines() if "] rollout r-" in line]
    assert any(": start -> installing: stage 1/2 (1): 1 device(s)" in c for c in changes), out
    assert any("installing -> watching: stage 1/2 (1): 1 committed" in c for c in changes), out
    # A window without enough requests is extended ("gate insufficient", no figures); on a
    # busy machine that can come first. The first verdict is the first pass or fail.
    gated = [c for c in changes if "watching -> " in c and re.search(r"\| gate (pass|fail)", c)]
    assert gated, out
    # The figures of the p95 and error-rate verdicts, the new version against the old.
    assert re.search(r"p95 regression [+-][0-9.]+% (<=|>) \+50% \([0-9.]+ ms vs", gated[0]), out
    assert re.search(r"error rate [+-][0-9.]+pt (<=|>) \+1pt", gated[0]), out
    final = joined.splitlines()[-1]
    if "completed" in changes[-1]:
        assert "watching -> completed" in changes[-1] and "gate pass" in changes[-1], out
        assert all(f"{d} v3" in final for d in MODEL_DEVICES), out
    else:  # halted by the gate, or by a device's own health check (an install failure)
        halted_by_gate = "watching -> halted" in changes[-1] and "gate fail" in changes[-1]
        halted_by_device = "installing -> halted" in changes[-1] and "install fail" in changes[-1]
        assert halted_by_gate or halted_by_device, out
        assert all(f"{d} v2" in final for d in MODEL_DEVICES), out
