"""Logging set-up, in one place: structlog key-value events, JSON or console output.

JSON is for journald and files (one object per line); console is for a person at a
terminal. ``auto`` picks console when stderr is a tty. Output goes to stderr, and the last
lines stay in memory too (``RECENT``, a bounded ring) for the agent's ``logs`` command.
"""

from __future__ import annotations

import collections
import logging
import sys
from typing import Literal

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(
    level: str = "info", fmt: Literal["auto", "json", "console"] = "auto"
) -> None:
    """Configure structlog (and stdlib logging of libraries) for the process."""
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
            RECENT.capture,  # type: ignore[list-item]  # after the renderer: gets the line
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(_LEVELS[level], logging.WARNING), stream=sys.stderr)


class LogRing:
    """The last ``capacity`` rendered log lines, in memory, for the agent's ``logs`` command.

    Bounded twice: the number of lines and each line's length, so a burst of huge events
    costs at most ``capacity * max_line`` characters.
    """

    def __init__(self, capacity: int = 1000, max_line: int = 2000) -> None:
        self._lines: collections.deque[str] = collections.deque(maxlen=capacity)
        self._max_line = max_line

    def add(self, line: str) -> None:
        self._lines.append(line[: self._max_line])

    def last(self, count: int) -> list[str]:
        """The newest ``count`` lines, oldest first."""
        if count <= 0:
            return []
        return list(self._lines)[-count:]

    def capture(self, _logger: object, _method: str, rendered: str) -> str:
        """structlog processor placed after the renderer: keeps a copy of the line."""
        self.add(rendered if isinstance(rendered, str) else str(rendered))
        return rendered


# The process's ring: every line configure_logging renders is kept here too.
RECENT = LogRing()
