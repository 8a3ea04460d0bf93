"""Unit tests for agent.telemetry.boards on recorded vcgencmd/tegrastats output."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import BoardParseError, BoardReadError
from agent.telemetry.boards import (
    PiThrottled,
    PowerRail,
    TegraStats,
    detect_board,
    parse_tegrastats,
    parse_throttled,
    read_pi_throttled,
    tegrastats_command,
)

NANO_JP4 = (
    "RAM 2457/3956MB (lfb 1x4MB) SWAP 0/1978MB (cached 0MB) IRAM 0/252kB(lfb 252kB) "
    "CPU [10%@1479,4%@1479,off,off] EMC_FREQ 3%@1600 GR3D_FREQ 0%@921 APE 25 "
    "PLL@25C CPU@27.5C PMIC@100C GPU@26.5C AO@34C thermal@27C "
    "POM_5V_IN 1196/1196 POM_5V_GPU 0/0 POM_5V_CPU 199/199"
)
ORIN_JP5 = (
    "12-05-2023 11:42:49 RAM 2690/7620MB (lfb 2x4MB) SWAP 0/3810MB (cached 0MB) "
    "CPU [2%@729,1%@729,0%@729,0%@729,off,off] EMC_FREQ 0%@2133 GR3D_FREQ 0%@[305] "
    "VIC_FREQ 729 APE 174 CV0@-256C CPU@46.125C SOC2@43.812C SOC0@44.25C CV1@-256C "
    "GPU@-256C tj@46.125C SOC1@43.375C CV2@-256C "
    "VDD_IN 4406mW/4406mW VDD_CPU_GPU_CV 477mW/477mW VDD_SOC 1391mW/1391mW"
)
# Constructed from the documented JetPack 4 format for Xavier NX: no clocks on
# EMC/GR3D and unitless VDD_* rails.
XAVIER_NX_JP4 = (
    "RAM 1922/7766MB (lfb 1091x4MB) SWAP 0/3883MB (cached 0MB) "
    "CPU [1%@1190,0%@1190,0%@1190,0%@1190,off,off] EMC_FREQ 0% GR3D_FREQ 12% "
    "AO@37.5C GPU@38C PMIC@100C AUX@37C CPU@39.5C thermal@38.25C "
    "VDD_IN 3831/3831 VDD_CPU_GPU_CV 433/433 VDD_SOC 1186/1186"
)
# Constructed AGX Xavier line: rails named like sensors (GPU, CPU) and extra
# fields (MTS, Tdiode) that the parser must tolerate.
AGX_XAVIER_JP4 = (
    "RAM 3225/31919MB (lfb 6716x4MB) SWAP 0/15959MB (cached 0MB) "
    "CPU [0%@1190,0%@1190,off,off,off,off,off,off] EMC_FREQ 0%@2133 GR3D_FREQ 0%@318 "
    "APE 150 MTS fg 0% bg 0% AO@35.5C GPU@36C Tdiode@38.25C PMIC@100C AUX@35C "
    "CPU@37C thermal@36.3C Tboard@35C "
    "GPU 155/155 CPU 311/311 SOC 1244/1244 CV 0/0 VDDRQ 155/155 SYS5V 1800/1800"
)
# Constructed JetPack 6 Orin Nano line: lowercase sensors, two-GPC GPU clock,
# no SWAP/EMC fields, and a trailing newline as read from the pipe.
ORIN_NANO_JP6 = (
    "03-14-2024 09:01:02 RAM 1843/7620MB (lfb 12x4MB) "
    "CPU [1%@1510,0%@1510,0%@1510,0%@1510,0%@729,0%@729] GR3D_FREQ 4%@[612,612] "
    "NVENC off NVDEC off cpu@47.5C soc2@46.093C gpu@-256C tj@47.5C "
    "VDD_IN 4797mW/4797mW VDD_SOC 1397mW/1397mW\n"
)
MINIMAL_OFF_CORES = "RAM 1000/3983MB CPU [off,off] EMC_FREQ 0% GR3D_FREQ 12%"

T = TypeVar("T")


class TestParseThrottled:
    """vcgencmd get_throttled output decoding."""

    @pytest.mark.parametrize(
        ("bit", "field"),
        [
            (0, "under_voltage_now"),
            (1, "freq_capped_now"),
            (2, "throttled_now"),
            (3, "soft_temp_limit_now"),
            (16, "under_voltage_occurred"),
            (17, "freq_capped_occurred"),
            (18, "throttled_occurred"),
            (19, "soft_temp_limit_occurred"),
        ],
    )
    def test_each_bit_sets_only_its_flag(self, bit: int, field: str) -> None:
        """A register with a single documented bit set raises exactly that flag."""
        result = parse_throttled(f"throttled={hex(1 << bit)}")
        flags = {k: v for k, v in result.as_dict().items() if k != "raw"}
        assert result.raw == 1 << bit
        assert flags == {name: name == field for name in flags}

    def test_zero_means_all_clear(self) -> None:
        """throttled=0x0 decodes to a healthy board with no flags set."""
        result = parse_throttled("throttled=0x0")
        assert result == PiThrottled.from_raw(0)
        assert not any(v for k, v in result.as_dict().items() if k != "raw")

    def test_typical_under_voltage_history(self) -> None:
        """0x50005 is under-voltage and throttling, both now and in the past."""
        result = parse_throttled("throttled=0x50005")
        assert result.raw == 0x50005
        assert result.under_voltage_now
        assert result.throttled_now
        assert result.under_voltage_occurred
        assert result.throttled_occurred
        assert not result.freq_capped_now
        assert not result.soft_temp_limit_now
        assert not result.freq_capped_occurred
        assert not result.soft_temp_limit_occurred

    def test_trailing_newline_is_accepted(self) -> None:
        """Raw command output with its trailing newline parses."""
        result = parse_throttled("throttled=0x80008\n")
        assert result.soft_temp_limit_now
        assert result.soft_temp_limit_occurred
        assert result.raw == 0x80008

    def test_uppercase_hex_digits(self) -> None:
        """Hex digits are accepted in either case."""
        assert parse_throttled("throttled=0xE0000").raw == 0xE0000

    def test_as_dict_is_json_with_hex_raw(self) -> None:
        """as_dict renders raw as a hex string and round-trips through JSON."""
        data = parse_throttled("throttled=0x50005").as_dict()
        assert data["raw"] == "0x50005"
        assert json.loads(json.dumps(data)) == data
        assert set(data) == {
            "raw",
            "under_voltage_now",
            "freq_capped_now",
            "throttled_now",
            "soft_temp_limit_now",
            "under_voltage_occurred",
            "freq_capped_occurred",
            "throttled_occurred",
            "soft_temp_limit_occurred",
        }

    @pytest.mark.parametrize(
        "bad",
        [
            "",
            "   ",
            "garbage",
            "throttled=",
            "throttled=0x",
            "throttled=50005",
            "throttled=0xZZ",
            "throttled=0x123456789",
            'error=1 error_msg="Command not registered"',
            "throttled=0x0 extra",
        ],
    )
    def test_bad_input_raises_with_line(self, bad: str) -> None:
        """Input that is not get_throttled output raises BoardParseError carrying it."""
        with pytest.raises(BoardParseError) as info:
            parse_throttled(bad)
        assert info.value.line == bad
        assert repr(bad) in str(info.value)

    def test_error_message_truncates_long_input(self) -> None:
        """A huge bad input is echoed truncated in the message but kept whole on .line."""
        bad = "x" * 5000
        with pytest.raises(BoardParseError) as info:
            parse_throttled(bad)
        assert info.value.line == bad
        assert len(str(info.value)) < 300


class TestParseTegrastatsRecorded:
    """Exact field values for recorded and documented tegrastats lines."""

    def test_nano_jetpack4(self) -> None:
        """The Jetson Nano JetPack 4 line parses to its exact values."""
        stats = parse_tegrastats(NANO_JP4)
        assert stats == TegraStats(
            ram_used_mb=2457,
            ram_total_mb=3956,
            swap_used_mb=0,
            swap_total_mb=1978,
            cpu_percent=(10, 4, None, None),
            cpu_freq_mhz=(1479, 1479, None, None),
            emc_percent=3,
            emc_freq_mhz=1600,
            gpu_percent=0,
            gpu_freq_mhz=921,
            temperatures_c={
                "PLL": 25.0,
                "CPU": 27.5,
                "PMIC": 100.0,
                "GPU": 26.5,
                "AO": 34.0,
                "thermal": 27.0,
            },
            power_rails_mw={
                "POM_5V_IN": PowerRail(1196, 1196),
                "POM_5V_GPU": PowerRail(0, 0),
                "POM_5V_CPU": PowerRail(199, 199),
            },
        )

    def test_orin_jetpack5_with_timestamp(self) -> None:
        """The Orin JetPack 5 line with a timestamp parses to its exact values."""
        stats = parse_tegrastats(ORIN_JP5)
        assert stats == TegraStats(
            ram_used_mb=2690,
            ram_total_mb=7620,
            swap_used_mb=0,
            swap_total_mb=3810,
            cpu_percent=(2, 1, 0, 0, None, None),
            cpu_freq_mhz=(729, 729, 729, 729, None, None),
            emc_percent=0,
            emc_freq_mhz=2133,
            gpu_percent=0,
            gpu_freq_mhz=305,
            temperatures_c={
                "CPU": 46.125,
                "SOC2": 43.812,
                "SOC0": 44.25,
                "tj": 46.125,
                "SOC1": 43.375,
            },
            power_rails_mw={
                "VDD_IN": PowerRail(4406, 4406),
                "VDD_CPU_GPU_CV": PowerRail(477, 477),
                "VDD_SOC": PowerRail(1391, 1391),
            },
        )

    def test_xavier_nx_without_clocks(self) -> None:
        """EMC_FREQ and GR3D_FREQ without '@freq' give a percent and no clock."""
        stats = parse_tegrastats(XAVIER_NX_JP4)
        assert (stats.ram_used_mb, stats.ram_total_mb) == (1922, 7766)
        assert (stats.swap_used_mb, stats.swap_total_mb) == (0, 3883)
        assert stats.cpu_percent == (1, 0, 0, 0, None, None)
        assert stats.cpu_freq_mhz == (1190, 1190, 1190, 1190, None, None)
        assert (stats.emc_percent, stats.emc_freq_mhz) == (0, None)
        assert (stats.gpu_percent, stats.gpu_freq_mhz) == (12, None)
        assert stats.temperatures_c == {
            "AO": 37.5,
            "GPU": 38.0,
            "PMIC": 100.0,
            "AUX": 37.0,
            "CPU": 39.5,
            "thermal": 38.25,
        }
        assert stats.power_rails_mw == {
            "VDD_IN": PowerRail(3831, 3831),
            "VDD_CPU_GPU_CV": PowerRail(433, 433),
            "VDD_SOC": PowerRail(1186, 1186),
        }

    def test_agx_xavier_rails_named_like_sensors(self) -> None:
        """Rails called GPU/CPU stay separate from the GPU@/CPU@ temperatures."""
        stats = parse_tegrastats(AGX_XAVIER_JP4)
        assert stats.cpu_percent == (0, 0) + (None,) * 6
        assert (stats.gpu_percent, stats.gpu_freq_mhz) == (0, 318)
        assert stats.temperatures_c["GPU"] == 36.0
        assert stats.temperatures_c["Tdiode"] == 38.25
        assert stats.temperatures_c["thermal"] == 36.3
        assert stats.power_rails_mw == {
            "GPU": PowerRail(155, 155),
            "CPU": PowerRail(311, 311),
            "SOC": PowerRail(1244, 1244),
            "CV": PowerRail(0, 0),
            "VDDRQ": PowerRail(155, 155),
            "SYS5V": PowerRail(1800, 1800),
        }

    def test_orin_nano_jetpack6(self) -> None:
        """A JetPack 6 line with lowercase sensors and per-GPC clocks parses."""
        stats = parse_tegrastats(ORIN_NANO_JP6)
        assert (stats.ram_used_mb, stats.ram_total_mb) == (1843, 7620)
        assert (stats.swap_used_mb, stats.swap_total_mb) == (None, None)
        assert stats.cpu_freq_mhz == (1510, 1510, 1510, 1510, 729, 729)
        assert (stats.emc_percent, stats.emc_freq_mhz) == (None, None)
        assert (stats.gpu_percent, stats.gpu_freq_mhz) == (4, 612)
        assert stats.temperatures_c == {"cpu": 47.5, "soc2": 46.093, "tj": 47.5}
        assert stats.power_rails_mw == {
            "VDD_IN": PowerRail(4797, 4797),
            "VDD_SOC": PowerRail(1397, 1397),
        }

    def test_minimal_line_with_all_cores_off(self) -> None:
        """A bare line with only off cores gives None per core and empty maps."""
        stats = parse_tegrastats(MINIMAL_OFF_CORES)
        assert stats.cpu_percent == (None, None)
        assert stats.cpu_freq_mhz == (None, None)
        assert (stats.emc_percent, stats.emc_freq_mhz) == (0, None)
        assert (stats.gpu_percent, stats.gpu_freq_mhz) == (12, None)
        assert stats.temperatures_c == {}
        assert stats.power_rails_mw == {}


class TestParseTegrastatsDetails:
    """Individual tegrastats rules: sensors, cores, rails, errors, serialisation."""

    def test_minus_256_placeholders_are_dropped(self) -> None:
        """Sensors reporting -256C (powered off) are left out of temperatures."""
        stats = parse_tegrastats(ORIN_JP5)
        for name in ("CV0", "CV1", "CV2", "GPU"):
            assert name not in stats.temperatures_c

    def test_real_negative_temperature_is_kept(self) -> None:
        """A genuine sub-zero reading is not confused with the -256C placeholder."""
        stats = parse_tegrastats("RAM 1/2MB CPU@-12.5C GPU@-256C")
        assert stats.temperatures_c == {"CPU": -12.5}

    def test_off_cores_are_none_in_place(self) -> None:
        """'off' cores keep their index and read as None."""
        stats = parse_tegrastats("RAM 1/2MB CPU [off,5%@102,off]")
        assert stats.cpu_percent == (None, 5, None)
        assert stats.cpu_freq_mhz == (None, 102, None)

    def test_cpu_percent_without_clock(self) -> None:
        """A core given as bare 'N%' has a percent and no frequency."""
        stats = parse_tegrastats("RAM 1/2MB CPU [7%,off]")
        assert stats.cpu_percent == (7, None)
        assert stats.cpu_freq_mhz == (None, None)

    def test_line_without_cpu_field(self) -> None:
        """A line with no CPU field yields empty per-core tuples."""
        stats = parse_tegrastats("RAM 1/2MB")
        assert stats.cpu_percent == ()
        assert stats.cpu_freq_mhz == ()

    def test_unitless_power_rails_are_milliwatts(self) -> None:
        """Old 'NAME cur/avg' rails parse as milliwatts."""
        stats = parse_tegrastats("RAM 1/2MB POM_5V_IN 1196/1100")
        assert stats.power_rails_mw == {"POM_5V_IN": PowerRail(1196, 1100)}

    def test_mw_suffixed_power_rails(self) -> None:
        """New 'NAME curmW/avgmW' rails parse to the same milliwatt values."""
        stats = parse_tegrastats("RAM 1/2MB VDD_IN 4406mW/4300mW")
        assert stats.power_rails_mw == {"VDD_IN": PowerRail(4406, 4300)}

    def test_memory_fields_are_not_rails(self) -> None:
        """RAM, SWAP and IRAM 'used/total' fields never appear as power rails."""
        stats = parse_tegrastats(NANO_JP4)
        assert not {"RAM", "SWAP", "IRAM"} & set(stats.power_rails_mw)

    def test_unknown_fields_are_ignored(self) -> None:
        """Fields from newer releases (NVENC, NVDLA, MTS) do not break parsing."""
        stats = parse_tegrastats(
            "RAM 10/20MB NVENC 1203 NVDEC off NVDLA0 off MTS fg 0% bg 0% FOO_BAR xyz"
        )
        assert (stats.ram_used_mb, stats.ram_total_mb) == (10, 20)

    def test_iram_alone_is_not_ram(self) -> None:
        """A line with only IRAM is rejected because it has no RAM field."""
        with pytest.raises(BoardParseError):
            parse_tegrastats("IRAM 0/252kB(lfb 252kB) CPU [off]")

    @pytest.mark.parametrize(
        "bad",
        [
            "",
            "garbage",
            "SWAP 0/1978MB CPU [10%@1479]",
            "RAM lots/3956MB",
            "RAM 1/2MB CPU [10%@1479,bogus]",
            "RAM 1/2MB CPU []",
            "RAM " + "9" * 5000 + "/2MB",
            "RAM 1/2MB CPU@" + "9" * 400 + "C",
        ],
    )
    def test_bad_input_raises_with_line(self, bad: str) -> None:
        """Input that is not a tegrastats line raises BoardParseError carrying it."""
        with pytest.raises(BoardParseError) as info:
            parse_tegrastats(bad)
        assert info.value.line == bad
        assert len(str(info.value)) < 300

    def test_as_dict_is_json_friendly(self) -> None:
        """as_dict uses lists and plain dicts and survives a JSON round trip."""
        data = parse_tegrastats(NANO_JP4).as_dict()
        assert json.loads(json.dumps(data)) == data
        assert data["cpu_percent"] == [10, 4, None, None]
        assert data["power_rails_mw"] == {
            "POM_5V_IN": {"current_mw": 1196, "average_mw": 1196},
            "POM_5V_GPU": {"current_mw": 0, "average_mw": 0},
            "POM_5V_CPU": {"current_mw": 199, "average_mw": 199},
        }
        assert data["swap_total_mb"] == 1978

    def test_tegrastats_command(self) -> None:
        """The tegrastats argv carries the interval in milliseconds."""
        assert tegrastats_command(500) == ["tegrastats", "--interval", "500"]


_FRAGMENTS = st.sampled_from(
    [
        "RAM ",
        "SWAP ",
        "CPU [",
        "]",
        ",",
        "off",
        "%",
        "@",
        "@[",
        "C",
        "mW",
        "/",
        "MB",
        " ",
        "EMC_FREQ ",
        "GR3D_FREQ ",
        "VDD_IN ",
        "-256",
        "-",
        ".",
        "0",
        "12",
        "9" * 500,
        "\x00",
        "\n",
    ]
)


_THROTTLED_FRAGMENTS = st.sampled_from(["throttled=", "0x", "0", "f", "F", " ", "\n", "g"])


def _outcome(parse: Callable[[str], T], text: str) -> T | BoardParseError:
    # Returning the error keeps the assertions outside any except block.
    try:
        return parse(text)
    except BoardParseError as exc:
        return exc


class TestParsersNeverCrash:
    """Property tests: parsers fail only with BoardParseError."""

    @given(st.text())
    def test_throttled_arbitrary_text(self, text: str) -> None:
        """Arbitrary text either parses or raises BoardParseError carrying it."""
        outcome = _outcome(parse_throttled, text)
        if isinstance(outcome, BoardParseError):
            assert outcome.line == text

    @given(st.text())
    def test_tegrastats_arbitrary_text(self, text: str) -> None:
        """Arbitrary text either parses or raises BoardParseError carrying it."""
        outcome = _outcome(parse_tegrastats, text)
        if isinstance(outcome, BoardParseError):
            assert outcome.line == text

    @given(st.lists(_FRAGMENTS | st.text(max_size=3), max_size=40).map("".join))
    def test_tegrastats_near_miss_text(self, text: str) -> None:
        """Text built from tegrastats tokens parses to JSON-safe data or raises BoardParseError."""
        outcome = _outcome(parse_tegrastats, text)
        if isinstance(outcome, BoardParseError):
            assert outcome.line == text
        else:
            json.dumps(outcome.as_dict(), allow_nan=False)

    @given(st.lists(_THROTTLED_FRAGMENTS).map("".join))
    def test_throttled_near_miss_text(self, text: str) -> None:
        """Text built from get_throttled tokens parses or raises BoardParseError."""
        outcome = _outcome(parse_throttled, text)
        if isinstance(outcome, BoardParseError):
            assert outcome.line == text
        else:
            assert 0 <= outcome.raw <= 0xFFFFFFFF


class TestDetectBoard:
    """Board detection from device-tree model and L4T release files."""

    @staticmethod
    def _model(tmp_path: Path, content: bytes) -> Path:
        path = tmp_path / "model"
        path.write_bytes(content)
        return path

    def test_raspberry_pi(self, tmp_path: Path) -> None:
        """A NUL-terminated Raspberry Pi model string means raspberry_pi."""
        model = self._model(tmp_path, b"Raspberry Pi 4 Model B Rev 1.4\x00")
        assert detect_board(model, tmp_path / "no_release") == "raspberry_pi"

    def test_jetson_by_model(self, tmp_path: Path) -> None:
        """A NUL-terminated NVIDIA Jetson model string means jetson."""
        model = self._model(tmp_path, b"NVIDIA Jetson Nano Developer Kit\x00")
        assert detect_board(model, tmp_path / "no_release") == "jetson"

    def test_jetson_by_tegra_release(self, tmp_path: Path) -> None:
        """An unfamiliar model with an L4T release file still means jetson."""
        model = self._model(tmp_path, b"Acme Carrier Board\x00")
        release = tmp_path / "nv_tegra_release"
        release.write_text("# R32 (release), REVISION: 7.1\n")
        assert detect_board(model, release) == "jetson"

    def test_generic_model(self, tmp_path: Path) -> None:
        """Any other model string without a release file means generic."""
        model = self._model(tmp_path, b"QEMU Virtual Machine\x00")
        assert detect_board(model, tmp_path / "no_release") == "generic"

    def test_missing_files(self, tmp_path: Path) -> None:
        """No model file and no release file means generic."""
        assert detect_board(tmp_path / "missing", tmp_path / "no_release") == "generic"

    def test_unreadable_model(self, tmp_path: Path) -> None:
        """A model path that cannot be read as a file means generic."""
        assert detect_board(tmp_path, tmp_path / "no_release") == "generic"

    def test_non_utf8_model(self, tmp_path: Path) -> None:
        """Invalid UTF-8 in the model file does not raise."""
        model = self._model(tmp_path, b"\xff\xfeRaspberry Pi 5\x00")
        assert detect_board(model, tmp_path / "no_release") == "raspberry_pi"


class TestReadPiThrottled:
    """Running vcgencmd through an injectable runner."""

    def test_injected_runner(self) -> None:
        """The runner receives the vcgencmd argv and its output is parsed."""
        calls: list[list[str]] = []

        def run(command: Sequence[str]) -> str:
            calls.append(list(command))
            return "throttled=0x50005\n"

        result = read_pi_throttled(run)
        assert calls == [["vcgencmd", "get_throttled"]]
        assert result == parse_throttled("throttled=0x50005")

    def test_missing_command(self) -> None:
        """A runner that cannot find vcgencmd yields BoardReadError with the command."""

        def run(command: Sequence[str]) -> str:
            raise FileNotFoundError(2, "No such file or directory", command[0])

        with pytest.raises(BoardReadError) as info:
            read_pi_throttled(run)
        assert info.value.command == ("vcgencmd", "get_throttled")
        assert "not found" in str(info.value)
        assert isinstance(info.value.__cause__, FileNotFoundError)

    @pytest.mark.parametrize(
        "error",
        [
            subprocess.CalledProcessError(255, ["vcgencmd", "get_throttled"]),
            subprocess.TimeoutExpired(["vcgencmd", "get_throttled"], 2.0),
            PermissionError(13, "Permission denied"),
        ],
    )
    def test_failing_command(self, error: Exception) -> None:
        """Non-zero exit, timeout or OS errors become BoardReadError."""

        def run(command: Sequence[str]) -> str:
            raise error

        with pytest.raises(BoardReadError) as info:
            read_pi_throttled(run)
        assert info.value.command == ("vcgencmd", "get_throttled")
        assert info.value.__cause__ is error

    def test_garbage_output(self) -> None:
        """Output that is not get_throttled format raises BoardParseError, not BoardReadError."""
        with pytest.raises(BoardParseError) as info:
            read_pi_throttled(lambda command: "VCHI initialization failed\n")
        assert info.value.line == "VCHI initialization failed\n"

    def test_default_runner_uses_subprocess_with_timeout(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without a runner, subprocess.run is called with a 2 s timeout and check."""
        seen: dict[str, Any] = {}

        def fake_run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
            seen["args"] = args
            seen.update(kwargs)
            return subprocess.CompletedProcess(args, 0, stdout="throttled=0x0\n", stderr="")

        monkeypatch.setattr(subprocess, "run", fake_run)
        assert read_pi_throttled().raw == 0
        assert seen["args"] == ["vcgencmd", "get_throttled"]
        assert seen["timeout"] == 2.0
        assert seen["check"] is True

    def test_default_runner_missing_binary(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With an empty PATH the real runner reports vcgencmd as not found."""
        monkeypatch.setenv("PATH", str(tmp_path))
        with pytest.raises(BoardReadError) as info:
            read_pi_throttled()
        assert info.value.command == ("vcgencmd", "get_throttled")
