"""REST edge benchmark: the serve process's memory under rounds of concurrent large bodies.

A real ``edge-agent serve`` (``python -m agent serve``, the digits fp32 model) listens on
127.0.0.1 on a free port; nothing leaves the loopback interface. The benchmark builds one
predict body of about ``--body-mb`` MiB (rows of 64 pixels, three decimals: the shape a
client sends), then runs ``--rounds`` rounds, each ``--concurrency`` POSTs of that body at
once (one thread per request, plain ``http.client``), and waits for every answer. After each
round it reads the server's ``VmRSS`` and ``VmHWM`` (the peak so far) from
``/proc/<pid>/status``; the idle baseline is read after one small warm-up request, in the
same run, before the first round.

Figures: RSS after each round, the level-off ratio (RSS after the last round / RSS after
round 2: 1.0 is flat, above 1 the process keeps growing), the growth over the last rounds
in MiB, the peak against the idle baseline, and the answers by status (200, 503 refused by
the body budget, ...). The server is started with its default limits unless
``--serve-arg`` passes others (e.g. ``--serve-arg=--body-budget-mb=1000`` to take the
budget out of the way and see what it bounds).

Why: before the body budget the process grew from about 100 MiB to 1.1 GiB under 50
concurrent 10 MB requests and kept growing. Nothing here asserts on timing; the script exits
0 unless the server did not start or died. ``tests/integration/test_rest_edge.py`` is the
lighter check that runs with the tests.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import render_table, run_or_exit

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "digits" / "digits-fp32.onnx"
START_TIMEOUT_S = 60
REQUEST_TIMEOUT_S = 120
MIB = 1024 * 1024


class BenchError(Exception):
    """The server did not start, or died."""


@dataclass
class Round:
    rss_mib: float
    peak_mib: float
    statuses: Counter[str]
    seconds: float


def predict_body(megabytes: float) -> bytes:
    """A ``{"instances": [[64 pixels], ...]}`` body of about ``megabytes`` MiB."""
    row = np.random.default_rng(0).random(64).round(3)
    one = len(json.dumps(row.tolist())) + 2
    rows = max(1, int(megabytes * MIB / one))
    data = np.random.default_rng(1).random((rows, 64)).round(3)
    return json.dumps({"instances": data.tolist()}).encode()


def memory_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def post(port: int, body: bytes) -> str:
    """One predict; the status as text, or the exception's name if the connection failed."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    try:
        connection.request(
            "POST", "/v1/models/digits:predict", body, {"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        response.read()
        return str(response.status)
    except OSError as exc:
        return type(exc).__name__
    finally:
        connection.close()


class Server:
    """``python -m agent serve`` on a free loopback port, its log in a temp file."""

    def __init__(self, workdir: Path, extra: Sequence[str]) -> None:
        self.log_path = workdir / "serve.log"
        argv = [sys.executable, "-m", "agent", "serve", "--model", f"digits={MODEL}"]
        argv += ["--port", "0", *extra]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.port = self._wait_listening()

    def _wait_listening(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"serve exited: {self.log_path.read_text()[-2000:]}")
            for line in self.log_path.read_text().splitlines():
                if line.startswith("{") and '"serve.listening"' in line:
                    return int(json.loads(line)["url"].rsplit(":", 1)[1])
            time.sleep(0.2)
        raise BenchError("serve did not log serve.listening in time")

    def memory(self) -> tuple[float, float]:
        if self.process.poll() is not None:
            raise BenchError(f"serve died: {self.log_path.read_text()[-2000:]}")
        return memory_mib(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def run_rounds(server: Server, body: bytes, rounds: int, concurrency: int) -> list[Round]:
    results = []
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(rounds):
            started = time.monotonic()
            statuses = Counter(pool.map(lambda _: post(server.port, body), range(concurrency)))
            seconds = time.monotonic() - started
            rss, peak = server.memory()
            results.append(Round(rss, peak, statuses, seconds))
    return results


def report(
    idle: float, body: bytes, results: list[Round], args: argparse.Namespace
) -> dict[str, Any]:
    rss = [r.rss_mib for r in results]
    second = rss[1] if len(rss) > 1 else rss[0]
    tail = rss[-3:] if len(rss) >= 3 else rss
    figures = {
        "body_mib": len(body) / MIB,
        "concurrency": args.concurrency,
        "rounds": len(results),
        "idle_rss_mib": idle,
        "rss_mib_per_round": rss,
        "level_off_ratio": rss[-1] / second,
        "growth_last_rounds_mib": max(tail) - min(tail),
        "median_rss_mib": statistics.median(rss),
        "peak_mib": max(r.peak_mib for r in results),
        "peak_over_idle": max(r.peak_mib for r in results) / idle,
        "statuses": dict(sum((r.statuses for r in results), Counter())),
        "median_round_s": statistics.median(r.seconds for r in results),
        "serve_args": args.serve_arg,
    }
    rows = [
        (
            f"round {i + 1}",
            f"{r.rss_mib:.0f}",
            f"{r.peak_mib:.0f}",
            f"{r.seconds:.1f}",
            " ".join(f"{k}:{v}" for k, v in sorted(r.statuses.items())),
        )
        for i, r in enumerate(results)
    ]
    print(
        f"body {figures['body_mib']:.1f} MiB x {args.concurrency} concurrent, "
        f"{len(results)} rounds; serve args: {args.serve_arg or '(defaults)'}"
    )
    print(render_table(rows, ("round", "RSS MiB", "peak MiB", "seconds", "answers")))
    print(
        f"\nidle RSS {idle:.0f} MiB; median RSS after a round {figures['median_rss_mib']:.0f} "
        f"MiB; level-off (last / round 2) {figures['level_off_ratio']:.2f}; growth over the "
        f"last {len(tail)} rounds {figures['growth_last_rounds_mib']:.0f} MiB; peak "
        f"{figures['peak_mib']:.0f} MiB = {figures['peak_over_idle']:.1f} x idle"
    )
    return figures


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--body-mb", type=float, default=10.0)
    parser.add_argument("--serve-arg", action="append", default=[], help="passed to serve")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.rounds < 2 or args.concurrency < 1:
        parser.error("--rounds must be at least 2 and --concurrency at least 1")

    def run() -> dict[str, Any]:
        body = predict_body(args.body_mb)
        with tempfile.TemporaryDirectory(prefix="bench-rest-") as workdir:
            server = Server(Path(workdir), args.serve_arg)
            try:
                warm = predict_body(0.01)
                if post(server.port, warm) != "200":
                    raise BenchError("the warm-up request failed")
                idle, _ = server.memory()
                results = run_rounds(server, body, args.rounds, args.concurrency)
            finally:
                server.stop()
        return report(idle, body, results, args)

    figures = run_or_exit(run, BenchError, "the server was stopped")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
