"""The controller's store and message validation, without a broker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_contract.errors import PayloadError, TopicError
from edge_runtime.mqtt.base import InboundMessage
from fleet.config import parse_broker_url
from fleet.errors import BrokerUrlError, UnknownDeviceError
from fleet.ingest import validate
from fleet.store import Inbound, Retention, SqliteFleetStore


def _telemetry(device: str, seq: int, ts: str, received: float, stream: str = "s1") -> Inbound:
    body = {
        "device_id": device,
        "stream": stream,
        "seq": seq,
        "ts": ts,
        "cpu": {"percent": 12.5},
        "memory": {"used_percent": 40.0},
        "temperatures_c": {"cpu": 51.0, "gpu": 48.5},
        "health": {"status": "ok"},
        "queue": {"depth": 0},
    }
    return Inbound(device, "telemetry", body, received)


class TestStore:
    def test_device_view_and_duplicates(self, tmp_path: Path) -> None:
        """Status and telemetry build the device row; a resent seq is counted, not stored."""
        store = SqliteFleetStore(tmp_path / "f.db")
        store.ingest(
            [
                Inbound("pi-1", "status", {"state": "online", "agent_version": "9.9"}, 100.0),
                _telemetry("pi-1", 1, "2026-01-01T00:00:01.000Z", 101.0),
                _telemetry("pi-1", 2, "2026-01-01T00:00:02.000Z", 102.0),
                _telemetry("pi-1", 2, "2026-01-01T00:00:02.000Z", 103.0),
            ]
        )
        [row] = store.list_devices(now=110.0)
        assert row.online is True and row.agent_version == "9.9"
        assert row.last_seq == 2 and row.duplicates == 1
        assert row.last_telemetry_age_s == 8.0
        assert (row.cpu_percent, row.memory_percent, row.temperature_c) == (
            12.5,
            40.0,
            51.0,
        )
        assert store.telemetry_seqs("pi-1") == [1, 2]

    def test_backlog_does_not_replace_newer_telemetry(self, tmp_path: Path) -> None:
        """The latest measurement is the newest ts, even if an older one arrives later."""
        store = SqliteFleetStore(tmp_path / "f.db")
        store.ingest([_telemetry("pi-1", 9, "2026-01-01T00:00:09.000Z", 100.0)])
        store.ingest([_telemetry("pi-1", 3, "2026-01-01T00:00:03.000Z", 101.0)])
        assert store.list_devices()[0].last_seq == 9

    def test_new_stream_is_not_a_duplicate(self, tmp_path: Path) -> None:
        """After a state-dir reset seq restarts under a new stream and is stored."""
        store = SqliteFleetStore(tmp_path / "f.db")
        store.ingest(
            [
                _telemetry("pi-1", 1, "2026-01-01T00:00:01.000Z", 1.0, stream="a"),
                _telemetry("pi-1", 1, "2026-01-02T00:00:01.000Z", 2.0, stream="b"),
            ]
        )
        assert store.telemetry_seqs("pi-1") == [1, 1]

    def test_detail_and_unknown_device(self, tmp_path: Path) -> None:
        """device_detail returns telemetry and newest events first; unknown ids raise."""
        store = SqliteFleetStore(tmp_path / "f.db")
        store.ingest(
            [Inbound("pi-1", "events", {"event": f"e{n}", "ts": "t"}, float(n)) for n in range(3)]
        )
        detail = store.device_detail("pi-1", events=2)
        assert [e["event"] for e in detail.events if e] == ["e2", "e1"]
        with pytest.raises(UnknownDeviceError, match="'pi-9'"):
            store.device_detail("pi-9")

    def test_retention_by_rows_and_age(self, tmp_path: Path) -> None:
        """Prune keeps the newest rows per device and nothing older than max age."""
        store = SqliteFleetStore(
            tmp_path / "f.db", Retention(max_age_s=50, max_telemetry_rows=3, max_event_rows=1)
        )
        store.ingest(
            [
                _telemetry("pi-1", n, f"2026-01-01T00:00:{n:02d}.000Z", 100.0 + n)
                for n in range(1, 9)
            ]
        )
        store.ingest([_telemetry("pi-2", 1, "2026-01-01T00:00:00.000Z", 10.0)])
        store.ingest(
            [Inbound("pi-1", "events", {"event": "e", "ts": "t"}, 105.0 + n) for n in range(3)]
        )
        removed = store.prune(now=120.0)
        assert store.telemetry_seqs("pi-1") == [6, 7, 8]
        assert store.telemetry_seqs("pi-2") == []
        assert len(store.device_detail("pi-1").events) == 1
        assert removed == 5 + 1 + 2


def _message(topic: str, body: object) -> InboundMessage:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return InboundMessage(topic=topic, payload=payload, qos=1, retain=False)


class TestValidation:
    def test_good_messages(self) -> None:
        """Well-formed status, telemetry and events become Inbound records."""
        ts = "2026-01-01T00:00:00.000Z"
        item = validate(_message("fleet/pi-1/telemetry", {"seq": 1, "ts": ts}), 5.0)
        assert (item.device_id, item.kind, item.received) == ("pi-1", "telemetry", 5.0)
        assert (
            validate(_message("fleet/pi-1/status", {"state": "online", "ts": ts}), 0).kind
            == "status"
        )

    @pytest.mark.parametrize(
        ("topic", "body", "error"),
        [
            ("fleet/pi-1/telemetry", b"{oops", PayloadError),
            ("fleet/pi-1/telemetry", {"seq": "1", "ts": "t"}, PayloadError),
            ("fleet/pi-1/telemetry", {"seq": True, "ts": "t"}, PayloadError),
            ("fleet/pi-1/telemetry", {"device_id": "pi-2", "seq": 1, "ts": "t"}, PayloadError),
            ("fleet/pi-1/status", {"state": 3}, PayloadError),
            ("fleet/pi-1/events", {"nothing": 1}, PayloadError),
            ("fleet/PI-1/telemetry", {"seq": 1, "ts": "t"}, TopicError),
            ("fleet/pi-1/cmd/ping", {}, TopicError),
        ],
    )
    def test_bad_messages_are_refused(self, topic: str, body: object, error: type) -> None:
        """Malformed, mistyped, forged-id and off-scheme messages raise typed errors."""
        with pytest.raises(error):
            validate(_message(topic, body), 0.0)


class TestBrokerUrl:
    def test_parsing(self) -> None:
        """mqtt:// defaults to 1883, mqtts:// to 8883 with TLS; others are refused."""
        assert parse_broker_url("mqtt://h").port == 1883
        secure = parse_broker_url("mqtts://broker.example:9999")
        assert (secure.host, secure.port, secure.tls) == ("broker.example", 9999, True)
        for bad in ("http://h", "mqtt://", "mqtt://h:99999", "h:1883"):
            with pytest.raises(BrokerUrlError):
                parse_broker_url(bad)
