"""Prometheus and the Grafana dashboards against a real fleet.

Debian's real ``prometheus`` scrapes, every second, a real ``fleet serve`` (with a viewer
token, sent as Prometheus sends it: ``authorization: credentials_file``) and two real agents
on loopback: ``metrics-a`` with OTA and the inference REST port (``/metrics`` there), which a
rollout (held in its health window) installs ``digits@1`` on and which then answers
predictions; ``metrics-b`` with neither models nor OTA, its ``/metrics`` on ``[metrics]
port``. The agents' targets come from a file_sd file labelling each with its device, as
docs/monitoring.md configures it. Then every expression of every panel of every dashboard in
deploy/grafana/ is evaluated through Prometheus' query API, its template variables given a
real device and rollout: each must parse and return data. ``promtool check metrics`` must
pass, silent, on the controller's and both agents' ``/metrics``.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.localbroker import PrivateBroker
from fleet.http.auth import Role, new_token, token_line
from tests.integration.harness import ManagedProcess, agent_process, wait_until
from tests.integration.ota_harness import Fleet, free_port, golden_rows, ota_fleet, predict

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROMETHEUS = Path("/usr/bin/prometheus")
PROMTOOL = Path("/usr/bin/promtool")
DASHBOARDS = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
WITH_MODEL, WITHOUT = "metrics-a", "metrics-b"
# What Grafana would put in for its own variables: 5 s holds several 1 s scrapes.
GRAFANA_VARIABLES = {"__rate_interval": "5s", "__interval": "1s", "__range": "60s"}


def _expressions(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, expression) of every panel target, rows' nested panels included."""
    for panel in dashboard.get("panels", []):
        for nested in [panel, *panel.get("panels", [])]:
            for target in nested.get("targets", []):
                yield nested.get("title", "?"), target["expr"]


