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
from collections.abc import Callable
from pathlib import Path
from typing import TypedDict, TypeVar

import psutil

THERMAL_ROOT = Path("/sys/class/thermal")
ReadingT = TypeVar("ReadingT")


class CpuSample(TypedDict):
    percent: float
    per_core: list[float]
    count: int
    load: list[float]  # 1, 5 and 15 minutes


class MemorySample(TypedDict):
    total_bytes: int
    available_bytes: int
    used_percent: float
    swap_total_bytes: int
    swap_used_bytes: int
    swap_used_percent: float


class DiskSample(TypedDict):
    path: str
    total_bytes: int
    free_bytes: int
    used_percent: float


class NetworkSample(TypedDict):
    bytes_sent: int
    bytes_recv: int
    errin: int
    errout: int


class AgentSample(TypedDict):
    rss_bytes: int
    cpu_percent: float
    threads: int
    uptime_s: float


class Readings(TypedDict, total=False):
    """One sample, in telemetry's order; a reading that failed is absent (see ``errors``)."""

    cpu: CpuSample
    memory: MemorySample
    disk: DiskSample
    network: NetworkSample
    temperatures_c: dict[str, float]
    agent: AgentSample
    uptime_s: float


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

    def sample(self) -> tuple[Readings, dict[str, str]]:
        """One measurement; returns (readings, errors by reading name)."""
        readings: Readings = {}
        errors: dict[str, str] = {}
        if (cpu := _attempt("cpu", self._cpu, errors)) is not None:
            readings["cpu"] = cpu
        if (memory := _attempt("memory", self._memory, errors)) is not None:
            readings["memory"] = memory
        if (disk := _attempt("disk", self._disk, errors)) is not None:
            readings["disk"] = disk
        if (network := _attempt("network", self._network, errors)) is not None:
            readings["network"] = network
        if (temperatures := _attempt("temperatures_c", self._temperatures, errors)) is not None:
            readings["temperatures_c"] = temperatures
        if (own := _attempt("agent", self._agent, errors)) is not None:
            readings["agent"] = own
        readings["uptime_s"] = round(time.time() - psutil.boot_time(), 1)
        return readings, errors

    def _cpu(self) -> CpuSample:
        per_core = psutil.cpu_percent(percpu=True)
        load1, load5, load15 = os.getloadavg()
        return {
            "percent": round(sum(per_core) / max(len(per_core), 1), 1),
            "per_core": per_core,
            "count": len(per_core),
            "load": [round(load1, 2), round(load5, 2), round(load15, 2)],
        }

    def _memory(self) -> MemorySample:
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

    def _disk(self) -> DiskSample:
        usage = psutil.disk_usage(str(self._state_dir))
        return {
            "path": str(self._state_dir),
            "total_bytes": usage.total,
            "free_bytes": usage.free,
            "used_percent": usage.percent,
        }

    def _network(self) -> NetworkSample:
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

    def _agent(self) -> AgentSample:
        with self._process.oneshot():
            return {
                "rss_bytes": self._process.memory_info().rss,
                "cpu_percent": self._process.cpu_percent(),
                "threads": self._process.num_threads(),
                "uptime_s": round(time.time() - self._started, 1),
            }


def _attempt(name: str, reader: Callable[[], ReadingT], errors: dict[str, str]) -> ReadingT | None:
    """``reader()``, or None with the failure recorded in ``errors[name]``."""
    try:
        return reader()
    except (OSError, psutil.Error, ValueError) as exc:
        errors[name] = f"{type(exc).__name__}: {exc}"
        return None


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
