"""Dashboard benchmark: first paint of the device list, and live-update latency, with 1,000
devices in the controller's store, measured in a real headless Chromium.

One private mosquitto on 127.0.0.1, the real controller (``fleet serve``, its own process,
HTTP on a free loopback port with a viewer token), and N simulated devices: one paho client
publishes a retained ``online`` status and one telemetry sample per device through the
broker, so the controller's own ingest fills its store (the figures are with N devices in
it). Debian's ``chromium`` is driven by Playwright (``executable_path=/usr/bin/chromium``;
nothing is downloaded), with the dashboard's cookie set, and nothing leaves the loopback
interface.

1. **First paint**: the browser's own ``first-contentful-paint`` of ``/`` (every device's
   row, server-rendered), each run in a fresh page. Baseline in the same run and browser:
   the same page filtered to one device (``/?select=device=dev-0001``): the ratio is what
   N rows cost over one.
2. **Live update**: with ``/`` open, telemetry for one device is published (a fresh ``seq``
   and CPU figure) and the browser records, with its ``Date.now()`` (the same clock as the
   publisher's ``time.time()``), when the device's CPU cell on the page shows the new
   figure (a MutationObserver on it). Baseline in the same page: when the same event
   arrives on a bare ``EventSource`` of ``/api/v1/live`` opened beside the page's own (one
   at a time: a browser keeps at most 6 connections to a host): the controller's ingest,
   commit and fan-out. The ratio is what the page adds on top of the feed.

Reported: medians and ranges, the baselines and the ratios. Nothing asserts on timing; the
exit code is 1 only when a run could not finish.

Run from the repository root::

    .venv/bin/python -m bench.bench_dashboard [--devices N] [--runs N] [--updates N]
                                              [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bench import report
from devtools.localbroker import PrivateBroker, free_port
from fleet.http.auth import Role, new_token, token_line

CHROMIUM = "/usr/bin/chromium"
STREAM = "0123456789abcdef"


class BenchError(Exception):
    pass


@dataclass
class Results:
    paint_full_ms: list[float] = field(default_factory=list)
    paint_one_ms: list[float] = field(default_factory=list)
    visible_ms: list[float] = field(default_factory=list)
    feed_ms: list[float] = field(default_factory=list)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _status(device: str) -> bytes:
    body: dict[str, object] = {"device_id": device, "state": "online", "ts": _now_iso()}
    body |= {"agent_version": "0.1.0", "started_at": _now_iso(), "models": {}}
    return json.dumps(body).encode()


def _telemetry(device: str, seq: int, cpu: float) -> bytes:
    body = {
        "device_id": device,
        "stream": STREAM,
        "seq": seq,
        "ts": _now_iso(),
        "cpu": {"percent": cpu, "per_core": [cpu], "count": 1, "load": [0.1, 0.1, 0.1]},
        "memory": {"total_bytes": 1 << 30, "available_bytes": 1 << 29, "used_percent": 50.0},
        "temperatures_c": {"cpu_thermal/0": 48.5},
        "link": {"connected": True, "outages": 0, "last_outage_s": None},
        "queue": {"depth": 0, "bytes": 0, "max_bytes": 1 << 26, "dropped": 0, "dropped_total": 0},
        "health": {"status": "ok", "subsystems": {}},
    }
    return json.dumps(body).encode()


class Rig:
    """Broker, controller and a publisher standing in for N devices."""

    def __init__(self, workdir: Path, devices: int) -> None:
        self.workdir = workdir
        self.devices = [f"dev-{n:04d}" for n in range(1, devices + 1)]
        self.broker = PrivateBroker(workdir / "broker")
        self.port = free_port()
        self.token = new_token()
        self.controller: subprocess.Popen[bytes] | None = None
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-devices")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        tokens = self.workdir / "tokens"
        tokens.write_text(token_line("bench", Role.VIEWER, self.token) + "\n")
        self.broker.start()
        env = {
            **os.environ,
            "FLEET_HTTP__LISTEN": f"127.0.0.1:{self.port}",
            "FLEET_HTTP__TOKENS_FILE": str(tokens),
        }
        argv = [sys.executable, "-m", "fleet", "serve", "--broker", self.broker.url]
        argv += ["--db", str(self.workdir / "fleet.sqlite3"), "--log-format", "json"]
        log = (self.workdir / "controller.log").open("wb")
        self.controller = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        _wait("the controller's HTTP side", lambda: self._get("/healthz") is not None, 60)
        _wait("the controller's MQTT session", self._subscribed, 60)
        self.client.connect("127.0.0.1", self.broker.port)
        self.client.loop_start()
        for device in self.devices:
            self.client.publish(f"fleet/{device}/status", _status(device), qos=1, retain=True)
            self.client.publish(f"fleet/{device}/telemetry", _telemetry(device, 1, 10.0), qos=1)
        _wait(f"{len(self.devices)} devices in the store", self._all_stored, 120)

    def _subscribed(self) -> bool:
        return b'"mqtt.connected"' in (self.workdir / "controller.log").read_bytes()

    def _all_stored(self) -> bool:
        listed = self._get("/api/v1/devices")
        return listed is not None and len(listed["devices"]) == len(self.devices)

    def _get(self, path: str) -> Any:
        request = urllib.request.Request(
            self.url + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())
        except OSError:
            return None

    def publish_telemetry(self, device: str, seq: int, cpu: float) -> float:
        """Publish; returns the wall-clock time of the publish, ms."""
        sent_ms = time.time() * 1000
        self.client.publish(f"fleet/{device}/telemetry", _telemetry(device, seq, cpu), qos=1)
        return sent_ms

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
        if self.controller is not None and self.controller.poll() is None:
            self.controller.terminate()
            try:
                self.controller.wait(15)
            except subprocess.TimeoutExpired:
                self.controller.kill()
        self.broker.stop()


def _wait(what: str, test: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not test():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}")
        time.sleep(0.1)


# In the page: a bare EventSource beside the page's own, and a MutationObserver on the row
# of the watched device; each records Date.now() when the marked update arrives or shows.
_WATCH = """
([device, seq, shown]) => new Promise((resolve) => {
  // One bare feed at a time: a browser keeps at most 6 connections to a host open.
  if (window.__bench && window.__bench.source) window.__bench.source.close();
  window.__bench = {feed: null, visible: null, source: null};
  const row = [...document.querySelectorAll('[data-device]')]
    .find((el) => el.dataset.device === device);
  const cell = row && row.querySelector('[data-field="cpu"]');
  if (!cell) { resolve('no CPU cell for ' + device); return; }
  new MutationObserver(() => {
    if (window.__bench.visible === null && cell.textContent.includes(shown)) {
      window.__bench.visible = Date.now();
    }
  }).observe(cell, {subtree: true, childList: true, characterData: true});
  const feed = new EventSource('/api/v1/live');
  window.__bench.source = feed;
  feed.addEventListener('telemetry', (e) => {
    const event = JSON.parse(e.data);
    if (event.subject === device && event.data.seq === seq && window.__bench.feed === null) {
      window.__bench.feed = Date.now();
    }
  });
  feed.onopen = () => resolve('ok');
})
"""


def measure(rig: Rig, runs: int, updates: int) -> Results:
    from playwright.sync_api import sync_playwright

    results = Results()
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context()
        context.add_cookies([{"name": "fleet_token", "value": rig.token, "url": rig.url}])
        for _ in range(runs):
            results.paint_full_ms.append(_first_paint(context, rig.url + "/"))
            results.paint_one_ms.append(
                _first_paint(context, rig.url + "/?select=device%3D" + rig.devices[0])
            )
        page = context.new_page()
        page.goto(rig.url + "/", wait_until="load")
        device = rig.devices[len(rig.devices) // 2]
        for n in range(updates):
            seq, cpu = 100 + n, 21.0 + n  # a CPU figure the cell has not shown yet
            status = page.evaluate(_WATCH, [device, seq, f"{cpu:.1f} %"])
            if status != "ok":
                raise BenchError(f"the page has no row to watch: {status}")
            sent = rig.publish_telemetry(device, seq, cpu)
            page.wait_for_function(
                "() => window.__bench.feed !== null && window.__bench.visible !== null",
                timeout=10000,
            )
            seen = page.evaluate(
                "() => ({feed: window.__bench.feed, visible: window.__bench.visible})"
            )
            results.feed_ms.append(seen["feed"] - sent)
            results.visible_ms.append(seen["visible"] - sent)
        browser.close()
    return results


def _first_paint(context: Any, url: str) -> float:
    page = context.new_page()
    try:
        page.goto(url, wait_until="load")
        # The entry is recorded with the paint, which may come after the load event.
        page.wait_for_function(
            "() => performance.getEntriesByName('first-contentful-paint').length > 0",
            timeout=10000,
        )
        paint = page.evaluate(
            "() => (performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime"
        )
        if paint is None:
            raise BenchError(f"no first-contentful-paint entry for {url}")
        return float(paint)
    finally:
        page.close()


def _figures(r: Results) -> list[list[str]]:
    def row(name: str, values: list[float], base: list[float]) -> list[str]:
        med, base_med = statistics.median(values), statistics.median(base)
        spread = f"{min(values):.0f}-{max(values):.0f}"
        return [name, f"{med:.0f}", spread, f"{base_med:.0f}", f"{med / base_med:.2f}", "none", "-"]

    return [
        row("first contentful paint of /, ms", r.paint_full_ms, r.paint_one_ms),
        row("telemetry published -> row changed, ms", r.visible_ms, r.feed_ms),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--updates", type=int, default=15)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium)")
        return 1
    report.stop_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp:
        rig = Rig(Path(tmp), args.devices)
        try:
            rig.start()
            results = measure(rig, args.runs, args.updates)
        except BenchError as exc:
            print(f"bench_dashboard: {exc}")
            return 1
        finally:
            rig.stop()
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"Dashboard benchmark, {stamp}: Python {platform.python_version()}, "
        f"{os.cpu_count()} cores, Chromium headless, loopback only"
    )
    print(
        f"{args.devices} devices in the store, {args.runs} page loads each, "
        f"{args.updates} live updates\n"
    )
    print(report.render_table(_figures(results)))
    print(
        "\n- first paint: baseline = the same page filtered to one device (same run, browser)"
        "\n- live update: baseline = the same event on a bare EventSource of /api/v1/live "
        "in the same page (ingest, commit and fan-out)"
    )
    if args.json:
        args.json.write_text(json.dumps(results.__dict__, indent=2))
    print(f"\ncommand: .venv/bin/python -m bench.bench_dashboard --devices {args.devices}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
