"""Which of the agent's loops have made progress recently: the systemd watchdog's evidence.

A ``Liveness`` registry holds one entry per loop that must keep moving (the MQTT link, the
forwarder's outbox thread, the inference worker threads, the serial relay, telemetry), each
with its own deadline. A loop -- or a probe that runs through it -- calls ``beat(name, now)``
when it makes progress; ``late(now)`` names the loops whose last beat is older than their
deadline. A loop that is idle by design (no serial port configured, no models) is simply not
registered. Pure: the caller passes the clock, so tests need no sleeps.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Entry:
    deadline_s: float
    last_beat: float


class Liveness:
    """Last progress per loop, and which loops are past their deadline."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def register(self, name: str, deadline_s: float, now: float) -> None:
        """Watch ``name`` from ``now`` on: registering counts as its first beat."""
        if deadline_s <= 0:
            raise ValueError(f"deadline for {name!r} must be > 0, got {deadline_s}")
        self._entries[name] = _Entry(deadline_s, now)

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def beat(self, name: str, now: float) -> None:
        """``name`` made progress at ``now`` (an older ``now`` never moves a beat back)."""
        entry = self._entries.get(name)
        if entry is None:
            raise KeyError(f"loop {name!r} is not registered")
        entry.last_beat = max(entry.last_beat, now)

    @property
    def names(self) -> list[str]:
        return sorted(self._entries)

    def late(self, now: float) -> list[str]:
        """The loops whose last beat is older than their deadline, by name."""
        return sorted(name for name, e in self._entries.items() if now - e.last_beat > e.deadline_s)
