"""Serving benchmark: what a client on the same machine pays for a prediction, end to end.

The baseline is the fastest bare ``onnxruntime.InferenceSession.run`` this machine offers
for the model, in the client's own process: ONNX Runtime's defaults, spinning off, one
intra-op thread, one thread with spinning off. All four are timed in the same alternating
blocks as the paths below (the order flips every block, so the drift of a shared machine
falls on every path), and the fastest p50 at each input length is the baseline (the table
names it). The paths:

- **end to end**: a real ``edge-agent serve`` process on loopback, called by real clients
  on one keep-alive connection each: TF Serving's REST ``:predict`` (JSON, ``http.client`` and
  the standard ``json`` module, as a plain Python client would), the Open Inference Protocol
  v2 over HTTP with JSON tensors and with binary tensors (``tritonclient.http``), and v2 over
  gRPC (``tritonclient.grpc``) where the agent serves it. The client's own encoding and
  decoding count: that is what a client pays;
- **in process**, to split the cost: the agent's own session run bare (what the session
  costs), and ``ModelRegistry.predict`` with the agent's monitor on it (what the path inside
  the agent adds), both in this process. They use per-model pools, not the agent's shared
  default: the shared pools are process state and would carry the bare sessions too (the
  configuration study below finds the two alike for a lone caller);
- **the least server** (``bench.serving_floor``): the same REST client against a server
  that only frames the request, parses it, runs the model on its loop and writes the
  answer. What it costs over the baseline is the part of the gap that belongs to any Python
  server on this machine, not to aiohttp or the agent.

Second, **the agent's session configuration**: candidate settings (shared pools, per-model
pools with spinning on and off, thread counts), each in an ``edge-agent serve`` process of
its own, called over REST by a lone client (p50, alternating blocks) and by concurrent
clients (requests per second and p50, rounds in alternating order).

Third, **where the REST time goes**: the REST call again against a traced ``serve``
(``bench.serving_trace``), its time split into stages stamped on one clock by the client and
the server: the client and the kernel, aiohttp, the agent's own steps, the model.

MiniLM fp32 (``make bench-models`` builds it), a sentence of 17 tokens and a paragraph of
128. Targets: end to end at most 1.10 of the baseline at p50 for 17 tokens and 1.05 for
128, at most 1.25 at p99. Nothing asserts on timing: the table says PASS or MISS and the
exit code stays 0. Traffic stays on 127.0.0.1; every loop is bounded.

    .venv/bin/python -m bench.bench_serving [--quick] [--json PATH] [--skip-configs]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from agent.inference.backends import BackendOptions, OnnxThreadPools
from agent.inference.backends.onnx import OnnxBackend
from agent.inference.cardfile import load_card
from agent.inference.monitoring import ModelMonitor
from agent.inference.registry import ModelRegistry
from bench import report, serving_trace
from bench.bench_models import MINILM_FP32, percentile
from bench.serving_parts import (
    BARE_CONFIGS,
    MODEL,
    AgentSettings,
    BenchError,
    Feeds,
    Ports,
    Timer,
    agent_server,
    alternate,
    floor_timer,
    input_sets,
    least_server,
    rest_json_timer,
    session_timer,
    v2_grpc_timer,
    v2_http_timer,
)
from devtools.localbroker import free_port
from edge_contract.card import ModelCard, card_path_for

TARGETS = {17: (1.10, 1.25), 128: (1.05, 1.25)}  # tokens: (p50, p99) end-to-end ratios
BARE = "bare, "  # the prefix of the bare configurations' paths
LEAST_SERVER = "REST :predict, JSON, to the least server"
# ONNX Runtime's defaults: the fastest bare configuration at both lengths in nearly every run.
LEAST_SERVER_CONFIG = "ORT defaults"
# The paths that are not the agent end to end: no target, the row says what they are.
INFO_PATHS = {
    "agent's session, bare": " (in process)",
    "agent predict": " (in process)",
    LEAST_SERVER: " (bench.serving_floor)",
}
TAIL_SHARE = 0.02  # the traced calls whose stages are shown apart: the slowest 2 %


@dataclass(frozen=True)
class Profile:
    runs: dict[int, int]  # timed calls per path, by tokens
    block: int
    config_runs: int  # lone-client calls per agent configuration
    clients: int  # concurrent clients
    concurrent_requests: int  # per client per round
    rounds: int


FULL = Profile(
    runs={17: 2000, 128: 800},
    block=40,
    config_runs=600,
    clients=4,
    concurrent_requests=60,
    rounds=3,
)
QUICK = Profile(
    runs={17: 400, 128: 120},
    block=20,
    config_runs=200,
    clients=4,
    concurrent_requests=25,
    rounds=2,
)


# The agent's defaults (no flags) first; the other candidates of the configuration study.
DEFAULT_AGENT = AgentSettings("agent defaults")
CANDIDATES = (
    DEFAULT_AGENT,
    AgentSettings("shared pools, ORT threads (spinning)", ("--onnx-thread-pools", "shared")),
    AgentSettings(
        "per-model, ORT threads, spinning on",
        ("--onnx-thread-pools", "per-model", "--spinning", "on"),
    ),
    AgentSettings(
        "per-model, ORT threads, spinning off",
        ("--onnx-thread-pools", "per-model", "--spinning", "off"),
    ),
    AgentSettings(
        "per-model, 1 thread, spinning off",
        ("--onnx-thread-pools", "per-model", "--threads", "1", "--spinning", "off"),
    ),
)


@dataclass
class Results:
    meta: dict[str, Any]
    figures: dict[str, Any] = field(default_factory=dict)
    rows: list[tuple[str, str, str, str, str, str]] = field(default_factory=list)
    config_rows: list[tuple[str, ...]] = field(default_factory=list)


def _ms(samples: Sequence[float], q: float) -> float:
    return percentile(samples, q) * 1e3


# -- 1: end to end, in process and bare ------------------------------------------------------------


def _fronts(ports: Ports) -> dict[str, Timer]:
    return {
        "REST :predict, JSON": rest_json_timer(ports.http),
        "v2 HTTP, JSON tensors": v2_http_timer(ports.http, binary=False),
        "v2 HTTP, binary tensors": v2_http_timer(ports.http, binary=True),
        "v2 gRPC": v2_grpc_timer(ports.grpc),
    }


async def _in_process_timers(registry: ModelRegistry, card: ModelCard) -> dict[str, Timer]:
    await registry.load(MINILM_FP32, card=card)
    backend = registry.backend(card.name)
    assert isinstance(backend, OnnxBackend)
    loop = asyncio.get_running_loop()

    def predict(feeds: Feeds) -> float:
        start = time.perf_counter()
        asyncio.run_coroutine_threadsafe(registry.predict(card.name, feeds), loop).result(60)
        return time.perf_counter() - start

    return {"agent's session, bare": session_timer(backend.session), "agent predict": predict}


# The in-process registry runs with per-model pools: ONNX Runtime's shared pools are process
# state, and once made they would carry this process's bare sessions too.
IN_PROCESS_POOLS: OnnxThreadPools = "per-model"


@contextmanager
def in_process_agent(card: ModelCard) -> Iterator[dict[str, Timer]]:
    """The registry with the agent's default settings on an event loop of its own thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="agent-loop", daemon=True)
    thread.start()
    defaults = BackendOptions(onnx_thread_pools=IN_PROCESS_POOLS)
    registry = ModelRegistry(defaults, workers=2, max_queue=64, observer=ModelMonitor())
    try:
        future = asyncio.run_coroutine_threadsafe(_in_process_timers(registry, card), loop)
        yield future.result(120)
    finally:
        asyncio.run_coroutine_threadsafe(registry.close(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def end_to_end(
    inputs: dict[int, list[dict[str, np.ndarray]]],
    profile: Profile,
    results: Results,
    log_dir: Path,
    card: ModelCard,
) -> None:
    """Every bare configuration, the in-process paths, the least server and the agent's
    front ends in one alternation per length; the fastest bare p50 there is the baseline."""
    with ExitStack() as stack:
        ports = stack.enter_context(agent_server(DEFAULT_AGENT, log_dir))
        least_port = stack.enter_context(least_server(LEAST_SERVER_CONFIG, log_dir))
        fronts = {**_fronts(ports), LEAST_SERVER: rest_json_timer(least_port)}
        in_process = stack.enter_context(in_process_agent(card))
        bare = {f"{BARE}{label}": session_timer(make()) for label, make in BARE_CONFIGS.items()}
        results.figures["end_to_end"] = {}
        results.figures["bare_configs"] = {}
        for tokens, feeds in inputs.items():
            paths = {**bare, **in_process, **fronts}
            samples = alternate(paths, feeds, profile.runs[tokens], profile.block)
            bare_samples = {label: samples.pop(f"{BARE}{label}") for label in BARE_CONFIGS}
            p50 = {label: _ms(values, 50) for label, values in bare_samples.items()}
            chosen = min(p50, key=p50.__getitem__)
            results.figures["bare_configs"][str(tokens)] = {"p50_ms": p50, "fastest": chosen}
            _end_to_end_rows(results, tokens, chosen, {"bare": bare_samples[chosen], **samples})
        floor = alternate({"floor": floor_timer(ports.http)}, [{}], profile.runs[17], profile.block)
        results.figures["transport_floor_ms"] = {q: _ms(floor["floor"], q) for q in (50, 99)}


def _end_to_end_rows(
    results: Results, tokens: int, bare_label: str, samples: dict[str, list[float]]
) -> None:
    bare = {q: _ms(samples["bare"], q) for q in (50, 99)}
    figures: dict[str, Any] = {
        path: {q: _ms(values, q) for q in (50, 99)} for path, values in samples.items()
    }
    figures["runs"] = len(samples["bare"])
    figures["baseline"] = bare_label
    results.figures["end_to_end"][str(tokens)] = figures
    p50_target, p99_target = TARGETS[tokens]
    for path, values in samples.items():
        if path == "bare":
            continue
        end_to_end = path not in INFO_PATHS
        for q, target in ((50, p50_target), (99, p99_target)):
            ratio = _ms(values, q) / bare[q]
            verdict = ("PASS" if ratio <= target else "MISS") if end_to_end else "info"
            results.rows.append(
                (
                    f"{tokens} tokens, {path}{INFO_PATHS.get(path, '')}: p{q} ms",
                    f"{_ms(values, q):.2f}",
                    f"{bare[q]:.2f} bare ({bare_label})",
                    f"{ratio:.3f}",
                    f"<= {target:.2f}" if end_to_end else "-",
                    verdict,
                )
            )


# -- 2: the agent's session configuration ------------------------------------------------------


def _concurrent_round(
    port: int, feeds: Sequence[Feeds], profile: Profile
) -> tuple[float, list[float]]:
    """``clients`` threads, each on its own connection, ``concurrent_requests`` calls each:
    requests per second over the round and every call's latency."""
    timers = [rest_json_timer(port) for _ in range(profile.clients)]
    latencies: list[list[float]] = [[] for _ in timers]
    start = threading.Barrier(len(timers) + 1)

    def client(index: int) -> None:
        start.wait(30)
        for i in range(profile.concurrent_requests):
            latencies[index].append(timers[index](feeds[(index + i) % len(feeds)]))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(timers))]
    for thread in threads:
        thread.start()
    start.wait(30)
    began = time.perf_counter()
    for thread in threads:
        thread.join(300)
    elapsed = time.perf_counter() - began
    flat = [value for values in latencies for value in values]
    return len(flat) / elapsed, flat


