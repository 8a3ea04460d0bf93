"""The model registry with the committed digits models: hot swap under load, failed loads,
NaN outputs and back-pressure.

Every model here runs in a real runtime. The hot swap is checked the way a client sees it:
no request fails, each answer is exactly v1's or v2's answer for its input, requests that
start after the switch get v2, and requests still running on v1 at the switch finish there
before v1 is closed.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import pytest
from onnx import TensorProto, helper
from prometheus_client.parser import text_string_to_metric_families

from agent.errors import (
    GoldenMismatchError,
    InvalidInputError,
    ModelLoadError,
    NonFiniteOutputError,
    ServiceBusyError,
    UnknownModelError,
)
from agent.inference import registry as registry_module
from agent.inference.backends import BackendOptions, open_backend
from agent.inference.cardfile import load_card
from agent.inference.monitoring import ModelMonitor
from agent.inference.registry import ModelRegistry, VersionState
from edge_contract.card import Golden, ModelCard, TensorSpec, card_path_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "models" / "digits"
FP32 = DIGITS / "digits-fp32.onnx"  # its card says version 1
INT8 = DIGITS / "digits-int8.onnx"  # its card says version 2
Array = npt.NDArray[Any]


def eval_split() -> tuple[Array, Array]:
    data = np.load(DIGITS / "data" / "eval.npz")
    return data["x"].astype(np.float32), data["y"]


def direct_outputs(path: Path, rows: Array) -> Array:
    """The model's answer straight from its backend: the reference a served answer must equal."""
    card = load_card(card_path_for(path))
    backend = open_backend(path, card.runtime, BackendOptions(), model=card.name)
    try:
        return backend.run({"pixels": rows})["probabilities"]
    finally:
        backend.close()


