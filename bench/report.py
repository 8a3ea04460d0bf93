"""What every benchmark does the same way: the figures table, stopping on Ctrl-C or SIGTERM,
and a server in a child process.

Each benchmark builds its own rows (figure, value, ..., target, result); this module only
lays them out: the first column left-aligned, the others right-aligned, a rule under the
header.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TypeVar

T = TypeVar("T")

FIGURE_HEADER = ("figure", "median", "range", "baseline", "ratio", "target", "result")


def render_table(rows: Sequence[Sequence[str]], header: Sequence[str] = FIGURE_HEADER) -> str:
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = str(cells[0]).ljust(widths[0])
        rest = [str(c).rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    return "\n".join([line(header), "-" * len(line(header)), *(line(row) for row in rows)])


def run_or_exit(run: Callable[[], T], failure: type[Exception], cleaned_up: str) -> T:
    """``run()`` with SIGTERM treated as Ctrl-C; exit 130 when interrupted, 1 on ``failure``.

    ``run`` cleans up after itself on the way out; ``cleaned_up`` says what it stopped.
    """
    stop_on_sigterm()
    try:
        return run()
    except KeyboardInterrupt:
        print(f"\ninterrupted; {cleaned_up}", file=sys.stderr)
        raise SystemExit(130) from None
    except failure as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def stop_on_sigterm() -> None:
    """Make SIGTERM raise KeyboardInterrupt, so a benchmark cleans up as on Ctrl-C."""
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def child_server(
    argv: Sequence[str],
    log: Path,
    ready: Callable[[], bool],
    failure: type[Exception],
    *,
    cwd: Path,
) -> Iterator[None]:
    """``argv`` in a child process (output to ``log``), until ``ready()``; stopped with
    SIGTERM on the way out (killed after 15 s). ``failure`` if it exits or is not ready
    within 60 s."""
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    try:
        deadline = time.monotonic() + 60
        while not ready():
            if process.poll() is not None or time.monotonic() > deadline:
                raise failure(f"{' '.join(argv[1:4])} ... did not start: see {log}")
            time.sleep(0.1)
        yield
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
