"""The controller's REST API end to end: a real ``fleet serve`` (OTA on, signed digits releases)
on a real Mosquitto with two real agents, spoken to by a real HTTP client (urllib) with a
viewer and an operator token; and its OpenAPI document, fetched from the live server,
validated and exercised by schemathesis (zero 5xx, every response as documented).

One bench for the module (starting a controller and two agents costs more than any scenario).
The tests do not depend on their order (xdist may split them): only the action scenario
accepts, deploys and rolls out, and the others expect nothing of what it did. The no-token
policy has its own controllers (loopback: read only; beyond loopback: refused at start).
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from pydantic import BaseModel
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from devtools.localbroker import PrivateBroker
from edge_contract.controller import (
    AcceptReply,
    DeployReply,
    DeviceReply,
    DevicesReply,
    Refusal,
    RollbackReply,
    RolloutHistoryReply,
    RolloutReply,
    RolloutsReply,
    StatusReply,
)
from edge_contract.http_api import (
    EventsReply,
    ReleasesReply,
    TelemetrySeriesReply,
)
from fleet.http.auth import Role, token_line
from fleet.store import SqliteFleetStore
from tests.integration.harness import REPO, start_controller, wait_until
from tests.integration.ota_harness import Fleet, free_port, ota_fleet

pytestmark = pytest.mark.slow

AGENTS = ["api-1", "api-2"]
VIEWER, OPERATOR = "flt_test-viewer-token", "flt_test-operator-token"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any
    raw: bytes


def call(
    base: str,
    method: str,
    path: str,
    *,
    token: str | None = None,
    body: Any = None,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """One real HTTP request; any status comes back (urllib raises for 4xx and 5xx)."""
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    if body is not None:
        data = json.dumps(body).encode()
    if data is not None:
        sent.setdefault("Content-Type", "application/json")
    request = urllib.request.Request(base + path, data=data, method=method, headers=sent)
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            status, got, raw = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        status, got, raw = error.code, dict(error.headers), error.read()
    try:
        decoded = json.loads(raw) if raw else None
    except ValueError:
        decoded = None
    return Answer(status, {k.lower(): v for k, v in got.items()}, decoded, raw)


class Bench:
    def __init__(self, fleet: Fleet, base: str, db: Path) -> None:
        self.fleet = fleet
        self.base = base
        self.db = db

    def get(self, path: str, token: str | None = VIEWER) -> Answer:
        return call(self.base, "GET", path, token=token)

    def post(self, path: str, body: Any = None, token: str | None = OPERATOR) -> Answer:
        return call(self.base, "POST", path, token=token, body=body, data=b"")

    def ok(self, answer: Answer, model: type[BaseModel], status: int = 200) -> Any:
        """The answer's body as ``model`` (strict: every field as the contract says)."""
        assert answer.status == status, (answer.status, answer.body)
        assert answer.headers["content-type"].startswith("application/json")
        return model.model_validate(answer.body)

    def operator_log(self) -> list[tuple[str | None, str, str]]:
        store = SqliteFleetStore(self.db)
        try:
            return [(e.operator, e.method, e.outcome) for e in store.operator_log(200)]
        finally:
            store.close()

    def wait_versions(self, version: str, devices: list[str], timeout: float = 45) -> None:
        wait_until(
            lambda: all(self.fleet.active_version_of(d) == version for d in devices),
            timeout,
            f"{devices} report digits@{version} active",
            step=0.2,
        )


