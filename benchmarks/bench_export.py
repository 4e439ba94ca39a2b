"""The export rate: a local server database of a million events copied by
``litellm-openmeter export`` into ``sink.py`` (answers 204) and into a fresh
``litellm-openmeter serve`` (stores and meters them), each a process of its own.

Run: python benchmarks/bench_export.py [--events 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench_server import make_event, wait_up
from common import free_port, sink

from litellm_openmeter.server.runner import open_store


def build(db: Path, total: int) -> float:
    store = open_store(db)
    rng = random.Random(5)
    start = int(datetime(2026, 10, 15, tzinfo=timezone.utc).timestamp())
    began = time.perf_counter()
    for offset in range(0, total, 1000):
        store.ingest([make_event(offset + i, start, 30 * 86400, rng) for i in range(1000)])
    store.close()
    return time.perf_counter() - began


def export(db: Path, url: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "litellm_openmeter.cli",
            "export",
            "--db",
            str(db),
            "--to",
            url,
            "--key",
            "bench",
            "--apply-meters",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
    )
    seconds = time.perf_counter() - t0
    report = json.loads(done.stdout)
    return {
        "events": report["events"],
        "seconds": round(seconds, 1),
        "events_per_second": round(report["events"] / seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "source.sqlite3"
        results: dict[str, Any] = {
            "events": args.events,
            "build_seconds": round(build(db, args.events), 1),
        }
        with sink(idle=True) as url:
            results["into sink.py"] = export(db, url)
        for name in os.listdir(folder):
            if ".export-" in name:  # a fresh export (its outbox and checkpoint) for the next
                os.remove(Path(folder) / name)
        port = free_port()
        serve = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "litellm_openmeter.cli",
                "serve",
                "--port",
                str(port),
                "--db",
                str(Path(folder) / "target.sqlite3"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_up(url)
            results["into serve"] = export(db, url)
        finally:
            serve.terminate()
            serve.wait(30)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
