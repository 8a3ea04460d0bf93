"""Remote operations, pure parts: the command deadline, the config patch (merge, TOML,
validation, atomic install, rollback) and the log ring behind ``logs``."""

from __future__ import annotations

import asyncio
import json
import os
import tomllib
from pathlib import Path
from typing import Any, cast

import pytest

from agent.config import AgentConfig
from agent.control import configfile
from agent.control.commands import CommandDispatcher, NoArguments
from agent.control.inbound import InboundRejections
from agent.control.remote import ConfigSetRequest, LogsRequest, RemoteOps, newest_within
from agent.errors import CommandError
from edge_contract.commands import deadline_in, is_expired, split_deadline
from edge_contract.errors import PayloadError
from edge_contract.replies import PingReply
from edge_runtime.log import LogRing
from edge_runtime.mqtt.base import InboundMessage
from edge_runtime.mqtt.link import MqttLink
from fleet.device_commands import Outcome, decode, parse_arguments
from fleet.errors import FleetError

DEVICE = "pi-01"
NOW = 1_800_000_000.0
TS = "2026-12-07T04:00:00.000Z"


class TestDeadline:
    def test_a_request_without_a_deadline_never_expires(self) -> None:
        assert split_deadline({"action": "list"}) == (None, {"action": "list"})
        assert not is_expired(None, NOW)

    def test_the_deadline_is_split_from_the_arguments(self) -> None:
        assert split_deadline({"expires_at": NOW, "lines": 5}) == (NOW, {"lines": 5})

    def test_past_and_present_deadlines_are_expired_future_ones_not(self) -> None:
        assert is_expired(NOW - 1, NOW)
        assert is_expired(NOW, NOW)
        assert not is_expired(NOW + 0.5, NOW)

    @pytest.mark.parametrize("bad", [True, "tomorrow", -1, 0, 2.0**60, [1], {"s": 1}])
    def test_a_deadline_that_is_not_a_unix_time_is_refused(self, bad: object) -> None:
        with pytest.raises(PayloadError) as caught:
            split_deadline({"expires_at": bad})
        assert caught.value.reason == "schema"

    def test_deadline_in_adds_the_ttl(self) -> None:
        assert deadline_in(60, NOW) == NOW + 60


class FakeLink:
    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []

    def publish(self, _topic: str, payload: bytes, **_: Any) -> asyncio.Future[None]:
        self.published.append(json.loads(payload))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def _ping_message(body: dict[str, Any], *, retain: bool = False) -> InboundMessage:
    return InboundMessage(f"fleet/{DEVICE}/cmd/ping", json.dumps(body).encode(), 1, retain)


class TestExpiredCommands:
    def _dispatch(
        self, body: dict[str, Any], *, retain: bool = False, mutating: bool = False
    ) -> tuple[list[str], FakeLink, InboundRejections]:
        link, rejections, ran = FakeLink(), InboundRejections(), []
        dispatcher = CommandDispatcher(DEVICE, cast(MqttLink, link), rejections, clock=lambda: NOW)

        async def ping(_: NoArguments) -> PingReply:
            ran.append("ping")
            return PingReply(pong=True)

        dispatcher.register("ping", ping, NoArguments, mutating=mutating)
        asyncio.run(dispatcher.dispatch(_ping_message(body, retain=retain)))
        return ran, link, rejections

    def test_an_expired_command_is_not_run_and_is_answered_and_counted(self) -> None:
        ran, link, rejections = self._dispatch({"expires_at": NOW - 3600})
        assert ran == []
        assert link.published[0]["ok"] is False
        assert link.published[0]["error"].startswith("expired")
        assert rejections.snapshot()["by_reason"] == {"expired": 1}

    def test_a_command_within_its_deadline_runs(self) -> None:
        ran, link, rejections = self._dispatch({"expires_at": NOW + 60})
        assert ran == ["ping"]
        assert link.published[0]["pong"] is True
        assert rejections.snapshot()["total"] == 0

    def test_a_mutating_command_is_not_run_from_a_retained_message(self) -> None:
        ran, link, rejections = self._dispatch({}, retain=True, mutating=True)
        assert ran == []
        assert link.published[0]["error"].startswith("retained")
        assert rejections.snapshot()["by_reason"] == {"retained": 1}
        ran, _link, _rejections = self._dispatch({}, retain=True)  # a read may be retained
        assert ran == ["ping"]

    def test_a_malformed_deadline_is_a_schema_refusal(self) -> None:
        ran, _link, rejections = self._dispatch({"expires_at": "soon"})
        assert ran == []
        assert rejections.snapshot()["by_reason"] == {"schema": 1}


