"""The real firmware on an emulated ATmega328P, spoken to over its pty with the agent's codec."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from devtools.emulated_board import FIRMWARE_DIR, EmulatedBoard, build_firmware, run_make

serial = pytest.importorskip("serial")
msg = pytest.importorskip("agent.serial.messages_gen")
framing = pytest.importorskip("agent.serial.framing")

OTHER_HASH = 0x12345678
TOOLS = ("avr-gcc", "avr-objcopy", "avr-size", "gcc", "pkg-config", "make")

M = TypeVar("M")


def _require_toolchain() -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if not Path("/usr/include/simavr/sim_avr.h").exists():
        missing.append("libsimavr-dev")
    if missing:
        pytest.fail(
            f"missing {', '.join(missing)}: install gcc-avr avr-libc simavr libsimavr-dev "
            "libelf-dev pkg-config (run `make test`, which installs them)"
        )


@pytest.fixture(scope="module")
def firmware() -> Path:
    """The firmware ELF and the simulator, built once for this module."""
    _require_toolchain()
    return build_firmware()


@pytest.fixture
def board(firmware: Path) -> Iterator[EmulatedBoard]:
    """A freshly powered-on emulated board."""
    with EmulatedBoard(firmware) as instance:
        yield instance


class Link:
    """The host end of the serial link: pyserial on the board's pty plus the agent's codec."""

    def __init__(self, pty_path: str) -> None:
        self.port = serial.Serial(pty_path, 115200, timeout=0.05)
        self.port.reset_input_buffer()
        self.decoder = framing.FrameDecoder()
        self.seq = 0
        self.seen: list[Any] = []
        self.pending: deque[Any] = deque()

    def close(self) -> None:
        self.port.close()

    def send(self, message: Any) -> int:
        """Send one message in a frame of its own; return the frame's seq."""
        self.seq = (self.seq + 1) & 0xFF
        self.write(framing.encode_frame(self.seq, message.TYPE, message.encode()))
        return self.seq

    def write(self, data: bytes) -> None:
        self.port.write(data)
        self.port.flush()

    def expect(
        self, kind: type[M], timeout: float = 2.0, where: Callable[[M], bool] = lambda _: True
    ) -> M:
        """The next message of type ``kind`` that satisfies ``where``; others are kept in seen."""
        deadline = time.monotonic() + timeout
        while True:
            while self.pending:
                message = self.pending.popleft()
                self.seen.append(message)
                if isinstance(message, kind) and where(message):
                    return message
            if time.monotonic() >= deadline:
                raise AssertionError(f"no {kind.__name__} within {timeout}s; saw {self.seen[-5:]}")
            for frame in self.decoder.feed(self.port.read(256)):
                self.pending.append(msg.decode_message(frame.msg_type, frame.payload))

    def hello(self, protocol_hash: int | None = None) -> Any:
        wanted = msg.PROTOCOL_HASH if protocol_hash is None else protocol_hash
        self.send(msg.HelloRequest(1, wanted))
        return self.expect(msg.Hello)

    def heartbeat(self) -> tuple[Any, Any]:
        """Send a heartbeat; return the reply and the stats that follow it."""
        self.send(msg.Heartbeat(0, 0))
        reply = self.expect(msg.Heartbeat)
        return reply, self.expect(msg.Stats)

    def actuate(self, actuator: int, value: int) -> tuple[int, Any]:
        """Send actuate; return its seq and the ack or nack that answers it."""
        seq = self.send(msg.Actuate(actuator, value))
        reply = self.expect((msg.Ack, msg.Nack), where=lambda m: m.seq == seq)  # type: ignore[arg-type]
        return seq, reply


@pytest.fixture
def link(board: EmulatedBoard) -> Iterator[Link]:
    """A host link to the board, opened right after power-on."""
    instance = Link(board.pty_path)
    yield instance
    instance.close()


