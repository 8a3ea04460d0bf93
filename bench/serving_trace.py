"""Where one REST prediction's time goes, from the client's first byte to its decoded answer.

The end-to-end figures of ``bench.bench_serving`` say how much a client pays over a bare
``session.run``; this splits that time into its stages, so a miss can be traced to the client,
the kernel, aiohttp or the agent. Both ends stamp ``time.monotonic_ns`` (one clock for every
process of the machine):

- **the client** (this process, ``http.client`` and ``json`` as in the REST end-to-end row):
  before it builds the request, when the answer's bytes are read, when the answer is an array;
- **the server**: a real ``edge-agent serve`` (its own command line and defaults) started as
  ``python -m bench.serving_trace serve ARGS...``, which first wraps a few functions of aiohttp
  and the agent so that each records a stamp, and writes the stamps to a file on exit: bytes
  arriving (aiohttp's ``data_received``), the handler's start and end (``_Api.predict``), the
  body's decoding (``_decode_predict``), the model run on its inference thread (``_run_timed``),
  the monitor (``ModelMonitor.on_result``) and the answer's last write (``write_eof``).

Each wrapper adds a Python call and its stamps (0.3 µs in a tight loop, more with the cold
caches a request meets), so the traced total is a little above the untraced end-to-end row;
the stages are what this is for.

    .venv/bin/python -m bench.bench_serving      # runs this as its last step
"""

from __future__ import annotations

import functools
import http.client
import json
import statistics
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from bench import report
from devtools.localbroker import port_is_open

REPO = Path(__file__).resolve().parents[1]
Stamp = tuple[str, int]  # (event, time.monotonic_ns())
ClientStamps = tuple[int, int, int]  # request started, answer read, answer decoded

# The stages in the order one request passes them: (label, from event, to event). Events are
# the server's, plus the client's "sent" / "read" / "decoded"; "rx" is the first bytes seen.
STAGES: tuple[tuple[str, str, str], ...] = (
    ("client builds and sends; kernel delivers; loop wakes", "sent", "rx"),
    ("aiohttp: parse, route, middlewares", "rx", "handler_in"),
    ("agent: read the body", "handler_in", "decode_in"),
    ("agent: JSON to checked arrays", "decode_in", "decode_out"),
    ("agent: predict's checks, hop to an inference thread", "decode_out", "run_in"),
    ("model run (and its output check)", "run_in", "run_out"),
    ("agent: hop back to the event loop", "run_out", "monitor_in"),
    ("agent: monitor", "monitor_in", "monitor_out"),
    ("agent: answer to JSON, the response object", "monitor_out", "handler_out"),
    ("aiohttp: middlewares, headers, write", "handler_out", "tx"),
    ("kernel delivers; client wakes and reads the answer", "tx", "read"),
    ("client: JSON to an array", "read", "decoded"),
)
# Who each stage belongs to, for the summary line.
OWNERS = ("client+kernel", "aiohttp", "agent", "agent", "agent", "model", "agent", "agent",
          "agent", "aiohttp", "client+kernel", "client+kernel")  # fmt: skip


# -- the server side: stamps around the agent's own functions -------------------------------------


