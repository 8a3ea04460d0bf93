"""Models benchmark: serving overhead, int8 against fp32, and a hot swap under load.

Everything runs in one process, on the same model files, the same inputs and the same ONNX
Runtime threads: the shared pools the agent uses by default (``onnx_thread_pools = "shared"``,
two intra-op threads), made before the first session, so bare sessions run on them too.
Nothing touches the network.
Nothing here asserts on timing: the table says PASS or MISS against each target and the exit
code stays 0.

1. Serving overhead on the large model (all-MiniLM-L6-v2, ONNX fp32, built by
   ``models/minilm/build.py``). The baseline is a bare ``onnxruntime.InferenceSession.run``
   on the very session the agent serves from, called on the main thread. The agent path is
   ``ModelRegistry.predict`` with the agent's monitor attached: input checks, the hop to an
   inference thread, the NaN/Inf check, prediction ids and the monitor's bookkeeping, timed
   from the call to the result on the event loop. They run in alternating blocks (the order
   flips every block) so that drift of a shared machine falls on both; p50 and p99 of each,
   and their ratios, over 3,000 runs per path for a sentence (17 tokens) and 600 for a
   paragraph (128 tokens). Targets: agent/bare at most 1.05 at p50 and 1.20 at p99.
   Why the same session: sessions of the same file made the same way in one process differ
   by a few percent in p50 among themselves (where their memory landed), as much as the
   whole target. For information, a second alternation times the agent's session against a
   session of the benchmark's own (made on the main thread), bare both.
2. int8 against fp32: p50 of a bare ``session.run`` of the int8 MiniLM (ONNX Runtime's
   transformer fusions, then dynamic int8) over the fp32 file, alternating blocks again
   (target at most 0.6), and file size (target at most 0.3). For information, the same int8
   file over the fp32 model after the same fusions (made here in a temporary folder): the
   part of the gain that int8 alone brings.
   The digits classifier's static int8 and fp32 variants are shown too, for information:
   at 64 inputs their latency is mostly the runtime's fixed cost per call.
3. Hot swap under load: ``clients`` asyncio tasks call ``predict`` back to back on the fp32
   MiniLM (version 1). After a steady window, version 2 (the int8 file) is loaded beside it,
   checked against its golden output, warmed up and switched to while the load goes on.
   Per swap: the longest gap between two consecutive results (any client) from the start of
   the load until one second after the switch, over the p99 gap of the steady window. The
   swap runs 5 times (3 with ``--quick``), each from a fresh registry serving version 1, in
   the same direction (to the faster model: a swap to a slower one would also count its
   slower steady state as gap). Figures: the median swap's ratio (target at most 2), every
   swap's ratio for information, and the count of failed requests over all swaps (target 0).

It runs on the event loop the agent itself chooses (``agent.loop.eventloop``: uvloop where it is
installed); ``--event-loop asyncio`` measures the agent on asyncio's own loop instead.

Run from the repository root (the large model must have been built once, see
``make bench-models``)::

    .venv/bin/python -m bench.bench_models [--quick] [--json PATH] [--event-loop CHOICE]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from agent.inference.backends import BackendOptions
from agent.inference.backends.onnx import OnnxBackend, share_thread_pools, shared_thread_pools
from agent.inference.cardfile import load_card
from agent.inference.monitoring import ModelMonitor
from agent.inference.registry import ModelRegistry
from agent.loop import eventloop
from bench import report
from edge_contract.card import ModelCard, card_path_for
from fleet.modelopt.quantize import AttentionShape, fuse_transformer

REPO = Path(__file__).resolve().parents[1]
MINILM_DIR = REPO / "models" / "build" / "minilm"
MINILM_FP32 = MINILM_DIR / "minilm-fp32.onnx"
MINILM_INT8 = MINILM_DIR / "minilm-int8.onnx"
MINILM_DATA = MINILM_DIR / "data" / "eval.npz"
DIGITS_DIR = REPO / "models" / "digits"
THREADS = 2
MINILM_ATTENTION = AttentionShape(heads=12, hidden_size=384)  # as models/minilm/build.py
# all-MiniLM-L6-v2's tokenizer (BERT uncased): padding, [CLS] and [SEP] ids.
PAD_ID, CLS_ID, SEP_ID = 0, 101, 102
# A paragraph of several sentences; the model was trained on inputs of up to 128 tokens.
PARAGRAPH_TOKENS = 128


@dataclass(frozen=True)
class Profile:
    runs: int  # timed runs per path
    # Agent and bare runs at the sentence length, where a run is short: a p99 of 600 runs
    # would rest on the 6 slowest, and one scheduler hiccup more or less moved it by 40 %.
    sentence_runs: int
    block: int  # runs per alternating block
    swap_steady_s: float
    clients: int
    # Hot swaps, each measured on its own: an odd count, so that the median is one of them.
    # One swap's longest gap is the largest of some 500 gaps, so noise of the shared machine
    # that meets that second moves it by tens of percent.
    swaps: int


FULL = Profile(runs=600, sentence_runs=3000, block=50, swap_steady_s=5.0, clients=3, swaps=5)
QUICK = Profile(runs=200, sentence_runs=400, block=25, swap_steady_s=3.0, clients=3, swaps=3)


@dataclass
class Row:
    figure: str
    value: str
    baseline: str
    ratio: float | None
    target: str
    result: str


@dataclass
class Results:
    meta: dict[str, Any]
    figures: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    ordered = sorted(values)
    rank = max(1, int(np.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def session_options() -> ort.SessionOptions:
    """A bare session's options: on the shared pools once they exist, as the agent's are."""
    options = ort.SessionOptions()
    if shared_thread_pools() is not None:
        options.use_per_session_threads = False
    else:
        options.intra_op_num_threads = THREADS
        options.inter_op_num_threads = 1
    return options


def load_inputs(card: ModelCard, limit: int = 32) -> list[dict[str, np.ndarray]]:
    """Up to ``limit`` single-sentence feeds from the model's eval split (padded to the
    split's longest sentence), in the card's input names."""
    data = np.load(MINILM_DATA)
    names = [spec.name for spec in card.inputs]
    count = min(limit, len(data[names[0]]))
    return [{name: data[name][i : i + 1] for name in names} for i in range(count)]


def paragraph_inputs(
    length: int = PARAGRAPH_TOKENS, limit: int = 32
) -> list[dict[str, np.ndarray]]:
    """Feeds of ``length`` tokens: the eval sentences' word pieces run together, in order,
    cut into windows and wrapped in [CLS] ... [SEP], like a paragraph of several sentences."""
    ids = np.load(MINILM_DATA)["input_ids"]
    stream = [int(t) for row in ids for t in row if t not in (PAD_ID, CLS_ID, SEP_ID)]
    body = length - 2
    feeds = []
    for start in range(0, len(stream) - body + 1, body):
        window = [CLS_ID, *stream[start : start + body], SEP_ID]
        tokens = np.asarray([window], dtype=np.int64)
        feeds.append({"input_ids": tokens, "attention_mask": np.ones_like(tokens)})
        if len(feeds) == limit:
            break
    return feeds


# -- alternating timed blocks -----------------------------------------------------------------


def bare_timer(path: Path) -> Callable[[Mapping[str, np.ndarray]], float]:
    """Bare ``session.run`` on a session of its own."""
    return session_timer(
        ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
    )


def session_timer(session: ort.InferenceSession) -> Callable[[Mapping[str, np.ndarray]], float]:
    def run(feeds: Mapping[str, np.ndarray]) -> float:
        start = time.perf_counter()
        session.run(None, dict(feeds))
        return time.perf_counter() - start

    return run


async def alternate(
    paths: dict[str, Callable[[Mapping[str, np.ndarray]], Any]],
    inputs: list[dict[str, np.ndarray]],
    profile: Profile,
) -> dict[str, list[float]]:
    """Each path's latencies (s), measured in alternating blocks after one warm-up block."""
    names = list(paths)
    samples: dict[str, list[float]] = {name: [] for name in names}
    blocks = profile.runs // profile.block
    for block in range(blocks + 1):
        order = names if block % 2 == 0 else names[::-1]
        for name in order:
            for i in range(profile.block):
                feeds = inputs[(block * profile.block + i) % len(inputs)]
                elapsed = paths[name](feeds)
                if asyncio.iscoroutine(elapsed):
                    elapsed = await elapsed
                if block > 0:  # block 0 warms every path up
                    samples[name].append(float(elapsed))
    return samples


