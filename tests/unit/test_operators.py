"""Operator-signed requests (fleet.operators) and the controller's use of them, without a broker.

Each refusal reason of the pure ``verify_request`` has its own test; the controller tests run
the controller's RPC front end (``Controller.rpc.call``, ``fleet.rpc_server``) against a real
SQLite store (no MQTT connection is made) to show that refusals are counted and recorded, and
that a spent nonce survives a controller restart.
"""

from __future__ import annotations

import base64
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from fleet.config import FleetConfig
from fleet.errors import FleetError, OperatorKeyError, OperatorRefusedError, UnknownDeviceError
from fleet.operators import (
    TrustedKey,
    generate_key,
    key_id,
    load_private_key,
    parse_public_key,
    private_key_pem,
    public_key_text,
    sign_request,
    verify_request,
)
from fleet.service import Controller
from fleet.store import Inbound, SqliteFleetStore

NOW = 1_800_000_000.0
WINDOW = 60.0
ALICE = generate_key()
MALLORY = generate_key()
ALICE_PUBLIC = public_key_text(ALICE.public_key())
TRUSTED = {key_id(ALICE_PUBLIC): TrustedKey("alice", ALICE_PUBLIC)}
BODY = {"model": "digits", "version": "3", "devices": ["pi-1"], "all": False}


def _verify(
    request: dict[str, Any], *, now: float = NOW, seen: frozenset[str] = frozenset()
) -> Any:
    return verify_request(
        request, method="deploy", trusted=TRUSTED, now=now, window_s=WINDOW, seen_nonces=seen
    )


def _reason(request: dict[str, Any], **kwargs: Any) -> str:
    with pytest.raises(OperatorRefusedError) as caught:
        _verify(request, **kwargs)
    return caught.value.reason


class TestVerifyRequest:
    def test_a_signed_request_is_accepted_with_its_operator_and_body(self) -> None:
        verified = _verify(sign_request(ALICE, "deploy", BODY, now=NOW, operator="alice"))
        assert (verified.operator, verified.method, verified.body) == ("alice", "deploy", BODY)

    def test_the_operator_name_is_optional_the_key_identifies_it(self) -> None:
        assert _verify(sign_request(ALICE, "deploy", BODY, now=NOW)).operator == "alice"

    def test_an_unsigned_request_is_refused(self) -> None:
        assert _reason(dict(BODY)) == "unsigned"

    def test_an_envelope_with_unknown_fields_or_wrong_types_is_malformed(self) -> None:
        extra = {**sign_request(ALICE, "deploy", BODY, now=NOW), "admin": True}
        assert _reason(extra) == "malformed"
        as_text = {**sign_request(ALICE, "deploy", BODY, now=NOW), "ts": str(int(NOW))}
        assert _reason(as_text) == "malformed"

    def test_a_key_the_controller_does_not_trust_is_refused(self) -> None:
        assert _reason(sign_request(MALLORY, "deploy", BODY, now=NOW)) == "unknown_key"

    def test_a_trusted_key_claimed_under_another_name_is_refused(self) -> None:
        assert _reason(sign_request(ALICE, "deploy", BODY, now=NOW, operator="bob")) == (
            "unknown_key"
        )

    def test_another_key_signing_under_a_trusted_key_id_is_a_bad_signature(self) -> None:
        forged = sign_request(MALLORY, "deploy", BODY, now=NOW)
        forged["key_id"] = key_id(ALICE_PUBLIC)
        assert _reason(forged) == "bad_signature"

    def test_a_changed_body_breaks_the_signature(self) -> None:
        request = sign_request(ALICE, "deploy", BODY, now=NOW)
        request["body"] = {**BODY, "devices": ["pi-2"]}
        assert _reason(request) == "bad_signature"

    def test_a_request_signed_for_another_method_is_refused(self) -> None:
        accept = sign_request(ALICE, "devices-accept", {"device_id": "pi-1"}, now=NOW)
        assert _reason(accept) == "wrong_method"
        accept["method"] = "deploy"  # relabelled: the signature covers the method
        assert _reason(accept) == "bad_signature"

    def test_a_request_older_than_the_window_is_expired(self) -> None:
        old = sign_request(ALICE, "deploy", BODY, now=NOW - WINDOW - 5)
        assert _reason(old) == "expired"
        assert _verify(sign_request(ALICE, "deploy", BODY, now=NOW - WINDOW + 1))

    def test_a_request_from_beyond_the_window_ahead_is_refused(self) -> None:
        assert _reason(sign_request(ALICE, "deploy", BODY, now=NOW + WINDOW + 5)) == "from_future"

    def test_a_spent_nonce_is_replayed(self) -> None:
        request = sign_request(ALICE, "deploy", BODY, now=NOW)
        assert _reason(request, seen=frozenset({request["nonce"]})) == "replayed"

    def test_an_undecodable_signature_is_a_bad_signature(self) -> None:
        request = sign_request(ALICE, "deploy", BODY, now=NOW)
        request["sig"] = "!!!not base64!!!"
        assert _reason(request) == "bad_signature"


