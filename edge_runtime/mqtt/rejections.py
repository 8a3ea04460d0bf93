"""Refused inbound messages: counted by reason, parked as bounded dead letters, logged sparingly.

Every receiver (the agent's command, desired-state, file and input topics; the controller's
ingest and RPC) hands a message it will not act on to a ``RejectionLedger`` and then
acknowledges it: a refused message is never retried, and a flood of them cannot fill the log
or memory. Counts are per reason code (``too_deep``, ``schema``, ``handler_failed``, ...), the
last ``keep`` dead letters are kept with their topic, reason and first bytes, and each reason
is logged at most once per ``log_every_s`` with the number suppressed since.

No IO of its own apart from the log call, and the clock is injectable: tested without either.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypedDict

EXCERPT_BYTES = 64


class _Logger(Protocol):
    def warning(self, event: str, **fields: Any) -> Any: ...


class DeadLetterDict(TypedDict):
    """A dead letter, JSON-ready (the excerpt decoded, bad bytes replaced)."""

    topic: str
    reason: str
    detail: str
    excerpt: str
    retained: bool
    at: float


@dataclass(frozen=True)
class DeadLetter:
    """One refused message: where it came from, why, and its first bytes."""

    topic: str
    reason: str
    detail: str
    excerpt: bytes
    retained: bool
    at: float  # Unix time

    def as_dict(self) -> DeadLetterDict:
        return {
            "topic": self.topic,
            "reason": self.reason,
            "detail": self.detail,
            "excerpt": self.excerpt.decode("utf-8", errors="replace"),
            "retained": self.retained,
            "at": self.at,
        }


class RejectionLedger:
    """Counts, recent dead letters and throttled logging of refused messages."""

    def __init__(
        self,
        logger: _Logger,
        *,
        event: str = "mqtt.rejected",
        keep: int = 100,
        log_every_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._logger = logger
        self._event = event
        self._log_every_s = log_every_s
        self._clock = clock
        self._wall_clock = wall_clock
        self.counts: Counter[str] = Counter()
        self._recent: deque[DeadLetter] = deque(maxlen=keep)
        self._logged_at: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def recent(self) -> list[DeadLetter]:
        """The dead letters kept, oldest first."""
        return list(self._recent)

    def reject(
        self, topic: str, payload: bytes | bytearray, reason: str, detail: str, *, retained: bool
    ) -> DeadLetter:
        """Record one refused message; logs it unless this reason was logged recently."""
        letter = DeadLetter(
            topic=topic[:256],
            reason=reason,
            detail=detail[:300],
            excerpt=bytes(payload[:EXCERPT_BYTES]),
            retained=retained,
            at=self._wall_clock(),
        )
        self.counts[reason] += 1
        self._recent.append(letter)
        now = self._clock()
        last = self._logged_at.get(reason)
        if last is not None and now - last < self._log_every_s:
            self._suppressed[reason] += 1
            return letter
        self._logged_at[reason] = now
        suppressed = self._suppressed.pop(reason, 0)
        self._logger.warning(
            self._event,
            topic=letter.topic,
            reason=reason,
            detail=letter.detail,
            retained=retained,
            excerpt=letter.excerpt.decode("utf-8", errors="replace"),
            suppressed_since_last=suppressed,
        )
        return letter
