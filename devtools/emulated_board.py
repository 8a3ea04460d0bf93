"""The firmware on an emulated ATmega328P: a board whose UART is a pseudo-terminal.

``EmulatedBoard`` builds the firmware and the simavr harness once (``make -C firmware``),
runs ``firmware/build/sim firmware/build/firmware.elf`` and speaks its line protocol:

* stdout: ``PTY <path>`` first, then ``PIN B<n> <0|1> <avr-ms>`` for every PORTB output change,
  ``RESET <cause>`` (watchdog, external) and ``HALT <state>`` when the firmware stops;
* stdin: ``ADC <channel> <millivolts>``, ``RESET`` (the reset pin) and ``QUIT``.

Open ``pty_path`` at 115200 baud with pyserial (or anything else) to talk to the firmware. The
emulator keeps AVR time in step with the wall clock, so the firmware's timeouts are real.
Stdlib only, so the agent's demo can use it too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

REPO = Path(__file__).resolve().parents[1]
FIRMWARE_DIR = REPO / "firmware"

_built: dict[tuple[str, str], str] = {}
_build_lock = threading.Lock()


class BuildError(RuntimeError):
    """``make -C firmware`` failed; the message carries its output."""


def build_firmware(build: str = "build", extra_cflags: str = "") -> Path:
    """Build firmware and simulator into ``firmware/<build>`` once per process; return the ELF.

    A file lock keeps parallel test processes from running make in the same tree at once.
    """
    key = (build, extra_cflags)
    with _build_lock:
        if key not in _built:
            _built[key] = run_make(build, extra_cflags)
    return FIRMWARE_DIR / build / "firmware.elf"


def run_make(build: str = "build", extra_cflags: str = "") -> str:
    """Run ``make -C firmware`` (serialised across processes) and return its output."""
    argv = ["make", "-C", str(FIRMWARE_DIR), f"BUILD={build}"]
    if extra_cflags:
        argv.append(f"EXTRA_CFLAGS={extra_cflags}")
    lock_dir = FIRMWARE_DIR / "build"
    lock_dir.mkdir(exist_ok=True)
    with (lock_dir / ".make.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise BuildError(f"{' '.join(argv)} failed ({result.returncode}):\n{output}")
    return output


@dataclass(frozen=True)
class SimEvent:
    """One line from the emulator: a pin change, a reset or a halt."""

    kind: str  # "PIN", "RESET" or "HALT"
    wall: float  # time.monotonic() when the line was read
    pin: int = -1  # PORTB pin for "PIN"
    value: int = -1  # new level for "PIN"
    avr_ms: float = 0.0  # AVR time of a pin change, ms since the emulator started
    cause: str = ""  # reset cause, or halt state


class EmulatedBoard:
    """The firmware running in simavr; use as a context manager (see the module docstring)."""

    def __init__(
        self,
        firmware: Path | None = None,
        *,
        sim: Path | None = None,
        log_path: Path | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        self.firmware = firmware
        self.sim = sim or FIRMWARE_DIR / "build" / "sim"
        self.log_path = log_path
        self.start_timeout = start_timeout
        self.pty_path = ""
        self.events: list[SimEvent] = []
        self._adc: dict[int, int] = {}
        self._pins: dict[int, int] = {}
        self._cond = threading.Condition()
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> EmulatedBoard:
        """Build if needed, start the emulator and wait for its pty."""
        if self._process is not None:
            raise RuntimeError("the emulator is already running")
        if self.firmware is None:
            self.firmware = build_firmware()
        elif not self.sim.exists():
            build_firmware()
        stderr = self.log_path.open("a") if self.log_path else subprocess.DEVNULL
        try:
            process = subprocess.Popen(
                [str(self.sim), str(self.firmware)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                bufsize=1,
                cwd=REPO,
            )
        finally:
            if self.log_path:
                stderr.close()  # type: ignore[union-attr]
        self._process = process
        first = _readline_with_timeout(process, self.start_timeout)
        if not first.startswith("PTY "):
            self.kill()
            raise RuntimeError(f"the emulator did not report its pty: {first!r}")
        self.pty_path = first.split(" ", 1)[1].strip()
        with self._cond:
            self._pins = {}
        self._reader = threading.Thread(
            target=self._read_events, args=(process,), name="avr-sim", daemon=True
        )
        self._reader.start()
        for channel, millivolts in self._adc.items():
            self._command(f"ADC {channel} {millivolts}")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the emulator to quit; kill it if it does not within ``timeout``."""
        process = self._process
        if process is None:
            return
        with contextlib.suppress(OSError, ValueError):
            self._command("QUIT")
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self._finish()

    def kill(self) -> None:
        """SIGKILL the emulator, as if the board were unplugged (its pty vanishes)."""
        process = self._process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
        self._finish()

    def restart(self) -> EmulatedBoard:
        """Kill the emulator if it runs and start a fresh one (power-on, new ``pty_path``)."""
        self.kill()
        return self.start()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> EmulatedBoard:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- inputs --------------------------------------------------------------------------------

    def set_adc(self, channel: int, millivolts: int) -> None:
        """Set analog input A<channel> (0..7) in millivolts; AVCC is 5000 mV."""
        if not 0 <= channel <= 7 or millivolts < 0:
            raise ValueError(f"bad ADC input: channel {channel}, {millivolts} mV")
        self._adc[channel] = millivolts
        if self.running:
            self._command(f"ADC {channel} {millivolts}")

    def inject(self, data: bytes) -> None:
        """Put raw bytes on the line towards the host, as noise on a real cable would."""
        self._command(f"INJECT {data.hex()}")

    def press_reset(self) -> None:
        """Pulse the reset pin (an external reset; the emulator reports ``RESET external``)."""
        self._command("RESET")

    # -- outputs -------------------------------------------------------------------------------

    def pin_state(self, pin: int) -> int:
        """The current level of PORTB pin ``pin`` as an output (0 when not driven high)."""
        with self._cond:
            return self._pins.get(pin, 0)

    def wait_for_pin(self, pin: int, value: int, timeout: float) -> float:
        """Wait until PORTB pin ``pin`` is at ``value``; return how long it took, seconds.

        Raises:
            TimeoutError: the pin did not reach ``value`` within ``timeout``.
        """
        started = time.monotonic()
        self.wait_for(lambda: self._pins.get(pin, 0) == value, timeout, f"PB{pin} == {value}")
        return time.monotonic() - started

    def wait_for_event(
        self, predicate: Callable[[SimEvent], bool], timeout: float, since: int = 0
    ) -> SimEvent:
        """Wait for an event (from index ``since`` of ``events``) that matches ``predicate``."""
        found: list[SimEvent] = []

        def match() -> bool:
            found[:] = [event for event in self.events[since:] if predicate(event)]
            return bool(found)

        self.wait_for(match, timeout, "an emulator event")
        return found[0]

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Wait (under the event lock) until ``condition()`` holds."""
        with self._cond:
            if not self._cond.wait_for(condition, timeout):
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}")

    # -- internals -----------------------------------------------------------------------------

    def _command(self, line: str) -> None:
        process = self._process
        if process is None or process.stdin is None:
            raise RuntimeError("the emulator is not running")
        process.stdin.write(line + "\n")
        process.stdin.flush()

    def _read_events(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            event = _parse_event(line.split(), time.monotonic())
            if event is None:
                continue
            with self._cond:
                self.events.append(event)
                if event.kind == "PIN":
                    self._pins[event.pin] = event.value
                self._cond.notify_all()

    def _finish(self) -> None:
        """After the process has exited: let the reader drain to EOF, then close the pipes."""
        process, self._process = self._process, None
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=2)
        self._reader = None
        if process is not None:
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()


def _parse_event(fields: list[str], wall: float) -> SimEvent | None:
    if len(fields) == 4 and fields[0] == "PIN" and fields[1].startswith("B"):
        return SimEvent(
            "PIN", wall, pin=int(fields[1][1:]), value=int(fields[2]), avr_ms=float(fields[3])
        )
    if len(fields) == 2 and fields[0] in {"RESET", "HALT"}:
        return SimEvent(fields[0], wall, cause=fields[1])
    return None


def _readline_with_timeout(process: subprocess.Popen[str], timeout: float) -> str:
    """The first stdout line, or '' if none comes in time (a thread, as pipes can't select)."""
    result: list[str] = []
    assert process.stdout is not None
    stdout = process.stdout
    reader = threading.Thread(target=lambda: result.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return result[0] if result else ""


__all__ = ["BuildError", "EmulatedBoard", "SimEvent", "build_firmware", "run_make"]