def configurations(
    inputs: dict[int, list[dict[str, np.ndarray]]],
    profile: Profile,
    results: Results,
    log_dir: Path,
) -> None:
    figures: dict[str, Any] = {}
    with ExitStack() as stack:
        ports = {c.label: stack.enter_context(agent_server(c, log_dir)) for c in CANDIDATES}
        for tokens, feeds in inputs.items():
            lone = alternate(
                {label: rest_json_timer(port.http) for label, port in ports.items()},
                feeds,
                profile.config_runs if tokens < 128 else profile.config_runs // 4,
                profile.block,
            )
            rates: dict[str, list[float]] = {label: [] for label in ports}
            loaded: dict[str, list[float]] = {label: [] for label in ports}
            labels = list(ports)
            for index in range(profile.rounds):
                for label in labels if index % 2 == 0 else labels[::-1]:
                    rate, latencies = _concurrent_round(ports[label].http, feeds, profile)
                    rates[label].append(rate)
                    loaded[label].extend(latencies)
            figures[str(tokens)] = {}
            for label in labels:
                row = {
                    "lone_p50_ms": _ms(lone[label], 50),
                    "lone_p99_ms": _ms(lone[label], 99),
                    "concurrent_rps": float(np.median(rates[label])),
                    "concurrent_p50_ms": _ms(loaded[label], 50),
                }
                figures[str(tokens)][label] = row
                results.config_rows.append(
                    (
                        f"{tokens} tokens, {label}",
                        f"{row['lone_p50_ms']:.2f}",
                        f"{row['lone_p99_ms']:.2f}",
                        f"{row['concurrent_rps']:.1f}",
                        f"{row['concurrent_p50_ms']:.2f}",
                    )
                )
    results.figures["configurations"] = figures


