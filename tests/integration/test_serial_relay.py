"""The agent and the real firmware, running in the AVR emulator behind a pseudo-terminal.

The agent opens the emulator's pty exactly as it opens /dev/ttyACM0 on a board: through a
stable symlink, which is re-pointed when the emulator restarts (as udev does on a replug).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from devtools.emulated_board import EmulatedBoard, build_firmware
from devtools.localbroker import PrivateBroker
from edge_contract.card import Golden, ModelCard, TensorSpec, card_path_for
from tests.integration.harness import ManagedProcess, Recorder, agent_process, wait_until

PIPELINE = json.dumps(
    [{"name": "light", "channel": 0, "threshold": 0.5, "hysteresis": 0.05, "actuator": 5}]
)
FAILSAFE_MS = 1500


@pytest.fixture
def board(tmp_path: Path) -> Iterator[EmulatedBoard]:
    with EmulatedBoard(log_path=tmp_path / "sim.log") as emulated:
        yield emulated


def _link(tmp_path: Path, board: EmulatedBoard) -> Path:
    link = tmp_path / "ttyEMU0"
    link.unlink(missing_ok=True)
    link.symlink_to(board.pty_path)
    return link


def _serial_agent(
    tmp_path: Path, port: int, tty: Path, device_id: str, **settings: str
) -> ManagedProcess:
    """The agent on the emulated board's pty; ``settings`` add to or replace the defaults."""
    return agent_process(
        tmp_path,
        port,
        device_id,
        **{
            "serial__port": str(tty),
            "serial__reset_wait_s": "0.05",
            "serial__reconnect_max_s": "1",
            "serial__failsafe_ms": str(FAILSAFE_MS),
            "pipelines": PIPELINE,
            **settings,
        },
    )


def _events(recorder: Recorder, name: str) -> list[dict[str, object]]:
    return [b for b in recorder.bodies("/events") if b.get("event") == name]


class TestAgentWithFirmware:
    def test_handshake_sensor_to_pipeline_to_pin(
        self,
        tmp_path: Path,
        broker: PrivateBroker,
        board: EmulatedBoard,
        processes: list[ManagedProcess],
    ) -> None:
        """Handshake; an ADC value reaches the pipeline, whose result drives pin B5 and back."""
        recorder = Recorder(broker.port, "fleet/pi-s1/#").start()
        board.set_adc(0, 500)
        processes.append(
            _serial_agent(tmp_path, broker.port, _link(tmp_path, board), "pi-s1").start()
        )

        connected = wait_until(lambda: _events(recorder, "serial_connected"), 20, "handshake")
        assert connected[0]["firmware_version"] is not None
        board.set_adc(0, 4000)  # 4.0 V of 5 V: raw 818, scaled 0.8, over the threshold
        board.wait_for_pin(5, 1, timeout=5)
        board.set_adc(0, 1000)
        board.wait_for_pin(5, 0, timeout=5)
        # A reading that arrives during the handshake may find the board not yet connected (no
        # result event then); the results that drove the pin up and down must both be there.
        wait_until(
            lambda: (
                [r["label"] for r in _events(recorder, "pipeline_result")][-2:] == ["high", "low"]
            ),
            10,
            "pipeline results high then low",
        )
        telemetry = wait_until(
            lambda: [
                b
                for b in recorder.bodies("/telemetry")
                if b.get("serial", {}).get("frames_in", 0) > 5
            ],
            15,
            "serial telemetry",
        )[-1]
        serial = telemetry["serial"]
        assert serial["connected"] is True
        assert serial["rtt_ms_p50"] is not None and serial["rtt_ms_p99"] >= serial["rtt_ms_p50"]
        assert telemetry["pipelines"]["light"]["inputs"] > 0
        assert telemetry["health"]["subsystems"]["serial"]["status"] == "ok"
        recorder.stop()

    def test_killed_agent_leaves_the_pin_safe(
        self,
        tmp_path: Path,
        broker: PrivateBroker,
        board: EmulatedBoard,
        processes: list[ManagedProcess],
    ) -> None:
        """kill -9 of the agent: without heartbeats the board drops the pin within fail-safe."""
        board.set_adc(0, 4500)
        agent = _serial_agent(tmp_path, broker.port, _link(tmp_path, board), "pi-s2").start()
        processes.append(agent)
        board.wait_for_pin(5, 1, timeout=20)

        agent.kill()
        killed_at = time.monotonic()
        board.wait_for_pin(5, 0, timeout=FAILSAFE_MS / 1000 + 2)
        # The last heartbeat went out at most one heartbeat period before the kill.
        assert time.monotonic() - killed_at <= FAILSAFE_MS / 1000 + 0.6

    def test_agent_reconnects_after_the_emulator_restarts(
        self,
        tmp_path: Path,
        broker: PrivateBroker,
        board: EmulatedBoard,
        processes: list[ManagedProcess],
    ) -> None:
        """Emulator killed and restarted: the agent reconnects and drives the pin again."""
        recorder = Recorder(broker.port, "fleet/pi-s3/events").start()
        board.set_adc(0, 4500)
        tty = _link(tmp_path, board)
        processes.append(_serial_agent(tmp_path, broker.port, tty, "pi-s3").start())
        board.wait_for_pin(5, 1, timeout=20)

        board.kill()
        wait_until(lambda: _events(recorder, "serial_disconnected"), 10, "disconnect event")
        board.restart()
        _link(tmp_path, board)
        board.wait_for_pin(5, 1, timeout=20)
        # The pin follows at once; the event goes through the agent's queue and the broker.
        wait_until(
            lambda: len(_events(recorder, "serial_connected")) >= 2, 10, "second connect event"
        )
        recorder.stop()

    def test_line_noise_does_not_disturb_the_next_frame(
        self,
        tmp_path: Path,
        broker: PrivateBroker,
        board: EmulatedBoard,
        processes: list[ManagedProcess],
    ) -> None:
        """Garbage and a corrupt frame towards the agent are counted and dropped; readings flow."""
        recorder = Recorder(broker.port, "fleet/pi-s4/#").start()
        board.set_adc(0, 500)
        processes.append(
            _serial_agent(tmp_path, broker.port, _link(tmp_path, board), "pi-s4").start()
        )
        wait_until(lambda: _events(recorder, "serial_connected"), 20, "handshake")

        board.inject(bytes.fromhex("13 37 ff 00 00 05 02 03 04 05 06 07 00 de ad be ef"))
        board.set_adc(0, 4500)
        board.wait_for_pin(5, 1, timeout=10)
        telemetry = wait_until(
            lambda: [
                b
                for b in recorder.bodies("/telemetry")
                if b.get("serial", {}).get("framing_errors", 0)
                + b.get("serial", {}).get("crc_errors", 0)
                > 0
            ],
            15,
            "errors counted",
        )[-1]
        assert telemetry["serial"]["connected"] is True
        recorder.stop()

    def test_firmware_from_another_spec_is_refused(
        self, tmp_path: Path, broker: PrivateBroker, processes: list[ManagedProcess]
    ) -> None:
        """A board speaking another protocol hash is refused and never actuated."""
        other = build_firmware("build/otherspec", "-DPROTOCOL_HASH_OVERRIDE=0x12345678")
        recorder = Recorder(broker.port, "fleet/pi-s5/#").start()
        with EmulatedBoard(firmware=other, log_path=tmp_path / "other.log") as foreign:
            foreign.set_adc(0, 4500)
            processes.append(
                _serial_agent(tmp_path, broker.port, _link(tmp_path, foreign), "pi-s5").start()
            )
            refused = wait_until(lambda: _events(recorder, "serial_refused"), 20, "refusal")
            assert "0x12345678" in str(refused[0]["reason"])
            time.sleep(1.5)
            assert foreign.pin_state(5) == 0
            assert not _events(recorder, "serial_connected")
        recorder.stop()


