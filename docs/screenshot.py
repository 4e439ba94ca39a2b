"""Make the README's picture of the dashboard: docs/dashboard.png.

Run: python docs/screenshot.py [--calls 60] [--out docs/dashboard.png]

Runs ``litellm-openmeter demo --keep`` (real LiteLLM mock calls into the embedded local
server), opens its dashboard in Debian's Chromium (``apt-get install chromium``) through
Playwright, saves a screenshot of the last 24 hours in hourly windows, and stops the demo.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=60)
    parser.add_argument("--out", type=Path, default=HERE / "dashboard.png")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--width", type=int, default=1280)
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    command = [sys.executable, "-m", "litellm_openmeter.cli", "demo", "--keep", "--json"]
    demo = subprocess.Popen(
        [*command, "--calls", str(args.calls)],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True"),
    )
    try:
        assert demo.stdout is not None
        report = json.loads(demo.stdout.readline())
        url = f"{report['server_url']}/#period=24h&window=HOUR&stack=model"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=args.chromium,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            page = browser.new_page(viewport={"width": args.width, "height": 800})
            page.goto(url)
            page.wait_for_selector("body[data-ready-at]", timeout=60_000)
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
        print(f"{args.out} ({report['calls']} calls, {report['events_delivered']} events)")
    finally:
        demo.send_signal(signal.SIGINT)
        demo.communicate(timeout=30)


if __name__ == "__main__":
    main()