class TestKeys:
    def test_public_keys_are_accepted_as_base64_or_pem(self) -> None:
        from cryptography.hazmat.primitives import serialization

        pem = (
            ALICE.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        assert parse_public_key(pem) == parse_public_key(ALICE_PUBLIC + "\n") == ALICE_PUBLIC

    @pytest.mark.parametrize("text", ["not a key", base64.b64encode(b"short").decode()])
    def test_anything_else_is_refused(self, text: str) -> None:
        with pytest.raises(OperatorKeyError):
            parse_public_key(text)

    def test_private_keys_round_trip_through_pem(self) -> None:
        loaded = load_private_key(private_key_pem(ALICE), source="mem")
        assert public_key_text(loaded.public_key()) == ALICE_PUBLIC
        with pytest.raises(OperatorKeyError):
            load_private_key(b"-----BEGIN PRIVATE KEY-----\nxx\n", source="bad.pem")


# -- the controller's side, on a real store --------------------------------------------------


def _controller(db: Path, now: list[float]) -> Controller:
    config = FleetConfig(db=db, broker="mqtt://127.0.0.1:1")
    return Controller(config, SqliteFleetStore(db), clock=lambda: now[0])


def _seen_device(store: SqliteFleetStore, device_id: str) -> None:
    store.ingest([Inbound(device_id, "status", {"state": "online"}, NOW)])


def test_devices_accept_needs_a_trusted_signature_and_refusals_are_recorded(
    tmp_path: Path,
) -> None:
    now = [NOW]
    controller = _controller(tmp_path / "fleet.db", now)
    store = controller.store
    assert isinstance(store, SqliteFleetStore)
    store.add_operator("alice", ALICE_PUBLIC, now=NOW)
    _seen_device(store, "pi-1")
    assert store.admission("pi-1") == "pending"

    for request in (
        {"device_id": "pi-1"},
        sign_request(MALLORY, "devices-accept", {"device_id": "pi-1"}, now=NOW),
    ):
        with pytest.raises(OperatorRefusedError):
            controller.rpc.call("devices-accept", request)
    assert store.admission("pi-1") == "pending"
    assert controller.gate.refused == {"unsigned": 1, "unknown_key": 1}
    outcomes = [row.outcome for row in store.operator_log()]
    assert outcomes == ["refused:unknown_key", "refused:unsigned"]

    signed = sign_request(ALICE, "devices-accept", {"device_id": "pi-1"}, now=NOW)
    reply, _ = controller.rpc.call("devices-accept", signed)
    assert reply.model_dump() == {
        "device_id": "pi-1",
        "admission": "accepted",
        "changed": True,
        "operator": "alice",
    }
    assert store.admission("pi-1") == "accepted"
    assert store.list_devices()[0].admission == "accepted"
    with pytest.raises(UnknownDeviceError):
        controller.rpc.call(
            "devices-accept", sign_request(ALICE, "devices-accept", {"device_id": "x"}, now=NOW)
        )


def test_a_spent_nonce_stays_spent_after_a_controller_restart(tmp_path: Path) -> None:
    db, now = tmp_path / "fleet.db", [NOW]
    first = _controller(db, now)
    first.store.add_operator("alice", ALICE_PUBLIC, now=NOW)
    _seen_device(first.store, "pi-1")  # type: ignore[arg-type]
    signed = sign_request(ALICE, "devices-accept", {"device_id": "pi-1"}, now=NOW)
    first.rpc.call("devices-accept", signed)
    first.store.close()

    now[0] = NOW + 30  # still inside the window
    second = _controller(db, now)
    with pytest.raises(OperatorRefusedError) as caught:
        second.rpc.call("devices-accept", signed)
    assert caught.value.reason == "replayed"
    second.store.close()


def test_read_only_methods_stay_unsigned_and_unknown_methods_are_refused(tmp_path: Path) -> None:
    controller = _controller(tmp_path / "fleet.db", [NOW])
    assert controller.rpc.call("devices-list", {})[0].model_dump() == {
        "devices": [],
        "select": None,
    }
    assert controller.rpc.call("operators-list", {})[0].model_dump() == {"operators": []}
    with pytest.raises(FleetError, match="unknown method"):
        controller.rpc.call("format-disk", {})


def test_the_last_operator_cannot_be_removed_over_mqtt(tmp_path: Path) -> None:
    controller = _controller(tmp_path / "fleet.db", [NOW])
    controller.store.add_operator("alice", ALICE_PUBLIC, now=NOW)
    request = sign_request(ALICE, "operators-remove", {"name": "alice"}, now=NOW)
    with pytest.raises(FleetError, match="last operator"):
        controller.rpc.call("operators-remove", request)
    assert [o.name for o in controller.store.list_operators()] == ["alice"]


def test_a_database_from_before_admission_opens_with_its_devices_pending(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    old = sqlite3.connect(db)
    old.execute(
        "CREATE TABLE devices (device_id TEXT PRIMARY KEY, state TEXT, status_json TEXT, "
        "status_received REAL, telemetry_json TEXT, telemetry_seq INTEGER, "
        "telemetry_received REAL, first_seen REAL NOT NULL, last_seen REAL NOT NULL, "
        "duplicates INTEGER NOT NULL DEFAULT 0)"
    )
    old.execute("INSERT INTO devices (device_id, first_seen, last_seen) VALUES ('pi-1', 1, 1)")
    old.commit()
    old.close()
    store = SqliteFleetStore(db)
    assert store.list_devices()[0].admission == "pending"
    assert store.list_operators() == []
    assert store.accept_device("pi-1", operator="--db", now=NOW) is True
    assert store.accept_device("pi-1", operator="--db", now=NOW) is False
    assert store.admission("pi-1") == "accepted"
    store.close()
