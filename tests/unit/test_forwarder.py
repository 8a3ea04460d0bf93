"""The forwarder's ordering rules against a real on-disk outbox, with a link stand-in.

The MQTT side is a small stand-in that records what is handed over and acknowledges on the
next loop pass; the broker itself is exercised by the integration tests. What is tested here
is the forwarder's bookkeeping when the outbox's answers and announcements interleave, which
a real broker cannot make happen on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path
from typing import Any

from agent.uplink.forwarder import DiskOutbox, Forwarder
from agent.uplink.outbox import Outbox
from edge_runtime.mqtt.base import AckCallback


class RecordingLink:
    """Connected, a window of 20, every publish acknowledged on the next loop pass."""

    connected = True
    window = 20

    def __init__(self) -> None:
        self.payloads: list[bytes] = []

    def add_listener(self, _listener: Any) -> None:
        return None

    def publish_tracked(
        self, topic: str, payload: bytes, on_ack: AckCallback, *, qos: int = 1, retain: bool = False
    ) -> None:
        self.payloads.append(payload)
        asyncio.get_running_loop().call_soon(on_ack, None)


async def _until(predicate: Any, timeout_s: float = 5.0) -> bool:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            while not predicate():  # noqa: ASYNC110 - nothing to wait on but the stand-in
                await asyncio.sleep(0.01)
    return bool(predicate())


def test_a_row_announced_before_the_fetch_answer_is_processed_is_still_sent(
    tmp_path: Path,
) -> None:
    """The worker answers a fetch, then appends a row; the loop sees the append's
    announcement before the forwarder has taken in the fetch's rows. The new row must not be
    skipped (it was, once: the fetch then looked caught up and the next append jumped it)."""

    async def scenario() -> list[bytes]:
        outbox = DiskOutbox(Outbox(tmp_path / "q.db", max_bytes=1 << 20))
        link = RecordingLink()
        forwarder = Forwarder(link, outbox, batch=256)  # type: ignore[arg-type]
        await outbox.append("t", b"1")
        gate = threading.Event()
        outbox._worker.submit(lambda: gate.wait(5.0))  # hold the worker
        task = asyncio.create_task(forwarder.run())
        await asyncio.sleep(0.05)  # the forwarder's fetch is now queued behind the gate
        appending = asyncio.create_task(outbox.append("t", b"2"))  # queued behind the fetch
        await asyncio.sleep(0.05)
        gate.set()  # fetch and append complete back to back on the worker...
        time.sleep(0.3)  # noqa: ASYNC251 - the loop must be busy, so both answers queue up
        await appending
        await _until(lambda: len(link.payloads) >= 2, timeout_s=2.0)
        await outbox.append("t", b"3")  # with the bug, this one was taken and 2 skipped
        await _until(lambda: len(link.payloads) >= 3, timeout_s=2.0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await outbox.close()
        return link.payloads

    assert asyncio.run(scenario()) == [b"1", b"2", b"3"]


def test_rows_appended_while_draining_go_out_once_each_in_order(tmp_path: Path) -> None:
    async def scenario() -> list[bytes]:
        outbox = DiskOutbox(Outbox(tmp_path / "q.db", max_bytes=1 << 24))
        link = RecordingLink()
        forwarder = Forwarder(link, outbox, batch=16)  # type: ignore[arg-type]
        for n in range(100):
            await outbox.append("t", b"%d" % n)
        task = asyncio.create_task(forwarder.run())
        for n in range(100, 300):
            await outbox.append("t", b"%d" % n)
        await _until(lambda: len(link.payloads) >= 300)
        await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await outbox.close()
        return link.payloads

    assert asyncio.run(scenario()) == [b"%d" % n for n in range(300)]
