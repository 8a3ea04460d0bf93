"""The sensor pipeline: scaling, windows, the bounded queue, hysteresis, one command per change."""

from __future__ import annotations

import asyncio
from typing import Any

from agent.errors import NonFiniteOutputError, SerialLinkError
from agent.pipelines.pipeline import Classification, PipelineSpec, SensorPipeline, ThresholdModel


class TestThresholdModel:
    def test_hysteresis(self) -> None:
        """The class flips only beyond threshold +/- hysteresis, so noise does not toggle it."""
        model = ThresholdModel(0.5, 0.05)
        labels = [model.predict([x]).label for x in (0.4, 0.54, 0.56, 0.46, 0.44, 0.5)]
        assert labels == ["low", "low", "high", "high", "low", "low"]


class TestSensorPipeline:
    def test_commands_only_on_change_and_retries_after_failure(self) -> None:
        """Readings that keep the class send nothing; a failed actuate is retried next time."""
        sent: list[tuple[int, int]] = []
        events: list[dict[str, Any]] = []
        fail_next = [False]

        async def actuate(actuator: int, value: int) -> None:
            if fail_next[0]:
                fail_next[0] = False
                raise SerialLinkError("unplugged")
            sent.append((actuator, value))

        async def emit(event: str, **fields: Any) -> None:
            events.append({"event": event, **fields})

        spec = PipelineSpec("light", channel=0, scale=1 / 1023, actuator=5)
        pipeline = SensorPipeline(spec, ThresholdModel(0.5, 0.05), actuate, emit)

        async def feed() -> None:
            runner = asyncio.create_task(pipeline.run())
            for channel, raw in ((0, 100), (1, 1000), (0, 120), (0, 900)):
                pipeline.on_sensor(channel, raw)
                await asyncio.sleep(0)
            fail_next[0] = True
            pipeline.on_sensor(0, 50)
            await asyncio.sleep(0)
            pipeline.on_sensor(0, 60)
            await asyncio.sleep(0)
            runner.cancel()

        asyncio.run(feed())
        assert sent == [(5, 0), (5, 1), (5, 0)]
        assert pipeline.counters.inputs == 5 and pipeline.counters.errors == 1
        assert [e["label"] for e in events] == ["low", "high", "low"]
        assert events[1]["value"] == 1 and events[1]["actuator"] == 5


class _Recorder:
    def __init__(self) -> None:
        self.inputs: list[list[float]] = []

    async def __call__(self, features: list[float]) -> Classification:
        self.inputs.append(features)
        return Classification("high", 0.9, (("high", 0.9), ("low", 0.1)), model="m", version="1")


async def _no_events(event: str, **fields: Any) -> None:
    raise AssertionError(f"unexpected event {event}")


class TestWindowsQueueAndSinks:
    def test_window_collects_the_last_readings_scaled(self) -> None:
        """With window 3 the model sees the last three scaled readings, oldest first."""
        model = _Recorder()
        spec = PipelineSpec("w", channel=1, scale=0.5, actuator=None, window=3)
        pipeline = SensorPipeline(spec, model, None, _no_events)
        for raw in (2, 4, 6, 8):
            pipeline.on_sensor(1, raw)
        pipeline.on_sensor(0, 100)  # another channel: ignored

        async def drain() -> None:
            while pipeline._pending:
                await pipeline.process(pipeline._pending.popleft())

        asyncio.run(drain())
        assert model.inputs == [[1.0, 2.0, 3.0], [2.0, 3.0, 4.0]]

    def test_full_queue_drops_the_oldest_and_counts_it(self) -> None:
        """A model that falls behind loses the oldest inputs, never the newest, and says so."""
        model = _Recorder()
        spec = PipelineSpec("q", None, 1.0, None, queue=4)
        pipeline = SensorPipeline(spec, model, None, _no_events)
        for value in range(4 + 3):
            pipeline.submit([float(value)])

        async def drain() -> None:
            runner = asyncio.create_task(pipeline.run())
            await asyncio.sleep(0.01)
            runner.cancel()

        asyncio.run(drain())
        assert pipeline.counters.dropped == 3
        assert model.inputs == [[float(v)] for v in range(3, 4 + 3)]

    def test_results_sink_and_min_score(self) -> None:
        """Every result is published; one under min_score does not drive the actuator."""
        published: list[dict[str, Any]] = []
        sent: list[tuple[int, int]] = []

        async def publish(body: dict[str, Any]) -> None:
            published.append(body)

        async def actuate(actuator: int, value: int) -> None:
            sent.append((actuator, value))

        async def emit(event: str, **fields: Any) -> None:
            pass

        spec = PipelineSpec(
            "r", None, 1.0, actuator=3, min_score=0.95, top_k=2, publish_results=True
        )
        pipeline = SensorPipeline(spec, _Recorder(), actuate, emit, publish)
        asyncio.run(pipeline.process([0.1]))
        assert sent == []
        assert published == [
            {
                "pipeline": "r",
                "model": "m",
                "version": "1",
                "prediction_id": None,
                "label": "high",
                "score": 0.9,
                "top": [["high", 0.9], ["low", 0.1]],
            }
        ]

    def test_model_errors_are_counted_not_raised(self) -> None:
        """A model returning NaN costs one result, not the pipeline."""

        async def broken(features: list[float]) -> Classification:
            raise NonFiniteOutputError(model="m", output="probabilities", count=10)

        pipeline = SensorPipeline(PipelineSpec("e", None, 1.0, None), broken, None, _no_events)
        assert asyncio.run(pipeline.process([1.0])) is None
        assert pipeline.counters.model_errors == 1
        assert pipeline.counters.errors_by_kind == {"NonFiniteOutputError": 1}