# -- 3: where the REST time goes ----------------------------------------------------------------


def trace_stages(
    inputs: dict[int, list[dict[str, np.ndarray]]],
    profile: Profile,
    results: Results,
    log_dir: Path,
) -> None:
    """The REST path's stages (bench.serving_trace), per input length; the first tenth of the
    calls warm up and are left out."""
    port = free_port()
    stamps = log_dir / "stamps.json"
    figures: dict[str, Any] = {}
    client: dict[int, list[serving_trace.ClientStamps]] = {}
    with serving_trace.traced_server(
        MODEL, MINILM_FP32, port, stamps, log_dir / "traced.log", BenchError
    ):
        for tokens, feeds in inputs.items():
            calls = profile.runs[tokens]
            client[tokens] = serving_trace.rest_calls(port, MODEL, feeds, calls)[calls // 10 :]
    server = json.loads(stamps.read_text())
    for tokens, stamped in client.items():
        events = serving_trace.per_request(server, stamped)
        if not events:
            raise BenchError(f"no traced call at {tokens} tokens had every stamp")
        medians = serving_trace.stage_medians(events)
        tail = serving_trace.stage_medians(serving_trace.slowest(events, TAIL_SHARE))
        figures[str(tokens)] = {
            "calls": len(events),
            "stages_us": medians,
            "by_owner_us": serving_trace.by_owner(medians),
            "tail_stages_us": tail,
            "tail_by_owner_us": serving_trace.by_owner(tail),
        }
    results.figures["rest_stages"] = figures


def render_stages(figures: Mapping[str, Any], end_to_end: Mapping[str, Any]) -> list[str]:
    lengths = list(figures)

    def cells(key: str, name: str) -> list[str]:
        # Each length's median over all calls, then over its slowest calls.
        return [f"{figures[t][k][name]:.0f}" for t in lengths for k in (key, f"tail_{key}")]

    rows: list[tuple[str, ...]] = [
        (label, owner, *cells("stages_us", label))
        for (label, _, _), owner in zip(serving_trace.STAGES, serving_trace.OWNERS, strict=True)
    ]
    rows.append(("whole call (median)", "", *cells("stages_us", "total")))
    for owner in ("client+kernel", "aiohttp", "agent", "model"):
        rows.append((f"sum of {owner}'s stages", "", *cells("by_owner_us", owner)))
    tail = f"slowest {TAIL_SHARE:.0%}"
    columns = [f"{t} tokens{suffix}" for t in lengths for suffix in ("", f", {tail}")]
    header = ("REST :predict, traced: stage (median, us)", "owner", *columns)
    return ["", report.render_table(rows, header), *_budget_lines(figures, end_to_end)]


def _budget_lines(figures: Mapping[str, Any], end_to_end: Mapping[str, Any]) -> list[str]:
    """What each p50 target leaves over the bare run, against what the least server
    (``bench.serving_floor``) takes over it and what the traced stages take."""
    lines = []
    for tokens, traced in figures.items():
        if tokens not in end_to_end:
            continue
        bare_us = end_to_end[tokens]["bare"][50] * 1e3
        budget_us = (TARGETS[int(tokens)][0] - 1) * bare_us
        least_us = end_to_end[tokens][LEAST_SERVER][50] * 1e3 - bare_us
        owners = traced["by_owner_us"]
        lines.append(
            f"- {tokens} tokens: the p50 target leaves {budget_us:.0f} us over the bare run "
            f"({bare_us:.0f} us); the least server takes {least_us:.0f} us over it; in the "
            f"traced calls, the client's and the kernel's stages take {owners['client+kernel']:.0f}"
            f" us, aiohttp's {owners['aiohttp']:.0f} us, the agent's {owners['agent']:.0f} us"
        )
    return lines


# -- report ------------------------------------------------------------------------------------


def render(results: Results) -> str:
    m = results.meta
    out = [
        f"Serving benchmark, {m['when']}: Python {m['python']}, onnxruntime {m['onnxruntime']}, "
        f"{m['cpu_count']} cores; MiniLM fp32; clients on 127.0.0.1",
        "",
    ]
    bare = results.figures.get("bare_configs", {})
    for tokens, figures in bare.items():
        p50 = ", ".join(f"{label} {value:.2f}" for label, value in figures["p50_ms"].items())
        out.append(f"- bare p50 (ms) at {tokens} tokens: {p50}; baseline: {figures['fastest']}")
    floor = results.figures.get("transport_floor_ms")
    if floor:
        out.append(
            f"- the transport's floor, GET /v2/health/live on one keep-alive connection: "
            f"p50 {floor[50]:.3f} ms, p99 {floor[99]:.3f} ms"
        )
    if results.rows:
        header = ("figure", "value", "baseline", "ratio", "target", "result")
        out += ["", report.render_table(results.rows, header)]
    stages = results.figures.get("rest_stages")
    if stages:
        out += render_stages(stages, results.figures.get("end_to_end", {}))
    if results.config_rows:
        config_header = (
            "agent configuration",
            "lone p50 ms",
            "lone p99 ms",
            f"{results.meta['profile']['clients']} clients req/s",
            "their p50 ms",
        )
        out += ["", report.render_table(results.config_rows, config_header)]
    return "\n".join(out)


def run(profile: Profile, *, skip_configs: bool, log_dir: Path) -> Results:
    card = load_card(card_path_for(MINILM_FP32))
    results = Results(
        meta={
            "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "python": platform.python_version(),
            "onnxruntime": ort.__version__,
            "cpu_count": os.cpu_count(),
            "profile": profile.__dict__,
        }
    )
    inputs = input_sets(card)
    print("1/3 end to end, in process and bare ...", flush=True)
    end_to_end(inputs, profile, results, log_dir, card)
    if not skip_configs:
        print("2/3 the agent's session configuration ...", flush=True)
        configurations(inputs, profile, results, log_dir)
    print("3/3 where the REST time goes (a traced server) ...", flush=True)
    trace_stages(inputs, profile, results, log_dir)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--skip-configs", action="store_true", help="no configuration study")
    args = parser.parse_args(argv)
    if not MINILM_FP32.exists():
        sys.exit("the large model is not built: run `make bench-models` once")
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as scratch:
        results = report.run_or_exit(
            lambda: run(
                QUICK if args.quick else FULL, skip_configs=args.skip_configs, log_dir=Path(scratch)
            ),
            BenchError,
            "servers stopped",
        )
    print()
    print(render(results))
    if args.json:
        args.json.write_text(
            json.dumps(
                {"meta": results.meta, "figures": results.figures, "rows": results.rows}, indent=2
            )
        )
        print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
