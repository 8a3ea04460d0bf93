"""The controller's use cases (``fleet.app``) on a real SQLite store in a tmp dir, no broker.

Typed request in, typed reply out; the request models (``edge_contract.controller``) refuse
bad input naming the offending field; the RPC front end (``fleet.rpc_server``) answers with
the same JSON as before the application layer, and routes deploy/rollback only with OTA on.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from edge_contract import payloads
from edge_contract.controller import (
    REVOKED,
    AcceptReply,
    AcceptRequest,
    DeployReply,
    DeployRequest,
    DevicesListRequest,
    OperatorAddedReply,
    OperatorAddRequest,
    OperatorRemovedReply,
    OperatorRemoveRequest,
    OperatorsListRequest,
    RollbackReply,
    RollbackRequest,
    ShowRequest,
    Skipped,
    StatusRequest,
    decode_request,
)
from edge_contract.errors import PayloadError
from edge_runtime.mqtt.link import MqttLink
from fleet.app.replies import to_json
from fleet.app.usecases import FleetApp
from fleet.broker import link_settings_for
from fleet.config import FleetConfig, OtaOptions
from fleet.errors import (
    DeviceNotAcceptedError,
    DeviceRevokedError,
    FleetError,
    OperatorKeyError,
    UnknownDeviceError,
)
from fleet.operators import generate_key, key_id, public_key_text
from fleet.ota import OTA_DISABLED, ReleaseService
from fleet.release.publish import publish_model
from fleet.release.repo import Repository
from fleet.service import Controller
from fleet.store import Inbound, SqliteFleetStore

NOW = 1_800_000_000.0
MODEL = Path(__file__).resolve().parents[2] / "models" / "digits" / "digits-int8.onnx"
ALICE = public_key_text(generate_key().public_key())
BOB = public_key_text(generate_key().public_key())
# The OTA state an agent reports after committing digits@2 over digits@1.
REPORTED = {
    "agent_version": "0.1.0",
    "desired_counter": 0,
    "ts": "2026-11-29T14:28:51Z",
    "models": {
        "digits": {
            "active": {"slot": "b", "version": "2", "release": 2},
            "pending": None,
            "previous": {"slot": "a", "version": "1", "release": 1},
            "step": "committed",
            "progress": None,
            "last_result": {"outcome": "committed", "version": "2", "reason": None},
        }
    },
}


@pytest.fixture
def store(tmp_path: Path) -> Any:
    opened = SqliteFleetStore(tmp_path / "fleet.db")
    yield opened
    opened.close()


@pytest.fixture
def app(store: SqliteFleetStore) -> FleetApp:
    return FleetApp(store, clock=lambda: NOW)


def _seen(store: SqliteFleetStore, device_id: str, *, reported: bool = False) -> None:
    store.ingest([Inbound(device_id, "status", {"state": "online"}, NOW)])
    if reported:
        store.ingest([Inbound(device_id, "reported", REPORTED, NOW)])


def _schema_refusal(model: type[Any], body: dict[str, Any]) -> str:
    with pytest.raises(PayloadError) as caught:
        decode_request("m", model, body)
    assert caught.value.reason == "schema"
    return str(caught.value)


class TestRequests:
    @pytest.mark.parametrize(
        ("model", "body", "field"),
        [
            (ShowRequest, {"device_id": "pi-1", "events": 10**9}, "events"),
            (ShowRequest, {"device_id": "UPPER"}, "device_id"),
            (DeployRequest, {"model": "digits", "version": "2", "admin": True}, "admin"),
            (DeployRequest, {"model": "", "version": "2"}, "model"),
            (DeployRequest, {"model": "d", "version": "2", "devices": [5]}, "devices.0"),
            (DeployRequest, {"model": "d", "version": "2", "all": "yes"}, "all"),
            (RollbackRequest, {"device_id": "x" * 129}, "device_id"),
            (AcceptRequest, {}, "device_id"),
            (OperatorAddRequest, {"name": "alice"}, "public_key"),
            (OperatorRemoveRequest, {"name": 7}, "name"),
            (DevicesListRequest, {"all": True}, "all"),
        ],
    )
    def test_bad_input_is_refused_naming_the_field(
        self, model: type[Any], body: dict[str, Any], field: str
    ) -> None:
        assert f"m: {field}:" in _schema_refusal(model, body)

    def test_a_deploy_names_at_most_ten_thousand_devices(self) -> None:
        devices = [f"d{n}" for n in range(10_001)]
        message = _schema_refusal(DeployRequest, {"model": "d", "version": "1", "devices": devices})
        assert "m: devices:" in message

    def test_what_the_cli_sends_round_trips(self) -> None:
        request = DeployRequest(model="digits", version="2", devices=["pi-1"])
        wire = json.loads(payloads.encode(request.model_dump(exclude_none=True)))
        assert decode_request("deploy", DeployRequest, wire) == request
        rollback = RollbackRequest(device_id="pi-1")
        assert rollback.model_dump(exclude_none=True) == {"device_id": "pi-1"}


class TestReads:
    def test_list_and_show_return_the_stores_typed_rows(
        self, app: FleetApp, store: SqliteFleetStore
    ) -> None:
        assert app.list_devices(DevicesListRequest()).devices == []
        _seen(store, "pi-1")
        (summary,) = app.list_devices(DevicesListRequest()).devices
        assert (summary.device_id, summary.admission) == ("pi-1", "pending")
        shown = app.show_device(ShowRequest(device_id="pi-1", events=0)).device
        assert shown.summary.device_id == "pi-1" and shown.events == []

    def test_show_of_an_unknown_device_names_it(self, app: FleetApp) -> None:
        with pytest.raises(UnknownDeviceError) as caught:
            app.show_device(ShowRequest(device_id="ghost"))
        assert caught.value.device_id == "ghost"

    def test_controller_status_counts_the_refusals_and_lists_dead_letters(
        self, store: SqliteFleetStore
    ) -> None:
        counts = Counter({"schema": 2, "too_large": 1})
        app = FleetApp(store, refusals=lambda: counts)
        status = app.controller_status(StatusRequest())
        assert (status.rejected.total, status.rejected.by_reason) == (3, dict(counts))
        assert status.dead_letters == []
        assert FleetApp(store).controller_status(StatusRequest()).rejected.total == 0


class TestChanges:
    def test_accept_makes_a_pending_device_a_target_once(
        self, app: FleetApp, store: SqliteFleetStore
    ) -> None:
        _seen(store, "pi-1")
        request = AcceptRequest(device_id="pi-1")
        first = app.accept_device(request, operator="alice")
        assert first == AcceptReply(device_id="pi-1", admission="accepted", changed=True)
        assert app.accept_device(request, operator="alice").changed is False
        assert store.admission("pi-1") == "accepted"
        with pytest.raises(UnknownDeviceError):
            app.accept_device(AcceptRequest(device_id="ghost"), operator="alice")

    def test_operators_are_added_listed_and_removed(self, app: FleetApp) -> None:
        added = app.add_operator(OperatorAddRequest(name="alice", public_key=ALICE))
        assert added == OperatorAddedReply(name="alice", key_id=key_id(ALICE))
        app.add_operator(OperatorAddRequest(name="bob", public_key=BOB))
        names = [o.name for o in app.list_operators(OperatorsListRequest()).operators]
        assert names == ["alice", "bob"]
        removed = app.remove_operator(OperatorRemoveRequest(name="bob"))
        assert removed == OperatorRemovedReply(name="bob", removed=True)
        with pytest.raises(FleetError, match="last operator"):
            app.remove_operator(OperatorRemoveRequest(name="alice"))
        app.remove_operator(OperatorRemoveRequest(name="alice"), keep_last=False)
        assert app.list_operators(OperatorsListRequest()).operators == []

    def test_a_bad_operator_name_or_key_is_refused(self, app: FleetApp) -> None:
        with pytest.raises(OperatorKeyError):
            app.add_operator(OperatorAddRequest(name="no spaces", public_key=ALICE))
        with pytest.raises(OperatorKeyError):
            app.add_operator(OperatorAddRequest(name="alice", public_key="not a key"))
        with pytest.raises(FleetError, match="no operator named"):
            app.remove_operator(OperatorRemoveRequest(name="ghost"), keep_last=False)

    def test_deploy_and_rollback_need_ota(self, app: FleetApp) -> None:
        with pytest.raises(FleetError, match="OTA is not enabled"):
            app.deploy(DeployRequest(model="digits", version="2", all=True))
        with pytest.raises(FleetError, match="OTA is not enabled"):
            app.rollback(RollbackRequest(device_id="pi-1"))


class TestReleases:
    @pytest.fixture
    def ota_app(self, tmp_path: Path, store: SqliteFleetStore) -> Any:
        repo = Repository.init(tmp_path / "repo")
        for version in ("1", "2"):
            publish_model(repo, MODEL, name="digits", version=version, hardware=["generic"])
        config = FleetConfig(db=tmp_path / "fleet.db", broker="mqtt://127.0.0.1:1")
        link = MqttLink(link_settings_for(config, client_id="t", persistent=True))
        releases = ReleaseService(OtaOptions(repo=repo.directory), link, store)
        yield FleetApp(store, releases=releases, clock=lambda: NOW)
        releases.close()

    def test_deploy_signs_a_desired_state_per_target(
        self, ota_app: FleetApp, store: SqliteFleetStore
    ) -> None:
        _seen(store, "pi-1", reported=True)
        _seen(store, "pi-2")  # pending
        store.accept_device("pi-1", operator="t", now=NOW)
        reply, messages = ota_app.deploy(DeployRequest(model="digits", version="2", all=True))
        assert isinstance(reply, DeployReply)
        assert (reply.model, reply.version, reply.devices) == ("digits", "2", ["pi-1"])
        assert reply.skipped == [Skipped(device_id="pi-2", reason="pending")]
        assert [topic for topic, _ in messages] == ["fleet/pi-1/desired"]
        assert json.loads(messages[0][1])["signed"]["model"]["version"] == "2"

    def test_deploy_refuses_devices_it_cannot_target(
        self, ota_app: FleetApp, store: SqliteFleetStore
    ) -> None:
        _seen(store, "pi-1")
        with pytest.raises(DeviceNotAcceptedError):
            ota_app.deploy(DeployRequest(model="digits", version="2", devices=["pi-1"]))
        store.accept_device("pi-1", operator="t", now=NOW)
        with pytest.raises(FleetError, match=re.escape(OTA_DISABLED)):
            ota_app.deploy(DeployRequest(model="digits", version="2", devices=["pi-1"]))
        with pytest.raises(FleetError, match="needs --device"):
            ota_app.deploy(DeployRequest(model="digits", version="2"))
        with pytest.raises(FleetError, match="no signed release digits@9"):
            ota_app.deploy(DeployRequest(model="digits", version="9", all=True))

    def test_rollback_goes_back_to_the_reported_previous_version(
        self, ota_app: FleetApp, store: SqliteFleetStore
    ) -> None:
        _seen(store, "pi-1", reported=True)
        store.accept_device("pi-1", operator="t", now=NOW)
        reply, messages = ota_app.rollback(RollbackRequest(device_id="pi-1"))
        assert reply == RollbackReply(device_id="pi-1", model="digits", version="1")
        assert json.loads(messages[0][1])["signed"]["action"] == "rollback"
        with pytest.raises(FleetError, match="reports no OTA model 'other'"):
            ota_app.rollback(RollbackRequest(device_id="pi-1", model="other"))


class TestRpcFrontEnd:
    def _controller(self, tmp_path: Path) -> Controller:
        config = FleetConfig(db=tmp_path / "c.db", broker="mqtt://127.0.0.1:1")
        return Controller(config, SqliteFleetStore(tmp_path / "c.db"), clock=lambda: NOW)

    def test_replies_are_the_records_as_json_objects(self, tmp_path: Path) -> None:
        controller = self._controller(tmp_path)
        _seen(controller.store, "pi-1")  # type: ignore[arg-type]
        body, messages = controller.rpc.call("devices-list", {})
        assert messages == []
        listed = [d.model_dump() for d in controller.store.list_devices()]
        assert to_json(body) == {"devices": listed, "select": None}
        # The summary's keys in the order the controller has always sent them.
        assert list(listed[0]) == [
            "device_id", "online", "state", "agent_version", "last_telemetry_age_s", "last_seq",
            "cpu_percent", "memory_percent", "temperature_c", "health", "queue_depth", "models",
            "duplicates", "admission", "tags",
        ]  # fmt: skip
        shown, _ = controller.rpc.call("devices-show", {"device_id": "pi-1"})
        detail = controller.store.device_detail("pi-1")
        assert to_json(shown) == {"device": detail.model_dump()}
        assert list(to_json(shown)["device"]) == [  # type: ignore[arg-type]
            "summary", "reported", "desired", "status", "telemetry", "events",
        ]  # fmt: skip
        assert controller.app.show_device(ShowRequest(device_id="pi-1")) == shown
        controller.store.close()

    def test_a_bad_read_request_is_refused_naming_method_and_field(self, tmp_path: Path) -> None:
        controller = self._controller(tmp_path)
        with pytest.raises(PayloadError, match="devices-list: extra:"):
            controller.rpc.call("devices-list", {"extra": 1})
        controller.store.close()

    def test_deploy_is_no_method_without_ota(self, tmp_path: Path) -> None:
        controller = self._controller(tmp_path)
        with pytest.raises(FleetError, match="unknown method 'deploy'"):
            controller.rpc.call("deploy", {})
        controller.store.close()


DOC = Path(__file__).resolve().parents[2] / "docs" / "mqtt-api.md"


@pytest.mark.parametrize(
    "model",
    [
        DevicesListRequest,
        ShowRequest,
        StatusRequest,
        OperatorsListRequest,
        DeployRequest,
        RollbackRequest,
        AcceptRequest,
        OperatorAddRequest,
        OperatorRemoveRequest,
    ],
)
def test_every_request_field_is_in_the_documents_controller_rpc_section(model: Any) -> None:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Controller RPC", 1)[1].split("\n## ", 1)[0]
    missing = [
        name
        for name in model.model_fields
        if f'"{name}"' not in section and f"`{name}`" not in section
    ]
    assert not missing, f"{model.__name__}: {missing} not in docs/mqtt-api.md"


class TestRevokedDevices:
    """``fleet devices revoke ID --db``: the admission becomes "revoked" (no migration: the
    admissions table's free-text state), and a revoked device is refused like a pending one."""

    def test_revoke_is_recorded_once_and_overrides_acceptance(
        self, store: SqliteFleetStore
    ) -> None:
        _seen(store, "pi-1", reported=True)
        store.accept_device("pi-1", operator="t", now=NOW)
        assert store.revoke_device("pi-1", operator="--db", now=NOW) is True
        assert store.revoke_device("pi-1", operator="--db", now=NOW) is False
        assert store.admission("pi-1") == REVOKED
        with pytest.raises(DeviceRevokedError, match="is revoked"):
            store.accept_device("pi-1", operator="t", now=NOW)
        assert store.admission("pi-1") == REVOKED
        assert not next(d for d in store.tagged_devices() if d.device_id == "pi-1").target

    def test_a_device_revoked_before_it_is_seen_stays_revoked(
        self, store: SqliteFleetStore
    ) -> None:
        assert store.revoke_device("pi-9", operator="--db", now=NOW) is True
        assert store.admission("pi-9") is None  # never seen
        _seen(store, "pi-9", reported=True)
        assert store.admission("pi-9") == REVOKED

    def test_deploy_and_rollback_refuse_a_revoked_device(
        self, tmp_path: Path, store: SqliteFleetStore
    ) -> None:
        repo = Repository.init(tmp_path / "repo")
        publish_model(repo, MODEL, name="digits", version="2", hardware=["generic"])
        config = FleetConfig(db=tmp_path / "fleet.db", broker="mqtt://127.0.0.1:1")
        link = MqttLink(link_settings_for(config, client_id="t", persistent=True))
        releases = ReleaseService(OtaOptions(repo=repo.directory), link, store)
        app = FleetApp(store, releases=releases, clock=lambda: NOW)
        try:
            for device in ("pi-1", "pi-2"):
                _seen(store, device, reported=True)
                store.accept_device(device, operator="t", now=NOW)
            store.revoke_device("pi-2", operator="--db", now=NOW)
            with pytest.raises(DeviceRevokedError, match="'pi-2' is revoked"):
                app.deploy(DeployRequest(model="digits", version="2", devices=["pi-2"]))
            with pytest.raises(DeviceRevokedError):
                app.rollback(RollbackRequest(device_id="pi-2"))
            reply, messages = app.deploy(DeployRequest(model="digits", version="2", all=True))
            assert isinstance(reply, DeployReply)
            assert reply.devices == ["pi-1"]
            assert reply.skipped == [Skipped(device_id="pi-2", reason=REVOKED)]
            assert [topic for topic, _ in messages] == ["fleet/pi-1/desired"]
        finally:
            releases.close()