def refused(answer: Answer, status: int) -> Refusal:
    """A 4xx answer is a JSON ``Refusal``, never a traceback."""
    assert answer.status == status, (answer.status, answer.raw[:300])
    assert answer.headers["content-type"].startswith("application/json")
    assert b"Traceback" not in answer.raw
    return Refusal.model_validate(answer.body)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    tmp = tmp_path_factory.mktemp("http-api")
    tokens = tmp / "tokens"
    lines = [
        token_line("grafana", Role.VIEWER, VIEWER),
        token_line("alice", Role.OPERATOR, OPERATOR),
    ]
    tokens.write_text("\n".join(lines) + "\n")
    port = free_port()
    broker = PrivateBroker(tmp / "broker")
    broker.start()
    try:
        with ota_fleet(
            tmp,
            broker,
            record="fleet/#",
            HTTP__LISTEN=f"127.0.0.1:{port}",
            HTTP__TOKENS_FILE=str(tokens),
            ROLLOUTS__TICK_S="0.5",
        ) as fleet:
            for device in AGENTS:
                fleet.start_agent_as(device)
            bench = Bench(fleet, f"http://127.0.0.1:{port}", tmp / "fleet.sqlite3")

            def known() -> bool:
                for device in AGENTS:
                    shown = bench.get(f"/api/v1/devices/{device}")
                    if shown.status != 200 or shown.body["device"]["reported"] is None:
                        return False
                return True

            wait_until(known, 40, "both agents and their reported state known", step=0.3)
            yield bench
    finally:
        broker.stop()


def test_1_every_read_answers_with_its_model(bench: Bench) -> None:
    listed = bench.ok(bench.get("/api/v1/devices"), DevicesReply)
    assert [d.device_id for d in listed.devices] == AGENTS
    waiting = [d.device_id for d in listed.devices if d.admission == "pending"]
    pending = bench.ok(bench.get("/api/v1/devices?state=pending"), DevicesReply)
    assert [d.device_id for d in pending.devices] == waiting
    first = bench.ok(bench.get("/api/v1/devices?limit=1"), DevicesReply)
    assert [d.device_id for d in first.devices] == ["api-1"]
    online = bench.ok(bench.get("/api/v1/devices?state=online"), DevicesReply)
    assert [d.device_id for d in online.devices] == AGENTS
    assert bench.ok(bench.get("/api/v1/devices?state=offline"), DevicesReply).devices == []
    selected = bench.ok(bench.get("/api/v1/devices?select=device%3Dapi-2"), DevicesReply)
    assert [d.device_id for d in selected.devices] == ["api-2"]
    assert selected.select == "device=api-2"

    shown = bench.ok(bench.get("/api/v1/devices/api-1?events=5"), DeviceReply)
    assert shown.device.summary.device_id == "api-1" and shown.device.status is not None

    def charted() -> TelemetrySeriesReply | None:
        series = bench.ok(
            bench.get("/api/v1/devices/api-1/telemetry?points=30"), TelemetrySeriesReply
        )
        return series if series.samples >= 2 else None

    series: TelemetrySeriesReply = wait_until(charted, 20, "two telemetry samples charted")
    assert len(series.buckets) <= 30 and 0 < series.until - series.since <= 3600
    assert any(b.cpu_percent is not None for b in series.buckets)
    assert any(b.memory_percent is not None for b in series.buckets)
    now = series.until
    narrow = bench.get(f"/api/v1/devices/api-1/telemetry?since={now - 600}&until={now}&points=2")
    assert len(bench.ok(narrow, TelemetrySeriesReply).buckets) <= 2

    events = bench.ok(bench.get("/api/v1/devices/api-1/events?limit=2"), EventsReply)
    assert events.device_id == "api-1" and len(events.events) <= 2
    if events.next_before is not None:
        older = bench.get(f"/api/v1/devices/api-1/events?limit=2&before={events.next_before}")
        assert all(e.id < events.next_before for e in bench.ok(older, EventsReply).events)

    releases = bench.ok(bench.get("/api/v1/models"), ReleasesReply)
    assert [(r.model, r.version) for r in releases.releases] == [("digits", "1"), ("digits", "2")]
    [variant] = releases.releases[0].variants
    assert variant.hardware == ["generic"] and variant.length > 0 and len(variant.sha256) == 64

    bench.ok(bench.get("/api/v1/rollouts?limit=5"), RolloutsReply)
    status = bench.ok(bench.get("/api/v1/status"), StatusReply)
    assert status.rejected.total >= 0


