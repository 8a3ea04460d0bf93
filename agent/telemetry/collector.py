"""Host resource sampling for telemetry: CPU, load, memory, disk, network, temperatures, self.

``ResourceSampler.sample()`` is blocking (psutil reads /proc and /sys) and is called from a
worker thread. CPU percentages are measured between consecutive calls, so the first sample
after start reports the CPU use since the sampler was created. Board-specific readings
(Raspberry Pi throttling, Jetson tegrastats) come from ``agent.telemetry.boards``; a reading
that fails is reported as such in ``errors`` and never stops the rest of the sample.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import psutil

THERMAL_ROOT = Path("/sys/class/thermal")


class ResourceSampler:
    """Reads the machine's and the agent's own resource use."""

    def __init__(self, state_dir: Path, *, thermal_root: Path = THERMAL_ROOT) -> None:
        self._state_dir = state_dir
        self._thermal_root = thermal_root
        self._process = psutil.Process(os.getpid())
        self._started = time.time()
        # Prime the per-interval counters so the first sample measures a real interval.
        psutil.cpu_percent(percpu=True)
        self._process.cpu_percent()

    def sample(self) -> tuple[dict[str, Any], dict[str, str]]:
        """One measurement; returns (readings, errors by reading name)."""
        readings: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for name, reader in (
            ("cpu", self._cpu),
            ("memory", self._memory),
            ("disk", self._disk),
            ("network", self._network),
            ("temperatures_c", self._temperatures),
            ("agent", self._agent),
        ):
            try:
                readings[name] = reader()
            except (OSError, psutil.Error, ValueError) as exc:
                errors[name] = f"{type(exc).__name__}: {exc}"
        readings["uptime_s"] = round(time.time() - psutil.boot_time(), 1)
        return readings, errors

    def _cpu(self) -> dict[str, Any]:
        per_core = psutil.cpu_percent(percpu=True)
        load1, load5, load15 = os.getloadavg()
        return {
            "percent": round(sum(per_core) / max(len(per_core), 1), 1),
            "per_core": per_core,
            "count": len(per_core),
            "load": [round(load1, 2), round(load5, 2), round(load15, 2)],
        }

    def _memory(self) -> dict[str, Any]:
        vm = psutil.virtual_memory()
        swap = psutil.swap_memory()
        return {
            "total_bytes": vm.total,
            "available_bytes": vm.available,
            "used_percent": vm.percent,
            "swap_total_bytes": swap.total,
            "swap_used_bytes": swap.used,
            "swap_used_percent": swap.percent,
        }

    def _disk(self) -> dict[str, Any]:
        usage = psutil.disk_usage(str(self._state_dir))
        return {
            "path": str(self._state_dir),
            "total_bytes": usage.total,
            "free_bytes": usage.free,
            "used_percent": usage.percent,
        }

    def _network(self) -> dict[str, Any]:
        counters = psutil.net_io_counters()
        return {
            "bytes_sent": counters.bytes_sent,
            "bytes_recv": counters.bytes_recv,
            "errin": counters.errin,
            "errout": counters.errout,
        }

    def _temperatures(self) -> dict[str, float]:
        temps: dict[str, float] = {}
        sensors = getattr(psutil, "sensors_temperatures", None)
        if sensors is not None:
            for chip, entries in sensors().items():
                for index, entry in enumerate(entries):
                    label = entry.label or str(index)
                    temps[f"{chip}/{label}"] = round(entry.current, 1)
        temps.update(read_thermal_zones(self._thermal_root))
        return temps

    def _agent(self) -> dict[str, Any]:
        with self._process.oneshot():
            return {
                "rss_bytes": self._process.memory_info().rss,
                "cpu_percent": self._process.cpu_percent(),
                "threads": self._process.num_threads(),
                "uptime_s": round(time.time() - self._started, 1),
            }


def read_thermal_zones(root: Path) -> dict[str, float]:
    """Temperatures from ``/sys/class/thermal/thermal_zone*`` (millidegrees in ``temp``)."""
    temps: dict[str, float] = {}
    if not root.is_dir():
        return temps
    for zone in sorted(root.glob("thermal_zone*")):
        try:
            kind = (zone / "type").read_text().strip() or zone.name
            milli = int((zone / "temp").read_text().strip())
        except (OSError, ValueError):
            continue  # zones that are absent or unreadable on this board are simply not reported
        temps[f"thermal/{kind}"] = round(milli / 1000.0, 1)
    return temps
