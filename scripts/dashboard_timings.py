"""Time the dashboard as a user meets it: page load, and submit -> first point of the live training curve.

Starts `lamp serve` (embedded worker) on a free port, drives Debian's Chromium with Playwright, launches the default
job (default model, rotten_tomatoes, LAMP l=100 r=8 p=4) from the New job tab, waits for the first curve point in the
Jobs tab, then cancels the job and stops the server. Prints one JSON line.

    .venv/bin/python scripts/dashboard_timings.py [--home DIR] [--repeats 3] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(home: Path, port: int) -> subprocess.Popen[bytes]:
    lamp = Path(sys.executable).with_name("lamp")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMP_") or k == "LAMP_HOME"}
    env["LAMP_HOME"] = str(home)
    proc = subprocess.Popen([str(lamp), "serve", "--port", str(port)], env=env,
                            stdout=(home / "serve.log").open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"lamp serve did not start; see {home / 'serve.log'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=None, help="LAMP_HOME to use (default: a fresh temporary one)")
    parser.add_argument("--repeats", type=int, default=3, help="page loads to time")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    a = parser.parse_args()
    from playwright.sync_api import sync_playwright

    home = a.home or Path(tempfile.mkdtemp(prefix="lamp-timings-"))
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    t0 = time.monotonic()
    server = start_server(home, port)
    started = time.monotonic() - t0
    url = f"http://127.0.0.1:{port}/"
    out: dict[str, object] = {"server_start_s": round(started, 2)}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=a.chromium, args=["--no-sandbox"])
            loads = []
            for _ in range(a.repeats):
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                t = time.monotonic()
                page.goto(url)
                page.locator("#launch").wait_for()
                loads.append(time.monotonic() - t)
                page.close()
            out["page_load_s"] = {"median": round(statistics.median(loads), 2), "min": round(min(loads), 2),
                                  "max": round(max(loads), 2)}
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.locator("#launch").wait_for()
            t = time.monotonic()
            page.locator("#launch").click()
            result = page.locator("#launch-result").get_by_text(re.compile(r"Job \d+ queued"))
            result.wait_for(timeout=60_000)
            out["submit_to_queued_s"] = round(time.monotonic() - t, 2)
            page.locator("#job-curves .scatterlayer .trace").first.wait_for(timeout=600_000)
            out["submit_to_first_curve_point_s"] = round(time.monotonic() - t, 2)
            page.locator("#cancel").click()
            page.locator("#job-details").get_by_text("CANCELLED").first.wait_for(timeout=120_000)
            out["submit_to_cancelled_s"] = round(time.monotonic() - t, 2)
            browser.close()
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
    out["home"] = str(home)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