class TestPatch:
    def test_merge_patch_merges_tables_replaces_values_and_null_removes(self) -> None:
        base = {"log": {"level": "info", "format": "json"}, "device_id": "a", "x": 1}
        patch = {"log": {"level": "debug"}, "x": None, "models": [{"name": "m"}]}
        assert configfile.merge_patch(base, patch) == {
            "log": {"level": "debug", "format": "json"},
            "device_id": "a",
            "models": [{"name": "m"}],
        }
        assert base["log"] == {"level": "info", "format": "json"}  # not modified

    def test_dump_toml_round_trips(self) -> None:
        data = {
            "device_id": "pi-01",
            "ratio": 0.5,
            "on": True,
            "quote": 'a "b" \\ c\n',
            "tags": ["x", "y"],
            "mqtt": {"port": 1883, "tls": {"ca_file": "/etc/ca.pem"}},
            "models": [{"name": "m1"}, {"name": "m2", "threads": 2}],
        }
        assert tomllib.loads(configfile.dump_toml(data)) == data

    def test_dump_toml_refuses_what_toml_cannot_hold(self) -> None:
        with pytest.raises(CommandError):
            configfile.dump_toml({"x": float("nan")})
        with pytest.raises(CommandError):
            configfile.dump_toml({"x": [1, None]})


def _files(tmp_path: Path, text: str) -> configfile.ConfigFiles:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return configfile.ConfigFiles(path)


BASE = 'device_id = "pi-01"\nstate_dir = "/tmp/x"\n\n[log]\nlevel = "info"\n'


class TestConfigFile:
    def test_an_invalid_patch_is_refused_naming_the_key_and_nothing_changes(
        self, tmp_path: Path
    ) -> None:
        files = _files(tmp_path, BASE)
        with pytest.raises(CommandError, match=r"log\.level"):
            configfile.prepare(files, {"log": {"level": "loud"}})
        with pytest.raises(CommandError, match="unknown key"):
            configfile.prepare(files, {"no_such_setting": 1})
        assert files.path.read_text() == BASE
        assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.toml"]

    def test_an_empty_patch_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(CommandError, match="empty"):
            configfile.prepare(_files(tmp_path, BASE), {})

    def test_a_valid_patch_is_installed_with_the_previous_file_and_a_pending_marker(
        self, tmp_path: Path
    ) -> None:
        files = _files(tmp_path, BASE)
        files.path.chmod(0o640)
        text, config = configfile.prepare(files, {"log": {"level": "debug"}})
        assert config.log.level == "debug"

        configfile.install(files, text)

        assert tomllib.loads(files.path.read_text())["log"] == {"level": "debug"}
        assert files.previous.read_text() == BASE
        assert files.pending.exists()
        assert files.path.stat().st_mode & 0o777 == 0o640
        assert files.previous.stat().st_mode & 0o777 == 0o640  # the config as it was
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left

    def test_roll_back_restores_the_previous_file(self, tmp_path: Path) -> None:
        files = _files(tmp_path, BASE)
        text, _ = configfile.prepare(files, {"log": {"level": "debug"}})
        configfile.install(files, text)

        assert configfile.roll_back(files)

        assert files.path.read_text() == BASE
        assert not files.pending.exists()
        assert not configfile.roll_back(files)  # nothing pending any more

    def test_confirm_keeps_the_new_file(self, tmp_path: Path) -> None:
        files = _files(tmp_path, BASE)
        text, _ = configfile.prepare(files, {"log": {"level": "debug"}})
        configfile.install(files, text)

        assert configfile.confirm(files)

        assert not configfile.roll_back(files)
        assert tomllib.loads(files.path.read_text())["log"] == {"level": "debug"}


