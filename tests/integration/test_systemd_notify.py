"""The agent under systemd's Type=notify protocol, with a real notify socket."""

from __future__ import annotations

import socket
from pathlib import Path

from devtools.localbroker import PrivateBroker
from tests.integration.harness import ManagedProcess, agent_process, controller_process


class TestNotify:
    def test_ready_watchdog_and_stopping(
        self, tmp_path: Path, broker: PrivateBroker, processes: list[ManagedProcess]
    ) -> None:
        """READY=1 at start, WATCHDOG=1 while telemetry ticks, STOPPING=1 on SIGTERM."""
        path = str(tmp_path / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
            server.bind(path)
            server.settimeout(15)
            agent = agent_process(tmp_path, broker.port, "pi-sd")
            agent.env.update({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
            processes.append(agent.start())
            received = [server.recv(64) for _ in range(3)]
            assert received[0] == b"READY=1"
            assert received[1:] == [b"WATCHDOG=1", b"WATCHDOG=1"]
            assert agent.terminate() == 0
            rest = []
            while (message := server.recv(64)) != b"STOPPING=1":
                rest.append(message)
            assert set(rest) <= {b"WATCHDOG=1"}

    def test_the_controller_is_ready_pings_and_stops(
        self, tmp_path: Path, broker: PrivateBroker, processes: list[ManagedProcess]
    ) -> None:
        """The controller's unit is Type=notify with a watchdog too: READY=1 once it serves,
        WATCHDOG=1 while its loop and store thread answer, STOPPING=1 on SIGTERM."""
        path = str(tmp_path / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
            server.bind(path)
            server.settimeout(30)
            controller = controller_process(tmp_path, broker.port)
            controller.env.update({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
            processes.append(controller.start())
            received = [server.recv(64) for _ in range(3)]
            assert received == [b"READY=1", b"WATCHDOG=1", b"WATCHDOG=1"]
            assert controller.terminate() == 0
            rest = []
            while (message := server.recv(64)) != b"STOPPING=1":
                rest.append(message)
            assert set(rest) <= {b"WATCHDOG=1"}
