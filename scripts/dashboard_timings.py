"""Time the dashboard as a user meets it: page load, and submit -> first point of the live training curve.

Starts `lamp serve` (embedded worker) on a free port, drives Debian's Chromium with Playwright, launches the default
job (default model, rotten_tomatoes, LAMP at the form's defaults: l=100 r=8 p=2) from the New job tab, waits for the
first curve point in the Jobs tab, then cancels the job and stops the server. Prints one JSON line.

With --quick-look N it instead launches the Quick look preset N times, one after another, each to the end: the
form's estimate for the whole job as the page shows it (from the second job on there is history to estimate from),
the wall time from Launch to SUCCEEDED in the Jobs table, and when each phase was first seen there.

    .venv/bin/python scripts/dashboard_timings.py [--home DIR] [--repeats 3] [--chromium /usr/bin/chromium]
    .venv/bin/python scripts/dashboard_timings.py --quick-look 2 --models ~/.lamp/models
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
from typing import Any


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


def quick_looks(page: Any, url: str, runs: int) -> list[dict[str, object]]:
    """Launch the Quick look preset `runs` times, each to the end; what the page estimated and what it took."""
    out = []
    for _ in range(runs):
        page.goto(url)
        page.locator("#launch").wait_for()
        box = page.locator("#preset input").first
        box.click()
        box.fill("Quick look")
        page.get_by_role("option", name="Quick look").first.click()
        page.locator("#preset-note").get_by_text("A short LAMP run").first.wait_for()
        cost = page.locator("#cost-estimate")
        cost.get_by_text(re.compile(r"Cost")).first.wait_for(timeout=120_000)
        time.sleep(3)  # the estimate of the preset's settings replaces the plain form's
        estimate_text = " ".join(cost.inner_text().split())
        found = re.search(r"about ([\d.]+) min for the whole job", estimate_text)
        t = time.monotonic()
        page.locator("#launch").click()
        queued = page.locator("#launch-result").get_by_text(re.compile(r"Job \d+ queued"))
        queued.wait_for(state="attached", timeout=60_000)
        job_id = int(re.search(r"Job (\d+) queued", queued.inner_text()).group(1))  # type: ignore[union-attr]
        phases: dict[str, float] = {}
        while True:
            text = " ".join(page.locator("#jobs-table").inner_text().split())
            row = re.search(rf"(?:^| ){job_id} ([A-Z_]+) (.*?)(?= \d+ [A-Z_]{{6,}} |$)", text)
            if row:
                status, rest = row.group(1), row.group(2)
                word = re.search(r"· (loading|training|validating|testing|writing)", rest)
                phase = word.group(1) if word else ("training" if status == "RUNNING" and "/" in rest else status)
                phases.setdefault(phase, round(time.monotonic() - t, 1))
                if status in ("SUCCEEDED", "FAILED", "CANCELLED", "OUT_OF_MEMORY"):
                    break
            time.sleep(0.5)
        took = time.monotonic() - t
        est = float(found.group(1)) * 60 if found else None
        out.append({"job": job_id, "status": status, "launch_to_end_s": round(took, 1),
                    "estimated_job_s": est, "estimate_over_measured": round(est / took, 2) if est else None,
                    "first_seen_s": phases, "estimate_text": estimate_text[:400]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=None, help="LAMP_HOME to use (default: a fresh temporary one)")
    parser.add_argument("--repeats", type=int, default=3, help="page loads to time")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--quick-look", type=int, default=0, metavar="N",
                        help="launch the Quick look preset N times, each to the end, instead of the default job")
    parser.add_argument("--models", type=Path, default=None,
                        help="a LAMP_HOME/models folder with the offline models already converted, linked into the "
                             "fresh home (otherwise the first job converts the default model)")
    a = parser.parse_args()
    from playwright.sync_api import sync_playwright

    home = a.home or Path(tempfile.mkdtemp(prefix="lamp-timings-"))
    home.mkdir(parents=True, exist_ok=True)
    if a.models is not None and not (home / "models").exists():
        (home / "models").symlink_to(a.models.expanduser().resolve())
    port = free_port()
    t0 = time.monotonic()
    server = start_server(home, port)
    started = time.monotonic() - t0
    url = f"http://127.0.0.1:{port}/"
    out: dict[str, object] = {"server_start_s": round(started, 2)}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=a.chromium, args=["--no-sandbox"])
            if a.quick_look:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                out["quick_look"] = quick_looks(page, url, a.quick_look)
            else:
                default_job(browser, url, a.repeats, out)
            browser.close()
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
    out["home"] = str(home)
    print(json.dumps(out))


def default_job(browser: Any, url: str, repeats: int, out: dict[str, object]) -> None:
    """Page loads, then the default job from Launch to its first curve point, then cancelled."""
    loads = []
    for _ in range(repeats):
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


if __name__ == "__main__":
    main()