def _bad_crc_frame(seq: int, message: Any) -> bytes:
    raw = bytes((seq, message.TYPE)) + message.encode()
    crc = framing.crc16_ccitt(raw) ^ 0x5A5A
    return framing.cobs_encode(raw + crc.to_bytes(2, "little")) + b"\x00"


class TestBuild:
    def test_make_reports_flash_and_ram_within_budget(self, firmware: Path) -> None:
        """`make -C firmware` prints flash and RAM use, both within their budgets."""
        output = run_make()
        flash = re.search(r"^flash: (\d+) / 32768 bytes .*budget (\d+)", output, re.M)
        ram = re.search(r"^ram: (\d+) / 2048 bytes .*budget (\d+)", output, re.M)
        assert flash and ram, output
        assert int(flash[1]) <= int(flash[2]) == 16384
        assert int(ram[1]) <= int(ram[2]) == 1228
        assert (FIRMWARE_DIR / "build" / "firmware.hex").exists()
        assert (FIRMWARE_DIR / "build" / "sim").exists()

    def test_make_fails_over_budget(self, firmware: Path) -> None:
        """The size check fails the build when a budget is exceeded."""
        result = subprocess.run(
            ["make", "-C", str(FIRMWARE_DIR), "size", "FLASH_BUDGET_PCT=1"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode != 0
        assert "flash use over budget" in result.stderr


class TestHandshake:
    def test_hello_matches_the_spec(self, link: Link) -> None:
        """A hello_request with our hash gets a hello with that hash and the board's defaults."""
        hello = link.hello()
        assert hello.protocol_hash == msg.PROTOCOL_HASH
        assert hello.actuator_mask == 0x3F
        assert hello.sensor_mask == 0x01
        assert hello.failsafe_ms == 1500
        assert hello.sensor_period_ms == 100
        assert hello.firmware_version == 0x0100
        assert hello.reset_cause == 1  # power-on

    def test_wrong_hash_is_refused_until_a_matching_hello(self, link: Link) -> None:
        """A mismatching hash gets error 1 with the firmware's hash, and actuate is refused."""
        link.send(msg.HelloRequest(1, msg.PROTOCOL_HASH ^ 0xFFFF))
        error = link.expect(msg.Error)
        assert (error.code, error.detail) == (1, msg.PROTOCOL_HASH)
        _, reply = link.actuate(5, 1)
        assert isinstance(reply, msg.Nack) and reply.reason == 4
        link.hello()
        _, reply = link.actuate(5, 1)
        assert isinstance(reply, msg.Ack)

    def test_actuate_before_hello_is_not_ready(self, link: Link) -> None:
        """Without a handshake the firmware refuses actuate and configure with nack 4."""
        _, reply = link.actuate(5, 1)
        assert isinstance(reply, msg.Nack) and reply.reason == 4
        seq = link.send(msg.Configure(100, 1500, 1))
        nack = link.expect(msg.Nack, where=lambda m: m.seq == seq)
        assert nack.reason == 4

    def test_firmware_from_another_spec_reports_its_hash(self) -> None:
        """Firmware built with another protocol hash answers with that hash, never ours."""
        _require_toolchain()
        elf = build_firmware("build/otherspec", f"-DPROTOCOL_HASH_OVERRIDE={OTHER_HASH:#x}")
        with EmulatedBoard(elf) as other:
            host = Link(other.pty_path)
            try:
                host.send(msg.HelloRequest(1, msg.PROTOCOL_HASH))
                error = host.expect(msg.Error)
                assert (error.code, error.detail) == (1, OTHER_HASH)
                hello = host.hello(OTHER_HASH)
                assert hello.protocol_hash == OTHER_HASH != msg.PROTOCOL_HASH
            finally:
                host.close()


class TestSensors:
    def test_adc_value_arrives_as_sensor_frames(self, board: EmulatedBoard, link: Link) -> None:
        """2.5 V on A0 arrives as sensor readings of about 512, every 100 ms of board time."""
        board.set_adc(0, 2500)
        first = link.expect(msg.Sensor, where=lambda m: abs(m.value - 512) <= 3)
        assert first.channel == 0
        readings = [link.expect(msg.Sensor) for _ in range(5)]
        assert all(r.channel == 0 and abs(r.value - 512) <= 3 for r in readings)
        gaps = [b.uptime_ms - a.uptime_ms for a, b in itertools.pairwise([first, *readings])]
        assert all(100 <= gap <= 102 for gap in gaps), gaps

    def test_board_time_follows_the_wall_clock(self, link: Link) -> None:
        """The emulator runs in real time: 2 s of wall clock bring about 20 readings."""
        link.expect(msg.Sensor)
        started = time.monotonic()
        count = 0
        while time.monotonic() - started < 2.0:
            link.expect(msg.Sensor)
            count += 1
        assert 16 <= count <= 23, count

    def test_configure_changes_period_and_channels(self, board: EmulatedBoard, link: Link) -> None:
        """configure is acked and switches sampling to the new period and channel mask."""
        board.set_adc(1, 1250)
        link.hello()
        seq = link.send(msg.Configure(20, 1500, 0x03))
        link.expect(msg.Ack, where=lambda m: m.seq == seq)
        ones = [link.expect(msg.Sensor, where=lambda m: m.channel == 1) for _ in range(4)]
        assert all(abs(r.value - 256) <= 3 for r in ones)
        gaps = [b.uptime_ms - a.uptime_ms for a, b in itertools.pairwise(ones)]
        assert all(20 <= gap <= 22 for gap in gaps), gaps


class TestActuators:
    def test_actuate_drives_the_pin_and_is_acked(self, board: EmulatedBoard, link: Link) -> None:
        """actuate pin 5 on sets PB5 and is acked with the frame's seq; off clears it."""
        link.hello()
        seq, reply = link.actuate(5, 1)
        assert isinstance(reply, msg.Ack) and reply.seq == seq
        board.wait_for_pin(5, 1, timeout=1.0)
        _, reply = link.actuate(5, 0)
        assert isinstance(reply, msg.Ack)
        board.wait_for_pin(5, 0, timeout=1.0)

    def test_bad_actuator_or_value_is_nacked(self, board: EmulatedBoard, link: Link) -> None:
        """An actuator outside PB0..PB5 or a value other than 0/1 gets nack 3 and no change."""
        link.hello()
        for actuator, value in ((6, 1), (200, 0), (2, 2)):
            _, reply = link.actuate(actuator, value)
            assert isinstance(reply, msg.Nack) and reply.reason == 3
        assert not [e for e in board.events if e.kind == "PIN"]

    def test_unknown_type_and_bad_length_are_nacked(self, link: Link) -> None:
        """An unknown message type gets nack 1, a short actuate payload nack 2."""
        link.hello()
        link.write(framing.encode_frame(77, 0x7E, b"\x01"))
        assert link.expect(msg.Nack, where=lambda m: m.seq == 77).reason == 1
        link.write(framing.encode_frame(78, msg.Actuate.TYPE, b"\x05"))
        assert link.expect(msg.Nack, where=lambda m: m.seq == 78).reason == 2


class TestFailsafe:
    def test_lost_heartbeats_trip_the_failsafe(self, board: EmulatedBoard, link: Link) -> None:
        """Without heartbeats PB5 drops within failsafe_ms, and the next heartbeat reports it."""
        link.hello()
        reply, stats = link.heartbeat()
        assert reply.flags == 0 and stats.failsafe_trips == 0
        _, ack = link.actuate(5, 1)
        assert isinstance(ack, msg.Ack)
        board.wait_for_pin(5, 1, timeout=1.0)
        last_heartbeat = time.monotonic()
        board.wait_for_pin(5, 0, timeout=1.5 + 1.0)
        waited = time.monotonic() - last_heartbeat
        assert 1.2 <= waited <= 2.5, waited
        _, nack = link.actuate(5, 1)
        assert isinstance(nack, msg.Nack) and nack.reason == 4
        link.hello()  # a new session does not end the fail-safe state: only a heartbeat does
        _, nack = link.actuate(5, 1)
        assert isinstance(nack, msg.Nack) and nack.reason == 4
        reply, stats = link.heartbeat()
        assert reply.flags == 0b11
        assert stats.failsafe_trips == 1
        reply, _ = link.heartbeat()
        assert reply.flags == 0
        _, ack = link.actuate(5, 1)
        assert isinstance(ack, msg.Ack)
        board.wait_for_pin(5, 1, timeout=1.0)

    def test_heartbeats_keep_the_actuator_on(self, board: EmulatedBoard, link: Link) -> None:
        """Heartbeats every 0.5 s hold the fail-safe off for longer than failsafe_ms."""
        link.hello()
        link.heartbeat()
        link.actuate(5, 1)
        board.wait_for_pin(5, 1, timeout=1.0)
        for _ in range(7):
            time.sleep(0.5)
            reply, _ = link.heartbeat()
            assert reply.flags == 0
        assert board.pin_state(5) == 1


class TestBadInput:
    def test_garbage_and_bad_crc_are_dropped_and_counted(
        self, board: EmulatedBoard, link: Link
    ) -> None:
        """Garbage, a truncated frame and a bad CRC are not acted on; the next actuate is."""
        link.hello()
        link.heartbeat()
        good = framing.encode_frame(40, msg.Actuate.TYPE, msg.Actuate(5, 1).encode())
        link.write(b"\x13\x37\xff\xfe\x42" + b"\x00")  # line noise
        link.write(good[: len(good) // 2] + b"\x00")  # cut short
        link.write(_bad_crc_frame(41, msg.Actuate(4, 1)))  # damaged in transit
        seq, reply = link.actuate(5, 1)
        assert isinstance(reply, msg.Ack) and reply.seq == seq
        board.wait_for_pin(5, 1, timeout=1.0)
        _, stats = link.heartbeat()
        assert stats.crc_errors >= 1
        assert stats.framing_errors >= 1
        assert board.pin_state(4) == 0
        assert not any(isinstance(m, (msg.Ack, msg.Nack)) and m.seq in (40, 41) for m in link.seen)


class TestEmulator:
    def test_restart_gives_a_new_pty_and_a_power_on(self, board: EmulatedBoard) -> None:
        """After kill() (an unplug), restart() boots a fresh board on a new pty."""
        board.kill()
        assert not board.running
        board.restart()
        assert board.running and board.pty_path.startswith("/dev/")
        host = Link(board.pty_path)
        try:
            assert host.hello().reset_cause == 1
        finally:
            host.close()

    def test_reset_pin_reboots_and_drops_actuators(self, board: EmulatedBoard, link: Link) -> None:
        """An external reset is reported, releases the pins and shows in hello.reset_cause."""
        link.hello()
        link.actuate(5, 1)
        board.wait_for_pin(5, 1, timeout=1.0)
        board.press_reset()
        event = board.wait_for_event(lambda e: e.kind == "RESET", timeout=2.0)
        assert event.cause == "external"
        assert board.pin_state(5) == 0
        assert link.hello().reset_cause == 2

    def test_watchdog_reset_is_reported(self, firmware: Path) -> None:
        """A firmware that stops feeding the watchdog is reset by it, and sees WDRF at boot."""
        selftest = FIRMWARE_DIR / "build" / "selftest.elf"
        with EmulatedBoard(selftest) as sim:
            port = serial.Serial(sim.pty_path, 115200, timeout=0.5)
            try:
                port.write(b"W")
                event = sim.wait_for_event(lambda e: e.kind == "RESET", timeout=2.0)
                assert event.cause == "watchdog"
                # A byte sent while the reset firmware is still setting up its UART is lost
                # (on a loaded machine, the first one may be): ask again, a bounded number
                # of times, until it answers.
                answer = b""
                for _ in range(10):
                    port.write(b"M")
                    answer += port.read_until(b"M8\n")
                    if answer.endswith(b"M8\n"):
                        break
                assert answer.endswith(b"M8\n"), answer
            finally:
                port.close()
