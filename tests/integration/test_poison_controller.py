"""Poison messages against a real controller on a real Mosquitto.

For every topic the controller subscribes to (``fleet/+/status|telemetry|events|reported``,
``fleet-controller/rpc/+`` and, with OTA on, ``fleet/+/fetch``), each kind of poison is
published, retained and not: deep nesting, huge and negative numbers, wrong types,
unparseable and far-future timestamps, invalid UTF-8, empty, oversized and valid JSON of the
wrong shape. After each batch the controller is running, a normal telemetry message sent
after it is stored, ``devices list`` and ``devices show`` answer, and the rejected counters
(``controller-status``) went up by exactly the number refused. A restart with the retained
poison still on the broker stays up and counts each retained message once more.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from devtools.localbroker import PrivateBroker
from edge_contract import payloads
from edge_contract.controller import RPC_REPLIES
from fleet import rpc
from fleet.config import FleetConfig
from fleet.errors import FleetError
from fleet.store import SqliteFleetStore
from tests.integration.harness import (
    ManagedProcess,
    fleet_cli,
    fleet_devices,
    start_controller,
    wait_until,
)
from tests.integration.ota_harness import Fleet

GOOD = "good-dev"
_CHANNELS = ("status", "telemetry", "events", "reported")
# The field made negative, and one made the wrong type, per channel.
_NEGATIVE = {"status": "ts", "telemetry": "seq", "events": "ts", "reported": "desired_counter"}
_WRONG_TYPE: dict[str, dict[str, Any]] = {
    "status": {"state": 3},
    "telemetry": {"cpu": "x", "seq": "7"},
    "events": {"event": 5},
    "reported": {"models": "x"},
}

Poison = tuple[str, bytes, str | None]  # name, payload, the reason it is counted under


def _valid(channel: str, device: str) -> dict[str, Any]:
    now = payloads.utc_now()
    return {
        "status": {"device_id": device, "state": "online", "ts": now},
        "telemetry": {"device_id": device, "seq": 1, "ts": now},
        "events": {"device_id": device, "event": "link_up", "ts": now},
        "reported": {"device_id": device, "ts": now, "models": {}},
    }[channel]


def _enc(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def _common_poison() -> list[Poison]:
    """Poison that fails in the decoder, whatever the topic."""
    return [
        ("deep", b"[" * 5000 + b"]" * 5000, "too_deep"),
        ("huge", b'{"seq": 18446744073709551616, "ts": "2026-01-01T00:00:00Z"}', "number_range"),
        ("not_utf8", b'{"state": "\xff\xfe"}', "not_utf8"),
        ("oversized", b'{"pad": "' + b"x" * 300_000 + b'"}', "too_large"),
        ("array", b"[1, 2, 3]", "not_object"),
    ]


def _device_poison(channel: str, device: str) -> list[Poison]:
    base = _valid(channel, device)
    empty_reason = None if channel in ("status", "reported") else "not_json"  # clears retained
    return [
        *_common_poison(),
        ("negative", _enc({**base, _NEGATIVE[channel]: -1}), "schema"),
        ("wrong_type", _enc({**base, **_WRONG_TYPE[channel]}), "schema"),
        ("ts_bad", _enc({**base, "ts": "bad"}), "schema"),
        ("ts_future", _enc({**base, "ts": "2999-01-01T00:00:00Z"}), "schema"),
        ("empty", b"", empty_reason),
        ("wrong_shape", _enc({"hello": "world"}), "schema"),
        ("other_device", _enc({**base, "device_id": "someone-else"}), "device_mismatch"),
    ]


def _rpc_poison() -> list[Poison]:
    """Without a response topic: a request nobody can be answered is counted as such."""
    return [
        *_common_poison(),
        ("negative", _enc({"device_id": GOOD, "events": -1}), "no_response_topic"),
        ("wrong_type", _enc({"device_id": 5}), "no_response_topic"),
        ("ts_bad", _enc({"ts": "bad"}), "no_response_topic"),
        ("ts_future", _enc({"ts": "2999-01-01T00:00:00Z"}), "no_response_topic"),
        ("empty", b"", "no_response_topic"),
        ("wrong_shape", _enc({"hello": "world"}), "no_response_topic"),
    ]


def _fetch_poison() -> list[Poison]:
    """Without the device's own file topic as response topic, nothing is read or sent."""
    return [(name, payload, "response_topic") for name, payload, _ in _rpc_poison()]