def agent_timer(registry: ModelRegistry, name: str) -> Callable[[Mapping[str, np.ndarray]], Any]:
    async def run(feeds: Mapping[str, np.ndarray]) -> float:
        start = time.perf_counter()
        await registry.predict(name, feeds)
        return time.perf_counter() - start

    return run


def new_registry(monitor: ModelMonitor | None = None) -> ModelRegistry:
    options = BackendOptions(
        intra_op_threads=THREADS, inter_op_threads=1, onnx_thread_pools="shared"
    )
    return ModelRegistry(options, workers=2, max_queue=64, observer=monitor)


# -- 1 and 2: overhead, int8 against fp32 ------------------------------------------------------


def input_sets(card: ModelCard) -> dict[str, list[dict[str, np.ndarray]]]:
    """The two input lengths every MiniLM figure is measured at."""
    sentence = load_inputs(card)
    tokens = int(sentence[0]["input_ids"].shape[1])
    return {
        f"sentence, {tokens} tokens": sentence,
        f"paragraph, {PARAGRAPH_TOKENS} tokens": (paragraph_inputs()),
    }


def _verdict(ratio: float, target: float) -> str:
    return "PASS" if ratio <= target else "MISS"


async def serving_overhead(results: Results, profile: Profile) -> None:
    card = load_card(card_path_for(MINILM_FP32))
    registry = new_registry(ModelMonitor())
    results.figures["overhead"] = {}
    try:
        await registry.load(MINILM_FP32, card=card)
        backend = registry.backend(card.name)
        assert isinstance(backend, OnnxBackend)
        bare, own = session_timer(backend.session), bare_timer(MINILM_FP32)
        for index, (label, inputs) in enumerate(input_sets(card).items()):
            runs = profile.sentence_runs if index == 0 else profile.runs
            samples = await alternate(
                {"bare": bare, "agent": agent_timer(registry, card.name)},
                inputs,
                replace(profile, runs=runs),
            )
            # Apart: another session's intra-op thread spins on for a while after its block,
            # and would take a core from the first runs of the block after it.
            aside = await alternate({"bare": bare, "own": own}, inputs, profile)
            _overhead_rows(results, label, {**samples, "own": aside["own"]}, aside["bare"])
    finally:
        await registry.close()


