"""Resource sampling on this machine, and thermal zones from a recorded sysfs layout."""

from __future__ import annotations

from pathlib import Path

from agent.telemetry.collector import ResourceSampler, read_thermal_zones


class TestSampler:
    def test_sample_has_every_documented_reading(self, tmp_path: Path) -> None:
        """CPU (total, per core), load, memory, swap, disk, network, self and uptime are there."""
        readings, errors = ResourceSampler(tmp_path).sample()
        assert errors == {}
        cpu = readings["cpu"]
        assert len(cpu["per_core"]) == cpu["count"] >= 1 and len(cpu["load"]) == 3
        assert 0 <= cpu["percent"] <= 100
        assert readings["memory"]["total_bytes"] > 0 and "swap_used_bytes" in readings["memory"]
        assert readings["disk"]["path"] == str(tmp_path)
        assert readings["network"]["bytes_recv"] >= 0
        assert readings["agent"]["rss_bytes"] > 0
        assert readings["uptime_s"] > 0
        assert isinstance(readings["temperatures_c"], dict)

    def test_thermal_zones(self, tmp_path: Path) -> None:
        """Millidegrees under thermal_zone*/temp become degrees; unreadable zones are skipped."""
        for index, (kind, milli) in enumerate((("cpu-thermal", "48312"), ("gpu", "bogus"))):
            zone = tmp_path / f"thermal_zone{index}"
            zone.mkdir()
            (zone / "type").write_text(kind + "\n")
            (zone / "temp").write_text(milli + "\n")
        assert read_thermal_zones(tmp_path) == {"thermal/cpu-thermal": 48.3}
        assert read_thermal_zones(tmp_path / "absent") == {}