class Publisher:
    """A plain paho client, as anyone on the broker could run."""

    def __init__(self, port: int) -> None:
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5
        )
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        self.client.publish(
            topic, payload, qos=1, retain=retain, properties=properties
        ).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _call(port: int, method: str, request: dict[str, Any]) -> dict[str, Any]:
    config = FleetConfig(broker=f"mqtt://127.0.0.1:{port}", rpc_timeout_s=5.0)
    return asyncio.run(rpc.call(config, method, request, RPC_REPLIES[method])).model_dump()


def _rejected(port: int) -> dict[str, Any]:
    rejected: dict[str, Any] = _call(port, "controller-status", {})["rejected"]
    return rejected


def _wait_rejected(port: int, expected: Counter[str], what: str) -> None:
    """The counters reach exactly ``expected`` (and stay there a moment: no extra ones)."""

    def reached() -> bool:
        got = _rejected(port)
        return got["total"] == sum(expected.values()) and got["by_reason"] == dict(+expected)

    try:
        wait_until(reached, 20, what, step=0.3)
    except AssertionError:
        raise AssertionError(f"{what}: expected {dict(+expected)}, got {_rejected(port)}") from None


class _Bench:
    """The controller under test, the counts it should have, and the good device's seq."""

    def __init__(self, port: int, controller: ManagedProcess) -> None:
        self.port = port
        self.controller = controller
        self.expected: Counter[str] = Counter()
        self.seq = 0
        self.publisher = Publisher(port)

    def send(
        self, topic: str, poison: list[Poison], *, retain: bool, props: Properties | None = None
    ) -> None:
        for _name, payload, reason in poison:
            self.publisher.publish(topic, payload, retain=retain, properties=props)
            if reason is not None:
                self.expected[reason] += 1

    def check(self, what: str) -> None:
        """Still running, counted exactly, a normal message stored, list and show answer."""
        _wait_rejected(self.port, self.expected, what)
        assert self.controller.alive, self.controller.log()[-3000:]
        self.seq += 1
        good = {**_valid("telemetry", GOOD), "seq": self.seq}
        self.publisher.publish(f"fleet/{GOOD}/telemetry", _enc(good))
        wait_until(
            lambda: any(
                d["device_id"] == GOOD and d["last_seq"] == self.seq
                for d in fleet_devices(self.port)
            ),
            20,
            f"telemetry after {what}",
        )
        shown = fleet_cli(self.port, "devices", "show", GOOD, "--json", "--timeout", "5")
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["summary"]["last_seq"] == self.seq