def install_stamps(stamps: list[Stamp]) -> None:
    """Wrap the functions named in the module docstring so that each appends its stamps."""
    import aiohttp.http_writer
    import aiohttp.web_protocol

    from agent.inference import monitoring, registry, rest

    clock = time.monotonic_ns

    def around(owner: Any, name: str, before: str, after: str | None) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            stamps.append((before, clock()))
            try:
                return original(*args, **kwargs)
            finally:
                if after is not None:
                    stamps.append((after, clock()))

        setattr(owner, name, wrapper)

    def around_async(owner: Any, name: str, before: str | None, after: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            if before is not None:
                stamps.append((before, clock()))
            try:
                return await original(*args, **kwargs)
            finally:
                stamps.append((after, clock()))

        setattr(owner, name, wrapper)

    around(aiohttp.web_protocol.RequestHandler, "data_received", "rx", None)
    around_async(rest._Api, "predict", "handler_in", "handler_out")
    around(rest, "_decode_predict", "decode_in", "decode_out")
    around(registry, "_run_timed", "run_in", "run_out")
    around(monitoring.ModelMonitor, "on_result", "monitor_in", "monitor_out")
    around_async(aiohttp.http_writer.StreamWriter, "write_eof", None, "tx")


def serve_traced(argv: Sequence[str], stamps_path: Path) -> int:
    """``edge-agent serve ARGV`` with stamps; they are written to ``stamps_path`` when it ends."""
    from agent.cli import main

    stamps: list[Stamp] = []
    install_stamps(stamps)
    try:
        return main(["serve", *argv])
    finally:
        stamps_path.write_text(json.dumps(stamps))


# -- the client side ------------------------------------------------------------------------------


@contextmanager
def traced_server(
    model: str,
    path: Path,
    port: int,
    stamps_path: Path,
    log: Path,
    failure: type[Exception],
) -> Iterator[None]:
    """The traced ``serve`` in a child process; stopped with SIGTERM, so it writes its stamps."""
    argv = [sys.executable, "-m", "bench.serving_trace", "serve", str(stamps_path)]
    argv += ["--model", f"{model}={path}", "--port", str(port)]
    with report.child_server(argv, log, lambda: port_is_open(port), failure, cwd=REPO):
        yield


def rest_calls(
    port: int, model: str, feeds: Sequence[Mapping[str, np.ndarray]], calls: int
) -> list[ClientStamps]:
    """``calls`` REST predictions on one keep-alive connection, stamped at the client."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    path, headers = f"/v1/models/{model}:predict", {"Content-Type": "application/json"}
    clock = time.monotonic_ns
    out: list[ClientStamps] = []
    try:
        for index in range(calls):
            inputs = feeds[index % len(feeds)]
            sent = clock()
            body = json.dumps({"inputs": {k: v.tolist() for k, v in inputs.items()}})
            connection.request("POST", path, body, headers)
            response = connection.getresponse()
            payload = response.read()
            read = clock()
            if response.status != 200:
                raise RuntimeError(f"predict answered {response.status}: {payload[:200]!r}")
            np.asarray(json.loads(payload)["outputs"], dtype=np.float32)
            out.append((sent, read, clock()))
    finally:
        connection.close()
    return out


# -- joining the two sides (pure) -----------------------------------------------------------------


def per_request(server: Sequence[Stamp], client: Sequence[ClientStamps]) -> list[dict[str, int]]:
    """Each client call's events: its own three and the server's stamps between its send and
    its read (the client waits for each answer, so nothing of another call falls in between).
    The first occurrence of each server event counts; calls missing one are left out."""
    needed = {event for _, start, end in STAGES for event in (start, end)}
    events: list[dict[str, int]] = []
    cursor = 0
    for sent, read, decoded in client:
        while cursor < len(server) and server[cursor][1] < sent:
            cursor += 1
        found = {"sent": sent, "read": read, "decoded": decoded}
        index = cursor
        while index < len(server) and server[index][1] <= read:
            found.setdefault(*server[index])
            index += 1
        cursor = index
        if needed <= found.keys():
            events.append(found)
    return events


def stage_medians(events: Sequence[Mapping[str, int]]) -> dict[str, float]:
    """The median of each stage in microseconds, and of the whole call ("total")."""
    medians = {
        label: statistics.median((e[end] - e[start]) / 1e3 for e in events)
        for label, start, end in STAGES
    }
    medians["total"] = statistics.median((e["decoded"] - e["sent"]) / 1e3 for e in events)
    return medians


def slowest(events: Sequence[Mapping[str, int]], share: float) -> list[Mapping[str, int]]:
    """The calls whose whole time is in the slowest ``share`` (at least one call)."""
    ranked = sorted(events, key=lambda e: e["decoded"] - e["sent"], reverse=True)
    return ranked[: max(1, round(len(ranked) * share))]


def by_owner(medians: Mapping[str, float]) -> dict[str, float]:
    """The stage medians summed by who owns them (client+kernel, aiohttp, agent, model)."""
    sums: dict[str, float] = {}
    for (label, _, _), owner in zip(STAGES, OWNERS, strict=True):
        sums[owner] = sums.get(owner, 0.0) + medians[label]
    return sums


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "serve":
        return serve_traced(argv[2:], Path(argv[1]))
    sys.exit(__doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
