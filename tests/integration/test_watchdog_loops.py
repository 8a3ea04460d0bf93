"""The agent's watchdog watches every loop: a stalled one stops the pings and is named.

Each case starts the agent under a real notify socket with ``WATCHDOG_USEC`` set and the
test-only ``EDGE_TEST_STALL`` hook (``agent.daemon.watchdog``), which blocks one loop's
thread for good shortly after start: the outbox's worker thread (the forwarder), every
inference worker thread (a hung model call), the link's reconnect loop (a hung connect), or
the serial relay's loop (a hung port opening).
The pings must run first, then stop, with ``STATUS=late: ...`` naming that loop.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from devtools.localbroker import PrivateBroker
from tests.integration.harness import ManagedProcess, agent_process

DIGITS = Path(__file__).resolve().parents[2] / "models" / "digits"

CASES = {
    "forwarder": {},
    "inference": {
        "models": json.dumps([{"path": str(DIGITS / "digits-int8.onnx")}]),
        "inference__rest": "false",
    },
    # The link's deadline is 2 * connect_timeout_s + 10 s: keep it short here.
    "mqtt": {"mqtt__connect_timeout_s": "1"},
    # No peripheral: the relay retries a missing port (idle by design, still progress) until
    # the stall hangs its next opening. Short timeouts give it a deadline of about 2 s.
    "serial": {
        "serial__port": "/nonexistent/ttyACM-watchdog",
        "serial__reset_wait_s": "0.05",
        "serial__handshake_timeout_s": "0.5",
        "serial__ack_timeout_s": "0.1",
        "serial__max_retries": "1",
        "serial__reconnect_max_s": "1",
    },
}


def _messages(server: socket.socket, until: float) -> list[bytes]:
    """Every datagram until ``until`` (monotonic), or until the socket times out."""
    received: list[bytes] = []
    while time.monotonic() < until:
        try:
            received.append(server.recv(128))
        except TimeoutError:
            break
    return received


@pytest.mark.parametrize("loop", sorted(CASES))
def test_a_stalled_loop_stops_the_pings_and_is_named(
    loop: str, tmp_path: Path, broker: PrivateBroker, processes: list[ManagedProcess]
) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(20)
        agent = agent_process(tmp_path, broker.port, f"pi-wd-{loop}", **CASES[loop])
        agent.env.update(
            {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000", "EDGE_TEST_STALL": loop}
        )
        processes.append(agent.start())
        assert server.recv(128) == b"READY=1"
        assert server.recv(128) == b"WATCHDOG=1"  # the loops ran before the stall
        # Wait (bounded) for the first STATUS: the stalled loop is late.
        deadline = time.monotonic() + 40
        seen: list[bytes] = []
        while not (seen and seen[-1].startswith(b"STATUS=")):
            assert time.monotonic() < deadline, seen
            seen.append(server.recv(128))
        assert set(seen[:-1]) == {b"WATCHDOG=1"}
        late = seen[-1].removeprefix(b"STATUS=late: ").decode().split(", ")
        assert loop in late, seen[-1]
        # And the pings stay stopped: three more intervals of STATUS only.
        after = _messages(server, until=time.monotonic() + 1.6)
        assert after, "the watchdog went silent instead of reporting"
        assert all(m.startswith(b"STATUS=late: ") and loop.encode() in m for m in after), after
