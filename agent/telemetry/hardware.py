"""The device's hardware id (``pi4``, ``pi5``, ``jetson-orin``, ``generic``...), detected.

A release's variants name the hardware ids they run on; the agent reports its own in its
status and picks the variant that names it. ``[device] hardware_id`` overrides detection.

``hardware_id_from`` is pure (the text of the files in, the id out) so every board's strings
are tested; ``detect_hardware_id`` only reads the files:

* ``/proc/device-tree/model``: ``Raspberry Pi 4 Model B Rev 1.4`` -> ``pi4``,
  ``NVIDIA Jetson AGX Orin Developer Kit`` -> ``jetson-orin``;
* ``/proc/device-tree/compatible`` (NUL-separated): ``nvidia,tegra234`` -> ``jetson-orin``;
* ``/etc/nv_tegra_release`` (L4T): ``# R36 ...`` -> ``jetson-orin`` (L4T 36 runs on Orin
  only); any other release -> ``jetson``;
* none of these: ``generic``.
"""

from __future__ import annotations

import re
from pathlib import Path

GENERIC = "generic"

# Jetson module families by name in the device-tree model, most specific first.
_JETSON_NAMES = (
    ("orin", "jetson-orin"),
    ("xavier", "jetson-xavier"),
    ("tx2", "jetson-tx2"),
    ("tx1", "jetson-tx1"),
    ("nano", "jetson-nano"),
)
# The SoC in the device-tree compatible list.
_TEGRA_SOCS = {
    "tegra234": "jetson-orin",
    "tegra194": "jetson-xavier",
    "tegra186": "jetson-tx2",
    "tegra210": "jetson-nano",  # also the TX1; the Nano is the common board
}


def hardware_id_from(
    model: str | None = None, compatible: str | None = None, tegra_release: str | None = None
) -> str:
    """The hardware id from the files' text (None: the file is absent)."""
    text = (model or "").replace("\x00", "").strip().lower()
    if "raspberry pi" in text:
        return _raspberry_pi(text)
    jetson = _jetson_by_name(text) if "jetson" in text or "nvidia" in text else None
    if jetson:
        return jetson
    socs = [part.strip().lower() for part in (compatible or "").split("\x00")]
    for soc_entry in socs:
        soc = soc_entry.partition(",")[2]
        if soc_entry.startswith("nvidia,") and soc in _TEGRA_SOCS:
            return _TEGRA_SOCS[soc]
    if tegra_release is not None:
        major = re.match(r"#\s*R(\d+)", tegra_release.strip())
        return "jetson-orin" if major and int(major.group(1)) >= 36 else "jetson"
    if "jetson" in text:
        return "jetson"
    return GENERIC


def _raspberry_pi(text: str) -> str:
    module = re.search(r"compute module (\d+)", text)
    if module:
        return f"cm{module.group(1)}"
    zero = re.search(r"zero( 2)?", text)
    if zero:
        return "pizero2" if zero.group(1) else "pizero"
    number = re.search(r"raspberry pi (\d+)", text)
    return f"pi{number.group(1)}" if number else "pi"


def _jetson_by_name(text: str) -> str | None:
    for needle, hardware_id in _JETSON_NAMES:
        if needle in text:
            return hardware_id
    return None


def detect_hardware_id(
    model_path: Path = Path("/proc/device-tree/model"),
    compatible_path: Path = Path("/proc/device-tree/compatible"),
    tegra_release_path: Path = Path("/etc/nv_tegra_release"),
) -> str:
    """This host's hardware id; an unreadable file counts as absent."""
    return hardware_id_from(_read(model_path), _read(compatible_path), _read(tegra_release_path))


def _read(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return None
