"""Board-specific telemetry for Raspberry Pi and NVIDIA Jetson.

This module owns three things:

* pure parsers for the text the vendor tools print
  (``vcgencmd get_throttled`` on a Pi, one line of ``tegrastats`` on a Jetson),
  returning frozen dataclasses with a JSON-friendly ``as_dict()``;
* ``detect_board``, which tells the agent which of those tools to use;
* thin readers around the tools (``read_pi_throttled``, ``tegrastats_command``).

Process management for the long-lived ``tegrastats`` stream lives elsewhere;
it feeds lines to ``parse_tegrastats`` one at a time.
"""

from __future__ import annotations

import math
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from agent.errors import BoardParseError, BoardReadError

__all__ = [
    "BoardKind",
    "PiThrottled",
    "PowerRail",
    "TegraStats",
    "detect_board",
    "parse_tegrastats",
    "parse_throttled",
    "read_pi_throttled",
    "tegrastats_command",
]

BoardKind = Literal["raspberry_pi", "jetson", "generic"]

# tegrastats prints -256C for thermal zones that are powered off (e.g. CV/GPU
# clusters on an idle Orin); it is a placeholder, not a reading.
_SENSOR_OFF_C = -256.0

VCGENCMD_THROTTLED: tuple[str, ...] = ("vcgencmd", "get_throttled")
_VCGENCMD_TIMEOUT_S = 2.0


def _to_int(digits: str, line: str) -> int:
    # int() refuses decimal strings past sys.get_int_max_str_digits(); that
    # limit must surface as a parse error, not a bare ValueError.
    try:
        return int(digits)
    except ValueError as exc:
        raise BoardParseError("number out of range", line) from exc


def _optional_int(digits: str | None, line: str) -> int | None:
    return None if digits is None else _to_int(digits, line)


# --------------------------------------------------------------------------
# Raspberry Pi: vcgencmd get_throttled
# --------------------------------------------------------------------------

# The register is 32 bits wide, so more than 8 hex digits is not this output.
_THROTTLED_RE = re.compile(r"throttled=0x([0-9a-fA-F]{1,8})", re.ASCII)

# Bit positions from the Raspberry Pi documentation for get_throttled.
_THROTTLED_BITS: tuple[tuple[str, int], ...] = (
    ("under_voltage_now", 0),
    ("freq_capped_now", 1),
    ("throttled_now", 2),
    ("soft_temp_limit_now", 3),
    ("under_voltage_occurred", 16),
    ("freq_capped_occurred", 17),
    ("throttled_occurred", 18),
    ("soft_temp_limit_occurred", 19),
)


@dataclass(frozen=True)
class PiThrottled:
    """Decoded ``vcgencmd get_throttled`` register."""

    raw: int
    under_voltage_now: bool
    freq_capped_now: bool
    throttled_now: bool
    soft_temp_limit_now: bool
    under_voltage_occurred: bool
    freq_capped_occurred: bool
    throttled_occurred: bool
    soft_temp_limit_occurred: bool

    @classmethod
    def from_raw(cls, raw: int) -> PiThrottled:
        """Decode the documented flag bits of a raw register value."""
        flags = {name: bool(raw >> bit & 1) for name, bit in _THROTTLED_BITS}
        return cls(raw=raw, **flags)

    def as_dict(self) -> dict[str, object]:
        """Return a JSON-friendly dict; ``raw`` is a hex string as vcgencmd prints it."""
        out: dict[str, object] = {"raw": hex(self.raw)}
        for name, _bit in _THROTTLED_BITS:
            out[name] = getattr(self, name)
        return out


def parse_throttled(output: str) -> PiThrottled:
    """Parse ``vcgencmd get_throttled`` output such as ``throttled=0x50005``."""
    match = _THROTTLED_RE.fullmatch(output.strip())
    if match is None:
        raise BoardParseError("not vcgencmd get_throttled output", output)
    return PiThrottled.from_raw(int(match.group(1), 16))


def _run_command(command: Sequence[str]) -> str:
    completed = subprocess.run(
        list(command),
        capture_output=True,
        text=True,
        timeout=_VCGENCMD_TIMEOUT_S,
        check=True,
    )
    return completed.stdout


