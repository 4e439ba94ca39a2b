"""The dashboard's 30-day view in a real browser over a million stored events.

Run: python benchmarks/bench_dashboard.py [--events 1000000] [--rounds 5] [--db FILE]

Builds the database of bench_server/bench_export (30 days from 2026-10-15, 200 subjects,
5 models), starts ``litellm-openmeter serve`` on it in its own process, and opens the
dashboard's 30-day view (daily windows) in Debian's Chromium, driven by Playwright, in
UTC and in New York (whose summer time ends inside the data). Each round is a new page:
the time is from the navigation's start to the page's "ready" mark, split into the
server's part (until the last API answer arrived) and the browser's (drawing). Prints
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_export import build
from bench_server import wait_up
from common import free_port

CHROMIUM = "/usr/bin/chromium"
CLI = [sys.executable, "-m", "litellm_openmeter.cli"]
VIEW = "#period=custom&from=2026-10-15&to=2026-11-13&window=DAY&stack=model"
TIMING = """() => {
  const api = performance.getEntriesByType("resource").filter((e) => e.name.includes("/api/"));
  return {
    ready: Number(document.body.dataset.readyAt),
    lastAnswer: Math.max(...api.map((e) => e.responseEnd)),
    requests: api.length,
    state: document.body.dataset.state,
    cost: document.querySelector('[data-metric=cost]').dataset.value,
  };
}"""


def measure(url: str, zones: list[str], rounds: int, stack: str) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    results: dict[str, Any] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        for zone in zones:
            runs = []
            for _ in range(rounds + 1):  # the first warms the server's page cache
                context = browser.new_context(
                    timezone_id=zone, viewport={"width": 1366, "height": 900}
                )
                page = context.new_page()
                page.goto(f"{url}/{VIEW.replace('stack=model', f'stack={stack}')}")
                page.wait_for_selector("body[data-ready-at]", timeout=120_000)
                runs.append(page.evaluate(TIMING))
                context.close()
            measured = runs[1:]
            results[zone] = {
                "ready_ms": [round(run["ready"]) for run in measured],
                "median_ready_ms": round(statistics.median(run["ready"] for run in measured)),
                "median_server_ms": round(statistics.median(run["lastAnswer"] for run in measured)),
                "median_drawing_ms": round(
                    statistics.median(run["ready"] - run["lastAnswer"] for run in measured)
                ),
                "api_requests": measured[0]["requests"],
                "state": measured[0]["state"],
                "total_cost": measured[0]["cost"],
            }
        browser.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--db", type=Path, default=None, help="reuse (or keep) this database")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        db = args.db or Path(folder) / "dashboard.sqlite3"
        load_seconds = None if db.exists() else build(db, args.events)
        port = free_port()
        server = subprocess.Popen(
            [*CLI, "serve", "--db", str(db), "--port", str(port)],
            stderr=subprocess.DEVNULL,
            env=dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True"),
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_up(url)
            started = time.monotonic()
            views = {
                stack: measure(url, ["UTC", "America/New_York"], args.rounds, stack)
                for stack in ("model", "subject")
            }
        finally:
            server.terminate()
            server.wait(30)
    print(
        json.dumps(
            {
                "events": args.events,
                "load_seconds": load_seconds and round(load_seconds, 1),
                "view": VIEW,
                "stacked_by": views,
                "seconds": round(time.monotonic() - started, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
