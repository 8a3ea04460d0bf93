"""The outbox's worker thread: calls in order, the periodic job's clock, stop and cancel."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from agent.uplink.outbox_thread import WorkerThread, next_run_at


@pytest.mark.parametrize(
    ("due_at", "now", "expected"),
    [
        (10.0, 10.0, 11.0),  # on time
        (10.0, 10.4, 11.0),  # a little late: stays on the grid
        (10.0, 10.999, 11.0),
        (10.0, 11.0, 11.0),  # exactly one interval late: the next one is due now
        (10.0, 13.5, 14.5),  # three intervals late: skipped, not three runs in a row
    ],
)
def test_next_run_keeps_the_grid_and_skips_missed_runs(
    due_at: float, now: float, expected: float
) -> None:
    assert next_run_at(due_at, 1.0, now) == pytest.approx(expected)


def _wait_for(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


def test_calls_run_in_submission_order_on_one_thread() -> None:
    worker = WorkerThread("test-worker")
    seen: list[tuple[int, str]] = []
    try:
        for index in range(200):
            worker.submit(lambda i=index: seen.append((i, threading.current_thread().name)))
    finally:
        worker.stop(timeout_s=5.0)
    assert [i for i, _ in seen] == list(range(200))
    assert {name for _, name in seen} == {"test-worker"}


def test_periodic_job_repeats_between_calls_and_stops_when_cancelled() -> None:
    worker = WorkerThread("test-worker")
    ticks: list[float] = []
    try:
        worker.every(0.01, lambda: ticks.append(time.monotonic()))
        _wait_for(lambda: len(ticks) >= 5)
        # Calls keep running while the job is scheduled, and do not stop the job.
        done = threading.Event()
        worker.submit(done.set)
        assert done.wait(5.0)
        count = len(ticks)
        _wait_for(lambda: len(ticks) >= count + 3)
        worker.cancel_every()
        flushed = threading.Event()
        worker.submit(flushed.set)  # after this, the cancel has been seen
        assert flushed.wait(5.0)
        after_cancel = len(ticks)
        time.sleep(0.1)
        assert len(ticks) == after_cancel
    finally:
        worker.stop(timeout_s=5.0)


def test_a_failing_call_does_not_kill_the_worker() -> None:
    worker = WorkerThread("test-worker")
    done = threading.Event()
    try:
        worker.submit(lambda: 1 / 0)
        worker.submit(done.set)
        assert done.wait(5.0)
    finally:
        worker.stop(timeout_s=5.0)


def test_stop_finishes_pending_calls_and_refuses_new_ones() -> None:
    worker = WorkerThread("test-worker")
    seen: list[int] = []
    worker.submit(lambda: time.sleep(0.05))
    worker.submit(lambda: seen.append(1))
    worker.stop(timeout_s=5.0)
    assert seen == [1]
    with pytest.raises(RuntimeError, match="stopped"):
        worker.submit(lambda: None)


def test_interval_must_be_positive() -> None:
    worker = WorkerThread("test-worker")
    try:
        with pytest.raises(ValueError, match="positive"):
            worker.every(0.0, lambda: None)
    finally:
        worker.stop(timeout_s=5.0)
