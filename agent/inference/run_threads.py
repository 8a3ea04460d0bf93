"""The inference threads: a few threads that run ``Backend.run`` off the event loop.

Why not a ``ThreadPoolExecutor`` or the agent's general ``WorkerThread``: on the large model
a request's whole serving overhead must stay within the models benchmark's target over a
bare ``session.run`` (bench/bench_models.py; docs/benchmarks.md, "Models: serving overhead,
int8 against fp32, hot swap"). Everything a request runs after the model has just streamed
tens of megabytes of weights through the caches meets cold caches and costs several times
what it does in a tight loop, so the path is kept short: a thread that only takes jobs off
its queue, and a job that hands its outcome to the loop in one ``call_soon_threadsafe`` that
settles the awaited future directly. The executor's path back
costs two extra loop passes (the concurrent future is copied into an asyncio future, whose
callbacks then wake the task on a later pass).

Which thread: the first idle one, so a lone client always runs on the same thread. ONNX
Runtime makes the calling thread one of its intra-op threads, and a caller that moves
between threads ran measurably slower than one that stays on one thread. With every thread
busy, a request queues on the thread with the fewest waiting.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import structlog

log = structlog.get_logger("agent.inference.run_threads")
T = TypeVar("T")


class _Job(Generic[T]):
    """One call: run on a worker thread, settled on the loop."""

    __slots__ = (
        "_call",
        "_error",
        "_future",
        "_index",
        "_loop",
        "_on_finished",
        "_queued",
        "_value",
    )

    def __init__(
        self,
        call: Callable[[], T],
        future: asyncio.Future[T],
        queued: list[int],
        index: int,
        on_finished: Callable[[], None] | None,
    ) -> None:
        self._call = call
        self._loop = future.get_loop()
        self._future = future
        # Bookkeeping on the loop, before the future settles: the count of calls waiting on
        # thread ``index`` and the caller's hook.
        self._queued = queued
        self._index = index
        self._on_finished = on_finished
        self._value: Any = None
        self._error: BaseException | None = None

    def run(self) -> None:
        """Worker thread: the call, then its outcome handed to the loop."""
        try:
            self._value = self._call()
        except BaseException as exc:  # handed to the awaiting caller, like an executor would
            self._error = exc
        try:
            self._loop.call_soon_threadsafe(self._settle)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    def _settle(self) -> None:
        self._queued[self._index] -= 1
        if self._on_finished is not None:
            self._on_finished()
        future = self._future
        if future.cancelled():
            return
        if self._error is not None:
            future.set_exception(self._error)
        else:
            future.set_result(self._value)


def _serve(jobs: queue.SimpleQueue[_Job[Any] | None]) -> None:
    while (job := jobs.get()) is not None:
        try:
            job.run()
        except Exception:  # run reports its own outcome; this is a bug, not a request error
            log.exception("inference_worker.job_failed")


def _nothing() -> None:
    return None


class InferenceWorkers:
    """``count`` threads; ``run`` one blocking call on one of them and await its result."""

    def __init__(self, count: int, *, name: str = "inference") -> None:
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        self._queues: list[queue.SimpleQueue[_Job[Any] | None]] = [
            queue.SimpleQueue() for _ in range(count)
        ]
        self._threads = [
            threading.Thread(target=_serve, args=(jobs,), name=f"{name}-{index}", daemon=True)
            for index, jobs in enumerate(self._queues)
        ]
        for thread in self._threads:
            thread.start()
        self._queued = [0] * count  # calls submitted and not yet finished, per thread
        self._stopped = False

    def run(
        self, call: Callable[[], T], *, on_finished: Callable[[], None] | None = None
    ) -> asyncio.Future[T]:
        """Start ``call()`` on a worker; the future settles with its result or exception.

        ``on_finished`` runs on the loop when the call is done, before the future settles,
        even if the future was cancelled meanwhile (the thread cannot be stopped mid-call,
        so whatever the call uses must stay open until then).
        """
        if self._stopped:
            raise RuntimeError("inference workers are stopped")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        index = self._pick()
        self._queued[index] += 1
        self._queues[index].put(_Job(call, future, self._queued, index, on_finished))
        return future

    def probe(self, call: Callable[[], None] = _nothing) -> list[asyncio.Future[None]]:
        """A no-op on every thread: each future settles once its thread is free to take it.

        The systemd watchdog's evidence that no thread is stuck in a hung model call.
        """
        if self._stopped:
            return []
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[None]] = []
        for index, jobs in enumerate(self._queues):
            future: asyncio.Future[None] = loop.create_future()
            self._queued[index] += 1
            jobs.put(_Job(call, future, self._queued, index, None))
            futures.append(future)
        return futures

    def stop(self) -> None:
        """Let every thread finish what it was given, then end (does not wait)."""
        if self._stopped:
            return
        self._stopped = True
        for jobs in self._queues:
            jobs.put(None)

    def _pick(self) -> int:
        queued = self._queued
        for index, count in enumerate(queued):
            if count == 0:
                return index
        return queued.index(min(queued))
