"""Board readings in the telemetry loop, with fake ``tegrastats``/``vcgencmd`` executables.

This machine is neither a Jetson nor a Pi, so the tools are small scripts that print lines in
the documented formats; the agent runs them exactly as it runs the real ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import stat
from pathlib import Path

import pytest

from agent.telemetry.collector import ResourceSampler
from agent.telemetry.service import BoardMonitor, TelemetryService
from agent.telemetry.subsystem_health import HealthChange, HealthMonitor
from agent.uplink.forwarder import DiskOutbox
from agent.uplink.outbox import Outbox

ORIN_LINE = (
    "12-05-2023 11:42:49 RAM 2690/7620MB (lfb 2x4MB) SWAP 0/3810MB (cached 0MB) "
    "CPU [2%@729,1%@729,0%@729,0%@729,off,off] EMC_FREQ 0%@2133 GR3D_FREQ 37%@[305] "
    "VIC_FREQ 729 APE 174 CV0@-256C CPU@46.125C GPU@-256C tj@46.125C "
    "VDD_IN 4406mW/4406mW VDD_CPU_GPU_CV 477mW/477mW VDD_SOC 1391mW/1391mW"
)


def _tool(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def fake_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "bin"
    directory.mkdir()
    monkeypatch.setenv("PATH", f"{directory}:/usr/bin:/bin")
    return directory


async def _one_message(board: BoardMonitor, state: Path) -> tuple[dict[str, object], list[str]]:
    outbox = DiskOutbox(Outbox(state / "q.db", max_bytes=1 << 20))
    changes: list[HealthChange] = []

    async def record(change: HealthChange) -> None:
        changes.append(change)

    service = TelemetryService(
        device_id="jetson-1",
        interval_s=1,
        outbox=outbox,
        sampler=ResourceSampler(state),
        board=board,
        health=HealthMonitor(),
        link_state=lambda: {"connected": False},
        on_health_change=record,
    )
    await service.publish_once()
    rows = await outbox.fetch(after_id=0, limit=1)
    await outbox.close()
    return json.loads(rows[0].payload), [f"{c.subsystem}:{c.after.status}" for c in changes]


class TestJetson:
    def test_tegrastats_readings_reach_telemetry(self, fake_bin: Path, tmp_path: Path) -> None:
        """The agent follows tegrastats and puts GPU load, power rails and temps in telemetry."""
        _tool(fake_bin, "tegrastats", f'while true; do echo "{ORIN_LINE}"; sleep 0.05; done')

        async def scenario() -> tuple[dict[str, object], list[str]]:
            board = BoardMonitor("jetson", tegrastats_interval_ms=100)
            follower = asyncio.create_task(board.run())
            for _ in range(100):
                if board.read()[0] is not None:
                    break
                await asyncio.sleep(0.05)
            try:
                return await _one_message(board, tmp_path)
            finally:
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower

        body, changes = asyncio.run(scenario())
        stats = body["board"]["tegrastats"]  # type: ignore[index]
        assert body["board"]["kind"] == "jetson"  # type: ignore[index]
        assert stats["gpu_percent"] == 37
        assert stats["power_rails_mw"]["VDD_IN"]["current_mw"] == 4406
        assert "GPU" not in stats["temperatures_c"]  # -256C means the sensor is off
        assert "board:ok" in changes

    def test_missing_tegrastats_degrades_health(self, fake_bin: Path, tmp_path: Path) -> None:
        """Without tegrastats the board subsystem is degraded with the reason, nothing crashes."""

        async def scenario() -> tuple[dict[str, object], list[str]]:
            board = BoardMonitor("jetson")
            await asyncio.wait_for(board._follow_tegrastats(), 5)
            return await _one_message(board, tmp_path)

        body, changes = asyncio.run(scenario())
        assert "cannot start tegrastats" in body["errors"]["board"]  # type: ignore[index]
        assert "board:degraded" in changes


class TestRaspberryPi:
    @pytest.mark.parametrize(
        ("raw", "status"), [("0x0", "ok"), ("0x50000", "ok"), ("0x50005", "degraded")]
    )
    def test_throttling_flags(self, fake_bin: Path, tmp_path: Path, raw: str, status: str) -> None:
        """vcgencmd flags go into telemetry; only conditions active now degrade health."""
        _tool(fake_bin, "vcgencmd", f'echo "throttled={raw}"')
        body, changes = asyncio.run(_one_message(BoardMonitor("raspberry_pi"), tmp_path))
        assert body["board"]["throttled"]["raw"] == raw  # type: ignore[index]
        assert f"board:{status}" in changes
