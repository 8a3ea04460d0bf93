"""systemd notification (``Type=notify``, ``WatchdogSec=``) without a dependency.

Sends ``READY=1``, ``WATCHDOG=1``, ``STATUS=...`` and ``STOPPING=1`` datagrams to
``$NOTIFY_SOCKET``; does nothing when the process does not run under systemd. Used by the
agent (``agent.daemon.app``) and the controller (``fleet.service``).
"""

from __future__ import annotations

import os
import socket


class SystemdNotifier:
    """Datagrams to the notify socket; a no-op outside systemd."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # An abstract socket is written with a leading '@' and addressed with a NUL.
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        self.watchdog_interval_s = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else None

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, state: str) -> None:
        if not self._address:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.sendto(state.encode(), self._address)
            except OSError:
                pass  # systemd went away (shutdown); nothing useful to do about it
