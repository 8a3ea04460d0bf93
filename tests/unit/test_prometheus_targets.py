"""``fleet devices prometheus-targets``: the file_sd document made from the device list."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edge_contract.controller import DeviceSummary
from fleet.errors import FleetConfigError
from fleet.prometheus_targets import check_template, file_sd, write_atomically


def _device(device_id: str, **tags: str) -> DeviceSummary:
    fields: dict[str, Any] = dict.fromkeys(
        (
            "agent_version",
            "last_telemetry_age_s",
            "last_seq",
            "cpu_percent",
            "memory_percent",
            "temperature_c",
            "health",
            "queue_depth",
        )
    )
    return DeviceSummary(
        device_id=device_id,
        online=True,
        state="online",
        models={},
        duplicates=0,
        tags=tags,
        **fields,
    )


def test_one_group_per_device_labelled_with_device_and_tags() -> None:
    devices = [_device("pi-2", site="lab", **{"rack.row": "3", "device": "pi-2"}), _device("pi-1")]
    groups = file_sd(devices, port=9100, host_template="{device}.local:{port}")
    assert groups == [
        {"targets": ["pi-1.local:9100"], "labels": {"device": "pi-1"}},
        {
            "targets": ["pi-2.local:9100"],
            "labels": {"device": "pi-2", "tag_rack_row": "3", "tag_site": "lab"},
        },
    ]
    assert file_sd([_device("a")], port=9200)[0]["targets"] == ["a:9200"]


@pytest.mark.parametrize(
    "template",
    ["{host}:9100", "static:9100", "{device}:{port}/metrics", "{device} :1", "{device", "{0}"],
)
def test_a_template_that_cannot_make_targets_is_refused(template: str) -> None:
    with pytest.raises(FleetConfigError, match="host-template") as caught:
        check_template(template)
    assert caught.value.exit_code == 78


def test_written_in_one_rename(tmp_path: Path) -> None:
    out = tmp_path / "targets.json"
    out.write_text("old")
    write_atomically(out, file_sd([_device("a")], port=1))
    assert json.loads(out.read_text())[0]["labels"] == {"device": "a"}
    assert [p.name for p in tmp_path.iterdir()] == ["targets.json"]