def write_sqrt_model(directory: Path) -> Path:
    """A real ONNX model, y = sqrt(x), with its card: finite for x >= 0, NaN for x < 0."""
    batch_shape: list[int | str] = ["batch", 4]
    graph = helper.make_graph(
        [helper.make_node("Sqrt", ["x"], ["y"])],
        "sqrt",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, batch_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, batch_shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = directory / "sqrt.onnx"
    onnx.save(model, str(path))
    card = ModelCard(
        name="sqrt",
        version="1",
        runtime="onnx",
        task="regression",
        inputs=(TensorSpec(name="x", dtype="float32", shape=(-1, 4)),),
        outputs=(TensorSpec(name="y", dtype="float32", shape=(-1, 4)),),
        golden=Golden(
            inputs={"x": [[1.0, 4.0, 9.0, 16.0]]},
            outputs={"y": [[1.0, 2.0, 3.0, 4.0]]},
            atol=1e-6,
        ),
    )
    card_path_for(path).write_text(card.model_dump_json())
    return path


@dataclass
class Answer:
    version: str
    outputs: Array
    started_after_switch: bool
    finished_after_switch: bool


class Swap:
    """Several asyncio tasks predicting ``inputs`` in a loop on the default version while a
    test swaps versions."""

    def __init__(self, registry: ModelRegistry, inputs: Array, *, tasks: int = 8) -> None:
        self.registry = registry
        self.inputs = inputs
        self.tasks = tasks
        self.switched = False
        self.answers: list[Answer] = []
        self.failures: list[BaseException] = []
        self._stop = asyncio.Event()

    async def run_during(self, action: Callable[[], Awaitable[Any]], *, answers: int = 10) -> Any:
        """Start the clients, run ``action`` once ``answers`` came, keep going for as many
        answers more, stop; returns what ``action`` returned (or raises what it raised)."""
        clients = [asyncio.create_task(self._client()) for _ in range(self.tasks)]
        await self._until(lambda: len(self.answers) >= answers)
        try:
            return await action()
        finally:
            self.switched = True
            done = len(self.answers)
            await self._until(lambda: len(self.answers) >= done + answers)
            self._stop.set()
            await asyncio.gather(*clients)

    async def _until(self, predicate: Callable[[], bool]) -> None:
        for _ in range(2000):  # bounded: 20 s at most
            if predicate() or self.failures:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the clients made no progress")

    async def _client(self) -> None:
        while not self._stop.is_set():
            started_after = self.switched
            try:
                prediction = await self.registry.predict("digits", {"pixels": self.inputs})
            except Exception as exc:
                self.failures.append(exc)
                return
            outputs = prediction.outputs["probabilities"]
            self.answers.append(Answer(prediction.version, outputs, started_after, self.switched))


class HeldBackend:
    """A real backend whose next run, once ``hold()`` is called, waits in its worker thread
    until ``release()``: a request is then provably running on this version while another is
    switched in, however fast the machine's workers are."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self._armed = False
        self.entered = threading.Event()
        self._released = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def hold(self) -> None:
        with self._lock:
            self._armed = True

    def release(self) -> None:
        self._released.set()

    def run(self, feeds: Any) -> Any:
        with self._lock:
            held, self._armed = self._armed, False
        if held:
            self.entered.set()
            self._released.wait(timeout=20)  # bounded: the test releases it right after the switch
        return self._inner.run(feeds)


class SwapAction:
    """Holds one request on v1, loads v2, records v1's state at the very moment the load
    returned, then lets the held request finish."""

    def __init__(
        self,
        registry: ModelRegistry,
        swap: Swap,
        path: Path,
        held: HeldBackend,
        **kwargs: Any,
    ) -> None:
        self.registry, self.swap, self.path, self.kwargs = registry, swap, path, kwargs
        self.held = held
        self.v1_state_at_switch: VersionState | None = None

    async def __call__(self) -> ModelCard:
        held = self.held
        held.hold()
        entered = await asyncio.to_thread(held.entered.wait, 20)
        assert entered, "no request reached v1's backend"
        try:
            card = await self.registry.load(self.path, **self.kwargs)
            # No await between the switch and this line: requests on v1 are still counted.
            self.swap.switched = True
            self.v1_state_at_switch = _state(self.registry, "1")
        finally:
            held.release()
        return card


def _opening_held(opened: list[HeldBackend]) -> Callable[..., Any]:
    """``open_backend`` that wraps what it opens in a HeldBackend, kept in ``opened``."""

    def open_held(*args: Any, **kwargs: Any) -> HeldBackend:
        backend = HeldBackend(open_backend(*args, **kwargs))
        opened.append(backend)
        return backend

    return open_held


def _state(registry: ModelRegistry, version: str) -> VersionState | None:
    return next((s.state for s in registry.status("digits") if s.version == version), None)


def metric_value(text: str, sample_name: str, **labels: str) -> float:
    """One sample's value from Prometheus text, found by name and a subset of its labels."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == sample_name and labels.items() <= sample.labels.items():
                return float(sample.value)
    raise AssertionError(f"no sample {sample_name} {labels} in the metrics")


def run(coroutine: Awaitable[Any]) -> Any:
    async def main() -> Any:
        return await coroutine

    return asyncio.run(main())


# Its workers must be the bottleneck, so it wants the CPU to itself: `make test` runs it
# after the parallel pass (pytest-xdist), alone.
@pytest.mark.serial
def test_hot_swap_under_load_fails_no_request_and_drains_v1() -> None:
    rows, _ = eval_split()
    # Batches big enough (~10 ms each) that the two workers, not the event loop, are the
    # bottleneck; and one request is held on v1 across the switch (HeldBackend), since on a
    # fast or idle machine every v1 request could otherwise have finished by then.
    inputs = np.tile(rows, (40, 1))
    expected = {"1": direct_outputs(FP32, inputs), "2": direct_outputs(INT8, inputs)}
    assert not np.allclose(expected["1"], expected["2"])  # the two versions are distinguishable
    events: list[str] = []
    held_backends: list[HeldBackend] = []

    async def scenario() -> tuple[Swap, SwapAction]:
        monitor = ModelMonitor()
        registry = ModelRegistry(
            BackendOptions(), observer=monitor, on_event=lambda name, _: events.append(name)
        )
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(registry_module, "open_backend", _opening_held(held_backends))
            assert (await registry.load(FP32)).version == "1"
        swap = Swap(registry, inputs)
        action = SwapAction(registry, swap, INT8, held=held_backends[0])
        card = await swap.run_during(action)
        assert card.version == "2"
        assert _state(registry, "1") == VersionState.END  # closed once its requests finished
        assert registry.card("digits").version == "2"
        await registry.close()
        return swap, action

    swap, action = run(scenario())
    assert swap.failures == []
    assert {answer.version for answer in swap.answers} == {"1", "2"}
    for answer in swap.answers:
        np.testing.assert_allclose(answer.outputs, expected[answer.version], atol=1e-6)
    assert all(answer.version == "2" for answer in swap.answers if answer.started_after_switch)
    # Requests running on v1 when the switch happened: v1 was kept open for them, they got
    # v1's answer, and only then was v1 closed.
    assert action.v1_state_at_switch == VersionState.UNLOADING
    finished_on_v1 = [a for a in swap.answers if a.version == "1" and a.finished_after_switch]
    assert finished_on_v1
    assert events.index("model_unloaded") > events.index("model_loaded", 1)


def test_corrupt_new_version_is_refused_and_the_old_one_keeps_serving(tmp_path: Path) -> None:
    rows, _ = eval_split()
    corrupt = tmp_path / INT8.name
    corrupt.write_bytes(INT8.read_bytes()[: INT8.stat().st_size // 2])  # truncated mid-file
    shutil.copy(card_path_for(INT8), card_path_for(corrupt))
    events: list[tuple[str, dict[str, Any]]] = []

    async def scenario() -> Swap:
        registry = ModelRegistry(
            BackendOptions(), on_event=lambda name, fields: events.append((name, fields))
        )
        await registry.load(FP32)
        swap = Swap(registry, rows[:50])
        with pytest.raises(ModelLoadError, match=str(corrupt)):
            await swap.run_during(lambda: registry.load(corrupt))
        status = {s.version: s for s in registry.status("digits")}
        assert status["1"].state == VersionState.AVAILABLE
        assert status["2"].state == VersionState.ERROR
        assert str(corrupt) in status["2"].error_message
        await registry.close()
        return swap

    swap = run(scenario())
    assert swap.failures == []
    assert {answer.version for answer in swap.answers} == {"1"}
    failed = [fields for name, fields in events if name == "model_load_failed"]
    assert len(failed) == 1
    assert failed[0]["version"] == "2"
    assert failed[0]["kind"] == "ModelLoadError"


def test_golden_mismatch_is_refused_and_the_old_version_keeps_serving() -> None:
    rows, _ = eval_split()
    card = load_card(card_path_for(INT8))
    assert card.golden is not None
    wrong = {
        name: np.roll(np.asarray(values), 1, axis=-1).tolist()
        for name, values in card.golden.outputs.items()
    }
    wrong_card = card.model_copy(
        update={"golden": card.golden.model_copy(update={"outputs": wrong})}
    )

    async def scenario() -> Swap:
        registry = ModelRegistry(BackendOptions())
        await registry.load(FP32)
        swap = Swap(registry, rows[:50])
        with pytest.raises(GoldenMismatchError) as caught:
            await swap.run_during(lambda: registry.load(INT8, card=wrong_card))
        assert caught.value.max_abs_error > caught.value.tolerance
        assert registry.card("digits").version == "1"
        await registry.close()
        return swap

    swap = run(scenario())
    assert swap.failures == []
    assert {answer.version for answer in swap.answers} == {"1"}


def test_nan_output_is_an_error_per_request_and_other_models_keep_serving(tmp_path: Path) -> None:
    sqrt_path = write_sqrt_model(tmp_path)
    rows, labels = eval_split()
    events: list[tuple[str, dict[str, Any]]] = []

    async def scenario() -> ModelMonitor:
        monitor = ModelMonitor()
        registry = ModelRegistry(
            BackendOptions(),
            observer=monitor,
            on_event=lambda name, fields: events.append((name, fields)),
        )
        await registry.load(FP32)
        await registry.load(sqrt_path)
        negative = np.array([[4.0, -1.0, 9.0, -16.0]], dtype=np.float32)
        for _ in range(3):
            with pytest.raises(NonFiniteOutputError) as caught:
                await registry.predict("sqrt", {"x": negative})
            assert caught.value.count == 2
            digits = await registry.predict("digits", {"pixels": rows[:100]})
            accuracy = float(np.mean(digits.outputs["probabilities"].argmax(1) == labels[:100]))
            assert accuracy > 0.9
        fine = await registry.predict("sqrt", {"x": np.array([[1, 4, 9, 16]], np.float32)})
        np.testing.assert_allclose(fine.outputs["y"], [[1, 2, 3, 4]])
        await registry.close()
        return monitor

    monitor = run(scenario())
    nonfinite = [fields for name, fields in events if name == "model_output_nonfinite"]
    assert [fields["count"] for fields in nonfinite] == [2, 2, 2]
    metrics = monitor.render_prometheus().decode()
    assert metric_value(metrics, "edge_model_nonfinite_outputs_total", model="sqrt") == 6
    errors = metric_value(
        metrics, "edge_model_errors_total", model="sqrt", kind="NonFiniteOutputError"
    )
    assert errors == 3
    assert metric_value(metrics, "edge_model_requests_total", model="digits") == 300


def test_a_model_whose_golden_output_is_nan_does_not_load(tmp_path: Path) -> None:
    sqrt_path = write_sqrt_model(tmp_path)
    card = load_card(card_path_for(sqrt_path))
    assert card.golden is not None
    nan_golden = Golden(inputs={"x": [[-1.0, 4.0, 9.0, 16.0]]}, outputs=card.golden.outputs, atol=1)

    async def scenario() -> None:
        registry = ModelRegistry(BackendOptions())
        with pytest.raises(NonFiniteOutputError):
            await registry.load(sqrt_path, card=card.model_copy(update={"golden": nan_golden}))
        with pytest.raises(UnknownModelError):
            registry.card("sqrt")
        await registry.close()

    run(scenario())


def test_full_queue_refuses_at_once_instead_of_queueing_without_bound() -> None:
    rows, _ = eval_split()
    batch = np.tile(rows, (4, 1))

    async def scenario() -> list[Any]:
        registry = ModelRegistry(BackendOptions(), workers=1, max_queue=2)
        await registry.load(FP32)
        # All 30 calls start in one pass of the loop, before any run can finish.
        results = await asyncio.gather(
            *(registry.predict("digits", {"pixels": batch}) for _ in range(30)),
            return_exceptions=True,
        )
        after = await registry.predict("digits", {"pixels": rows[:1]})
        assert after.version == "1"  # the refusals left nothing stuck behind
        await registry.close()
        return results

    results = run(scenario())
    refused = [r for r in results if isinstance(r, ServiceBusyError)]
    answered = [r for r in results if not isinstance(r, BaseException)]
    assert len(refused) + len(answered) == len(results)
    assert len(answered) >= 2
    assert refused
    assert all(error.queued == 2 for error in refused)


def test_versions_side_by_side_explicit_requests_and_unload() -> None:
    rows, _ = eval_split()

    async def scenario() -> None:
        monitor = ModelMonitor()
        registry = ModelRegistry(BackendOptions(), observer=monitor)
        await registry.load(FP32)
        await registry.load(FP32)  # the same version again replaces it and stays AVAILABLE
        assert _state(registry, "1") == VersionState.AVAILABLE
        loaded = monitor.render_prometheus().decode()
        assert metric_value(loaded, "edge_model_loaded", model="digits", version="1") == 1
        await registry.load(INT8, keep_others=True)
        assert registry.names() == ["digits"]
        assert registry.card("digits").version == "2"  # the most recently loaded
        one = await registry.predict("digits", {"pixels": rows[:10]}, version="1")
        two = await registry.predict("digits", {"pixels": rows[:10]}, version="2")
        assert (one.version, two.version) == ("1", "2")
        assert len(set(one.ids + two.ids)) == 20  # every row its own prediction id
        with pytest.raises(UnknownModelError, match="'7'"):
            await registry.predict("digits", {"pixels": rows[:1]}, version="7")
        with pytest.raises(UnknownModelError):
            await registry.predict("letters", {"pixels": rows[:1]})
        with pytest.raises(InvalidInputError, match=r"\[1, 63\]"):
            await registry.predict("digits", {"pixels": rows[:1, :63]})
        registry.unload("digits", "2")
        assert registry.card("digits").version == "1"  # the default falls back
        assert _state(registry, "2") == VersionState.END
        registry.unload("digits")
        assert registry.names() == []
        assert {s.state for s in registry.status("digits")} == {VersionState.END}
        await registry.close()

    run(scenario())


def test_outputs_are_read_only_and_the_monitor_sees_what_the_caller_got() -> None:
    # The monitor folds outputs into its windows after predict returns; a caller that wrote
    # into them would change what it reports. The registry hands them out read-only.
    rows, _ = eval_split()

    async def scenario() -> None:
        monitor = ModelMonitor()
        registry = ModelRegistry(BackendOptions(), observer=monitor)
        await registry.load(FP32)
        checked = registry.backend("digits").run({"pixels": rows[:20]})  # a backend's own
        assert checked["probabilities"].flags.writeable
        prediction = await registry.predict("digits", {"pixels": rows[:20]})
        probabilities = prediction.outputs["probabilities"]
        with pytest.raises(ValueError, match="read-only"):
            probabilities[:] = 0
        [block] = monitor.snapshot()["models"]
        confidence = probabilities.max(axis=1).astype(np.float64)
        assert block["output_window_samples"] == 20
        assert block["confidence_mean"] == pytest.approx(confidence.mean())
        await registry.close()

    run(scenario())
