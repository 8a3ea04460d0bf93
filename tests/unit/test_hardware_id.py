"""The device's hardware id from the text of its device-tree and L4T files, and the
``[device]`` config section (hardware id override, static tags, exit 78 naming the key)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent import config as config_module
from agent.config import load_config
from agent.errors import EXIT_CONFIG, ConfigError
from agent.telemetry.hardware import detect_hardware_id, hardware_id_from

# The model strings as the boards' /proc/device-tree/model reads (NUL-terminated).
PI_MODELS = [
    ("Raspberry Pi 4 Model B Rev 1.4\x00", "pi4"),
    ("Raspberry Pi 5 Model B Rev 1.0\x00", "pi5"),
    ("Raspberry Pi 3 Model B Plus Rev 1.3\x00", "pi3"),
    ("Raspberry Pi 400 Rev 1.0\x00", "pi400"),
    ("Raspberry Pi Compute Module 4 Rev 1.0\x00", "cm4"),
    ("Raspberry Pi Zero 2 W Rev 1.0\x00", "pizero2"),
    ("Raspberry Pi Zero W Rev 1.1\x00", "pizero"),
]
JETSON_MODELS = [
    ("NVIDIA Jetson AGX Orin Developer Kit\x00", "jetson-orin"),
    ("NVIDIA Jetson Orin Nano Developer Kit\x00", "jetson-orin"),
    ("NVIDIA Jetson Xavier NX Developer Kit\x00", "jetson-xavier"),
    ("NVIDIA Jetson Nano Developer Kit\x00", "jetson-nano"),
    ("quill\x00", "generic"),  # a TX2 carrier that renamed its model, nothing else known
]
COMPATIBLE_ORIN = "nvidia,p3737-0000+p3701-0000\x00nvidia,p3701-0000\x00nvidia,tegra234\x00"
COMPATIBLE_TX2 = "custom,carrier\x00nvidia,p3310-1000\x00nvidia,tegra186\x00"
L4T_36 = "# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64\n"
L4T_32 = "# R32 (release), REVISION: 7.4, GCID: 33514132, BOARD: t210ref, EABI: aarch64\n"


@pytest.mark.parametrize(("model", "expected"), PI_MODELS + JETSON_MODELS)
def test_the_device_tree_model_names_the_board(model: str, expected: str) -> None:
    assert hardware_id_from(model=model) == expected


@pytest.mark.parametrize(
    ("model", "compatible", "release", "expected"),
    [
        ("custom carrier\x00", COMPATIBLE_ORIN, None, "jetson-orin"),
        ("quill\x00", COMPATIBLE_TX2, None, "jetson-tx2"),
        ("custom carrier\x00", None, L4T_36, "jetson-orin"),
        ("custom carrier\x00", None, L4T_32, "jetson"),
        (None, None, None, "generic"),
        ("", "brcm,bcm2711\x00", None, "generic"),
    ],
)
def test_compatible_and_l4t_release_identify_a_renamed_jetson(
    model: str | None, compatible: str | None, release: str | None, expected: str
) -> None:
    assert hardware_id_from(model, compatible, release) == expected


def test_detection_reads_the_files_and_treats_missing_ones_as_absent(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\x00")
    absent = tmp_path / "absent"
    assert detect_hardware_id(model, absent, absent) == "pi5"
    assert detect_hardware_id(absent, absent, absent) == "generic"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("EDGE_AGENT_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", tmp_path / "absent.toml")


@pytest.mark.usefixtures("clean_env")
def test_device_section_from_file_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[device]\nhardware_id = "pi4"\ntags = {site = "lab", "rack.id" = "r-2"}\n')
    device = load_config(path).device
    assert (device.hardware_id, device.tags) == ("pi4", {"site": "lab", "rack.id": "r-2"})
    monkeypatch.setenv("EDGE_AGENT_DEVICE__HARDWARE_ID", "jetson-orin")
    assert load_config(path).device.hardware_id == "jetson-orin"


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('hardware_id = "Pi 4"', "device.hardware_id"),
        ('tags = {Site = "lab"}', "tag key 'Site'"),
        ('tags = {site = "two words"}', "tag 'site': value 'two words'"),
        ('tags = {site = ""}', "tag 'site'"),
        ("tags = {" + ", ".join(f"k{i} = 'v'" for i in range(33)) + "}", "33 tags, at most 32"),
    ],
)
def test_bad_device_values_exit_78_naming_the_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(f"[device]\n{text}\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert expected in str(error.value)
    assert error.value.exit_code == EXIT_CONFIG
