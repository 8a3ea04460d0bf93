"""The inference threads: a few ``WorkerThread``s that run ``Backend.run`` off the event loop.

Why not a ``ThreadPoolExecutor``: on the large model a request's whole serving overhead must
stay within a few percent of a bare ``session.run`` of about 3 ms (bench/bench_models.py),
and the executor's path back to the loop costs two extra loop passes (the concurrent future
is copied into an asyncio future, whose callbacks then wake the task on a later pass). Here
the worker hands its outcome to the loop in one ``call_soon_threadsafe`` that settles the
awaited future directly.

Which thread: the first idle one, so a lone client always runs on the same thread. ONNX
Runtime makes the calling thread one of its intra-op threads, and a caller that moves
between threads ran about 3 % slower than one that stays on one thread. With every thread
busy, a request queues on the thread with the fewest waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from agent.worker import WorkerThread, reporting_to_loop

T = TypeVar("T")


class InferenceWorkers:
    """``count`` threads; ``run`` one blocking call on one of them and await its result."""

    def __init__(self, count: int, *, name: str = "inference") -> None:
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        self._threads = [WorkerThread(f"{name}-{index}") for index in range(count)]
        self._queued = [0] * count  # calls submitted and not yet finished, per thread

    def run(
        self, call: Callable[[], T], *, on_finished: Callable[[], None] | None = None
    ) -> asyncio.Future[T]:
        """Start ``call()`` on a worker; the future settles with its result or exception.

        ``on_finished`` runs on the loop when the call is done, before the future settles,
        even if the future was cancelled meanwhile (the thread cannot be stopped mid-call,
        so whatever the call uses must stay open until then).
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        index = self._pick()
        self._queued[index] += 1

        def finished() -> bool:
            """Bookkeeping for a finished call; whether anyone still waits for it."""
            self._queued[index] -= 1
            if on_finished is not None:
                on_finished()
            return not future.cancelled()

        def succeed(value: T) -> None:
            if finished():
                future.set_result(value)

        def fail(exc: BaseException) -> None:
            if finished():
                future.set_exception(exc)

        self._threads[index].submit(reporting_to_loop(call, succeed, fail))
        return future

    def stop(self) -> None:
        """Let every thread finish what it was given, then end (does not wait)."""
        for thread in self._threads:
            thread.stop(timeout_s=0)

    def _pick(self) -> int:
        queued = self._queued
        for index, count in enumerate(queued):
            if count == 0:
                return index
        return queued.index(min(queued))