def _substitute(expr: str, values: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"no value for ${name} in {expr!r}"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def _query(port: int, expr: str) -> tuple[str, list[Any]]:
    """(status, result) of an instant query; status is the error for a query refused."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read() or b"{}")
    if body.get("status") != "success":
        return f"{body.get('errorType')}: {body.get('error')}", []
    return "success", body["data"]["result"]


def _label_values(port: int, label: str, metric: str) -> list[str]:
    query = urllib.parse.urlencode({"match[]": metric})
    url = f"http://127.0.0.1:{port}/api/v1/label/{label}/values?{query}"
    with urllib.request.urlopen(url, timeout=5) as response:
        values: list[str] = json.loads(response.read())["data"]
        return values


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def _promtool(text: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(PROMTOOL), "check", "metrics"],
        input=text,
        capture_output=True,
        timeout=30,
        check=False,
    )


def _prometheus_config(tmp: Path, controller: int, token_file: Path, targets: Path) -> Path:
    config = tmp / "prometheus.yml"
    config.write_text(
        f"""
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: fleet-controller
    authorization:
      credentials_file: {token_file}
    static_configs:
      - targets: ["127.0.0.1:{controller}"]
  - job_name: edge-agents
    file_sd_configs:
      - files: ["{targets}"]
        refresh_interval: 1s
"""
    )
    return config


def _thermal_zone(tmp: Path) -> Path:
    """A thermal zone as the kernel lays it out (this machine may have none)."""
    zone = tmp / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "type").write_text("cpu-thermal\n")
    (zone / "temp").write_text("48250\n")
    return zone.parent


def _dashboard_problems(port: int, values: dict[str, str]) -> list[str]:
    problems = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for title, expr in _expressions(json.loads(path.read_text())):
            status, result = _query(port, _substitute(expr, values))
            if status != "success" or not result:
                problems.append(f"{path.name} / {title}: {expr} -> {status}, {len(result)} series")
    return problems


@pytest.fixture
def bench(tmp_path: Path, broker: PrivateBroker) -> Iterator[tuple[Fleet, int, str]]:
    """The OTA bench whose controller serves HTTP on a known port, with a viewer token."""
    token = new_token()
    tokens = tmp_path / "tokens"
    tokens.write_text(token_line("prometheus", Role.VIEWER, token) + "\n")
    tokens.chmod(0o600)
    port = free_port()
    with ota_fleet(
        tmp_path,
        broker,
        HTTP__LISTEN=f"127.0.0.1:{port}",
        HTTP__TOKENS_FILE=str(tokens),
        ROLLOUTS__TICK_S="0.5",
    ) as fleet:
        yield fleet, port, token


def test_every_dashboard_panel_returns_data(
    tmp_path: Path, bench: tuple[Fleet, int, str], processes: list[ManagedProcess]
) -> None:
    if not PROMETHEUS.exists() or not PROMTOOL.exists():
        pytest.fail("prometheus is not installed: run `make test`, which installs it")
    fleet, http_port, token = bench
    thermal = str(_thermal_zone(tmp_path))
    rest_port, metrics_port, prometheus_port = free_port(), free_port(), free_port()
    fleet.start_agent_as(
        WITH_MODEL,
        INFERENCE__REST="true",
        INFERENCE__PORT=str(rest_port),
        TELEMETRY__THERMAL_ROOT=thermal,
    )
    processes.append(
        agent_process(
            tmp_path,
            fleet.broker.port,
            WITHOUT,
            METRICS__PORT=str(metrics_port),
            TELEMETRY__THERMAL_ROOT=thermal,
        ).start()
    )
    # Without the token the controller refuses; Prometheus sends it from credentials_file.
    controller_metrics = f"http://127.0.0.1:{http_port}/metrics"
    assert _get(controller_metrics)[0] == 401
    token_file = tmp_path / "prometheus.token"
    token_file.write_text(token + "\n")
    targets = tmp_path / "agents.json"
    targets.write_text(
        json.dumps(
            [
                {"targets": [f"127.0.0.1:{rest_port}"], "labels": {"device": WITH_MODEL}},
                {"targets": [f"127.0.0.1:{metrics_port}"], "labels": {"device": WITHOUT}},
            ]
        )
    )
    config = _prometheus_config(tmp_path, http_port, token_file, targets)
    prometheus = ManagedProcess(
        [
            str(PROMETHEUS),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
        ],
        {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        tmp_path / "prometheus.log",
    )
    processes.append(prometheus.start())

    # The rollout that puts digits@1 on the agent with a model, held in a 10 minute window.
    def accepted() -> bool:
        return fleet.cli("devices", "accept", WITH_MODEL).returncode == 0

    wait_until(accepted, 40, f"{WITH_MODEL} known and accepted", step=0.5)
    started: list[str] = []

    def rollout_started() -> bool:
        result = fleet.cli(
            "rollout", "start", "digits@1", "--devices", WITH_MODEL, "--stages", "100%",
            "--health-window", "600s", "--json",
        )  # fmt: skip
        if result.returncode == 0:
            started.append(json.loads(result.stdout)["summary"]["rollout_id"])
        return bool(started)

    wait_until(rollout_started, 40, "the rollout started (the device's OTA state known)", step=1)
    # One refused command on the agent: its rejections by reason have a series.
    fleet.publish_raw(f"fleet/{WITH_MODEL}/cmd/ping", b"not json", retain=False)

    def up() -> bool:
        status, result = _query(prometheus_port, "up == 1")
        return status == "success" and len(result) == 3

    wait_until(up, 30, "prometheus scraping the controller and both agents", step=0.5)
    values = {**GRAFANA_VARIABLES, "device": WITH_MODEL, "rollout": started[0]}
    rows = golden_rows()
    problems: list[str] = []

    def every_panel_has_data() -> bool:
        predict(rest_port, rows, timeout=5)  # traffic once digits@1 serves (404 before)
        problems[:] = _dashboard_problems(prometheus_port, values)
        return not problems

    try:
        wait_until(every_panel_has_data, 60, "every panel's expression returning data", step=1)
    except AssertionError as exc:
        raise AssertionError("\n".join(problems)) from exc
    for name, label, metric in (
        ("device", "device", "fleet_device_last_seen_timestamp_seconds"),
        ("rollout", "rollout", "fleet_rollout_stage"),
    ):
        assert values[name] in _label_values(prometheus_port, label, metric)

    # A few values, not only their presence: the rollout holds digits@1 on the device.
    for expr, expected in (
        ('sum(fleet_rollouts{phase=~"installing|watching"})', 1),
        (f'fleet_rollout_stages{{rollout="{started[0]}"}}', 1),
        ('fleet_model_devices{model="digits", version="1"}', 1),
        (f'edge_agent_ota_active_model{{device="{WITH_MODEL}", model="digits"}}', 1),
        ('fleet_devices{state="pending"}', 1),  # metrics-b, never accepted
        (
            f'edge_agent_temperature_celsius{{device="{WITHOUT}", sensor="thermal/cpu-thermal"}}',
            48.2,
        ),
    ):
        status, result = _query(prometheus_port, expr)
        assert [float(r["value"][1]) for r in result] == [expected], (expr, status, result)

    # The file_sd targets fleet makes from the device list, over the broker like any read.
    made = fleet.cli("devices", "prometheus-targets", "--port", "9100")
    assert made.returncode == 0, made.stderr
    assert {(g["labels"]["device"], g["targets"][0]) for g in json.loads(made.stdout)} == {
        (WITH_MODEL, f"{WITH_MODEL}:9100"),
        (WITHOUT, f"{WITHOUT}:9100"),
    }

    for url, bearer in (
        (controller_metrics, token),
        (f"http://127.0.0.1:{rest_port}/metrics", None),
        (f"http://127.0.0.1:{metrics_port}/metrics", None),
    ):
        status, text = _get(url, bearer)
        assert status == 200, url
        checked = _promtool(text)
        assert checked.returncode == 0, (url, checked.stdout, checked.stderr)
        assert not checked.stdout.strip() and not checked.stderr.strip(), (url, checked.stdout)
