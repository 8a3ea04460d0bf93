"""The agent, the controller and the fleet CLI against a real Mosquitto."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from devtools.localbroker import PrivateBroker
from tests.integration.harness import (
    ManagedProcess,
    Recorder,
    agent_process,
    controller_process,
    fleet_cli,
    fleet_devices,
    start_controller,
    wait_until,
)


def _device(port: int, device_id: str) -> dict[str, Any] | None:
    return next((d for d in fleet_devices(port) if d["device_id"] == device_id), None)


def _seqs(recorder: Recorder) -> list[int]:
    return [int(b["seq"]) for b in recorder.bodies("/telemetry")]


def _once_each(seqs: list[int], sent_before_stop: set[int]) -> list[int]:
    """``seqs`` with repeats removed, as a receiver keeps them (by stream and seq).

    QoS 1 is at-least-once: a message in flight when the broker stops (its PUBACK lost with
    the connection, or the recorder's own PUBACK not yet saved by the broker) comes again
    after the restart. Only those may repeat; a repeat of anything queued during the outage
    would mean the backlog was handed over twice.
    """
    repeated = {seq for seq in seqs if seqs.count(seq) > 1}
    assert repeated <= sent_before_stop, f"repeats beyond the in-flight window: {seqs}"
    return sorted(set(seqs))


def _ts(body: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(body["ts"]).replace("Z", "+00:00"))


class TestPresenceAndDeviceView:
    def test_agent_is_listed_online_with_telemetry(
        self, tmp_path: Path, broker: PrivateBroker, processes: list[ManagedProcess]
    ) -> None:
        """A started agent shows up online, with fresh telemetry, in `fleet devices list --json`."""
        processes.append(start_controller(tmp_path, broker.port))
        processes.append(agent_process(tmp_path, broker.port, "pi-01").start())

        device = wait_until(
            lambda: (d := _device(broker.port, "pi-01")) and d["last_seq"] and d, 30, "pi-01 listed"
        )
        assert device["online"] is True
        assert device["agent_version"] == "0.1.0"
        assert device["cpu_percent"] is not None
        assert device["memory_percent"] is not None
        assert device["health"] in ("ok", "degraded")

        shown = fleet_cli(broker.port, "devices", "show", "pi-01", "--json")
        assert shown.returncode == 0, shown.stderr
        assert '"seq"' in shown.stdout
        assert "agent_started" in shown.stdout

        # On the controller's host the same view can be read from its database directly.
        direct = fleet_cli(
            broker.port, "devices", "list", "--json", "--db", str(tmp_path / "fleet.sqlite3")
        )
        assert direct.returncode == 0, direct.stderr
        assert [d["device_id"] for d in json.loads(direct.stdout)] == ["pi-01"]
        table = fleet_cli(broker.port, "devices", "list")
        assert "pi-01" in table.stdout and "online" in table.stdout

    def test_kill_9_turns_device_offline_through_the_will(
        self, tmp_path: Path, broker: PrivateBroker, processes: list[ManagedProcess]
    ) -> None:
        """After kill -9 the broker's Last Will marks the device offline for the fleet."""
        processes.append(controller_process(tmp_path, broker.port).start())
        agent = agent_process(tmp_path, broker.port, "pi-02", mqtt__will_delay_s="1").start()
        processes.append(agent)
        wait_until(lambda: (d := _device(broker.port, "pi-02")) and d["online"], 30, "online")

        agent.kill()

        device = wait_until(
            lambda: (d := _device(broker.port, "pi-02")) and not d["online"] and d, 20, "offline"
        )
        assert device["state"] == "offline"
        detail = fleet_cli(broker.port, "devices", "show", "pi-02", "--json")
        assert '"reason": "connection lost"' in detail.stdout

    def test_clean_stop_publishes_offline_with_reason(
        self, tmp_path: Path, broker: PrivateBroker, processes: list[ManagedProcess]
    ) -> None:
        """SIGTERM makes the agent announce itself offline (reason shutdown) and exit 0."""
        recorder = Recorder(broker.port, "fleet/pi-03/status").start()
        agent = agent_process(tmp_path, broker.port, "pi-03").start()
        processes.append(agent)
        wait_until(
            lambda: any(b["state"] == "online" for b in recorder.bodies("/status")),
            20,
            "online status",
        )

        assert agent.terminate() == 0

        last = wait_until(
            lambda: [b for b in recorder.bodies("/status") if b["state"] == "offline"],
            10,
            "offline status",
        )
        assert last[-1]["reason"] == "shutdown"
        recorder.stop()

    def test_unknown_device_and_missing_controller_give_clear_errors(
        self, tmp_path: Path, broker: PrivateBroker, processes: list[ManagedProcess]
    ) -> None:
        """`devices show` of an unknown id exits 2; without a controller the CLI exits 69."""
        nobody = fleet_cli(broker.port, "devices", "list", "--timeout", "1")
        assert nobody.returncode == 69
        assert "no fleet controller answered" in nobody.stderr

        processes.append(controller_process(tmp_path, broker.port).start())
        unknown = wait_until(
            lambda: (r := fleet_cli(broker.port, "devices", "show", "ghost")).returncode == 2 and r,
            20,
            "controller answering",
        )
        assert "unknown device 'ghost'" in unknown.stderr


@pytest.mark.slow
class TestStoreAndForward:
    def test_broker_outage_of_30s_loses_and_duplicates_nothing(
        self, tmp_path: Path, broker: PrivateBroker, processes: list[ManagedProcess]
    ) -> None:
        """Broker down 30 s at a 1 s interval: every seq arrives once, in order, original ts."""
        recorder = Recorder(broker.port, "fleet/pi-10/#").start()
        processes.append(agent_process(tmp_path, broker.port, "pi-10").start())
        wait_until(lambda: len(_seqs(recorder)) >= 3, 20, "first telemetry")

        broker.stop()
        stopped_at = datetime.now().astimezone()
        sent_before_stop = set(_seqs(recorder))
        time.sleep(30)
        broker.start()
        restarted_at = datetime.now().astimezone()

        # The agent keeps measuring through the outage, then drains the backlog.
        wait_until(lambda: _seqs(recorder) and max(_seqs(recorder)) >= 36, 40, "backlog drained")
        time.sleep(2)
        seqs = _once_each(_seqs(recorder), sent_before_stop)
        assert seqs == list(range(seqs[0], seqs[-1] + 1)), f"gaps: {seqs}"
        bodies = {b["seq"]: b for b in recorder.bodies("/telemetry")}
        stamps = [_ts(bodies[seq]) for seq in seqs]
        assert stamps == sorted(stamps)
        measured_offline = [t for t in stamps if stopped_at < t < restarted_at]
        assert len(measured_offline) >= 25, "telemetry measured during the outage was not kept"
        events = [b["event"] for b in recorder.bodies("/events")]
        assert "link_down" in events
        link_up = next(b for b in recorder.bodies("/events") if b["event"] == "link_up")
        assert 29 <= link_up["outage_s"] <= 45
        recorder.stop()

    def test_queued_telemetry_survives_agent_kill_during_outage(
        self, tmp_path: Path, broker: PrivateBroker, processes: list[ManagedProcess]
    ) -> None:
        """Telemetry queued offline survives kill -9 and a restart, and is sent when back."""
        recorder = Recorder(broker.port, "fleet/pi-11/telemetry").start()
        first = agent_process(tmp_path, broker.port, "pi-11", interval_s=0.5).start()
        processes.append(first)
        wait_until(lambda: len(_seqs(recorder)) >= 2, 20, "first telemetry")

        broker.stop()
        sent_before_stop = set(_seqs(recorder))
        time.sleep(4)
        first.kill()
        second = agent_process(tmp_path, broker.port, "pi-11", interval_s=0.5).start()
        processes.append(second)
        time.sleep(3)
        broker.start()

        wait_until(lambda: max(_seqs(recorder), default=0) >= 16, 30, "backlog after restart")
        time.sleep(1.5)
        seqs = _once_each(_seqs(recorder), sent_before_stop)
        assert seqs == list(range(1, seqs[-1] + 1)), f"lost across the kill: {seqs}"
        recorder.stop()

    def test_full_queue_drops_oldest_and_reports_the_drops(
        self, tmp_path: Path, broker: PrivateBroker, processes: list[ManagedProcess]
    ) -> None:
        """Over the byte cap the oldest messages go, and telemetry reports how many."""
        recorder = Recorder(broker.port, "fleet/pi-12/#").start()
        processes.append(
            agent_process(
                tmp_path, broker.port, "pi-12", interval_s=0.3, queue__max_bytes="12000"
            ).start()
        )
        wait_until(lambda: len(_seqs(recorder)) >= 2, 20, "first telemetry")

        broker.stop()
        online_seqs = set(_seqs(recorder))
        time.sleep(8)  # about 26 messages of ~2 KB against a 12 KB cap
        broker.start()

        wait_until(
            lambda: any(b["queue"]["dropped"] > 0 for b in recorder.bodies("/telemetry")),
            30,
            "a telemetry message reporting drops",
        )
        time.sleep(2)
        bodies = recorder.bodies("/telemetry")
        seqs = _once_each([b["seq"] for b in bodies], online_seqs)
        after_outage = [s for s in seqs if s not in online_seqs]
        missing = set(range(min(after_outage), max(seqs) + 1)) - set(seqs)
        resumed_at = min(after_outage)
        assert missing == set(), "drops must be the oldest, not holes in the middle"
        lost = set(range(max(online_seqs) + 1, resumed_at))
        assert len(lost) >= 5, "the cap should have forced drops"
        reported_total = max(b["queue"]["dropped_total"] for b in bodies)
        # Events share the queue, so at least the lost telemetry is counted.
        assert reported_total >= len(lost)
        # Events queued during the outage may be dropped too; link_up is queued after it.
        link_up = wait_until(
            lambda: [b for b in recorder.bodies("/events") if b["event"] == "link_up"],
            10,
            "link_up event",
        )
        assert link_up[-1]["dropped_during_outage"] >= len(lost)
        recorder.stop()


class TestControllerRestart:
    def test_controller_killed_misses_no_telemetry(
        self, tmp_path: Path, broker: PrivateBroker, processes: list[ManagedProcess]
    ) -> None:
        """The broker queues for the controller's persistent session while it is down."""
        from fleet.store import SqliteFleetStore

        controller = start_controller(tmp_path, broker.port)
        processes.append(controller)
        processes.append(agent_process(tmp_path, broker.port, "pi-40", interval_s=0.5).start())
        wait_until(lambda: (d := _device(broker.port, "pi-40")) and d["last_seq"], 30, "pi-40")

        controller.kill()
        time.sleep(4)
        restarted = controller_process(tmp_path, broker.port).start()
        processes.append(restarted)
        device = wait_until(
            lambda: (d := _device(broker.port, "pi-40")) and d["last_seq"] >= 14 and d,
            30,
            "telemetry after the restart",
        )
        store = SqliteFleetStore(tmp_path / "fleet.sqlite3")
        seqs = sorted(store.telemetry_seqs("pi-40"))
        store.close()
        assert seqs == list(range(1, seqs[-1] + 1)), f"controller lost telemetry: {seqs}"
        assert device["duplicates"] == 0
