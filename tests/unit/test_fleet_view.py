"""The operator's views: ``devices show``, the demo's 80-column table and its piped lines.

The views take the controller's typed replies (``DeviceDetail``, ``DeviceSummary``); what a
device sent inside them (status, telemetry, reported state, events) is any JSON, and every
shape of it renders. A reply whose own fields are the wrong type never reaches a view: the
contract refuses it (tests/unit/test_contract_models.py)."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from devtools.demo_display import BoardState, Frame, LineDisplay, LiveDisplay
from edge_contract.controller import DeviceDetail, DeviceSummary
from fleet.view import age, compact_devices_table, device_detail_lines, device_detail_view

NOW = datetime(2026, 12, 7, 3, 18, 30, tzinfo=UTC).timestamp()


def _model(version: str, loaded: bool, **extra: Any) -> dict[str, Any]:
    return {
        "model": "digits",
        "version": version,
        "loaded": loaded,
        "runtime": "onnx",
        "task": "classification",
        "requests": 112,
        "batches": 14,
        "nonfinite_outputs": 0,
        "latency_quantile_seconds": {"0.5": 0.000168, "0.95": 0.001372, "0.99": 0.001733},
        "throughput_rows_per_second": 7.7,
        "top_classes": {str(i): 10 for i in range(10)},
        **extra,
    }


def _summary(device_id: str, **fields: Any) -> dict[str, Any]:
    """A device-list row as the controller sends it (``DeviceSummary``)."""
    return {
        "device_id": device_id,
        "online": True,
        "state": "online",
        "agent_version": None,
        "last_telemetry_age_s": 0.8,
        "last_seq": 19,
        "cpu_percent": None,
        "memory_percent": None,
        "temperature_c": None,
        "health": None,
        "queue_depth": None,
        "models": {"digits": "3"},
        "duplicates": 0,
        "admission": "accepted",
    } | fields


def _typed(detail: dict[str, Any]) -> DeviceDetail:
    """The reply as the CLI has it once decoded; absent documents are None."""
    documents = ("reported", "desired", "status", "telemetry")
    return DeviceDetail.model_validate(
        {"summary": _summary("pi-x"), "events": []} | dict.fromkeys(documents) | detail
    )


def _detail() -> dict[str, Any]:
    """A device's detail as the controller returns it (taken from a demo run, trimmed)."""
    events = [
        {"device_id": "pi-kitchen", "event": name, "ts": f"2026-12-07T03:17:{59 - i:02d}.1Z"}
        | {"model": "digits", "version": "3"}
        for i, name in enumerate(
            ["model_unloaded", "ota_committed", "model_loaded", "ota_health_check"]
            + ["ota_activating", "ota_installed", "ota_verifying", "ota_downloading"] * 2
        )
    ]
    return {
        "summary": _summary("pi-kitchen", agent_version="0.1.0", health="ok"),
        "status": {
            "device_id": "pi-kitchen",
            "state": "online",
            "agent_version": "0.1.0",
            "models": {"digits": "3"},
            "ts": "2026-12-07T03:17:50.702Z",
            "hardware_id": "pi4",
            "tags": {"site": "kitchen"},
        },
        "reported": {
            "models": {
                "digits": {
                    "active": {"slot": "a", "version": "3", "release": 1, "variant": "pi-int8"},
                    "pending": None,
                    "previous": {"slot": "b", "version": "2", "release": 1},
                    "variant": "pi-int8",
                    "step": "committed",
                    "progress": None,
                    "last_result": {
                        "outcome": "committed",
                        "version": "3",
                        "reason": None,
                        "detail": "4 inferences in 4.3 s, 0 errors",
                        "at": "2026-12-07T03:17:59Z",
                    },
                }
            }
        },
        "desired": {"counter": 1, "model": "digits", "version": "3", "action": "deploy"},
        "telemetry": {
            "device_id": "pi-kitchen",
            "stream": "22e694bf25615ff5",
            "seq": 19,
            "ts": "2026-12-07T03:18:29.350Z",
            "cpu": {"percent": 42.0, "per_core": [11.2, 72.7], "count": 2, "load": [0.92, 0.4]},
            "memory": {"total_bytes": 25276182528, "used_percent": 4.0},
            "disk": {"total_bytes": 270553174016, "free_bytes": 84332544000, "used_percent": 22.6},
            "temperatures_c": {"cpu_thermal": 51.5, "gpu": 48.0},
            "queue": {"depth": 0, "bytes": 0, "max_bytes": 67108864, "dropped_total": 0},
            "link": {"connected": True, "outages": 0, "last_outage_s": None},
            "health": {
                "status": "degraded",
                "subsystems": {
                    "disk": {"status": "ok", "reason": ""},
                    "queue": {"status": "degraded", "reason": "queue 900/1000 bytes"},
                },
            },
            "serial": {
                "connected": True,
                "port": "/dev/ttyACM0",
                "firmware_version": 256,
                "rtt_ms_p50": 3.231,
                "crc_errors": 0,
            },
            "pipelines": {
                "light": {"inputs": 189, "last_label": "high", "last_score": 0.58, "actuations": 4}
            },
            "inference": {
                "models": [
                    _model("2", False),
                    _model(
                        "3",
                        True,
                        errors={"invalid_input": 2},
                        drift_psi={"class": 0.072, "confidence": 0.088},
                        drift_level="stable",
                        feedback=112,
                        accuracy=0.973214,
                    ),
                ],
                "internal_errors": 0,
            },
        },
        "events": events,
    }


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=30,
)
_JSON_OBJECTS = st.dictionaries(st.text(max_size=12), _JSON, max_size=8)


