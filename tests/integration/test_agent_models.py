"""The agent with models: an MQTT-sourced pipeline, results, telemetry, REST, gRPC, capture.

The real agent process runs the committed digits model against a private broker. Inputs are
rows of the held-out split published on ``fleet/<id>/input/digits``; results come back on
``fleet/<id>/results``, model metrics in telemetry, and the same model answers the local TF
Serving-compatible REST API and the v2 gRPC API (``[inference] grpc_port``). A corrupt second
model is reported and skipped, never fatal; ports in use are reported, never fatal.
"""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import tritonclient.grpc as triton
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from devtools.localbroker import PrivateBroker, free_port
from tests.integration.harness import ManagedProcess, Recorder, agent_process, wait_until

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "models" / "digits"
ROWS = 40


def _client(port: int) -> paho.Client:
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"test-publisher-{port}",
        protocol=paho.MQTTv5,
    )
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def _corrupt_copy(tmp_path: Path) -> Path:
    """A copy of the fp32 model with its middle overwritten, beside a copy of its card."""
    source = DIGITS / "digits-fp32.onnx"
    data = bytearray(source.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = b"\xff" * 64
    target = tmp_path / "broken.onnx"
    target.write_bytes(bytes(data))
    card = json.loads((DIGITS / "digits-fp32.onnx.card.json").read_text())
    card["name"] = "broken"
    (tmp_path / "broken.onnx.card.json").write_text(json.dumps(card))
    return target


def _agent(tmp_path: Path, port: int, rest_port: int, grpc_port: int) -> ManagedProcess:
    models = [{"path": str(DIGITS / "digits-int8.onnx")}, {"path": str(_corrupt_copy(tmp_path))}]
    pipelines = [
        {
            "name": "digits",
            "source": "mqtt",
            "model": "digits",
            "publish_results": True,
            "top_k": 3,
            "queue": 64,
        },
    ]
    return agent_process(
        tmp_path,
        port,
        "pi-m1",
        models=json.dumps(models),
        pipelines=json.dumps(pipelines),
        inference__port=str(rest_port),
        inference__grpc_port=str(grpc_port),
        inference__low_confidence_threshold="0.999",
    )


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


class TestAgentServesModels:
    def test_pipeline_results_telemetry_rest_and_capture(
        self, tmp_path: Path, broker: PrivateBroker, processes: list[ManagedProcess]
    ) -> None:
        rest_port, grpc_port = free_port(), free_port()
        recorder = Recorder(broker.port, "fleet/pi-m1/#").start()
        replies = Recorder(broker.port, "test/replies", client_id="replies").start()
        agent = _agent(tmp_path, broker.port, rest_port, grpc_port).start()
        processes.append(agent)
        wait_until(lambda: recorder.bodies("/status"), 30, "agent online")

        failed = wait_until(
            lambda: [b for b in recorder.bodies("/events") if b["event"] == "model_load_failed"],
            30,
            "the corrupt model reported",
        )
        assert "broken.onnx" in failed[0]["path"]

        data = np.load(DIGITS / "data" / "eval.npz")
        x, y = data["x"][:ROWS], data["y"][:ROWS]
        client = _client(broker.port)
        client.publish("fleet/pi-m1/input/digits", b"{not json", qos=1)
        for row in x:
            client.publish("fleet/pi-m1/input/digits", json.dumps({"inputs": row.tolist()}), qos=1)
        results = wait_until(
            lambda: len(recorder.bodies("/results")) >= ROWS and recorder.bodies("/results"),
            30,
            f"{ROWS} results",
        )
        labels = [int(r["label"]) for r in results[:ROWS]]
        accuracy = float(np.mean(np.array(labels) == y))
        assert accuracy >= 0.9, f"pipeline accuracy {accuracy:.2f} on {ROWS} held-out rows"
        assert all(r["model"] == "digits" and len(r["top"]) == 3 for r in results)

        # The same model answers REST, with the same label for the same row.
        url = f"http://127.0.0.1:{rest_port}/v1/models/digits:predict"
        answer = _post(url, {"instances": x[:1].tolist()})
        assert int(np.argmax(answer["predictions"][0])) == labels[0]
        # And the v2 gRPC API; its refusals are counted on the REST port's /metrics.
        with triton.InferenceServerClient(f"127.0.0.1:{grpc_port}") as grpc_client:
            pixels = triton.InferInput("pixels", [1, 64], "FP32")
            pixels.set_data_from_numpy(x[:1].astype(np.float32))
            grpc_answer = grpc_client.infer("digits", [pixels]).as_numpy("probabilities")
            assert int(np.argmax(grpc_answer[0])) == labels[0]
            assert not grpc_client.is_model_ready("broken")
        with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/metrics", timeout=10) as page:
            assert b"edge_grpc_errors_total{" in page.read()

        def telemetry_with_requests() -> dict[str, Any] | None:
            for body in reversed(recorder.bodies("/telemetry")):
                inference = body.get("inference")
                if inference and body.get("pipelines", {}).get("digits", {}).get("results"):
                    return body
            return None

        telemetry = wait_until(telemetry_with_requests, 20, "telemetry with model metrics")
        pipeline = telemetry["pipelines"]["digits"]
        assert pipeline["rejected"] == 1 and pipeline["results"] >= ROWS
        assert "load_failures" in telemetry["inference"]
        assert telemetry["inference"]["models"], "monitor snapshot is empty"

        # Low-confidence inputs were captured; upload sends them on fleet/<id>/capture.
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "test/replies"
        client.publish("fleet/pi-m1/cmd/capture", b'{"action": "list"}', qos=1, properties=props)
        listed = wait_until(lambda: replies.bodies("test/replies"), 10, "capture list reply")
        assert listed[0]["ok"] is True and listed[0]["count"] > 0
        client.publish("fleet/pi-m1/cmd/capture", b'{"action": "upload"}', qos=1, properties=props)
        uploaded = wait_until(
            lambda: len(replies.bodies("test/replies")) >= 2 and replies.bodies("test/replies")[1],
            10,
            "capture upload reply",
        )
        assert uploaded["ok"] is True and uploaded["uploaded"] > 0
        captured = wait_until(lambda: recorder.bodies("pi-m1/capture"), 10, "captured inputs")
        assert captured[0]["model"] == "digits" and captured[0]["inputs_npz_b64"]

        assert agent.alive
        assert agent.terminate() == 0
        # The daemon's default: its ONNX models run on the process's shared thread pools.
        lines = [line for line in agent.log().splitlines() if line.startswith("{")]
        pools = [json.loads(line) for line in lines if '"inference.thread_pools"' in line]
        assert [entry["mode"] for entry in pools] == ["shared"], agent.log()[-2000:]
        client.loop_stop()
        client.disconnect()
        recorder.stop()
        replies.stop()


class TestRestPortInUse:
    def test_agent_reports_the_port_and_keeps_serving_pipelines(
        self, tmp_path: Path, broker: PrivateBroker, processes: list[ManagedProcess]
    ) -> None:
        """REST and gRPC ports held by another process are events and a degraded health, not
        a crash."""
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            taken = holder.getsockname()[1]
            recorder = Recorder(broker.port, "fleet/pi-m2/#", client_id="rec-m2").start()
            pipelines = [
                {"name": "digits", "source": "mqtt", "model": "digits", "publish_results": True}
            ]
            agent = agent_process(
                tmp_path,
                broker.port,
                "pi-m2",
                models=json.dumps([{"path": str(DIGITS / "digits-fp32.onnx")}]),
                pipelines=json.dumps(pipelines),
                inference__port=str(taken),
                inference__grpc_port=str(taken),
            ).start()
            processes.append(agent)

            def failures() -> list[str]:
                events = recorder.bodies("/events")
                return [b["reason"] for b in events if b["event"] == "inference_api_failed"]

            failed = wait_until(
                lambda: len(failures()) >= 2 and failures(),
                30,
                "inference_api_failed events for gRPC and REST",
            )
            assert [f"127.0.0.1:{taken}" in reason for reason in failed] == [True, True]
            assert sorted(reason.split(" on ")[0] for reason in failed) == [
                "cannot serve gRPC",
                "cannot serve the REST API",
            ]
            client = _client(broker.port)
            row = np.load(DIGITS / "data" / "eval.npz")["x"][0]
            client.publish("fleet/pi-m2/input/digits", json.dumps(row.tolist()), qos=1)
            wait_until(lambda: recorder.bodies("/results"), 20, "a pipeline result")
            telemetry = wait_until(lambda: recorder.bodies("/telemetry"), 20, "telemetry")
            subsystems = telemetry[-1]["health"]["subsystems"]
            assert subsystems["inference_api"]["status"] == "degraded"
            assert "gRPC" in subsystems["inference_api"]["reason"]
            assert agent.alive
            client.loop_stop()
            client.disconnect()
            recorder.stop()
