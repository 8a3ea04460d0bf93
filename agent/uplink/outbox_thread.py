"""One worker thread that runs calls in order and, optionally, one job on its own clock.

``DiskOutbox`` owns its SQLite connection through this thread. A thread pool would do for the
calls; the periodic job is why this exists. An idle agent's CPU is almost all wake-ups (on
a small or virtual machine each costs more CPU than the work of a telemetry message;
docs/benchmarks.md, "Agent core: telemetry publishing and footprint"). A timer on the event
loop that hands the telemetry job to a worker wakes the loop, then the worker, which then
waits for the GIL the loop still holds. A timer on the worker itself wakes only the worker,
while the loop sleeps with the GIL released; the loop wakes once, when the result is handed
back.

The periodic job keeps a fixed cadence from a monotonic clock and skips ticks rather than
bursting when it falls behind. Calls are never starved by it, nor it by calls: after each
call the worker checks whether the job is due.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog

log = structlog.get_logger("agent.uplink.outbox_thread")
T = TypeVar("T")


@dataclass
class _Periodic:
    interval_s: float
    job: Callable[[], None]
    next_at: float


class _Wake:
    """Queue item that only makes the worker look at its schedule again."""


_WAKE = _Wake()


def next_run_at(due_at: float, interval_s: float, now: float) -> float:
    """When to run next, given a run that was due at ``due_at`` and starts at ``now``.

    On the fixed grid ``due_at + k * interval_s`` while on time; a run that starts a whole
    interval or more late moves the grid to ``now + interval_s``: missed runs are skipped,
    never made up in a burst.
    """
    following = due_at + interval_s
    return following if following >= now else now + interval_s


def reporting_to_loop(
    call: Callable[[], T],
    on_result: Callable[[T], None],
    on_error: Callable[[BaseException], None],
) -> Callable[[], None]:
    """``call`` wrapped for a worker: its result or exception is handed to the event loop
    running now, in one ``call_soon_threadsafe`` (``on_result(value)`` or ``on_error(exc)``
    runs there). A loop closed meanwhile has nobody waiting: the outcome is dropped."""
    loop = asyncio.get_running_loop()

    def run() -> None:
        try:
            value = call()
        except BaseException as exc:  # handed to the loop, like an executor would
            _hand_to(loop, on_error, exc)
            return
        _hand_to(loop, on_result, value)

    return run


def _hand_to(loop: asyncio.AbstractEventLoop, callback: Callable[[T], None], arg: T) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed
        loop.call_soon_threadsafe(callback, arg)


class WorkerThread:
    """A single thread running ``submit``ted callables in order, plus one periodic job."""

    def __init__(self, name: str) -> None:
        self._items: queue.SimpleQueue[Callable[[], None] | _Wake | None] = queue.SimpleQueue()
        self._periodic: _Periodic | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def submit(self, call: Callable[[], None]) -> None:
        """Run ``call()`` on the worker after everything submitted before it.

        ``call`` reports its own result (it must not raise: an exception is logged and
        dropped, since nobody waits on it here).
        """
        if self._stopped:
            raise RuntimeError("worker thread is stopped")
        self._items.put(call)

    def every(self, interval_s: float, job: Callable[[], None], *, first_in_s: float = 0.0) -> None:
        """Run ``job()`` on the worker every ``interval_s``, the first in ``first_in_s``.

        Replaces any periodic job set before. Like ``submit``, ``job`` reports its own result.
        """
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self._periodic = _Periodic(interval_s, job, time.monotonic() + first_in_s)
        self._items.put(_WAKE)

    def cancel_every(self) -> None:
        """Stop the periodic job; a run already started finishes."""
        self._periodic = None
        self._items.put(_WAKE)

    def stop(self, timeout_s: float | None = None) -> None:
        """Finish what was submitted, then end the thread (blocking)."""
        if not self._stopped:
            self._stopped = True
            self._periodic = None
            self._items.put(None)
        self._thread.join(timeout_s)

    def _main(self) -> None:
        while True:
            item = self._next_item()
            if item is None:
                return
            if not isinstance(item, _Wake):
                self._run(item)
            self._run_periodic_if_due()

    def _next_item(self) -> Callable[[], None] | _Wake | None:
        periodic = self._periodic
        timeout = None if periodic is None else max(0.0, periodic.next_at - time.monotonic())
        try:
            return self._items.get(timeout=timeout)
        except queue.Empty:
            return _WAKE

    def _run_periodic_if_due(self) -> None:
        periodic = self._periodic
        now = time.monotonic()
        if periodic is None or now < periodic.next_at:
            return
        periodic.next_at = next_run_at(periodic.next_at, periodic.interval_s, now)
        self._run(periodic.job)

    @staticmethod
    def _run(call: Callable[[], None]) -> None:
        try:
            call()
        except Exception:  # a call that reports its own result should never get here
            log.exception("worker.call_failed", call=repr(call))
