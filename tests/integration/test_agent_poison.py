"""Poison messages on every topic the agent subscribes to, on a real Mosquitto and a real agent.

The agent subscribes to ``fleet/<id>/cmd/+``, ``fleet/<id>/desired`` and ``fleet/<id>/file``
(OTA on, with a real TUF root and no controller) and ``fleet/<id>/input/+`` (an MQTT
pipeline on the built-in threshold model). Each poison kind of issue 21 goes to each topic,
retained and not; the agent keeps running, still answers ``ping``, still runs the pipeline,
fetches nothing from the repository for junk desired states, and its ``rejected`` counts
(the ``health`` command's reply, and telemetry) go up by exactly the number refused.

The restart loop: retained poison on those topics (a command whose response topic has
wildcards among them) and the agent started three times, as systemd's ``Restart=`` would;
it comes up every time.
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from devtools.localbroker import PrivateBroker
from fleet.release.repo import Repository
from tests.integration.harness import ManagedProcess, Recorder, agent_process, wait_until

DEVICE = "pi-poison"
PIPELINE = "p"
POISON: dict[str, bytes] = {
    "deep": b"[" * 6000 + b"]" * 6000,
    "deep_object": b'{"a":' * 1500 + b"1" + b"}" * 1500,
    "huge_number": b'{"inputs": [1' + b"0" * 400 + b"]}",
    "negative_huge": b'{"counter": -1' + b"0" * 30 + b"}",
    "float_overflow": b'{"inputs": [1e400]}',
    "wrong_types": b'{"inputs": "x", "signed": 1, "signatures": "y"}',
    "bad_timestamp": b'{"ts": "bad", "expires": "yesterday"}',
    "far_future": b'{"ts": "9999-12-31T23:59:59Z", "expires": "9999-12-31T23:59:59Z"}',
    "not_utf8": b"\xff\xfe{\x80}",
    "empty": b"",
    "oversized": b'{"a": "' + b"x" * (5 * 1024 * 1024) + b'"}',
    "wrong_shape": b'[{"a": 1}, 2, "three"]',
}
# Where an empty body is not a refusal: a ping without arguments; a cleared retained desired.
EMPTY_IS_FINE = {"cmd/ping", "desired"}
TOPICS = ("cmd/x", "cmd/ping", "desired", "file", f"input/{PIPELINE}")


def _client(port: int, name: str) -> paho.Client:
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"test-{name}-{port}",
        protocol=paho.MQTTv5,
    )
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


@dataclass
class Bench:
    """One agent with OTA and an MQTT pipeline, and the clients that talk to it."""

    tmp: Path
    broker: PrivateBroker
    root: Path
    device: dict[str, Recorder]  # by topic suffix: what the agent publishes
    replies: Recorder
    client: paho.Client
    agent: ManagedProcess | None = None
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def start_agent(self) -> ManagedProcess:
        pipelines = [
            {"name": PIPELINE, "source": "mqtt", "model": "threshold", "publish_results": True}
        ]
        self.agent = agent_process(
            self.tmp,
            self.broker.port,
            DEVICE,
            ota__enabled="true",
            ota__trusted_root=str(self.root),
            inference__rest="false",
            pipelines=json.dumps(pipelines),
        ).start()
        return self.agent

    def publish(self, suffix: str, payload: bytes, *, retain: bool = False) -> None:
        info = self.client.publish(f"fleet/{DEVICE}/{suffix}", payload, qos=1, retain=retain)
        info.wait_for_publish(10)

    def command(self, name: str, body: bytes = b"{}", timeout: float = 20) -> dict[str, Any]:
        """Send ``cmd/<name>`` and return its reply (each request its own response topic)."""
        n = next(self._ids)
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = f"test/replies/{n}"
        props.CorrelationData = str(n).encode()
        self.client.publish(f"fleet/{DEVICE}/cmd/{name}", body, qos=1, properties=props)
        got = wait_until(lambda: self.replies.bodies(f"/{n}"), timeout, f"reply to {name}")
        reply: dict[str, Any] = got[0]
        return reply

    def rejected(self) -> dict[str, Any]:
        counts: dict[str, Any] = self.command("health")["rejected"]
        return counts

    def bodies(self, suffix: str) -> list[dict[str, Any]]:
        return self.device[suffix].bodies(f"/{suffix}")

    def online_count(self) -> int:
        return sum(1 for b in self.bodies("status") if b.get("state") == "online")


def _bench(tmp: Path, broker: PrivateBroker) -> Bench:
    repo = Repository.init(tmp / "repo")
    root = repo.directory / "metadata" / "1.root.json"
    assert root.is_file(), root
    # One recorder per topic the agent publishes on: the harness's recorder parses what it
    # gets with plain json.loads, which the poison on the agent's own topics would break.
    device = {
        suffix: Recorder(broker.port, f"fleet/{DEVICE}/{suffix}", client_id=suffix).start()
        for suffix in ("status", "results", "telemetry", "fetch")
    }
    replies = Recorder(broker.port, "test/replies/#", client_id="replies").start()
    return Bench(tmp, broker, root, device, replies, _client(broker.port, "poisoner"))


def _stop(bench: Bench) -> None:
    if bench.agent is not None:
        bench.agent.stop()
    bench.client.loop_stop()
    bench.client.disconnect()
    for recorder in bench.device.values():
        recorder.stop()
    bench.replies.stop()


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    """One broker and one agent for the whole module: many messages, one start."""
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.fail("mosquitto is not installed: run `make test`, which installs it")
    tmp = tmp_path_factory.mktemp("poison")
    broker = PrivateBroker(tmp / "broker")
    broker.start()
    bench = _bench(tmp, broker)
    bench.start_agent()
    try:
        wait_until(bench.online_count, 30, "agent online")
        bench.command("ping", timeout=30)  # subscribed and answering
        yield bench
    finally:
        _stop(bench)
        broker.stop()


def _expected(topic: str) -> int:
    return sum(1 for kind in POISON if not (kind == "empty" and topic in EMPTY_IS_FINE))


@pytest.mark.parametrize("retain", [False, True], ids=["live", "retained"])
def test_every_poison_on_every_topic_is_refused_counted_and_survived(
    bench: Bench, retain: bool
) -> None:
    assert bench.agent is not None
    before = bench.rejected()
    results_before = len(bench.bodies("results"))
    for topic in TOPICS:
        for payload in POISON.values():
            bench.publish(topic, payload, retain=retain)
    sent = sum(_expected(topic) for topic in TOPICS)
    wait_until(
        lambda: bench.rejected()["total"] >= before["total"] + sent,
        30,
        f"{sent} more rejections",
        step=0.3,
    )
    after = bench.rejected()
    assert after["total"] == before["total"] + sent, (before, after)
    grew = {
        reason: count - before["by_reason"].get(reason, 0)
        for reason, count in after["by_reason"].items()
    }
    assert grew["unknown_command"] == _expected("cmd/x")
    assert grew["malformed_desired"] == _expected("desired")
    assert grew["bad_reply"] == _expected("file")
    assert grew["too_deep"] == 2 * 2  # cmd/ping and the pipeline, two deep kinds each

    assert bench.agent.alive
    assert bench.command("ping")["pong"] is True
    bench.publish(f"input/{PIPELINE}", b'{"inputs": [0.9]}')
    wait_until(lambda: len(bench.bodies("results")) > results_before, 10, "a pipeline result")
    assert bench.bodies("fetch") == [], "junk desired states fetched nothing"
    wait_until(
        lambda: any(
            t.get("rejected", {}).get("total") == after["total"] for t in bench.bodies("telemetry")
        ),
        10,
        "the counts in telemetry",
    )
    if retain:  # leave no retained poison for another test's agent
        for topic in TOPICS:
            bench.publish(topic, b"", retain=True)


def test_restart_loop_with_retained_poison_on_every_topic(
    tmp_path: Path, broker: PrivateBroker
) -> None:
    """systemd restarts a crashed agent; retained poison must not make that a crash loop."""
    bench = _bench(tmp_path, broker)
    try:
        wildcard = Properties(PacketTypes.PUBLISH)
        wildcard.ResponseTopic = "evil/#"  # paho refuses to publish a reply there
        bench.client.publish(
            f"fleet/{DEVICE}/cmd/x", POISON["deep"], qos=1, retain=True, properties=wildcard
        ).wait_for_publish(10)
        for topic in ("desired", "file", f"input/{PIPELINE}"):
            bench.publish(topic, POISON["deep"], retain=True)
        expected = {"bad_reply": 1, "malformed_desired": 1, "too_deep": 1, "unknown_command": 1}
        for start in range(1, 4):
            agent = bench.start_agent()
            wait_until(lambda n=start: bench.online_count() >= n, 30, f"online, start {start}")
            assert bench.command("ping", timeout=30)["pong"] is True
            wait_until(
                lambda: bench.rejected()["total"] == 4, 10, "the retained poison counted", step=0.3
            )
            assert bench.rejected()["by_reason"] == expected
            assert agent.alive
            assert agent.terminate() == 0
            log = agent.log()
            assert "Traceback" not in log, log[-3000:]
    finally:
        _stop(bench)