def _overhead_rows(
    results: Results, label: str, samples: dict[str, list[float]], bare_aside: list[float]
) -> None:
    figures: dict[str, Any] = {
        f"{path}_{q}_ms": percentile(samples[path], float(q[1:])) * 1e3
        for path in ("bare", "agent", "own")
        for q in ("p50", "p99")
    }
    figures["bare_aside_p50_ms"] = percentile(bare_aside, 50) * 1e3
    figures["runs"] = len(samples["bare"])
    results.figures["overhead"][label] = figures
    for q, target in (("p50", 1.05), ("p99", 1.20)):
        ratio = figures[f"agent_{q}_ms"] / figures[f"bare_{q}_ms"]
        results.rows.append(
            Row(
                f"MiniLM {label}: agent predict {q} (ms)",
                f"{figures[f'agent_{q}_ms']:.2f}",
                f"{figures[f'bare_{q}_ms']:.2f} bare run",
                ratio,
                f"<= {target:.2f}",
                _verdict(ratio, target),
            )
        )
    results.rows.append(
        Row(
            f"MiniLM {label}: bare run p50, agent's session over one of its own",
            f"{figures['bare_aside_p50_ms']:.2f}",
            f"{figures['own_p50_ms']:.2f} own session",
            figures["bare_aside_p50_ms"] / figures["own_p50_ms"],
            "-",
            "info",
        )
    )