def test_2_a_token_is_needed_and_only_an_operator_acts(bench: Bench) -> None:
    before = bench.ok(bench.get("/api/v1/devices"), DevicesReply)
    for token in (None, "flt_wrong", VIEWER + "x"):
        answer = bench.get("/api/v1/devices", token=token)
        assert refused(answer, 401).kind == "Unauthorized"
        assert answer.headers["www-authenticate"].startswith("Bearer")
    assert refused(bench.post("/api/v1/devices/api-1/accept", token=None), 401)
    for path, body in [
        ("/api/v1/devices/api-1/accept", None),
        ("/api/v1/deploy", {"model": "digits", "version": "1", "devices": ["api-1"]}),
        ("/api/v1/rollback", {"device_id": "api-1"}),
        ("/api/v1/rollouts", {"model": "digits", "version": "2", "select": "*", "stages": "1"}),
        ("/api/v1/rollouts/r-00000000/abort", None),
    ]:
        assert refused(bench.post(path, body, token=VIEWER), 403).kind == "Forbidden"
    # The viewer's refusals changed nothing: no admission, nothing recorded as theirs.
    after = bench.ok(bench.get("/api/v1/devices"), DevicesReply)
    assert [d.admission for d in after.devices] == [d.admission for d in before.devices]
    assert all(operator != "http:grafana" for operator, _m, _o in bench.operator_log())


def test_3_bad_input_is_a_json_4xx(bench: Bench) -> None:
    base = bench.base
    garbage = call(base, "POST", "/api/v1/deploy", token=OPERATOR, data=b'{"model": "digits",')
    assert refused(garbage, 422).kind == "ValidationError"
    not_object = call(base, "POST", "/api/v1/deploy", token=OPERATOR, data=b"[1, 2]")
    refused(not_object, 422)
    extra = {"model": "digits", "version": "1", "devices": [], "force": True}
    assert "force" in refused(bench.post("/api/v1/deploy", extra), 422).error
    wrong_type = {"model": "digits", "version": 1}
    assert "version" in refused(bench.post("/api/v1/deploy", wrong_type), 422).error
    unknown = refused(bench.get("/api/v1/devices/ghost"), 404)
    assert unknown.kind == "UnknownDeviceError" and unknown.device_id == "ghost"
    refused(bench.get("/api/v1/devices/ghost/telemetry"), 404)
    refused(bench.get("/api/v1/devices/ghost/events"), 404)
    refused(bench.post("/api/v1/devices/ghost/accept"), 404)
    refused(bench.get("/api/v1/devices/Not%20An%20Id"), 422)
    refused(bench.get("/api/v1/rollouts/r-12345678"), 404)
    refused(bench.get("/api/v1/rollouts/r-12345678/history"), 404)
    refused(bench.post("/api/v1/rollouts/r-12345678/pause"), 404)
    refused(bench.get("/api/v1/rollouts/not-an-id"), 422)
    bad_selector = refused(bench.get("/api/v1/devices?select=site%3D%3D%3Dlab%2C%21"), 400)
    assert bad_selector.kind == "SelectorError"
    bad_rollout = {"model": "digits", "version": "2", "select": "site===", "stages": "1"}
    refused(bench.post("/api/v1/rollouts", bad_rollout), 400)
    no_release = {"model": "digits", "version": "99", "devices": ["api-1"]}
    refused(bench.post("/api/v1/deploy", no_release), 400)
    refused(bench.get("/api/v1/devices/api-1/telemetry?since=200&until=100"), 400)
    refused(bench.get("/api/v1/devices/api-1/telemetry?points=0"), 422)
    refused(bench.get("/api/v1/devices/api-1/telemetry?since=nan"), 422)
    refused(bench.get("/api/v1/devices?limit=-1"), 422)
    refused(bench.get("/api/v1/devices?state=asleep"), 422)
    huge = b'{"model": "' + b"x" * 200_000 + b'"}'
    too_large = call(base, "POST", "/api/v1/deploy", token=OPERATOR, data=huge)
    assert refused(too_large, 413).kind == "PayloadTooLarge"
    assert refused(call(base, "GET", "/api/v1/deploy", token=OPERATOR), 405)
    assert refused(call(base, "DELETE", "/api/v1/devices", token=OPERATOR), 405)
    assert refused(call(base, "PUT", "/api/v1/rollouts", token=OPERATOR, data=b"{}"), 405)
    refused(bench.get("/api/v1/nothing-here"), 404)
    # The failed actions are in the operator log under the token's name.
    assert ("http:alice", "deploy", "failed") in bench.operator_log()


