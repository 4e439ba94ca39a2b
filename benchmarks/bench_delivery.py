"""Delivery benchmarks: hook time with the endpoint healthy, slow and down; events/s the
sender delivers (to a 204 endpoint, and to `litellm-openmeter serve`); memory and
outbox size with 1,000,000 events waiting.

Run: python benchmarks/bench_delivery.py [--hooks 20000] [--drain 200000] [--backlog 1000000]
                                         [--only-hooks]
Hook time is measured back to back (far faster than any LiteLLM process calls: the
writer's bound on waiting entries makes a hook wait), and paced at 2,000 and 20,000
hooks a second.
Prints one JSON object with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import httpx

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from common import HERE, free_port, sink

from litellm_openmeter import OpenMeterLogger

FIXTURE = HERE.parent / "tests" / "fixtures" / "openai_cached.json"


def hook_kwargs(index: int, template: dict[str, Any]) -> dict[str, Any]:
    kwargs = dict(template)
    kwargs["litellm_call_id"] = f"bench-{index}"
    kwargs["user"] = f"customer-{index % 100}"
    return kwargs


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def rss_mib(pid: int | None = None) -> float:
    with open(f"/proc/{pid or 'self'}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def bench_hooks(
    count: int, endpoint: str, folder: Path, label: str, per_second: float = 0.0
) -> dict[str, Any]:
    """``count`` hooks in a row, or ``per_second`` (sleeping between them, as a process
    that waits for its calls does)."""
    template = json.loads(FIXTURE.read_text())
    logger = OpenMeterLogger(
        api_key="bench",
        endpoint=endpoint,
        http_timeout=5.0,
        outbox_path=folder / f"hooks-{label}.sqlite3",
    )
    calls = [hook_kwargs(index, template) for index in range(count)]
    timings = []
    due = time.perf_counter()
    for kwargs in calls:
        if per_second:
            due += 1 / per_second
            time.sleep(max(0.0, due - time.perf_counter()))
        started = time.perf_counter_ns()
        logger.log_success_event(kwargs, None, None, None)
        timings.append((time.perf_counter_ns() - started) / 1000)
    logger.writer.drain(60)
    stats = logger.stats()
    logger.close(timeout=2)
    return {
        "state": label,
        "hooks": count,
        "per_second": per_second or "back to back",
        "p50_us": round(percentile(timings, 0.5), 1),
        "p99_us": round(percentile(timings, 0.99), 1),
        "max_us": round(max(timings), 1),
        "delivered_meanwhile": stats["delivered"],
        "queued_after": stats["queued"],
    }


def fill_offline(path: Path, first: int, count: int) -> None:
    """Write ``count`` events into the outbox at ``path`` while the endpoint is down."""
    template = json.loads(FIXTURE.read_text())
    filler = OpenMeterLogger(
        api_key="bench",
        endpoint=f"http://127.0.0.1:{free_port()}",
        outbox_path=path,
        flush_interval=3600,
        batch_size=100_000,
    )
    for index in range(first, first + count):
        filler.record_call(hook_kwargs(index, template), success=True)
    filler.writer.stop(600)
    filler.sender.stop(1)
    filler.outbox.close()


@contextmanager
def local_server(folder: Path) -> Iterator[str]:
    """`litellm-openmeter serve` on a fresh database, in its own process."""
    port = free_port()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "litellm_openmeter.cli", "serve"),
            *("--port", str(port), "--db", str(folder / f"server-{port}.sqlite3")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/api/v1/meters", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("litellm-openmeter serve did not start")
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def bench_drain(
    count: int, folder: Path, endpoint: Callable[[], AbstractContextManager[str]], name: str
) -> dict[str, Any]:
    """The sender's events/s: ``count`` events wait in the outbox (written while the
    endpoint was down), then a new process delivers them to ``endpoint``."""
    results = {}
    for run, batch in enumerate((100, 500)):
        path = folder / f"{name}-{batch}.sqlite3"
        fill_offline(path, run * count, count)
        with endpoint() as url:
            started = time.perf_counter()
            logger = OpenMeterLogger(
                api_key="bench",
                endpoint=url,
                outbox_path=path,
                batch_size=batch,
                flush_interval=0.05,
            )
            assert logger.flush(600)
            elapsed = time.perf_counter() - started
            logger.close(timeout=1)
        results[f"batch_{batch}"] = {
            "events": count,
            "seconds": round(elapsed, 2),
            "events_per_second": round(count / elapsed),
        }
    return results


def bench_backlog(count: int, folder: Path) -> dict[str, Any]:
    template = json.loads(FIXTURE.read_text())
    before = rss_mib()
    logger = OpenMeterLogger(
        api_key="bench",
        endpoint=f"http://127.0.0.1:{free_port()}",
        outbox_path=folder / "backlog.sqlite3",
        retry_max_delay=5.0,
    )
    started = time.perf_counter()
    for index in range(count):
        logger.record_call(hook_kwargs(index, template), success=True)
    assert logger.writer.drain(600)
    elapsed = time.perf_counter() - started
    stats = logger.stats()
    files = sum(os.path.getsize(p) for p in folder.glob("backlog.sqlite3*"))
    result = {
        "events_waiting": stats["queued"],
        "enqueue_seconds": round(elapsed, 1),
        "rss_before_mib": round(before, 1),
        "rss_after_mib": round(rss_mib(), 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "outbox_bytes_counted": stats["outbox_bytes"],
        "outbox_file_bytes": files,
    }
    logger.close(timeout=0.1)  # the endpoint is down: the events stay in the outbox
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hooks", type=int, default=20_000)
    parser.add_argument("--drain", type=int, default=200_000)
    parser.add_argument("--backlog", type=int, default=1_000_000)
    parser.add_argument("--only-hooks", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        hooks = []
        with sink() as url:
            hooks.append(bench_hooks(args.hooks, url, folder, "healthy"))
        with sink(0.2) as url:
            hooks.append(bench_hooks(args.hooks, url, folder, "slow_200ms"))
        hooks.append(bench_hooks(args.hooks, f"http://127.0.0.1:{free_port()}", folder, "down"))
        for rate in (2000.0, 20_000.0):
            with sink() as url:
                hooks.append(bench_hooks(args.hooks, url, folder, f"healthy-{rate:.0f}", rate))
        if args.only_hooks:
            print(json.dumps({"hook_time": hooks}, indent=2))
            return
        results = {
            "hook_time": hooks,
            "drain": bench_drain(args.drain, folder, sink, "drain"),
            "drain_local_server": bench_drain(
                args.drain // 2, folder, lambda: local_server(folder), "drain-local"
            ),
        }
        if args.backlog:
            results["backlog"] = bench_backlog(args.backlog, folder)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
