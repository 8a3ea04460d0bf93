"""The live hub (fleet/http/live.py): fan-out, bounded per-client queues, a bounded number of
clients, and the SSE framing. Pure asyncio queues: no sockets, no sleeps."""

from __future__ import annotations

import asyncio

import pytest

from fleet.http.live import QUEUE_LIMIT, HubFullError, LiveEvent, LiveHub, sse_stream


def _event(n: int) -> LiveEvent:
    return LiveEvent(kind="telemetry", subject="pi-1", at=float(n), data={"seq": n})


def test_every_client_gets_every_event_in_order() -> None:
    hub = LiveHub()
    with hub.subscribe() as first, hub.subscribe() as second:
        for n in range(3):
            hub.publish(_event(n))
        for client in (first, second):
            got = [client.queue.get_nowait() for _ in range(3)]
            assert [e.data["seq"] for e in got if e is not None] == [0, 1, 2]
    assert hub.clients == 0  # leaving the block unsubscribes


def test_a_client_that_falls_behind_is_dropped_and_its_stream_ends() -> None:
    hub = LiveHub()
    with hub.subscribe() as slow, hub.subscribe() as fast:
        for n in range(QUEUE_LIMIT):
            hub.publish(_event(n))
        for _ in range(QUEUE_LIMIT):
            fast.queue.get_nowait()  # the fast one keeps up
        hub.publish(_event(QUEUE_LIMIT))  # one more than the slow queue holds
        assert slow.dropped and not fast.dropped
        assert hub.clients == 1 and hub.dropped_clients == 1
        assert slow.queue.qsize() <= QUEUE_LIMIT  # never grew past its bound
        frames = asyncio.run(_collect(sse_stream(slow, keepalive_s=60)))
        assert frames[0] == b"retry: 2000\n\n"
        assert len(frames) == QUEUE_LIMIT  # the retry line and all but one event, then the end
        assert fast.queue.get_nowait() == _event(QUEUE_LIMIT)


def test_clients_beyond_the_bound_are_refused() -> None:
    hub = LiveHub(max_clients=2)
    with (
        hub.subscribe(),
        hub.subscribe(),
        pytest.raises(HubFullError, match="2 live clients"),
        hub.subscribe(),
    ):
        pass
    with hub.subscribe():  # room again once they left
        assert hub.clients == 1


def test_frames_name_the_kind_and_carry_the_event_as_json() -> None:
    hub = LiveHub()
    with hub.subscribe() as client:
        hub.publish(_event(7))
        hub.close()
        frames = asyncio.run(_collect(sse_stream(client, keepalive_s=60)))
    assert frames[1].startswith(b"event: telemetry\ndata: {")
    assert LiveEvent.model_validate_json(frames[1].split(b"data: ", 1)[1]) == _event(7)
    assert frames[1].endswith(b"\n\n") and len(frames) == 2


def test_a_quiet_stream_sends_keepalive_comments() -> None:
    async def first_two() -> list[bytes]:
        hub = LiveHub()
        with hub.subscribe() as client:
            stream = sse_stream(client, keepalive_s=0.001)
            return [await anext(stream), await anext(stream)]

    assert asyncio.run(first_two())[1] == b": keepalive\n\n"


async def _collect(stream: object) -> list[bytes]:
    return [frame async for frame in stream]  # type: ignore[attr-defined]
