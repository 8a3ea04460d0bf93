"""The CLI's RPC client (``fleet.rpc``) against the controller's answers: each is decoded into
its method's reply model, a garbled one is an error naming the bad field (never a KeyError or
a TypeError in the renderer), and a refusal becomes its typed error. Pure: the exchange with
the broker is replaced by the answer's bytes."""

from __future__ import annotations

import asyncio
import json

import pytest

from edge_contract.controller import (
    DeviceReply,
    DevicesListRequest,
    DevicesReply,
    ShowRequest,
)
from fleet import rpc
from fleet.config import FleetConfig
from fleet.errors import FleetError, OperatorRefusedError, UnknownDeviceError

CONFIG = FleetConfig(broker="mqtt://127.0.0.1:1")
ROW = {
    "device_id": "pi-1",
    "online": True,
    "state": "online",
    "agent_version": None,
    "last_telemetry_age_s": 0.5,
    "last_seq": 3,
    "cpu_percent": 12.5,
    "memory_percent": None,
    "temperature_c": None,
    "health": None,
    "queue_depth": None,
    "models": {},
    "duplicates": 0,
    "admission": "pending",
}


def _answering(monkeypatch: pytest.MonkeyPatch, answer: object) -> list[object]:
    """Make the client's exchange return ``answer`` (as JSON); returns what was sent."""
    sent: list[object] = []

    async def exchange(_config: FleetConfig, method: str, payload: object) -> bytes:
        sent.append((method, payload))
        return json.dumps(answer).encode()

    monkeypatch.setattr(rpc, "_exchange", exchange)
    return sent


def test_a_reply_is_decoded_into_its_model(monkeypatch: pytest.MonkeyPatch) -> None:
    sent = _answering(monkeypatch, {"ok": True, "devices": [ROW]})

    reply = asyncio.run(rpc.call(CONFIG, "devices-list", DevicesListRequest(), DevicesReply))

    assert sent == [("devices-list", {})]
    assert reply.devices[0].device_id == "pi-1" and reply.devices[0].cpu_percent == 12.5


@pytest.mark.parametrize(
    ("answer", "named"),
    [
        ({"ok": True, "devices": [ROW | {"cpu_percent": "12.5"}]}, "devices.0.cpu_percent"),
        ({"ok": True, "devices": [ROW | {"online": "yes"}]}, "devices.0.online"),
        (
            {"ok": True, "devices": [{k: v for k, v in ROW.items() if k != "state"}]},
            "devices.0.state",
        ),
        ({"ok": True, "devices": "all"}, "devices"),
        ({"ok": True}, "devices"),
    ],
)
def test_a_garbled_reply_is_an_error_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, answer: object, named: str
) -> None:
    _answering(monkeypatch, answer)

    with pytest.raises(FleetError) as refused:
        asyncio.run(rpc.call(CONFIG, "devices-list", DevicesListRequest(), DevicesReply))

    message = str(refused.value)
    assert message.startswith("malformed reply from the controller: devices-list: ")
    assert f" {named}" in message, message


def test_a_reply_that_is_not_json_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    async def exchange(_config: FleetConfig, _method: str, _payload: object) -> bytes:
        return b"\xff not json"

    monkeypatch.setattr(rpc, "_exchange", exchange)
    with pytest.raises(FleetError, match="malformed reply from the controller"):
        asyncio.run(rpc.call(CONFIG, "devices-list", DevicesListRequest(), DevicesReply))


def test_refusals_become_their_typed_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    show = ShowRequest(device_id="ghost")
    _answering(
        monkeypatch, {"ok": False, "error": "x", "kind": "UnknownDeviceError", "device_id": "ghost"}
    )
    with pytest.raises(UnknownDeviceError) as unknown:
        asyncio.run(rpc.call(CONFIG, "devices-show", show, DeviceReply))
    assert unknown.value.device_id == "ghost"

    refused = {"ok": False, "error": "x", "kind": "OperatorRefusedError", "reason": "expired"}
    _answering(monkeypatch, refused | {"detail": "old"})
    with pytest.raises(OperatorRefusedError) as operator:
        asyncio.run(rpc.call(CONFIG, "devices-show", show, DeviceReply))
    assert (operator.value.reason, operator.value.detail) == ("expired", "old")

    _answering(monkeypatch, {"ok": False, "error": 5, "kind": "InternalError"})
    with pytest.raises(
        FleetError, match="malformed reply from the controller: devices-show: error"
    ):
        asyncio.run(rpc.call(CONFIG, "devices-show", show, DeviceReply))