def read_pi_throttled(
    run: Callable[[Sequence[str]], str] | None = None,
) -> PiThrottled:
    """Run ``vcgencmd get_throttled`` and parse it.

    ``run`` takes the command and returns its stdout; it defaults to a
    subprocess call with a 2 s timeout. Failure to run the command raises
    ``BoardReadError``; unparseable output raises ``BoardParseError``.
    """
    runner = _run_command if run is None else run
    try:
        output = runner(VCGENCMD_THROTTLED)
    except FileNotFoundError as exc:
        raise BoardReadError(VCGENCMD_THROTTLED, "command not found") from exc
    except (OSError, subprocess.SubprocessError) as exc:
        raise BoardReadError(VCGENCMD_THROTTLED, str(exc) or type(exc).__name__) from exc
    return parse_throttled(output)


# --------------------------------------------------------------------------
# Jetson: tegrastats
# --------------------------------------------------------------------------

# \b keeps "IRAM 0/252kB" from being read as RAM.
_RAM_RE = re.compile(r"\bRAM (\d+)/(\d+)MB", re.ASCII)
_SWAP_RE = re.compile(r"\bSWAP (\d+)/(\d+)MB", re.ASCII)
_CPU_RE = re.compile(r"\bCPU \[([^\]]*)\]", re.ASCII)
_CPU_ENTRY_RE = re.compile(r"(\d+)%(?:@(\d+))?", re.ASCII)
_EMC_RE = re.compile(r"\bEMC_FREQ (\d+)%(?:@(\d+))?", re.ASCII)
# Orin prints the GPU clock per GPC in brackets ("0%@[305,305]"); the GPCs
# share a clock, so the first value stands for the GPU.
_GR3D_RE = re.compile(r"\bGR3D_FREQ (\d+)%(?:@\[?(\d+))?", re.ASCII)
_TEMP_RE = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C\b", re.ASCII)
# Rails are "NAME cur/avg" (JetPack 4, implicitly mW) or "NAME curmW/avgmW"
# (JetPack 5+). The lookahead stops "RAM 2457/3956MB"-style memory fields, or
# a prefix of their digits, from matching.
_RAIL_RE = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?![\w/.])", re.ASCII)
_MEMORY_FIELDS = frozenset({"RAM", "SWAP", "IRAM"})


@dataclass(frozen=True)
class PowerRail:
    """One tegrastats power rail reading, in milliwatts."""

    current_mw: int
    average_mw: int

    def as_dict(self) -> dict[str, object]:
        """Return a JSON-friendly dict."""
        return {"current_mw": self.current_mw, "average_mw": self.average_mw}


@dataclass(frozen=True)
class TegraStats:
    """One parsed ``tegrastats`` line; ``None`` means not reported or core off."""

    ram_used_mb: int
    ram_total_mb: int
    swap_used_mb: int | None
    swap_total_mb: int | None
    cpu_percent: tuple[int | None, ...]
    cpu_freq_mhz: tuple[int | None, ...]
    emc_percent: int | None
    emc_freq_mhz: int | None
    gpu_percent: int | None
    gpu_freq_mhz: int | None
    temperatures_c: dict[str, float]
    power_rails_mw: dict[str, PowerRail]

    def as_dict(self) -> dict[str, object]:
        """Return a JSON-friendly dict (lists and plain dicts only)."""
        return {
            "ram_used_mb": self.ram_used_mb,
            "ram_total_mb": self.ram_total_mb,
            "swap_used_mb": self.swap_used_mb,
            "swap_total_mb": self.swap_total_mb,
            "cpu_percent": list(self.cpu_percent),
            "cpu_freq_mhz": list(self.cpu_freq_mhz),
            "emc_percent": self.emc_percent,
            "emc_freq_mhz": self.emc_freq_mhz,
            "gpu_percent": self.gpu_percent,
            "gpu_freq_mhz": self.gpu_freq_mhz,
            "temperatures_c": dict(self.temperatures_c),
            "power_rails_mw": {name: rail.as_dict() for name, rail in self.power_rails_mw.items()},
        }


def _parse_pair(pattern: re.Pattern[str], line: str) -> tuple[int | None, int | None]:
    match = pattern.search(line)
    if match is None:
        return None, None
    return _to_int(match.group(1), line), _optional_int(match.group(2), line)