def test_4_accept_deploy_rollback_and_a_rollout_through_the_api(bench: Bench) -> None:
    for device in AGENTS:
        accepted = bench.ok(bench.post(f"/api/v1/devices/{device}/accept"), AcceptReply)
        assert (accepted.device_id, accepted.changed) == (device, True)
        assert accepted.operator == "http:alice"
    again = bench.ok(bench.post("/api/v1/devices/api-1/accept"), AcceptReply)
    assert not again.changed
    assert bench.ok(bench.get("/api/v1/devices?state=pending"), DevicesReply).devices == []

    body = {"model": "digits", "version": "1", "devices": AGENTS}
    deployed = bench.ok(bench.post("/api/v1/deploy", body), DeployReply)
    assert deployed.devices == AGENTS and deployed.operator == "http:alice"
    bench.wait_versions("1", AGENTS)
    upgraded = bench.post(
        "/api/v1/deploy", {"model": "digits", "version": "2", "devices": ["api-2"]}
    )
    bench.ok(upgraded, DeployReply)
    bench.wait_versions("2", ["api-2"])

    def previous_known() -> bool:
        shown = bench.ok(bench.get("/api/v1/devices/api-2"), DeviceReply)
        model = ((shown.device.reported or {}).get("models") or {}).get("digits")  # type: ignore[union-attr]
        return isinstance(model, dict) and bool(model.get("previous"))

    wait_until(previous_known, 20, "api-2's previous version reported to the controller")
    back = bench.ok(bench.post("/api/v1/rollback", {"device_id": "api-2"}), RollbackReply)
    assert (back.device_id, back.model, back.version) == ("api-2", "digits", "1")
    bench.wait_versions("1", ["api-2"])
    log = bench.operator_log()
    for method in ("devices-accept", "deploy", "rollback"):
        assert ("http:alice", method, "ok") in log

    # A rollout started, paused, resumed and aborted (from where the deploys left the fleet).
    start = {
        "model": "digits",
        "version": "2",
        "select": "*",
        "stages": "1,100%",
        "name": "via http",
        "health_window_s": 600,
        "max_drift": 100,
    }
    started = bench.ok(bench.post("/api/v1/rollouts", start), RolloutReply, status=201)
    rollout = started.rollout.summary
    rid = rollout.rollout_id
    assert (rollout.name, rollout.model, rollout.version) == ("via http", "digits", "2")
    assert started.operator == "http:alice"
    active = bench.ok(bench.get("/api/v1/rollouts?active=true"), RolloutsReply)
    assert [r.rollout_id for r in active.rollouts] == [rid]

    paused = bench.ok(bench.post(f"/api/v1/rollouts/{rid}/pause"), RolloutReply)
    assert paused.rollout.summary.phase == "paused"
    assert refused(bench.post(f"/api/v1/rollouts/{rid}/pause"), 409).kind == "RolloutError"
    resumed = bench.ok(bench.post(f"/api/v1/rollouts/{rid}/resume"), RolloutReply)
    assert resumed.rollout.summary.phase in {"installing", "watching"}
    aborted = bench.ok(bench.post(f"/api/v1/rollouts/{rid}/abort"), RolloutReply)
    assert aborted.rollout.summary.phase == "aborted"
    refused(bench.post(f"/api/v1/rollouts/{rid}/resume"), 409)

    shown = bench.ok(bench.get(f"/api/v1/rollouts/{rid}"), RolloutReply)
    assert shown.rollout.summary.phase == "aborted" and shown.operator is None
    history = bench.ok(bench.get(f"/api/v1/rollouts/{rid}/history"), RolloutHistoryReply)
    phases = [t.to_phase for t in history.transitions]
    assert phases[0] == "installing" and "paused" in phases and phases[-1] == "aborted"
    assert bench.ok(bench.get("/api/v1/rollouts?active=true"), RolloutsReply).rollouts == []
    log = bench.operator_log()
    for method in ("rollout-start", "rollout-pause", "rollout-resume", "rollout-abort"):
        assert ("http:alice", method, "ok") in log
    assert ("http:alice", "rollout-pause", "failed") in log


