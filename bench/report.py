"""What every benchmark prints the same way: the figures table, and SIGTERM as Ctrl-C.

Each benchmark builds its own rows (figure, value, ..., target, result); this module only
lays them out: the first column left-aligned, the others right-aligned, a rule under the
header.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from types import FrameType

FIGURE_HEADER = ("figure", "median", "range", "baseline", "ratio", "target", "result")


def render_table(rows: Sequence[Sequence[str]], header: Sequence[str] = FIGURE_HEADER) -> str:
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = str(cells[0]).ljust(widths[0])
        rest = [str(c).rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    return "\n".join([line(header), "-" * len(line(header)), *(line(row) for row in rows)])


def stop_on_sigterm() -> None:
    """Make SIGTERM raise KeyboardInterrupt, so a benchmark cleans up as on Ctrl-C."""
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt
