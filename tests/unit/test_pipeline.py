"""The sensor pipeline: scaling, the threshold model's hysteresis, one command per change."""

from __future__ import annotations

import asyncio
from typing import Any

from agent.errors import SerialLinkError
from agent.pipeline import PipelineSpec, SensorPipeline, ThresholdModel


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

        spec = PipelineSpec(
            "light", channel=0, scale=1 / 1023, threshold=0.5, hysteresis=0.05, actuator=5
        )
        pipeline = SensorPipeline(spec, ThresholdModel(0.5, 0.05), actuate, emit)

        async def feed() -> None:
            for channel, raw in ((0, 100), (1, 1000), (0, 120), (0, 900)):
                await pipeline.on_sensor(channel, raw)
            fail_next[0] = True
            await pipeline.on_sensor(0, 50)
            await pipeline.on_sensor(0, 60)

        asyncio.run(feed())
        assert sent == [(5, 0), (5, 1), (5, 0)]
        assert pipeline.inputs == 5 and pipeline.errors == 1
        assert [e["label"] for e in events] == ["low", "high", "low"]
        assert events[1]["value"] == 1 and events[1]["actuator"] == 5