def _parse_cpus(
    line: str,
) -> tuple[tuple[int | None, ...], tuple[int | None, ...]]:
    match = _CPU_RE.search(line)
    if match is None:
        return (), ()
    percents: list[int | None] = []
    freqs: list[int | None] = []
    for entry in match.group(1).split(","):
        percent, freq = _parse_cpu_entry(entry.strip(), line)
        percents.append(percent)
        freqs.append(freq)
    return tuple(percents), tuple(freqs)


def _parse_cpu_entry(entry: str, line: str) -> tuple[int | None, int | None]:
    if entry == "off":
        return None, None
    match = _CPU_ENTRY_RE.fullmatch(entry)
    # A half-understood core list would shift every later core's index, so
    # reject the line rather than guess.
    if match is None:
        raise BoardParseError(f"bad CPU entry {entry[:20]!r}", line)
    return _to_int(match.group(1), line), _optional_int(match.group(2), line)


def _parse_temperatures(line: str) -> dict[str, float]:
    temps: dict[str, float] = {}
    for name, text in _TEMP_RE.findall(line):
        value = float(text)
        if not math.isfinite(value):
            raise BoardParseError(f"temperature out of range for {name}", line)
        if value != _SENSOR_OFF_C:
            temps[name] = value
    return temps


def _parse_rails(line: str) -> dict[str, PowerRail]:
    rails: dict[str, PowerRail] = {}
    for name, current, average in _RAIL_RE.findall(line):
        if name in _MEMORY_FIELDS:
            continue
        rails[name] = PowerRail(_to_int(current, line), _to_int(average, line))
    return rails


def parse_tegrastats(line: str) -> TegraStats:
    """Parse one ``tegrastats`` output line (JetPack 4 through 6 formats).

    Only the RAM field is mandatory; fields a given board or release does not
    print come back as ``None`` or empty, and unknown fields are ignored.
    """
    ram_match = _RAM_RE.search(line)
    if ram_match is None:
        raise BoardParseError("not a tegrastats line (no RAM field)", line)
    swap_used, swap_total = _parse_pair(_SWAP_RE, line)
    cpu_percent, cpu_freq = _parse_cpus(line)
    emc_percent, emc_freq = _parse_pair(_EMC_RE, line)
    gpu_percent, gpu_freq = _parse_pair(_GR3D_RE, line)
    return TegraStats(
        ram_used_mb=_to_int(ram_match.group(1), line),
        ram_total_mb=_to_int(ram_match.group(2), line),
        swap_used_mb=swap_used,
        swap_total_mb=swap_total,
        cpu_percent=cpu_percent,
        cpu_freq_mhz=cpu_freq,
        emc_percent=emc_percent,
        emc_freq_mhz=emc_freq,
        gpu_percent=gpu_percent,
        gpu_freq_mhz=gpu_freq,
        temperatures_c=_parse_temperatures(line),
        power_rails_mw=_parse_rails(line),
    )


def tegrastats_command(interval_ms: int) -> list[str]:
    """Return the argv for a long-lived ``tegrastats`` sampling every ``interval_ms``."""
    return ["tegrastats", "--interval", str(interval_ms)]


# --------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------


def _read_model(model_path: Path) -> str:
    try:
        raw = model_path.read_bytes()
    except OSError:
        return ""
    # The device tree stores the model as a NUL-terminated C string.
    return raw.replace(b"\x00", b"").decode("utf-8", errors="replace").strip()


def _exists(path: Path) -> bool:
    # Path.is_file() re-raises PermissionError; unreadable means "not here".
    try:
        return path.is_file()
    except OSError:
        return False


def detect_board(
    model_path: Path = Path("/proc/device-tree/model"),
    tegra_release: Path = Path("/etc/nv_tegra_release"),
) -> BoardKind:
    """Classify the host as a Raspberry Pi, a Jetson, or generic hardware."""
    model = _read_model(model_path).lower()
    if "raspberry pi" in model:
        return "raspberry_pi"
    # Custom Jetson carrier boards may rename the device-tree model, but L4T
    # still installs its release file.
    if "jetson" in model or _exists(tegra_release):
        return "jetson"
    return "generic"
