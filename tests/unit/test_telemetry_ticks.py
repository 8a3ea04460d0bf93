"""The telemetry ticks on the outbox worker's clock, against a real on-disk outbox.

What the loop relies on: every tick's row is announced in id order with the rows other
coroutines append (the forwarder skips ids it has passed), health changes reach the loop,
the loop-owned extras are read on the loop (or reported missing, never fatal), and a tick
that fails ends ``run()`` with its error instead of going silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agent.errors import StoreError
from agent.telemetry import service as service_module
from agent.telemetry.collector import ResourceSampler
from agent.telemetry.service import BoardMonitor, TelemetryService
from agent.telemetry.subsystem_health import HealthChange, HealthMonitor
from agent.uplink.forwarder import DiskOutbox
from agent.uplink.outbox import Outbox, OutboxRow


def _service(
    state: Path,
    outbox: DiskOutbox,
    *,
    interval_s: float = 0.02,
    extras: Callable[[], dict[str, Any]] | None = None,
    changes: list[HealthChange] | None = None,
) -> TelemetryService:
    async def record(change: HealthChange) -> None:
        if changes is not None:
            changes.append(change)

    return TelemetryService(
        device_id="tick-1",
        interval_s=interval_s,
        outbox=outbox,
        sampler=ResourceSampler(state),
        board=BoardMonitor("generic"),
        health=HealthMonitor(),
        link_state=lambda: {"connected": False, "outages": 0, "last_outage_s": None},
        on_health_change=record,
        extras=extras,
    )


async def _until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - the state is set on another thread
            await asyncio.sleep(0.005)


async def _ticks_until(
    service: TelemetryService,
    outbox: DiskOutbox,
    seq: int,
    meanwhile: Callable[[], Awaitable[None]] | None = None,
) -> list[OutboxRow]:
    """Run the ticks until message ``seq`` is queued (doing ``meanwhile`` on the loop), stop
    them and close the outbox; returns every queued row."""
    task = asyncio.create_task(service.run())
    try:
        if meanwhile is not None:
            await meanwhile()
        await _until(lambda: (service.last_seq or 0) >= seq)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    rows = await outbox.fetch(after_id=0, limit=10_000)
    await outbox.close()
    return rows


def test_ticks_and_appends_are_announced_in_id_order(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[int], list[OutboxRow], list[HealthChange]]:
        outbox = DiskOutbox(Outbox(tmp_path / "q.db", max_bytes=1 << 24))
        announced: list[int] = []
        outbox.on_append(lambda row: announced.append(row.id))
        changes: list[HealthChange] = []
        service = _service(tmp_path, outbox, changes=changes)

        async def append_events() -> None:  # while ticks run on the worker
            for index in range(60):
                await outbox.append("fleet/tick-1/events", b'{"n": %d}' % index)

        rows = await _ticks_until(service, outbox, 10, append_events)
        return announced, rows, changes

    announced, rows, changes = asyncio.run(scenario())
    assert announced == sorted(announced)
    assert announced == [row.id for row in rows]
    telemetry = [json.loads(r.payload) for r in rows if r.topic.endswith("/telemetry")]
    assert len(telemetry) >= 10
    assert [m["seq"] for m in telemetry] == list(range(1, len(telemetry) + 1))
    assert len(rows) - len(telemetry) == 60
    # The first tick reports the subsystems it checked, through the loop's handler.
    assert {c.subsystem for c in changes} >= {"telemetry", "disk", "queue"}


def test_ticks_run_on_the_worker_and_extras_on_the_loop(tmp_path: Path) -> None:
    async def scenario() -> tuple[set[str], dict[str, Any]]:
        outbox = DiskOutbox(Outbox(tmp_path / "q.db", max_bytes=1 << 24))
        extras_threads: set[str] = set()

        def extras() -> dict[str, Any]:
            extras_threads.add(threading.current_thread().name)
            return {"serial": {"frames_in": 7}}

        rows = await _ticks_until(_service(tmp_path, outbox, extras=extras), outbox, 2)
        return extras_threads, json.loads(rows[-1].payload)

    threads, message = asyncio.run(scenario())
    assert threads == {threading.main_thread().name}
    assert message["serial"] == {"frames_in": 7}
    assert "errors" not in message


def test_failing_or_stuck_extras_are_reported_and_the_message_still_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_module, "EXTRAS_TIMEOUT_S", 0.2)
    calls = {"n": 0}

    def extras() -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("snapshot broke")
        if calls["n"] == 2:
            time.sleep(0.5)  # blocks the loop past the tick's patience
        return {"inference": {}}

    async def scenario() -> list[dict[str, Any]]:
        outbox = DiskOutbox(Outbox(tmp_path / "q.db", max_bytes=1 << 24))
        service = _service(tmp_path, outbox, interval_s=0.05, extras=extras)
        rows = await _ticks_until(service, outbox, 8)
        return [json.loads(row.payload) for row in rows]

    messages = asyncio.run(scenario())
    assert messages[0]["errors"]["extras"] == "ValueError: snapshot broke"
    assert messages[1]["errors"]["extras"] == "event loop did not answer in 0.2 s"
    assert "inference" not in messages[1]
    # Once the loop answers again, the extras are back (a tick that timed out while the
    # loop was still blocked may come first).
    assert messages[-1]["inference"] == {}
    assert "errors" not in messages[-1]
    assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))


def test_a_failing_tick_ends_run_with_its_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = Outbox(tmp_path / "q.db", max_bytes=1 << 24)

    def disk_full(*_args: object, **_kwargs: object) -> None:
        raise StoreError("cannot write outbox (database or disk is full)", path="q.db")

    monkeypatch.setattr(raw, "append_sequenced_row", disk_full)

    async def scenario() -> None:
        outbox = DiskOutbox(raw)
        try:
            async with asyncio.timeout(10):
                await _service(tmp_path, outbox).run()
        finally:
            await outbox.close()

    with pytest.raises(StoreError, match="disk is full"):
        asyncio.run(scenario())