def _rendered(detail: Any, width: int = 80) -> list[str]:
    console = Console(width=width, record=True, force_terminal=False, color_system=None)
    device_detail_view(console, _typed(detail), now=NOW)
    return console.export_text().splitlines()


class TestDeviceShow:
    def test_a_typical_device_fits_in_25_lines_with_its_key_fields(self) -> None:
        lines = _rendered(_detail())
        assert len(lines) <= 25, "\n".join(lines)
        assert all(len(line) <= 80 for line in lines)
        shown = "\n".join(lines)
        assert lines[0].startswith("pi-kitchen  online since 03:17:50Z (39s ago), agent 0.1.0")
        for expected in (
            "42.0% of 2 cores",
            "4.0% of 23.5 GiB",
            "22.6% of 252.0 GiB",
            "51.5 °C (cpu_thermal)",
            "degraded: queue: queue 900/1000 bytes",
            "connected, 0 outages; queue 0 messages",
            "seq 19, measured 03:18:29Z",
            "serial     connected, firmware 256, rtt p50 3.2 ms",
            "light: 189 inputs, last high (0.58), 4 actuations",
            "digits v3: p50 0.17 ms, p95 1.37 ms, 112 requests, 2 errors",
            "accuracy 97.3% (112 feedback), drift stable (PSI 0.088)",
            "unloaded: digits v2",
            "digits: active 3 (slot a), pending -, previous 2 (slot b); committed",
            "variant pi-int8 (active)",
            "hardware   pi4; tags site=kitchen",
            "last committed 3 at 03:17:59Z",
            "desired    digits@3 (deploy, counter 1)",
        ):
            assert expected in shown, f"{expected!r} not in:\n{shown}"
        events = [line for line in lines if "12-07 03:17:" in line]
        assert len(events) == 5
        assert "model_unloaded model=digits version=3" in events[0]

    def test_a_pending_device_says_so_in_its_header(self) -> None:
        """A device not yet accepted by an operator is marked in the first line."""
        detail = _detail()
        assert "pending acceptance" not in _rendered(detail)[0]
        detail["summary"]["admission"] = "pending"
        assert "pending acceptance" in _rendered(detail)[0]

    def test_raw_telemetry_is_not_printed(self) -> None:
        shown = "\n".join(_rendered(_detail()))
        assert "per_core" not in shown and "top_classes" not in shown and "{" not in shown

    def test_partial_and_odd_typed_details_do_not_raise(self) -> None:
        odd: list[Any] = [
            {},
            {"status": None, "telemetry": {}, "events": [None]},
            {
                "summary": _summary("", state="", last_telemetry_age_s=-1e308, online=False),
                "status": {"ts": "yesterday", "state": ["online"], "reason": {"a": 1}},
                "telemetry": {
                    "seq": 10**400,
                    "ts": 12,
                    "cpu": {"percent": "x", "count": True, "load": "high"},
                    "memory": [],
                    "disk": {"used_percent": float("nan"), "total_bytes": -1},
                    "temperatures_c": {"cpu": "hot", "gpu": None},
                    "queue": {"depth": 1e300, "dropped_total": "many"},
                    "link": 5,
                    "health": {"subsystems": {"x": "bad", "y": {"status": 3}}},
                    "errors": ["board"],
                    "serial": {"connected": "yes", "port": 5, "rtt_ms_p50": "1"},
                    "pipelines": {"p": None, "q": {"inputs": "1"}},
                    "board": {"kind": None, "throttled": {"under_voltage_now": True}},
                    "inference": {
                        "models": [
                            "x",
                            {"loaded": True, "latency_quantile_seconds": "bad", "errors": [1]},
                            {"loaded": True, "drift_psi": {"class": "x"}, "accuracy": "1"},
                        ]
                    },
                },
                "reported": {"models": {"digits": "x", "m": {"last_result": "bad"}}},
                "desired": None,
                "events": [None, {"event": {"x": 1}, "ts": None, "extra": [1, 2]}],
            },
        ]
        for detail in odd:
            assert _rendered(detail)

    def test_device_strings_cannot_write_escape_codes_or_markup(self) -> None:
        detail = _detail()
        detail["summary"]["device_id"] = "pi\x1b[2J[red]evil[/red]"
        detail["status"]["agent_version"] = "1.0\x1b]0;title\x07"
        detail["events"][0]["event"] = "boom\x1b[31m"
        console = Console(width=80, record=True, force_terminal=True)
        device_detail_view(console, _typed(detail), now=NOW)
        out = console.export_text(styles=False)
        assert "\x1b" not in out and "\x07" not in out
        assert "[red]evil[/red]" in out

    @settings(max_examples=200, deadline=None)
    @given(
        st.fixed_dictionaries(
            {},
            optional={
                name: _JSON_OBJECTS | st.none() for name in ("status", "telemetry", "reported")
            }
            | {"events": st.lists(_JSON_OBJECTS | st.none(), max_size=4)},
        )
    )
    def test_any_json_in_the_device_documents_renders(self, detail: dict[str, Any]) -> None:
        assert device_detail_lines(_typed(detail), now=NOW)


