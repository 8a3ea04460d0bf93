"""Finding a board by USB VID:PID, with port listings as pyserial reports them.

This machine has no USB boards, so the listing is built from pyserial's own ListPortInfo.
"""

from __future__ import annotations

import pytest
import serial.tools.list_ports
from serial.tools.list_ports_common import ListPortInfo

from agent.errors import SerialLinkError
from agent.serial.transport import find_port


def _port(device: str, vid: int | None, pid: int | None) -> ListPortInfo:
    info = ListPortInfo(device)
    info.vid, info.pid = vid, pid
    return info


class TestFindPort:
    def test_matches_vid_and_pid(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The first port whose USB ids match is chosen; other boards are skipped."""
        ports = [
            _port("/dev/ttyS0", None, None),
            _port("/dev/ttyUSB0", 0x1A86, 0x7523),
            _port("/dev/ttyACM0", 0x2341, 0x0043),
        ]
        monkeypatch.setattr(serial.tools.list_ports, "comports", lambda: ports)
        assert find_port("2341:0043") == "/dev/ttyACM0"
        assert find_port("1a86:7523") == "/dev/ttyUSB0"

    def test_missing_board_and_bad_id(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """No match, or an id that is not VID:PID in hex, is a SerialLinkError naming it."""
        monkeypatch.setattr(serial.tools.list_ports, "comports", lambda: [])
        with pytest.raises(SerialLinkError, match="2341:0043"):
            find_port("2341:0043")
        with pytest.raises(SerialLinkError, match="VID:PID"):
            find_port("arduino")

    def test_opening_a_missing_port_is_a_link_error(self) -> None:
        """A port path that does not exist fails with SerialLinkError, not a pyserial error."""
        import asyncio

        from agent.serial.transport import SerialTransport

        with pytest.raises(SerialLinkError, match="/dev/does-not-exist"):
            asyncio.run(SerialTransport.open("/dev/does-not-exist", 115200))