def _window_mean_model(directory: Path, window: int) -> Path:
    """A real ONNX classifier over a window of scaled readings: ``high`` when their mean is
    over 0.5 (logit 40 * (mean - 0.5) against 0), with its card and golden check."""
    weights = np.zeros((window, 2), dtype=np.float32)
    weights[:, 1] = 40.0 / window
    bias = np.array([0.0, -20.0], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["readings", "w"], ["z"]),
            helper.make_node("Add", ["z", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["scores"], axis=-1),
        ],
        "window_mean",
        [helper.make_tensor_value_info("readings", TensorProto.FLOAT, ["batch", window])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = directory / "window-mean.onnx"
    onnx.save(model, str(path))
    golden_in = [[0.75] * window]
    high = 1 / (1 + np.exp(-10.0))  # logit 40 * 0.25 = 10 for the high class
    card = ModelCard(
        name="window-mean",
        version="1",
        runtime="onnx",
        inputs=(TensorSpec(name="readings", dtype="float32", shape=(-1, window)),),
        outputs=(TensorSpec(name="scores", dtype="float32", shape=(-1, 2)),),
        labels=("low", "high"),
        golden=Golden(
            inputs={"readings": golden_in},
            outputs={"scores": [[float(1 - high), float(high)]]},
            atol=1e-5,
        ),
    )
    card_path_for(path).write_text(card.model_dump_json())
    return path


class TestModelPipelineOnTheBoard:
    def test_a_window_of_readings_through_an_onnx_model_drives_the_pin(
        self,
        tmp_path: Path,
        broker: PrivateBroker,
        board: EmulatedBoard,
        processes: list[ManagedProcess],
    ) -> None:
        """Sensor frames -> a window of 4 scaled readings -> a real ONNX model -> pin B5."""
        model = _window_mean_model(tmp_path, window=4)
        pipeline = [
            {
                "name": "level",
                "channel": 0,
                "window": 4,
                "model": "window-mean",
                "on_label": "high",
                "actuator": 5,
            }
        ]
        recorder = Recorder(broker.port, "fleet/pi-s6/#", client_id="rec-s6").start()
        board.set_adc(0, 1000)
        agent = _serial_agent(
            tmp_path,
            broker.port,
            _link(tmp_path, board),
            "pi-s6",
            models=json.dumps([{"path": str(model)}]),
            pipelines=json.dumps(pipeline),
            inference__rest="false",
        ).start()
        processes.append(agent)
        wait_until(lambda: _events(recorder, "serial_connected"), 20, "handshake")
        board.set_adc(0, 4000)  # scaled 0.8: the window's mean goes over 0.5
        board.wait_for_pin(5, 1, timeout=10)
        board.set_adc(0, 1000)  # scaled 0.2
        board.wait_for_pin(5, 0, timeout=10)

        def model_results() -> list[dict[str, object]]:
            return [r for r in _events(recorder, "pipeline_result") if r["model"] == "window-mean"]

        # The events of the two actuations, in order: the window's mean crossed 0.5 each way.
        wait_until(
            lambda: [r["label"] for r in model_results()][-2:] == ["high", "low"],
            10,
            "model results high then low",
        )
        assert any(r["label"] == "high" and float(str(r["score"])) > 0.99 for r in model_results())
        recorder.stop()