class TestRemoteOps:
    def test_config_set_refuses_without_a_config_file_and_does_not_restart(self) -> None:
        restarts: list[str] = []
        ops = RemoteOps(_config(), None, restarts.append)
        with pytest.raises(CommandError, match="without a config file"):
            asyncio.run(ops.config_set(ConfigSetRequest(patch={"log": {"level": "debug"}})))
        assert restarts == []

    def test_a_refused_config_set_does_not_restart(self, tmp_path: Path) -> None:
        restarts: list[str] = []
        files = _files(tmp_path, BASE)
        ops = RemoteOps(_config(), files.path, restarts.append)
        with pytest.raises(CommandError):
            asyncio.run(ops.config_set(ConfigSetRequest(patch={"log": {"level": "loud"}})))
        assert restarts == []
        assert files.path.read_text() == BASE

    def test_logs_returns_the_newest_lines_of_the_ring(self) -> None:
        ring = LogRing(capacity=3)
        for n in range(5):
            ring.add(f"line {n}")
        ops = RemoteOps(_config(), None, lambda _why: None, ring=ring)
        reply = asyncio.run(ops.logs(LogsRequest(lines=2)))
        assert reply.lines == ["line 3", "line 4"]


class TestLogRing:
    def test_the_ring_is_bounded_in_lines_and_line_length(self) -> None:
        ring = LogRing(capacity=2, max_line=4)
        for line in ("aaaaaa", "b", "c"):
            ring.add(line)
        assert ring.last(10) == ["b", "c"]
        ring.add("dddddd")
        assert ring.last(1) == ["dddd"]
        assert ring.last(0) == []

    def test_capture_passes_the_rendered_line_through(self) -> None:
        ring = LogRing()
        assert ring.capture(None, "info", '{"event": "x"}') == '{"event": "x"}'
        assert ring.last(1) == ['{"event": "x"}']

    def test_newest_within_keeps_the_newest_lines_that_fit(self) -> None:
        assert newest_within(["old" * 10, "mid", "new"], 14) == ["mid", "new"]


def _config() -> AgentConfig:
    return AgentConfig(device_id=DEVICE, state_dir=Path("/tmp/x"))


class TestDeviceCommands:
    def test_arguments_are_json_values_or_strings(self) -> None:
        body = parse_arguments(["lines=50", 'patch={"log": {"level": "debug"}}', "x=a b"])
        assert body == {"lines": 50, "patch": {"log": {"level": "debug"}}, "x": "a b"}

    def test_an_argument_without_a_key_is_an_error(self) -> None:
        with pytest.raises(FleetError):
            parse_arguments(["=1"])
        with pytest.raises(FleetError):
            parse_arguments(["lines"])

    def test_a_reply_is_decoded_into_its_command_model(self) -> None:
        payload = b'{"ok":true,"command":"ping","pong":true,"device_id":"pi-01","ts":"%s"}' % (
            TS.encode()
        )
        outcome = decode("ping", "pi-01", payload)
        assert outcome.ok and outcome.answered
        assert isinstance(outcome.reply, PingReply)
        assert outcome.summary() == '{"pong":true}'

    def test_a_refusal_and_a_garbled_reply_are_reported_per_device(self) -> None:
        refused = decode("ping", "pi-01", b'{"ok":false,"error":"expired: ping"}')
        assert refused.answered and not refused.ok
        assert refused.summary() == "expired: ping"
        garbled = decode("ping", "pi-02", b'{"ok":true,"command":"ping","pong":"yes"}')
        assert garbled.answered and not garbled.ok
        assert "pong" in garbled.summary()
        assert decode("ping", "pi-03", b"not json").problem is not None

    def test_a_silent_device_is_not_answered(self) -> None:
        silent = Outcome("pi-09", None)
        assert not silent.answered and not silent.ok
        assert silent.summary() == "no answer in time"


def test_an_unwritable_config_directory_is_a_clear_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As under the shipped unit (ProtectSystem=strict): EROFS on every rename there."""
    files = _files(tmp_path, BASE)

    def read_only(*_args: object) -> None:
        raise OSError(30, "Read-only file system")

    # configfile writes through agent.ota.fsutil, whose rename is os.replace.
    monkeypatch.setattr(os, "replace", read_only)
    with pytest.raises(CommandError, match=r"cannot write beside .*\(Read-only file system\): is "):
        configfile.prepare(files, {"log": {"level": "debug"}})
    with pytest.raises(CommandError, match=r"cannot write beside .*\(Read-only file system\): is "):
        configfile.install(files, BASE)
    assert files.path.read_text() == BASE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.toml"]  # no temp left
