"""The live feed: what the controller's ingest and rollout driver saw, fanned out to browsers.

``LiveHub.publish`` is called on the controller's loop (after a batch of device messages is
committed, after a rollout changed); every connected client has its own bounded queue. A
client that falls ``QUEUE_LIMIT`` events behind is dropped rather than letting its queue
grow: its browser reconnects (EventSource does by itself) and reloads what it shows. The
number of clients is bounded too (``MAX_CLIENTS``; one more is refused with 503).
``GET /api/v1/live`` streams the feed as Server-Sent Events.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Literal

from pydantic import BaseModel, ConfigDict

from edge_contract.controller import JsonObject

QUEUE_LIMIT = 512
MAX_CLIENTS = 64
KEEPALIVE_S = 15.0

LiveKind = Literal["status", "telemetry", "events", "reported", "rollout", "presence"]


class LiveEvent(BaseModel):
    """One thing that happened: ``kind``, the device (or rollout) it concerns, and its
    validated body (a device message's, as stored; a rollout's summary)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: LiveKind
    subject: str
    at: float
    data: JsonObject


class HubFullError(Exception):
    """``MAX_CLIENTS`` are connected already."""


class _Client:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[LiveEvent | None] = asyncio.Queue(maxsize=QUEUE_LIMIT)
        self.dropped = False


class LiveHub:
    """Fan-out of ``LiveEvent``s to bounded per-client queues; loop thread only."""

    def __init__(self, max_clients: int = MAX_CLIENTS) -> None:
        self._clients: set[_Client] = set()
        self._max_clients = max_clients
        self.published = 0
        self.dropped_clients = 0

    @property
    def clients(self) -> int:
        return len(self._clients)

    def publish(self, event: LiveEvent) -> None:
        self.published += 1
        for client in list(self._clients):
            try:
                client.queue.put_nowait(event)
            except asyncio.QueueFull:
                self._drop(client)

    def _drop(self, client: _Client) -> None:
        self._clients.discard(client)
        self.dropped_clients += 1
        client.dropped = True
        # The end marker (the stream closes and the browser reconnects) takes the oldest
        # event's place in a full queue; otherwise what is queued is still sent first.
        if client.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                client.queue.get_nowait()
        client.queue.put_nowait(None)

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[_Client]:
        """Raises ``HubFullError`` when ``max_clients`` are connected."""
        if len(self._clients) >= self._max_clients:
            raise HubFullError(f"{len(self._clients)} live clients already")
        client = _Client()
        self._clients.add(client)
        try:
            yield client
        finally:
            self._clients.discard(client)

    def close(self) -> None:
        """End every stream (the server is stopping)."""
        for client in list(self._clients):
            self._drop(client)


async def sse_stream(client: _Client, keepalive_s: float = KEEPALIVE_S) -> AsyncIterator[bytes]:
    """The client's events as ``text/event-stream`` frames, with a comment line as a
    keepalive; ends when the hub drops the client."""
    yield b"retry: 2000\n\n"
    while True:
        try:
            event = await asyncio.wait_for(client.queue.get(), keepalive_s)
        except TimeoutError:
            yield b": keepalive\n\n"
            continue
        if event is None:
            return
        yield f"event: {event.kind}\ndata: {event.model_dump_json()}\n\n".encode()
