"""The dashboard in a real headless Chromium (Debian's, driven by Playwright for Python).

One fleet for the module: a private Mosquitto, the real controller (``fleet serve`` with OTA,
HTTP on a free loopback port, a tokens file with a viewer and an operator, the rollout driver
ticking every 0.5 s), real agents, and the real signed ``fleet`` CLI. The scenarios run in
order on it. Every page is opened once and watched: what changes must change without a
reload (each test marks the page's window object and checks the mark is still there).

Screenshots of the main pages go to the test's artefact directory (pytest's tmp dir); with
``DASHBOARD_SCREENSHOTS=DIR`` also to DIR (how docs/img/ was made). No browser is ever
downloaded: Playwright launches /usr/bin/chromium (``make test`` installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from devtools.localbroker import PrivateBroker
from fleet.http.auth import Role, new_token, token_line
from tests.integration.harness import ManagedProcess, wait_until
from tests.integration.ota_harness import Fleet, free_port, ota_fleet

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
FIRST = "dash-1"  # online from the start, accepted: the rollout's devices
SECOND = "dash-2"
LATE = "dash-late"  # started during a test, then killed
TIMEOUT_MS = 20_000

sync_api = pytest.importorskip("playwright.sync_api")
if not CHROMIUM.exists():
    pytest.skip(
        "Debian's chromium is not installed at /usr/bin/chromium (`make test` installs it)",
        allow_module_level=True,
    )


@dataclass
class Bench:
    fleet: Fleet
    url: str
    viewer: str
    operator: str
    shots: Path
    browser: Any
    rollout_id: str = ""  # the module's rollout, once started

    def page(self, token: str, *, phone: bool = False) -> Any:
        """A page in a fresh browser context, logged in with ``token`` by the demo's link
        (``/?token=``), every request it makes recorded in ``page.requests``."""
        if phone:
            context = self.browser.new_context(
                viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
            )
        else:
            context = self.browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.requests = []
        page.on("request", lambda request: page.requests.append(request.url))
        page.goto(f"{self.url}/?token={token}")
        return page

    def shoot(self, page: Any, name: str) -> None:
        page.screenshot(path=str(self.shots / name), full_page=True)
        extra = os.environ.get("DASHBOARD_SCREENSHOTS")
        if extra:
            shutil.copy(self.shots / name, Path(extra) / name)

    def rollout(self) -> str:
        """The module's one rollout of digits@2 to both devices, started by the signed CLI
        on first use (whichever test comes first: under xdist a module's tests may run on
        several workers, each with its own bench). Stage 1 is one device, stage 2 the other;
        its 1 s health window without traffic ends awaiting approval."""
        if not self.rollout_id:
            started = self.cli(
                "rollout", "start", "digits@2", "--devices", f"{FIRST},{SECOND}",
                "--stages", "1,100%", "--health-window", "1s", "--name", "dashboard", "--json",
            )  # fmt: skip
            self.rollout_id = json.loads(started.stdout)["summary"]["rollout_id"]
        return self.rollout_id

    def cli(self, *args: str) -> Any:
        result = self.fleet.cli(*args)
        assert result.returncode == 0, result.stderr + result.stdout
        return result


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    tmp = tmp_path_factory.mktemp("dashboard")
    viewer, operator = new_token(), new_token()
    tokens = tmp / "tokens"
    tokens.write_text(
        token_line("watcher", Role.VIEWER, viewer)
        + "\n"
        + token_line("admin", Role.OPERATOR, operator)
        + "\n"
    )
    tokens.chmod(0o600)
    port = free_port()
    broker = PrivateBroker(tmp / "broker")
    broker.start()
    try:
        with (
            ota_fleet(
                tmp,
                broker,
                record="fleet/#",
                ROLLOUTS__TICK_S="0.5",
                HTTP__LISTEN=f"127.0.0.1:{port}",
                HTTP__TOKENS_FILE=str(tokens),
            ) as fleet,
            sync_api.sync_playwright() as playwright,
        ):
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=["--no-sandbox"]
            )
            shots = tmp / "screenshots"
            shots.mkdir()
            bench = Bench(fleet, f"http://127.0.0.1:{port}", viewer, operator, shots, browser)
            for device in (FIRST, SECOND):
                fleet.start_agent_as(device, TELEMETRY__INTERVAL_S="0.5")
            for device in (FIRST, SECOND):
                wait_until(
                    lambda d=device: fleet.cli("devices", "accept", d).returncode == 0,
                    30,
                    f"{device} known and accepted",
                    step=0.3,
                )
            try:
                yield bench
            finally:
                browser.close()
    finally:
        broker.stop()


def _mark(page: Any) -> None:
    page.evaluate("window.__noReload = 1")


def _not_reloaded(page: Any) -> bool:
    return bool(page.evaluate("window.__noReload === 1"))


def _row_state(page: Any, device: str) -> str:
    return str(page.locator(f'tr[data-device="{device}"] [data-field="state"]').inner_text())


def test_pages_need_a_token_and_load_only_from_loopback(bench: Bench) -> None:
    context = bench.browser.new_context()
    anonymous = context.new_page()
    anonymous.set_default_timeout(TIMEOUT_MS)
    anonymous.goto(bench.url + "/rollouts")
    assert urlsplit(anonymous.url).path == "/login"
    anonymous.fill('input[name="token"]', "flt_not-a-token")
    anonymous.click('button[type="submit"]')
    assert "unknown token" in anonymous.locator("#login-error").inner_text()
    anonymous.fill('input[name="token"]', bench.viewer)
    anonymous.click('button[type="submit"]')
    anonymous.locator("h1", has_text="Rollouts").wait_for()
    assert urlsplit(anonymous.url).path == "/rollouts"
    [cookie] = context.cookies()
    assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"]) == (
        "fleet_token",
        True,
        "Strict",
    )
    context.close()

    page = bench.page(bench.operator)
    assert page.url == bench.url + "/", "the token stays out of the URL"
    page.locator(f'tr[data-device="{FIRST}"]').wait_for()
    page.locator(f'tr[data-device="{SECOND}"]').wait_for()
    # The live feed connected, and telemetry has filled a row's figures.
    page.locator("#live-state.on").wait_for()
    page.wait_for_function(
        f"""document.querySelector('tr[data-device="{FIRST}"] [data-field="cpu"]')
            .textContent.includes('%')"""
    )
    for url in page.requests:
        assert urlsplit(url).hostname == "127.0.0.1", url
    assert any(u.endswith("/static/dashboard.js") for u in page.requests)
    page.context.close()


def test_the_pages_fit_a_phone(bench: Bench) -> None:
    page = bench.page(bench.viewer, phone=True)
    for path in ("/", f"/devices/{FIRST}", "/rollouts"):
        page.goto(bench.url + path)
        page.locator("#live-state.on").wait_for()
        # Wide tables scroll inside their own box; the page itself never scrolls sideways.
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, (path, overflow)
    bench.shoot(page, "dashboard-rollouts-phone.png")
    page.context.close()


def test_an_agent_started_appears_and_a_killed_one_turns_offline(bench: Bench) -> None:
    page = bench.page(bench.viewer)
    page.locator(f'tr[data-device="{FIRST}"]').wait_for()
    page.locator("#live-state.on").wait_for()
    _mark(page)
    assert page.locator(f'tr[data-device="{LATE}"]').count() == 0

    late: ManagedProcess = bench.fleet.start_agent_as(LATE)
    page.locator(f'tr[data-device="{LATE}"]').wait_for()
    wait_until(lambda: _row_state(page, LATE) == "online", 20, "the new agent online")
    assert _not_reloaded(page)

    late.kill()  # SIGKILL: the broker publishes its Last Will (status offline)
    wait_until(lambda: _row_state(page, LATE) == "offline", 30, "the killed agent offline")
    assert _not_reloaded(page)
    assert "offline" in (page.locator(f'tr[data-device="{LATE}"]').get_attribute("class") or "")
    page.context.close()

    # The operator accepts the new device from its page: the API's action, by the cookie.
    page = bench.page(bench.operator)
    page.goto(f"{bench.url}/devices/{LATE}")
    page.get_by_role("button", name="Accept device").click()
    result = page.locator("#accept-result")
    wait_until(lambda: result.inner_text() == "done", 10, "the accept done")
    shown = json.loads(bench.cli("devices", "show", LATE, "--json").stdout)
    assert shown["summary"]["admission"] == "accepted", shown["summary"]
    page.context.close()


def test_the_releases_page_lists_the_signed_releases(bench: Bench) -> None:
    page = bench.page(bench.viewer)
    page.goto(bench.url + "/releases")
    for release in ("digits@1", "digits@2"):
        row = page.locator(f'tr[data-release="{release}"]')
        row.first.wait_for()
        assert "onnxruntime" in row.first.inner_text()
    bench.shoot(page, "dashboard-releases.png")
    page.context.close()


def test_a_device_page_draws_its_charts(bench: Bench) -> None:
    page = bench.page(bench.viewer)
    page.goto(f"{bench.url}/devices/{FIRST}")
    page.locator("#live-state.on").wait_for()
    for chart in ("#chart-host", "#chart-inference"):
        page.locator(f"{chart} canvas").wait_for()
    seen = page.locator('[data-field="seen"] time').first.get_attribute("data-epoch")
    # Live telemetry arrives and is drawn: the last-seen time moves on, the canvas has a size.
    wait_until(
        lambda: page.locator('[data-field="seen"] time').first.get_attribute("data-epoch") != seen,
        15,
        "a live telemetry message on the device page",
    )
    for chart in ("#chart-host", "#chart-inference"):
        box = page.locator(f"{chart} canvas").first.bounding_box()
        assert box is not None and box["width"] > 100 and box["height"] > 50, box
    points = page.evaluate(
        "document.querySelector('#chart-host .u-legend') !== null"
    )  # uPlot built its legend: the plot is live, not a placeholder
    assert points
    bench.shoot(page, "dashboard-device.png")
    page.context.close()


def _series_reply(now: float) -> dict[str, Any]:
    """A ``TelemetrySeriesReply`` as the REST API documents it (three buckets; the model
    reported in two of them)."""
    at = [now - 300, now - 200, now - 100]
    model = {"p95_s": 0.004, "p95_max_s": 0.02, "requests_per_s": 5.0, "drift_psi": 0.1}
    return {
        "device_id": FIRST,
        "since": now - 3600,
        "until": now,
        "step_s": 100.0,
        "samples": 9,
        "truncated": False,
        "buckets": [
            {
                "at": t,
                "samples": 3,
                "cpu_percent": 10.0 * (i + 1),
                "cpu_percent_max": 90.0,
                "memory_percent": 40.0,
                "memory_percent_max": 41.0,
                "temperature_c": None,
                "temperature_c_max": None,
            }
            for i, t in enumerate(at)
        ],
        "models": [
            {
                "model": "digits",
                "versions": ["2"],
                "buckets": [model | {"accuracy": None}, None, model],
            }
        ],
    }


def test_the_device_page_draws_the_apis_history(bench: Bench) -> None:
    """The charts read the REST API's series shape (answered here by the browser's own
    route: the route itself is the API's, tested there), then go on with live telemetry."""
    page = bench.page(bench.viewer)
    reply = json.dumps(_series_reply(time.time()))
    page.route(
        f"**/api/v1/devices/{FIRST}/telemetry?*",
        lambda route: route.fulfill(status=200, content_type="application/json", body=reply),
    )
    page.goto(f"{bench.url}/devices/{FIRST}")
    page.locator("#chart-host canvas").wait_for()
    assert "(3 points)" in page.locator("#chart-source").inner_text()
    wait_until(
        lambda: int(page.locator("#chart-host").get_attribute("data-points") or 0) >= 4,
        15,
        "live telemetry drawn after the history",
    )
    # The model's figures were found in the model's own buckets (two of the three).
    assert page.locator("#chart-inference").get_attribute("data-points") == "2"
    page.context.close()


