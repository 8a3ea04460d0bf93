"""The least server: what the REST client would pay a server that does nothing but the work.

``bench.bench_serving`` compares the agent's end-to-end latency with a bare ``session.run`` in
the client's process. Part of that gap belongs to any server at all: the client's JSON, the
two trips through the kernel, two processes sharing the cores, and the model's cold caches
for whatever runs after it. To show that part directly, this is the least a Python server
can do for the same ``:predict`` call and still answer it:

- an ``asyncio.Protocol`` on uvloop, framing requests by their ``Content-Length`` only (no
  routing, no header parsing beyond that, no middlewares);
- the body read with ``json.loads``, its columns turned into int64 arrays with no checks;
- the model run with the baseline's own session settings, **on the event loop's thread**
  (no hop to a worker and back);
- the answer written by orjson, in the agent's document shape, with no monitoring.

It has none of the agent's checks or bounds and answers only this benchmark's own client on
127.0.0.1: it is a measuring stick, not a server.

    python -m bench.serving_floor --port PORT --config LABEL   # MiniLM fp32, as the baseline
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from typing import cast

import numpy as np
import orjson
import uvloop

from bench.serving_parts import BARE_CONFIGS

Answer = Callable[[bytes], bytes]  # a request's body -> the whole HTTP response


class RequestFramer:
    """Splits a keep-alive byte stream into request bodies by ``Content-Length``."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        """The bodies of the requests that ``data`` completes, in order."""
        self._buffer += data
        bodies: list[bytes] = []
        while True:
            head, separator, rest = self._buffer.partition(b"\r\n\r\n")
            if not separator:
                return bodies
            length = content_length(head)
            if len(rest) < length:
                return bodies
            bodies.append(rest[:length])
            self._buffer = rest[length:]


def content_length(head: bytes) -> int:
    """The ``Content-Length`` of a request head (0 when it has none)."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


def http_response(body: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    return head % len(body) + body


def predict_answer(run: Callable[[dict[str, np.ndarray]], np.ndarray], model: str) -> Answer:
    """A ``:predict`` answer: columnar ``inputs`` in, the agent's document shape out."""
    count = 0

    def answer(body: bytes) -> bytes:
        nonlocal count
        count += 1
        columns = json.loads(body)["inputs"]
        output = run({name: np.asarray(value, dtype=np.int64) for name, value in columns.items()})
        document = {
            "outputs": output,
            "prediction_ids": [f"floor-{count:020d}"],
            "model_spec": {"name": model, "version": "1", "signature_name": "serving_default"},
        }
        return http_response(orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY))

    return answer


class _Connection(asyncio.Protocol):
    def __init__(self, answer: Answer) -> None:
        self._answer = answer
        self._framer = RequestFramer()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        for body in self._framer.feed(data):
            self._transport.write(self._answer(body))


async def _serve(answer: Answer, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(answer), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--config", choices=list(BARE_CONFIGS), required=True)
    parser.add_argument("--name", default="minilm")
    args = parser.parse_args(argv)
    session = BARE_CONFIGS[args.config]()
    output = session.get_outputs()[0].name

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        result: np.ndarray = session.run([output], feeds)[0]
        return result

    uvloop.run(_serve(predict_answer(run, args.name), args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
