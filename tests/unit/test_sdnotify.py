"""systemd notifications over a real datagram socket, as systemd's NOTIFY_SOCKET provides."""

from __future__ import annotations

import socket
from pathlib import Path

from agent.daemon.sdnotify import SystemdNotifier


class TestSystemdNotifier:
    def test_sends_states_to_the_notify_socket(self, tmp_path: Path) -> None:
        """READY=1 and WATCHDOG=1 arrive as datagrams; the watchdog period is half WATCHDOG_USEC."""
        path = str(tmp_path / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
            server.bind(path)
            server.settimeout(2)
            notifier = SystemdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "60000000"})
            assert notifier.enabled
            assert notifier.watchdog_interval_s == 30.0
            notifier.notify("READY=1")
            notifier.notify("WATCHDOG=1")
            assert [server.recv(64), server.recv(64)] == [b"READY=1", b"WATCHDOG=1"]

    def test_outside_systemd_it_does_nothing(self) -> None:
        """Without NOTIFY_SOCKET there is no watchdog and notify is a no-op."""
        notifier = SystemdNotifier({})
        assert not notifier.enabled
        assert notifier.watchdog_interval_s is None
        notifier.notify("READY=1")

    def test_a_vanished_socket_is_ignored(self, tmp_path: Path) -> None:
        """A notify socket that has gone away (systemd shutting down) does not raise."""
        SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "gone")}).notify("STOPPING=1")