def _rollout_stage(page: Any) -> str:
    return str(page.locator("#rollout-stage").inner_text())


def test_a_rollouts_stage_advances_on_the_page(bench: Bench) -> None:
    rollout_id = bench.rollout()
    page = bench.page(bench.operator)
    page.goto(f"{bench.url}/rollouts/{rollout_id}")
    page.locator("#live-state.on").wait_for()
    _mark(page)
    assert _rollout_stage(page) == "1/2"
    # No traffic: the gate finds too little data, extends the window twice, then waits for
    # an operator; the phase shown follows without a reload.
    wait_until(
        lambda: page.locator("#rollout-phase").inner_text() == "awaiting_approval",
        60,
        "the rollout awaiting approval on the page",
        step=0.2,
    )
    bench.cli("rollout", "approve", rollout_id)
    wait_until(lambda: _rollout_stage(page) == "2/2", 20, "stage 2 on the page", step=0.2)
    assert _not_reloaded(page)
    assert page.locator("table.transitions tbody tr").count() >= 3
    bench.shoot(page, "dashboard-rollout.png")
    page.goto(f"{bench.url}/rollouts")
    page.locator(f'tr[data-rollout="{rollout_id}"]').wait_for()
    bench.shoot(page, "dashboard-rollouts.png")
    page.goto(bench.url + "/")  # the list with the rollout's versions and the killed agent
    page.locator(f'tr[data-device="{FIRST}"]').wait_for()
    bench.shoot(page, "dashboard-devices.png")
    page.context.close()


def _post(url: str, token: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url, data=b"{}", method="POST", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return int(reply.status), json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return int(error.code), json.loads(error.read())


def test_an_action_without_the_operator_role_is_refused_on_the_page(bench: Bench) -> None:
    """The viewer's click is refused and the page says why: the API's own refusal (403,
    "needs the operator role")."""
    rollout_id = bench.rollout()
    status, refusal = _post(f"{bench.url}/api/v1/rollouts/{rollout_id}/pause", bench.viewer)
    assert status == 403 and "operator" in refusal["error"], (status, refusal)
    page = bench.page(bench.viewer)
    page.goto(f"{bench.url}/rollouts/{rollout_id}")
    assert "(viewer)" in page.locator("header .who").inner_text()
    before = page.locator("#rollout-phase").inner_text()
    page.get_by_role("button", name="Pause").click()
    result = page.locator("#event-result")
    wait_until(lambda: "refused" in result.inner_text(), 10, "the refusal shown")
    why = refusal.get("error") or refusal.get("detail")
    assert result.inner_text() == f"refused ({status}): {why}"
    assert "error" in (result.get_attribute("class") or "")
    assert page.locator("#rollout-phase").inner_text() == before
    page.context.close()
