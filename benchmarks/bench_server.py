"""Local server benchmarks: ingest throughput over HTTP and a grouped query over 1M events.

Run: python benchmarks/bench_server.py [--events 200000] [--query-events 1000000] [--only-query]
Prints one JSON object with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from litellm_openmeter.server.runner import open_store
from litellm_openmeter.server.store import Query

MODELS = ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4-5", "o3-mini", "text-embedding-3-small"]


def make_event(index: int, start: int, span: int, rng: random.Random) -> dict[str, Any]:
    prompt = rng.randint(10, 4000)
    cached = rng.randint(0, prompt // 2)
    completion = rng.randint(1, 800)
    return {
        "specversion": "1.0",
        "type": "litellm_tokens",
        "id": f"bench-{index}",
        "source": "bench",
        "subject": f"customer-{rng.randint(1, 200)}",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start + rng.randint(0, span))),
        "data": {
            "model": rng.choice(MODELS),
            "cost": round(rng.random() / 100, 8),
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "cache_read_tokens": cached,
            "cache_creation_tokens": 0,
            "reasoning_tokens": 0,
            "provider": "openai",
            "call_type": "completion",
        },
    }


def wait_up(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/api/v1/meters", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError("server did not start")


def bench_ingest(total: int, batch: int, clients: int, folder: Path) -> dict[str, Any]:
    """Events/s into `litellm-openmeter serve` (its own process) over HTTP."""
    port = 18000 + random.randint(0, 999)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "litellm_openmeter.cli",
            "serve",
            "--port",
            str(port),
            "--db",
            str(folder / f"ingest-{batch}.sqlite3"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_up(url)
        rng = random.Random(1)
        # Live traffic: event times within the last minute, as a logger sends them.
        start = int(time.time()) - 60
        bodies = []
        for offset in range(0, total, batch):
            events = [make_event(offset + i, start, 60, rng) for i in range(batch)]
            bodies.append(json.dumps(events).encode())
        chunks = [bodies[i::clients] for i in range(clients)]
        errors: list[str] = []

        def send(mine: list[bytes]) -> None:
            with httpx.Client(base_url=url, timeout=60) as http:
                for body in mine:
                    response = http.post(
                        "/api/v1/events",
                        content=body,
                        headers={"content-type": "application/cloudevents-batch+json"},
                    )
                    if response.status_code != 204:
                        errors.append(response.text)

        began = time.perf_counter()
        threads = [threading.Thread(target=send, args=(chunk,)) for chunk in chunks]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - began
        stored = httpx.get(f"{url}/api/v1/meters/litellm_tokens_calls/query").json()["data"]
        return {
            "events": total,
            "batch": batch,
            "clients": clients,
            "seconds": round(elapsed, 3),
            "events_per_second": round(total / elapsed),
            "errors": len(errors),
            "stored": int(stored[0]["value"]) if stored else 0,
        }
    finally:
        server.terminate()
        server.wait(30)


def bench_query(total: int, folder: Path) -> dict[str, Any]:
    """A grouped query (subject x model, DAY windows) over `total` stored events."""
    store = open_store(folder / "query.sqlite3")
    rng = random.Random(2)
    # 30 days around the end of summer time in New York (2026-11-01).
    start = int(datetime(2026, 10, 15, tzinfo=timezone.utc).timestamp())
    began = time.perf_counter()
    batch = 1000
    for offset in range(0, total, batch):
        store.ingest([make_event(offset + i, start, 30 * 86400, rng) for i in range(batch)])
    load_seconds = time.perf_counter() - began
    timings = {}
    for slug, group in (
        ("litellm_tokens_prompt_tokens", ["subject", "model"]),
        ("litellm_tokens_cost", ["subject", "model"]),
        ("litellm_tokens_calls", ["subject"]),
    ):
        runs = []
        rows = 0
        for _ in range(5):
            t0 = time.perf_counter()
            result = store.query(slug, Query(window_size="DAY", group_by=group))
            runs.append(time.perf_counter() - t0)
            rows = len(result["data"])
        timings[f"{slug} by {'+'.join(group)} DAY"] = {
            "median_seconds": round(sorted(runs)[2], 3),
            "best_seconds": round(min(runs), 3),
            "rows": rows,
        }
    t0 = time.perf_counter()
    store.query(
        "litellm_tokens_prompt_tokens",
        Query(window_size="DAY", time_zone="Europe/Berlin", group_by=["subject", "model"]),
    )
    berlin = time.perf_counter() - t0
    zone_queries = _zone_day_queries(store, folder)
    size = os.path.getsize(folder / "query.sqlite3")
    store.close()
    return {
        "events": total,
        "load_seconds": round(load_seconds, 1),
        "load_events_per_second": round(total / load_seconds),
        "queries": timings,
        "berlin_day_seconds": round(berlin, 3),
        "new_york_day": zone_queries,
        "db_bytes": size,
    }


def _zone_day_queries(store: Any, folder: Path) -> dict[str, Any]:
    """DAY windows in New York (its summer time ends inside the data) over the stored
    events, from the rollups (SUM) and from the facts (MAX); and the same over a copy
    holding one more event, in 1900, the zone's offsets far apart. The two are queried
    in turns, so that a machine slowing down weighs on both alike."""
    from litellm_openmeter.meters import Meter
    from litellm_openmeter.server.store import Store

    store.create_meter(
        Meter(
            slug="bench_max_prompt",
            aggregation="MAX",
            event_type="litellm_tokens",
            value_property="$.prompt_tokens",
            group_by={"model": "$.model"},
        )
    )
    # SQLite's backup API: a consistent copy, write-ahead log included.
    with (
        closing(sqlite3.connect(folder / "query.sqlite3")) as source,
        closing(sqlite3.connect(folder / "query-1900.sqlite3")) as copy,
    ):
        source.backup(copy)
    with_1900 = Store(folder / "query-1900.sqlite3")
    old = make_event(-1, 0, 0, random.Random(3))
    old["time"] = "1900-06-01T12:00:00Z"
    with_1900.ingest([old])
    query = Query(window_size="DAY", time_zone="America/New_York", group_by=["subject", "model"])
    runs: dict[tuple[str, str], list[float]] = {}
    rows: dict[tuple[str, str], int] = {}
    for _ in range(3):
        for name, target in (("data only", store), ("with one event in 1900", with_1900)):
            for slug in ("litellm_tokens_prompt_tokens", "bench_max_prompt"):
                t0 = time.perf_counter()
                rows[name, slug] = len(target.query(slug, query)["data"])
                runs.setdefault((name, slug), []).append(time.perf_counter() - t0)
    with_1900.close()
    result: dict[str, Any] = {}
    for (name, slug), seconds in runs.items():
        result.setdefault(name, {})[slug] = {
            "median_seconds": round(sorted(seconds)[1], 3),
            "rows": rows[name, slug],
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--query-events", type=int, default=1_000_000)
    parser.add_argument("--only-query", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        results: dict[str, Any] = {}
        if not args.only_query:
            results["ingest"] = [
                bench_ingest(args.events, batch, clients, Path(folder))
                for batch, clients in ((100, 2), (500, 2))
            ]
        results["query"] = bench_query(args.query_events, Path(folder))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