def _devices() -> list[DeviceSummary]:
    def row(device_id: str, online: bool, cpu: float, models: dict[str, str]) -> DeviceSummary:
        fields = _summary(
            device_id,
            online=online,
            state="online" if online else "offline",
            last_telemetry_age_s=12.4,
            cpu_percent=cpu,
            memory_percent=99.9,
            temperature_c=85.3,
            models=models,
        )
        return DeviceSummary.model_validate(fields)

    return [
        row("jetson-yard", False, 100.0, {}),
        row("pi-garage", True, 7.5, {}),
        row("pi-kitchen", True, 42.0, {"digits": "3", "minilm": "12"}),
    ]


class TestDemoTable:
    def test_the_live_table_fits_80_columns_without_cutting_anything(self) -> None:
        console = Console(width=80, record=True, force_terminal=False, color_system=None)
        console.print(compact_devices_table(_devices(), title="Fleet (12s)"))
        out = console.export_text()
        assert "…" not in out, out
        assert all(len(line) <= 80 for line in out.splitlines())
        rows = [line.split() for line in out.splitlines()]
        assert ["jetson-yard", "offline", "12s", "100%", "100%", "85°C", "-"] in rows
        assert ["pi-kitchen", "online", "12s", "42%", "100%", "85°C", "digits", "v3"] in rows
        assert ["minilm", "v12"] in rows

    def test_live_display_shows_table_and_lines_at_80_columns(self) -> None:
        console = Console(width=80, record=True, force_terminal=False, color_system=None)
        display = LiveDisplay(console)
        display.update(_frame(3.0, _devices(), pin_on=True, notes=["jetson-yard killed"]))
        display.close()
        out = console.export_text()
        assert "…" not in out and all(len(line) <= 80 for line in out.splitlines())
        assert "B5 ON" in out and "OTA on pi-kitchen" in out and "jetson-yard killed" in out