def test_5_the_openapi_document_is_valid_and_the_server_keeps_to_it(bench: Bench) -> None:
    document = bench.get("/openapi.json", token=None)
    assert document.status == 200 and document.body["openapi"].startswith("3.")
    paths = set(document.body["paths"])
    assert {"/api/v1/devices/{device_id}/telemetry", "/api/v1/rollouts/{rollout_id}/abort"} <= paths
    schema = schemathesis.openapi.from_url(f"{bench.base}/openapi.json")
    schema.validate()  # against the OpenAPI 3.1 meta-schema
    checks = [
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
        content_type_conformance,
    ]
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 17  # this module's routes (more: the dashboard's, /metrics)
    # Valid requests (as the schema allows) must get a documented answer; invalid ones
    # (negative mode: wrong types, missing fields, out-of-range values) a JSON 4xx.
    modes = [
        (schemathesis.GenerationMode.POSITIVE, 15, checks),
        (schemathesis.GenerationMode.NEGATIVE, 8, [not_a_server_error, content_type_conformance]),
    ]
    for operation in operations:
        for mode, examples, applied in modes:
            _exercise(operation.as_strategy(mode), examples, bench.base, applied)
    # Still serving, and no route failed (a 5xx would also have failed the checks above).
    assert bench.get("/api/v1/devices").status == 200
    controller = bench.fleet.controller
    assert controller is not None and controller.alive
    assert "http.route_failed" not in controller.log_path.read_text()


def _exercise(strategy: Any, examples: int, base: str, checks: list[Any]) -> None:
    """``examples`` generated requests of one operation, as the operator, each checked."""
    auth = {"Authorization": f"Bearer {OPERATOR}"}

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def exercise(case: schemathesis.Case) -> None:
        response = case.call(base_url=base, headers=auth, timeout=15)
        case.validate_response(response, checks=checks)

    exercise()


# -- without tokens ---------------------------------------------------------------------------


def test_without_tokens_loopback_reads_work_and_actions_are_refused(
    tmp_path: Path, broker: PrivateBroker
) -> None:
    port = free_port()
    controller = start_controller(tmp_path, broker.port, HTTP__LISTEN=f"127.0.0.1:{port}")
    try:
        base = f"http://127.0.0.1:{port}"
        listed = call(base, "GET", "/api/v1/devices")
        assert listed.status == 200 and DevicesReply.model_validate(listed.body).devices == []
        for path in ("/api/v1/devices/x/accept", "/api/v1/deploy"):
            body = {"model": "m", "version": "1", "devices": ["x"]}
            answer = call(base, "POST", path, body=body)
            assert refused(answer, 403).error.startswith("actions need an operator token")
        assert refused(call(base, "GET", "/api/v1/models"), 404).error.startswith("OTA is not")
        log = controller.log_path.read_text()
        assert "loopback only, read only" in log
    finally:
        controller.stop()


def test_without_tokens_binding_beyond_loopback_exits_78_with_one_line(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "fleet", "serve", "--broker", "mqtt://127.0.0.1:1"]
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "FLEET_HTTP__LISTEN": "0.0.0.0:0",
    }
    done = subprocess.run(
        [*argv, "--db", str(tmp_path / "f.db")],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 78, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs [http] tokens_file" in lines[0], done.stderr