async def int8_against_fp32(results: Results, profile: Profile) -> None:
    card = load_card(card_path_for(MINILM_FP32))
    results.figures["int8"] = {}
    with tempfile.TemporaryDirectory(prefix="bench-models-") as scratch:
        fused = Path(scratch) / "minilm-fp32-fused.onnx"
        fuse_transformer(MINILM_FP32, fused, MINILM_ATTENTION)
        timers = {
            "fp32": bare_timer(MINILM_FP32),
            "fp32_fused": bare_timer(fused),
            "int8": bare_timer(MINILM_INT8),
        }
    for label, inputs in input_sets(card).items():
        samples = await alternate(timers, inputs, profile)
        p50 = {name: percentile(samples[name], 50) * 1e3 for name in timers}
        results.figures["int8"][label] = {
            **{f"{name}_p50_ms": value for name, value in p50.items()},
            **{f"{name}_p99_ms": percentile(samples[name], 99) * 1e3 for name in timers},
        }
        ratio = p50["int8"] / p50["fp32"]
        results.rows.append(
            Row(
                f"MiniLM {label}: int8 (fused, dynamic) p50 (ms)",
                f"{p50['int8']:.2f}",
                f"{p50['fp32']:.2f} fp32",
                ratio,
                "<= 0.60",
                _verdict(ratio, 0.6),
            )
        )
        results.rows.append(
            Row(
                f"MiniLM {label}: the same int8 over fused fp32",
                f"{p50['int8']:.2f}",
                f"{p50['fp32_fused']:.2f} fused",
                p50["int8"] / p50["fp32_fused"],
                "none",
                "info",
            )
        )
    fp32_size, int8_size = MINILM_FP32.stat().st_size, MINILM_INT8.stat().st_size
    results.figures["int8"]["bytes"] = {"fp32": fp32_size, "int8": int8_size}
    size_ratio = int8_size / fp32_size
    results.rows.append(
        Row(
            "MiniLM int8 file size (MB)",
            f"{int8_size / 1e6:.1f}",
            f"{fp32_size / 1e6:.1f} fp32",
            size_ratio,
            "<= 0.30",
            _verdict(size_ratio, 0.3),
        )
    )
    await digits_info(results, profile)


async def digits_info(results: Results, profile: Profile) -> None:
    fp32, int8 = DIGITS_DIR / "digits-fp32.onnx", DIGITS_DIR / "digits-int8.onnx"
    x = np.load(DIGITS_DIR / "data" / "eval.npz")["x"]
    inputs = [{"pixels": x[i : i + 1]} for i in range(32)]
    samples = await alternate({"fp32": bare_timer(fp32), "int8": bare_timer(int8)}, inputs, profile)
    fp32_p50 = percentile(samples["fp32"], 50) * 1e6
    int8_p50 = percentile(samples["int8"], 50) * 1e6
    results.figures["digits"] = {"fp32_p50_us": fp32_p50, "int8_p50_us": int8_p50}
    results.rows.append(
        Row(
            "digits int8 (static QDQ) p50 (us)",
            f"{int8_p50:.1f}",
            f"{fp32_p50:.1f} fp32",
            int8_p50 / fp32_p50,
            "none",
            "info",
        )
    )
    size = int8.stat().st_size / fp32.stat().st_size
    results.rows.append(
        Row(
            "digits int8 file size (kB)",
            f"{int8.stat().st_size / 1e3:.1f}",
            f"{fp32.stat().st_size / 1e3:.1f} fp32",
            size,
            "none",
            "info",
        )
    )


# -- 3: hot swap under load --------------------------------------------------------------------


@dataclass
class SwapRun:
    """One hot swap: v1 (fp32) under load, then v2 (int8) loaded and switched to."""

    steady_gaps: list[float]  # s, between consecutive results in the steady window
    swap_gaps: list[float]  # s, from the last result before the load to 1 s after the switch
    load_s: float  # the load of v2: open, golden check, warm-up
    failures: list[str]
    results_total: int
    versions_after_swap: list[str]  # versions answering requests sent after the switch

    @property
    def steady_p99(self) -> float:
        return percentile(self.steady_gaps, 99)

    @property
    def longest(self) -> float:
        return max(self.swap_gaps)

    @property
    def ratio(self) -> float:
        return self.longest / self.steady_p99


