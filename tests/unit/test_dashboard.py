"""The dashboard's pages, login cookie and live feed refusal, over the ASGI app called in
process (no socket; starlette's TestClient needs an HTTP client library this project does
not install) and a real store in tmp_path; and its pure view helpers (``fleet.http.views``).
The browser's side is tests/integration/test_dashboard.py."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from pydantic import JsonValue

from edge_contract.controller import DeviceDetail, DeviceSummary, RolloutVerdict
from fleet.app.usecases import FleetApp
from fleet.config import HttpOptions
from fleet.http import views
from fleet.http.app import build_app
from fleet.http.auth import Authenticator, Role, new_token, parse_tokens, token_line
from fleet.http.context import COOKIE, HttpContext
from fleet.http.live import LiveHub
from fleet.ingest import StoreThread
from fleet.store import Inbound, SqliteFleetStore

VIEWER, OPERATOR = new_token(), new_token()
T0 = 1_800_000_000.0
ISO0 = "2027-01-15T08:00:00Z"  # T0


def _context(store: SqliteFleetStore, hub: LiveHub | None = None) -> HttpContext:
    lines = "\n".join(
        [token_line("watcher", Role.VIEWER, VIEWER), token_line("admin", Role.OPERATOR, OPERATOR)]
    )
    return HttpContext(
        app=FleetApp(store),
        thread=StoreThread(),
        publish=lambda _messages: None,
        hub=hub or LiveHub(),
        auth=Authenticator(parse_tokens(lines)),
        options=HttpOptions(),
    )


TELEMETRY: dict[str, JsonValue] = {
    "seq": 1,
    "ts": ISO0,
    "cpu": {"percent": 12.5},
    "memory": {"used_percent": 40.0},
    "temperatures_c": {"soc": 51.0, "board": 44.0},
    "serial": {"connected": False},
    "inference": {
        "models": [
            {
                "model": "digits",
                "version": "2",
                "latency_quantile_seconds": {"0.5": 0.002, "0.95": 0.004},
                "drift_psi": {"input": 0.05, "output": 0.12},
            },
            {"model": "other", "version": "1", "latency_quantile_seconds": {"0.95": 0.009}},
        ]
    },
}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteFleetStore]:
    opened = SqliteFleetStore(tmp_path / "fleet.db")
    status: dict[str, JsonValue] = {"state": "online", "ts": ISO0, "models": {"digits": "2"}}
    reported: dict[str, JsonValue] = {
        "ts": ISO0,
        "models": {"digits": {"active": {"version": "2", "variant": "int8"}}},
    }
    opened.ingest(
        [
            Inbound("pi-1", "status", status, T0),
            Inbound("pi-1", "reported", reported, T0),
            Inbound("pi-1", "telemetry", TELEMETRY, T0),
            Inbound("pi-1", "events", {"event": "agent_started", "ts": ISO0}, T0),
        ]
    )
    yield opened
    opened.close()


@dataclass
class Reply:
    status_code: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


@dataclass
class Client:
    """One request at a time through the ASGI app, as uvicorn would call it."""

    app: Any
    cookies: dict[str, str] = field(default_factory=dict)

    def get(self, path: str, **options: Any) -> Reply:
        return self.request("GET", path, **options)

    def post(self, path: str, data: dict[str, str] | None = None, **options: Any) -> Reply:
        body = urlencode(data or {}).encode()
        form = {"content-type": "application/x-www-form-urlencoded"}
        return self.request("POST", path, body=body, headers=form | options.pop("headers", {}))

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        follow_redirects: bool = False,
    ) -> Reply:
        raw_path, _, query = path.partition("?")
        if params:
            query = urlencode(params)
        sent = {"host": "127.0.0.1:8080", "content-length": str(len(body))} | (headers or {})
        if self.cookies:
            sent["cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        return asyncio.run(self._call(method, raw_path, query, sent, body))

    async def _call(
        self, method: str, path: str, query: str, headers: dict[str, str], body: bytes
    ) -> Reply:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8080),
        }
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        status, out, chunks = 0, {}, []

        async def receive() -> dict[str, Any]:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message["headers"]:
                    out[name.decode()] = value.decode()
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        return Reply(status, out, b"".join(chunks).decode())


@pytest.fixture
def client(store: SqliteFleetStore) -> Iterator[Client]:
    ctx = _context(store)
    yield Client(build_app(ctx))
    ctx.thread.shutdown()


def test_a_page_without_a_token_goes_to_the_login_form(client: Client) -> None:
    reply = client.get("/rollouts", follow_redirects=False)
    assert (reply.status_code, reply.headers["location"]) == (303, "/login?next=/rollouts")
    form = client.get("/login")
    assert form.status_code == 200 and 'name="token"' in form.text


def test_the_token_link_sets_a_strict_cookie_and_drops_the_token(client: Client) -> None:
    reply = client.get(f"/?token={OPERATOR}", follow_redirects=False)
    assert reply.status_code == 303
    assert reply.headers["location"] == "/" and OPERATOR not in reply.headers["location"]
    cookie = reply.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}={OPERATOR};")
    for attribute in ("HttpOnly", "Path=/", "SameSite=strict"):
        assert attribute.lower() in cookie.lower(), cookie
    bad = client.get("/?token=flt_nope", follow_redirects=False)
    assert bad.headers["location"] == "/login" and "set-cookie" not in bad.headers


def test_login_form_sets_the_cookie_and_refuses_a_bad_token(client: Client) -> None:
    form = {"token": VIEWER, "next": "//elsewhere.example/x"}
    reply = client.post("/login", data=form, follow_redirects=False)
    assert reply.status_code == 303 and reply.headers["location"] == "/"  # no open redirect
    assert f"{COOKIE}={VIEWER}" in reply.headers["set-cookie"]
    bad = client.post("/login", data={"token": "flt_wrong"}, follow_redirects=False)
    assert bad.status_code == 401 and "unknown token" in bad.text
    assert "set-cookie" not in bad.headers
    foreign = client.post(
        "/login", data=form, headers={"Origin": "http://evil.example"}, follow_redirects=False
    )
    assert foreign.status_code == 403


def test_pages_render_with_nothing_inline_and_nothing_from_elsewhere(client: Client) -> None:
    client.cookies[COOKIE] = VIEWER
    for path in ("/", "/devices/pi-1", "/rollouts", "/releases", "/login", "/?select=digits%3D2"):
        page = client.get(path)
        assert page.status_code == 200, (path, page.text[:300])
        assert "default-src 'self'" in page.headers["content-security-policy"]
        # A browser sends the Origin header the cookie check reads (not "null").
        assert page.headers["referrer-policy"] == "same-origin"
        html = page.text
        assert " style=" not in html, path
        assert re.findall(r"\son[a-z]+=", html) == [], path  # no inline handlers
        for script in re.findall(r"<script[^>]*>", html):
            assert 'src="/static/' in script or 'type="application/json"' in script, script
        for url in re.findall(r'(?:src|href|action)="([^"]*)"', html):
            assert url.startswith("/") and not url.startswith("//"), (path, url)
        assert 'name="viewport"' in html
    devices = client.get("/").text
    assert 'data-device="pi-1"' in devices and "12.5 %" in devices and "51.0 °C" in devices
    assert "9.0 ms" in devices and "0.120 PSI" in devices and "disconnected" in devices
    assert "digits@2" in devices and "int8" in devices
    assert 'data-epoch="1800000000.0"' in devices  # since-when, shown in the viewer's zone


def test_the_releases_page_says_when_ota_is_off(client: Client) -> None:
    client.cookies[COOKIE] = VIEWER
    page = client.get("/releases")
    assert page.status_code == 200 and "OTA is not enabled" in page.text, page.text[:500]


def test_a_bad_selector_is_said_on_the_page(client: Client) -> None:
    client.cookies[COOKIE] = VIEWER
    page = client.get("/", params={"select": "Bad Key=1"})
    assert page.status_code == 200 and 'id="select-error"' in page.text


def test_the_device_page_embeds_its_latest_reading_and_events(client: Client) -> None:
    client.cookies[COOKIE] = VIEWER
    page = client.get("/devices/pi-1").text
    assert 'id="series-data"' in page and '"cpu_percent": 12.5' in page
    assert "agent_started" in page
    unknown = client.get("/devices/nope")
    assert unknown.status_code == 404 and unknown.json()["kind"] == "UnknownDeviceError"


def test_the_assets_are_served_from_the_package(client: Client) -> None:
    for asset in (
        "/static/dashboard.js",
        "/static/charts.js",
        "/static/dashboard.css",
        "/static/vendor/uPlot.iife.min.js",
        "/static/vendor/uPlot.min.css",
    ):
        assert client.get(asset).status_code == 200, asset
    assert client.get("/static/../app.py").status_code == 404


def test_the_live_feed_needs_a_token_and_refuses_when_full(store: SqliteFleetStore) -> None:
    ctx = _context(store, LiveHub(max_clients=0))
    test_client = Client(build_app(ctx))
    if True:
        assert test_client.get("/api/v1/live").status_code == 401
        full = test_client.get("/api/v1/live", headers={"Authorization": f"Bearer {VIEWER}"})
        assert full.status_code == 503 and full.json()["ok"] is False
        assert ctx.refused["live_full"] == 1
        assert "/api/v1/live" not in test_client.get("/openapi.json").text
    ctx.thread.shutdown()


# -- fleet.http.views (pure) ------------------------------------------------------------------


def _detail(telemetry: dict[str, JsonValue] | None) -> DeviceDetail:
    summary = DeviceSummary(
        device_id="d",
        online=False,
        state="offline",
        agent_version=None,
        last_telemetry_age_s=5.0,
        last_seq=None,
        cpu_percent=None,
        memory_percent=None,
        temperature_c=None,
        health=None,
        queue_depth=None,
        models={},
        duplicates=0,
    )
    status: dict[str, JsonValue] = {"state": "offline", "ts": "not a time", "models": {"m": 3}}
    return DeviceDetail(
        summary=summary,
        reported=None,
        desired=None,
        status=status,
        telemetry=telemetry,
        events=[],
    )


def test_a_row_reads_the_highest_p95_and_drift_and_tolerates_odd_values() -> None:
    row = views.device_row(_detail(TELEMETRY), {"site": "lab"}, now=100.0)
    assert (row.p95_s, row.drift_psi, row.serial) == (0.009, 0.12, "disconnected")
    assert row.last_seen == 95.0 and row.tags == {"site": "lab"}
    odd: dict[str, JsonValue] = {
        "inference": {"models": [{"latency_quantile_seconds": {"0.95": "slow"}}, 7]},
        "serial": "yes",
    }
    row = views.device_row(_detail(odd), {}, now=100.0)
    assert (row.p95_s, row.drift_psi, row.serial, row.since) == (None, None, None, None)
    assert row.models == [views.ModelCell("m", "?", None)]


def test_times_and_gate_figures() -> None:
    assert views.epoch_of(ISO0) == T0
    assert views.epoch_of(12) == 12.0
    assert views.epoch_of("yesterday") is None and views.epoch_of(True) is None
    verdict = RolloutVerdict(
        metric="p95_regression",
        candidate=0.0042,
        baseline=0.004,
        value=0.05,
        threshold=0.2,
        verdict="pass",
        detail="",
    )
    cells = views.verdict_cells(verdict)
    assert (cells["value"], cells["threshold"]) == ("5.0 %", "20.0 %")
    assert (cells["candidate"], cells["baseline"]) == ("4.2 ms", "4.0 ms")
    assert views.figure(0.1234, "drift") == "0.123 PSI" and views.figure(None, "x") == "\u2013"
