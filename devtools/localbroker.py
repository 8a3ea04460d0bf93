"""A private Mosquitto on loopback with a throw-away config and data dir.

Used by ``make demo`` and by the test fixtures: never a shared or system broker. It listens
on 127.0.0.1 only, on a free port unless one is given, and can be stopped and started again
on the same port and data dir (persistence on, so sessions and queued messages survive a
restart, as on a production broker).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from fleet.errors import FleetError


class BrokerError(FleetError):
    """Mosquitto is missing, or did not start."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


@dataclass
class PrivateBroker:
    """One mosquitto process; ``extra_config`` lines are appended to its config."""

    workdir: Path
    port: int = 0
    extra_config: list[str] = field(default_factory=list)
    executable: str = "mosquitto"
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs (benchmarks read its CPU time)."""
        return self._process.pid if self.running and self._process is not None else None

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def start(self, timeout_s: float = 10.0) -> None:
        """Start mosquitto and wait until it accepts connections."""
        binary = shutil.which(self.executable) or shutil.which(
            self.executable, path="/usr/sbin:/usr/local/sbin"
        )
        if binary is None:
            raise BrokerError("mosquitto is not installed (apt-get install mosquitto)")
        if not self.port:
            self.port = free_port()
        elif port_is_open(self.port):
            raise BrokerError(f"port {self.port} on 127.0.0.1 is already taken")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [binary, "-c", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrokerError(
                    f"mosquitto exited with {self._process.returncode}; see {self.log_path}"
                )
            if port_is_open(self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"mosquitto did not listen on port {self.port} within {timeout_s}s")

    def stop(self, *, kill: bool = False, timeout_s: float = 10.0) -> None:
        """Stop it: SIGTERM (persistence saved) or SIGKILL (as if the host died)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _write_config(self) -> Path:
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {data}/",
            "autosave_interval 1",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "max_queued_messages 100000",
            # Small request/response packets must not wait for delayed ACKs (Nagle).
            "set_tcp_nodelay true",
            *self.extra_config,
        ]
        if os.geteuid() == 0:
            # Mosquitto started as root drops to the 'mosquitto' user, which cannot write
            # this private data dir; the broker only listens on loopback.
            lines.append("user root")
        path = self.workdir / "mosquitto.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def __enter__(self) -> PrivateBroker:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        with contextlib.suppress(OSError):
            self.stop()