async def hot_swap(results: Results, profile: Profile) -> None:
    """``profile.swaps`` swaps, each from a fresh registry serving fp32; the median ratio."""
    card_v1 = load_card(card_path_for(MINILM_FP32)).model_copy(update={"version": "1"})
    card_v2 = load_card(card_path_for(MINILM_INT8)).model_copy(
        update={"name": card_v1.name, "version": "2"}
    )
    inputs = load_inputs(card_v1)
    runs = [await _one_swap(profile, card_v1, card_v2, inputs) for _ in range(profile.swaps)]
    ranked = sorted(runs, key=lambda run: run.ratio)
    median = ranked[len(ranked) // 2]  # an odd count: the middle swap itself
    failures = [failure for run in runs for failure in run.failures]
    total = sum(run.results_total for run in runs)
    results.figures["hot_swap"] = {
        "clients": profile.clients,
        "swaps": [_swap_figures(run) for run in runs],
        "ratio_median": median.ratio,
        "ratio_min": ranked[0].ratio,
        "ratio_max": ranked[-1].ratio,
        "failed_requests": len(failures),
        "failures": failures[:5],
        "results_total": total,
    }
    results.rows.append(
        Row(
            f"hot swap: longest gap between results (ms), median of {len(runs)} swaps",
            f"{median.longest * 1e3:.1f}",
            f"{median.steady_p99 * 1e3:.1f} steady p99 gap",
            median.ratio,
            "<= 2.00",
            _verdict(median.ratio, 2.0),
        )
    )
    results.rows.append(
        Row(
            f"hot swap: the {len(runs)} swaps' ratios, lowest to highest",
            ", ".join(f"{run.ratio:.2f}" for run in ranked),
            "",
            None,
            "none",
            "info",
        )
    )
    results.rows.append(
        Row(
            "hot swap: failed requests",
            str(len(failures)),
            f"{total:,} results",
            None,
            "0",
            "PASS" if not failures else "MISS",
        )
    )


async def _one_swap(
    profile: Profile,
    card_v1: ModelCard,
    card_v2: ModelCard,
    inputs: list[dict[str, np.ndarray]],
) -> SwapRun:
    """Clients call ``predict`` back to back on fp32 v1; after the steady window, int8 v2 is
    loaded beside it and switched to while they go on."""
    registry = new_registry(ModelMonitor())
    done: list[float] = []  # when each result came back
    started_after_switch: set[str] = set()
    switched_at: list[float] = []
    failures: list[str] = []
    stop = asyncio.Event()

    async def client(offset: int) -> None:
        i = offset
        while not stop.is_set():
            sent = time.perf_counter()
            try:
                prediction = await registry.predict(card_v1.name, inputs[i % len(inputs)])
                done.append(time.perf_counter())
                if switched_at and sent > switched_at[0]:
                    started_after_switch.add(prediction.version)
            except Exception as exc:  # counted: the target is zero of them
                failures.append(f"{type(exc).__name__}: {exc}")
            i += 1

    try:
        await registry.load(MINILM_FP32, card=card_v1)
        tasks = [asyncio.create_task(client(n * 7)) for n in range(profile.clients)]
        await asyncio.sleep(1.0)  # settle
        steady_start = time.perf_counter()
        await asyncio.sleep(profile.swap_steady_s)
        swap_start = time.perf_counter()
        await registry.load(MINILM_INT8, card=card_v2)
        swap_end = time.perf_counter()
        switched_at.append(swap_end)
        await asyncio.sleep(1.0)
        window_end = time.perf_counter()
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        await registry.close()
    # The first gap of the window starts at the last result before the swap began.
    before = [t for t in done if t < swap_start]
    window = [t for t in done if swap_start <= t <= window_end]
    return SwapRun(
        steady_gaps=_gaps([t for t in before if t >= steady_start]),
        swap_gaps=_gaps(before[-1:] + window),
        load_s=swap_end - swap_start,
        failures=failures,
        results_total=len(done),
        versions_after_swap=sorted(started_after_switch),
    )


def _swap_figures(run: SwapRun) -> dict[str, Any]:
    return {
        "steady_results": len(run.steady_gaps) + 1,
        "steady_gap_p50_ms": percentile(run.steady_gaps, 50) * 1e3,
        "steady_gap_p99_ms": run.steady_p99 * 1e3,
        "swap_load_s": run.load_s,
        "swap_window_results": len(run.swap_gaps),
        "longest_gap_ms": run.longest * 1e3,
        "ratio": run.ratio,
        "failed_requests": len(run.failures),
        "versions_after_swap": run.versions_after_swap,
        "results_total": run.results_total,
    }


def _gaps(stamps: list[float]) -> list[float]:
    ordered = sorted(stamps)
    return [b - a for a, b in itertools.pairwise(ordered)]


# -- report ------------------------------------------------------------------------------------


def render(results: Results) -> str:
    header = ("figure", "value", "baseline", "ratio", "target", "result")
    rows = [
        (
            r.figure,
            r.value,
            r.baseline,
            "-" if r.ratio is None else f"{r.ratio:.2f}",
            r.target,
            r.result,
        )
        for r in results.rows
    ]
    m = results.meta
    out = [
        f"Models benchmark, {m['when']}: Python {m['python']}, onnxruntime {m['onnxruntime']}, "
        f"{m['cpu_count']} cores, {THREADS} intra-op threads in shared pools, "
        f"{m['event_loop']} event loop",
        "",
        report.render_table(rows, header),
        "",
    ]
    o, s = results.figures.get("overhead"), results.figures.get("hot_swap")
    if o:
        runs = ", ".join(f"{figures['runs']} at the {label}" for label, figures in o.items())
        out.append(
            f"- MiniLM: timed runs per path: {runs}; in alternating blocks; one example per call"
        )
    if s:
        swaps = s["swaps"]
        loads = [swap["swap_load_s"] for swap in swaps]
        answering = sorted({v for swap in swaps for v in swap["versions_after_swap"]})
        out.append(
            f"- hot swap: {len(swaps)} swaps, each from a fresh registry serving v1; "
            f"{s['clients']} clients; the load of v2 took {min(loads):.2f}-{max(loads):.2f} s "
            f"(golden check and warm-up included); versions answering requests sent after "
            f"the switch: {answering}"
        )
    return "\n".join(out)


async def run(profile: Profile) -> Results:
    results = Results(
        meta={
            "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "python": platform.python_version(),
            "onnxruntime": ort.__version__,
            "cpu_count": os.cpu_count(),
            "threads": THREADS,
            "onnx_thread_pools": "shared",
            "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
            "profile": profile.__dict__,
        }
    )
    share_thread_pools(THREADS, 1)  # before any session, bare ones included
    print("1/3 serving overhead on MiniLM ...", flush=True)
    await serving_overhead(results, profile)
    print("2/3 int8 against fp32 ...", flush=True)
    await int8_against_fp32(results, profile)
    print("3/3 hot swap under load ...", flush=True)
    await hot_swap(results, profile)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--event-loop",
        choices=eventloop.LOOP_CHOICES,
        default="auto",
        help="the loop to run on, chosen as the agent chooses its own (default auto)",
    )
    args = parser.parse_args(argv)
    if not (MINILM_FP32.exists() and MINILM_INT8.exists() and MINILM_DATA.exists()):
        sys.exit(
            f"the large model is not built ({MINILM_FP32.relative_to(REPO)} and its int8 "
            "variant): run `make bench-models`, which builds it in .venv-models first"
        )
    results = eventloop.run(run(QUICK if args.quick else FULL), args.event_loop)
    print()
    print(render(results))
    if args.json:
        payload = {
            "meta": results.meta,
            "figures": results.figures,
            "rows": [r.__dict__ for r in results.rows],
        }
        args.json.write_text(json.dumps(payload, indent=2))
        print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
