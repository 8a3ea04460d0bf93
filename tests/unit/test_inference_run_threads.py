"""The inference threads: results, errors, thread choice and cancellation (no model needed)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

import pytest

from agent.inference.run_threads import InferenceWorkers


@contextlib.contextmanager
def _running(count: int) -> Iterator[InferenceWorkers]:
    workers = InferenceWorkers(count)
    try:
        yield workers
    finally:
        workers.stop()


def test_result_and_exception_reach_the_awaiting_coroutine() -> None:
    asyncio.run(_result_and_exception_reach_the_awaiting_coroutine())


async def _result_and_exception_reach_the_awaiting_coroutine() -> None:
    with _running(2) as workers:
        assert await workers.run(lambda: 6 * 7) == 42

        def fail() -> int:
            raise ValueError("bad input 7")

        with pytest.raises(ValueError, match="bad input 7"):
            await workers.run(fail)


def test_a_lone_caller_stays_on_one_thread_and_a_busy_one_spreads() -> None:
    asyncio.run(_a_lone_caller_stays_on_one_thread_and_a_busy_one_spreads())


async def _a_lone_caller_stays_on_one_thread_and_a_busy_one_spreads() -> None:
    with _running(2) as workers:
        names = {await workers.run(lambda: threading.current_thread().name) for _ in range(20)}
        assert names == {"inference-0"}

        gate = threading.Event()

        def blocked() -> str:
            gate.wait(5)
            return threading.current_thread().name

        first = workers.run(blocked)
        second = workers.run(lambda: threading.current_thread().name)
        assert await second == "inference-1"  # thread 0 is busy: the idle one takes it
        gate.set()
        assert await first == "inference-0"


def test_finished_hook_runs_on_the_loop_before_the_result() -> None:
    asyncio.run(_finished_hook_runs_on_the_loop_before_the_result())


async def _finished_hook_runs_on_the_loop_before_the_result() -> None:
    loop_thread = threading.current_thread()
    seen: list[str] = []
    with _running(1) as workers:
        future = workers.run(
            lambda: seen.append("call") or "done",
            on_finished=lambda: seen.append(
                "finished" if threading.current_thread() is loop_thread else "wrong thread"
            ),
        )
        future.add_done_callback(lambda _: seen.append("settled"))
        assert await future == "done"
        await asyncio.sleep(0)  # the done callback runs on the next pass
        assert seen == ["call", "finished", "settled"]


def test_a_cancelled_caller_still_gets_the_finished_hook_after_the_call_ends() -> None:
    asyncio.run(_a_cancelled_caller_still_gets_the_finished_hook_after_the_call_ends())


async def _a_cancelled_caller_still_gets_the_finished_hook_after_the_call_ends() -> None:
    """What keeps a model version open while its thread still runs on it."""
    gate = threading.Event()
    running = threading.Event()
    finished = asyncio.Event()

    def slow() -> str:
        running.set()
        gate.wait(5)
        return "late"

    with _running(1) as workers:
        try:
            task = asyncio.ensure_future(workers.run(slow, on_finished=finished.set))
            await asyncio.to_thread(running.wait, 5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not finished.is_set()  # the thread is still in the call
            gate.set()
            await asyncio.wait_for(finished.wait(), 5)
            assert await workers.run(lambda: "next") == "next"  # the thread is free again
        finally:
            gate.set()  # before the workers stop: the call must not hold its thread


def test_zero_threads_is_refused() -> None:
    with pytest.raises(ValueError, match="count must be >= 1, got 0"):
        InferenceWorkers(0)


def test_stop_lets_queued_calls_finish_then_refuses_new_ones() -> None:
    asyncio.run(_stop_lets_queued_calls_finish_then_refuses_new_ones())


async def _stop_lets_queued_calls_finish_then_refuses_new_ones() -> None:
    workers = InferenceWorkers(1)
    gate = threading.Event()
    first = workers.run(lambda: gate.wait(5) and "first")
    second = workers.run(lambda: "second")
    workers.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        workers.run(lambda: "third")
    gate.set()
    assert (await first, await second) == ("first", "second")


def test_a_probe_comes_back_only_from_threads_that_are_free() -> None:
    """The watchdog's probe reaches every thread; one stuck in a call holds its probe back."""
    asyncio.run(_a_probe_comes_back_only_from_threads_that_are_free())


async def _a_probe_comes_back_only_from_threads_that_are_free() -> None:
    with _running(2) as workers:
        await asyncio.gather(*workers.probe())  # both threads free: both answer
        gate = threading.Event()
        stuck = workers.run(gate.wait)  # a hung model call on one thread
        probes = workers.probe()
        assert len(probes) == 2
        done, pending = await asyncio.wait(probes, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1  # the free thread answered while the other is still stuck
        assert not pending.pop().done()
        gate.set()
        await asyncio.gather(stuck, *probes)