def _frame(
    elapsed: float,
    devices: list[DeviceSummary],
    *,
    pin_on: bool,
    version: str | None = "3",
    ota: str = "OTA on pi-kitchen: fleet deploy digits@3 -> committed",
    notes: list[str] | None = None,
) -> Frame:
    return Frame(
        elapsed=elapsed,
        devices=devices,
        board=BoardState("pi-garage", 3.1 if pin_on else 1.2, pin_on),
        model_line=f"pi-kitchen digits v{version}: 8 predictions, p50 0.22 ms",
        model_version=version,
        ota_line=ota,
        notes=notes or [],
    )


class TestPipedDemo:
    def test_a_plain_line_per_change_and_nothing_when_nothing_changes(self) -> None:
        out = io.StringIO()
        display = LineDisplay(out)
        devices = _devices()
        display.update(_frame(1.0, devices, pin_on=False, version=None, ota="OTA: published"))
        first = out.getvalue().splitlines()
        assert "[  1s] jetson-yard: offline" in first
        assert "[  1s] pi-kitchen: online, serving digits v3, minilm v12" in first
        assert "[  1s] pi-garage: pin B5 off (A0 1.20 V, pipeline 'light')" in first
        assert "[  1s] OTA: published" in first

        display.update(_frame(2.0, devices, pin_on=False, version=None, ota="OTA: published"))
        assert out.getvalue().splitlines() == first

        devices[0] = devices[0].model_copy(update={"online": True, "state": "online"})
        devices[2] = devices[2].model_copy(update={"models": {"digits": "4", "minilm": "12"}})
        display.update(_frame(3.0, devices, pin_on=True, notes=["jetson-yard started again"]))
        later = out.getvalue().splitlines()[len(first) :]
        assert later == [
            "[  3s] jetson-yard started again",
            "[  3s] jetson-yard: offline -> online",
            "[  3s] pi-kitchen: models digits v3, minilm v12 -> digits v4, minilm v12",
            "[  3s] pi-garage: pin B5 ON (A0 3.10 V, pipeline 'light')",
            "[  3s] pi-kitchen digits v3: 8 predictions, p50 0.22 ms",
            "[  3s] OTA on pi-kitchen: fleet deploy digits@3 -> committed",
        ]

    def test_lines_are_plain_and_at_most_80_columns(self) -> None:
        out = io.StringIO()
        display = LineDisplay(out)
        long = "OTA on pi-kitchen: fleet deploy digits@3 failed: " + "x " * 60
        display.message("broker mqtt://127.0.0.1:1883, logs in /tmp/" + "d" * 90)
        display.update(_frame(5.0, _devices(), pin_on=True, ota=long))
        display.finish(_frame(6.0, _devices(), pin_on=True, ota=long))
        lines = out.getvalue().splitlines()
        assert "\x1b" not in out.getvalue()
        assert all(len(line) <= 80 for line in lines), max(lines, key=len)
        # The summary at the end: the table, then the board, model and OTA lines, OTA last.
        assert any(line.split()[:2] == ["pi-kitchen", "online"] for line in lines if line)
        assert lines[-1].startswith("  ") and any(line.startswith("OTA on") for line in lines)


def test_age_is_short() -> None:
    assert [age(x) for x in (0.84, 42, 720, 18000, 3 * 86400, None, "x", -1)] == [
        "0.8s",
        "42s",
        "12m",
        "5h",
        "3d",
        "-",
        "-",
        "0.0s",
    ]


def test_raw_detail_round_trips_as_json() -> None:
    # --raw prints the detail as it came; the view must not have changed it.
    detail = _typed(_detail())
    before = json.dumps(detail.model_dump(), sort_keys=True)
    device_detail_lines(detail, now=NOW)
    assert json.dumps(detail.model_dump(), sort_keys=True) == before
