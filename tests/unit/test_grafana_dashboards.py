"""The Grafana dashboards in deploy/grafana/ import as they are: their datasource is an
import input (``${DS_PROMETHEUS}``), every panel has a query. Whether each query returns
data from the real agents and controller: tests/integration/test_prometheus.py."""

from __future__ import annotations

import json
from pathlib import Path

DASHBOARDS = Path(__file__).resolve().parents[2] / "deploy" / "grafana"


def test_dashboards_are_importable_as_they_are() -> None:
    """Each dashboard asks for its datasource as an import input, and names only it."""
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"], path.name
        assert dashboard["uid"] and dashboard["title"], path.name
        for panel in dashboard["panels"]:
            assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
            assert panel["targets"], f"{path.name}: {panel['title']} has no query"
    assert {p.name for p in DASHBOARDS.glob("*.json")} == {
        "fleet-overview.json",
        "device.json",
        "rollouts.json",
    }
    device = json.loads((DASHBOARDS / "device.json").read_text())
    assert [v["name"] for v in device["templating"]["list"]] == ["device"]


def test_the_rollouts_variable_lists_rollouts() -> None:
    rollouts = json.loads((DASHBOARDS / "rollouts.json").read_text())
    (variable,) = rollouts["templating"]["list"]
    assert variable["name"] == "rollout"
    assert variable["query"]["query"] == "label_values(fleet_rollout_stage, rollout)"