@pytest.mark.slow
def test_poison_on_every_topic_retained_and_not(
    fleet: Fleet, processes: list[ManagedProcess]
) -> None:
    """Every poison kind on every subscribed topic: counted exactly, never fatal; a restart
    with the retained ones still there stays up and counts each once more."""
    assert fleet.controller is not None
    bench = _Bench(fleet.broker.port, fleet.controller)
    bench.check("start")
    after_restart: Counter[str] = Counter()
    try:
        for channel in _CHANNELS:
            bench.send(f"fleet/poison/{channel}", _device_poison(channel, "poison"), retain=False)
            bench.check(f"{channel}, not retained")
            for n in range(len(_device_poison(channel, "x"))):
                device = f"r-{channel}-{n}"
                item = _device_poison(channel, device)[n]
                bench.send(f"fleet/{device}/{channel}", [item], retain=True)
                if item[1] and item[2] is not None:
                    after_restart[item[2]] += 1
            bench.check(f"{channel}, retained")

        bench.send("fleet-controller/rpc/devices-list", _rpc_poison(), retain=False)
        bench.send("fleet-controller/rpc/BAD", [("bad_method", b"{}", "topic")], retain=False)
        bench.check("rpc, not retained")
        for n, item in enumerate(_rpc_poison()):
            bench.send(f"fleet-controller/rpc/poison-{n}", [item], retain=True)
            if item[1]:
                after_restart[item[2] or ""] += 1
        bench.check("rpc, retained")
        for bad in (
            {"device_id": 5},
            {"device_id": "x", "events": "many"},
            {"device_id": GOOD, "events": 10**9},
        ):
            with pytest.raises(FleetError, match="devices-show"):
                _call(bench.port, "devices-show", bad)

        bench.send("fleet/poison/fetch", _fetch_poison(), retain=False)
        # With the right response topic the request is answered (a 400): not a rejection.
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "fleet/poison/file"
        props.CorrelationData = b"0123456789abcdef"
        bench.send(
            "fleet/poison/fetch",
            [(n, p, None) for n, p, _ in _fetch_poison()],
            retain=False,
            props=props,
        )
        bench.check("fetch, not retained")
        for n, item in enumerate(_fetch_poison()):
            bench.send(f"fleet/f-{n}/fetch", [item], retain=True)
            if item[1]:
                after_restart[item[2] or ""] += 1
        bench.check("fetch, retained")

        assert bench.controller.terminate() == 0
        bench.controller = start_controller(fleet.tmp, bench.port, OTA__REPO=str(fleet.repo_dir))
        processes.append(bench.controller)
        bench.expected = after_restart
        bench.check("restart with the retained poison")
    finally:
        bench.publisher.close()


def test_seq_beyond_63_bits_is_acknowledged_and_not_redelivered(
    tmp_path: Path, broker: PrivateBroker, processes: list[ManagedProcess]
) -> None:
    """The 2^63 seq is refused and acknowledged: after a restart it does not come back."""
    controller = start_controller(tmp_path, broker.port)
    processes.append(controller)
    bench = _Bench(broker.port, controller)
    try:
        poison = {**_valid("telemetry", "pi-big"), "seq": 2**63}
        bench.send("fleet/pi-big/telemetry", [("seq", _enc(poison), "number_range")], retain=False)
        bench.check("seq 2^63")
        shown = fleet_cli(broker.port, "controller-status", "--timeout", "5")
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["rejected"]["by_reason"] == {"number_range": 1}
        assert controller.terminate() == 0
        bench.controller = start_controller(tmp_path, broker.port)
        processes.append(bench.controller)
        bench.expected = Counter()
        bench.check("restart")
    finally:
        bench.publisher.close()


def test_store_failures_do_not_wedge_ingest(
    tmp_path: Path, broker: PrivateBroker, processes: list[ManagedProcess]
) -> None:
    """25 messages the store refuses (a trigger standing in for a store bug) are
    dead-lettered and acknowledged; telemetry of other devices keeps being stored."""
    db = tmp_path / "fleet.sqlite3"
    SqliteFleetStore(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TRIGGER poison BEFORE INSERT ON telemetry WHEN NEW.device_id = 'poison' "
            "BEGIN SELECT RAISE(ABORT, 'injected store failure'); END"
        )
    controller = start_controller(tmp_path, broker.port)
    processes.append(controller)
    bench = _Bench(broker.port, controller)
    try:
        for seq in range(1, 26):
            body = {**_valid("telemetry", "poison"), "seq": seq}
            bench.send(
                "fleet/poison/telemetry", [("store", _enc(body), "store_failed")], retain=False
            )
        bench.check("25 store failures")
        letters = _call(broker.port, "controller-status", {})["dead_letters"]
        assert letters and all(d["reason"] == "store_failed" for d in letters)
        assert "injected store failure" in letters[0]["detail"]
    finally:
        bench.publisher.close()
