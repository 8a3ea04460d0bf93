"""The dashboard screenshots in docs/img/, taken from a running ``make demo``.

Starts the demo (piped, ``DEMO_SECONDS``), follows the dashboard link it prints in Debian's
headless ``chromium`` (Playwright, ``executable_path=/usr/bin/chromium``; nothing is
downloaded), waits until the rollout has started and the model devices have a minute of
traffic, and writes one full-page screenshot per page: the device list, a model device
(``pi-kitchen``: its charts), the serial device (``pi-garage``), the rollouts, the rollout
and the releases. The demo then ends by itself. Run from the repository root::

    .venv/bin/python -m devtools.dashboard_shots [--out docs/img] [--seconds 70]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
LINK = re.compile(r"^(http://127\.0\.0\.1:\d+)/\?token=(flt_[A-Za-z0-9_-]+)$")


def _wait_for_link(demo: subprocess.Popen[str]) -> tuple[str, str, str]:
    """Read the demo's lines until its rollout starts; returns (base URL, token, rollout id)."""
    assert demo.stdout is not None
    base = token = ""
    for line in demo.stdout:
        sys.stdout.write(line)
        found = LINK.match(line.strip())
        if found:
            base, token = found.groups()
        rollout = re.search(r"\] rollout (r-[0-9a-f]{8}): start", line)
        if rollout and base:
            return base, token, rollout.group(1)
    raise SystemExit("the demo ended before its rollout started")


def _shoot(page: Any, url: str, path: Path, ready: str) -> None:
    page.goto(url)
    page.locator(ready).first.wait_for()
    time.sleep(1.5)  # let the live feed fill the figures and the charts draw
    page.screenshot(path=str(path), full_page=True)
    sys.stdout.write(f"wrote {path}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    parser.add_argument("--seconds", type=int, default=70, help="DEMO_SECONDS")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_AGENT_", "FLEET_"))}
    env["DEMO_SECONDS"] = str(args.seconds)
    with subprocess.Popen(
        [sys.executable, "-m", "devtools.demo"], env=env, stdout=subprocess.PIPE, text=True
    ) as demo:
        try:
            base, token, rollout = _wait_for_link(demo)
            time.sleep(8)  # the canary's health window under way, the charts with a history
            with sync_playwright() as driver:
                browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.set_default_timeout(20000)
                page.goto(f"{base}/?token={token}")
                shots = [
                    ("/", "dashboard-devices.png", 'tr[data-device="pi-kitchen"]'),
                    ("/devices/pi-kitchen", "dashboard-device.png", "#chart-inference canvas"),
                    ("/devices/pi-garage", "dashboard-device-serial.png", "#chart-host canvas"),
                    ("/rollouts", "dashboard-rollouts.png", f'tr[data-rollout="{rollout}"]'),
                    (f"/rollouts/{rollout}", "dashboard-rollout.png", "#rollout-phase"),
                    ("/releases", "dashboard-releases.png", 'tr[data-release="digits@3"]'),
                ]
                for path, name, ready in shots:
                    _shoot(page, base + path, args.out / name, ready)
                browser.close()
            for line in demo.stdout or []:  # the demo's own end
                sys.stdout.write(line)
        finally:
            if demo.poll() is None:
                demo.send_signal(signal.SIGINT)
                demo.wait(60)


if __name__ == "__main__":
    main()
