"""A restart after an outage: a process that opens an outbox with a backlog of events.

usage: bench_backlog.py [--backlog 1000000] [--calls 1000] [--watch 60]

Builds an outbox holding ``--backlog`` events (as a long outage leaves it), then runs
one fresh process on it and one on an empty outbox, each against the same 204 sink
(its own process, under SCHED_IDLE). Each makes ``--calls`` sync mock
``litellm.completion`` calls at once after building the logger (the sender starts
sending the backlog meanwhile), timing every call and our success hook; then it
watches ``--watch`` seconds of delivery. Reports per process: hook p50/p99/max and call
p50/p99 (ms), events delivered per second while draining (and the time the whole
backlog would take at that rate), and the peak RSS at the start, after the calls and
while draining (MiB). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import sink

RUN = """
import json, resource, sys, threading, time
import httpx, litellm
from litellm_openmeter import OpenMeterLogger

outbox, endpoint, calls, watch = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])

def rss_mib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0

hooks = []
class Timed(OpenMeterLogger):
    def log_success_event(self, kwargs, response_obj, start_time, end_time):
        started = time.perf_counter()
        super().log_success_event(kwargs, response_obj, start_time, end_time)
        hooks.append(time.perf_counter() - started)

logger = Timed(api_key="k", endpoint=endpoint, outbox_path=outbox)
litellm.callbacks = [logger]
rss = {"start": rss_mib()}
latencies = []
for index in range(calls):
    started = time.perf_counter()
    litellm.completion(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                       mock_response="ok", user=f"u{index % 5}")
    latencies.append(time.perf_counter() - started)
deadline = time.monotonic() + 60
while len(hooks) < calls and time.monotonic() < deadline:
    time.sleep(0.01)
rss["after_calls"] = rss_mib()
def count():
    return httpx.get(endpoint + "/count").json()["received"]
first, since = count(), time.monotonic()
peak = rss["after_calls"]
while time.monotonic() - since < watch:
    time.sleep(1)
    peak = max(peak, rss_mib())
delivered = count() - first
rss["draining_peak"] = peak
def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000
print(json.dumps({
    "hook_ms": {"p50": pct(hooks, 0.5), "p99": pct(hooks, 0.99), "max": max(hooks) * 1000},
    "call_ms": {"p50": pct(latencies, 0.5), "p99": pct(latencies, 0.99)},
    "delivered_per_s": delivered / (time.monotonic() - since),
    "left": logger.stats()["queued"],
    "rss_mib": rss,
}))
logger.close(timeout=0)
"""


def build_backlog(path: Path, events: int) -> float:
    """An outbox with ``events`` queued events of the default shape; returns seconds."""
    from litellm_openmeter.delivery.outbox import Outbox

    started = time.perf_counter()
    outbox = Outbox(path)
    chunk = 20_000
    for first in range(0, events, chunk):
        outbox.enqueue(
            [
                {
                    "specversion": "1.0",
                    "id": f"backlog-{index}",
                    "source": "litellm-proxy",
                    "type": "litellm_tokens",
                    "subject": f"customer-{index % 50}",
                    "time": "2026-11-30T12:00:00.000000Z",
                    "data": {
                        "model": "gpt-4o",
                        "model_group": "gpt-4o",
                        "prompt_tokens": 120,
                        "completion_tokens": 48,
                        "total_tokens": 168,
                        "cost": 0.00078,
                        "call_type": "completion",
                        "status": "success",
                    },
                }
                for index in range(first, min(events, first + chunk))
            ]
        )
    outbox.close()
    return time.perf_counter() - started


def run(outbox: Path, endpoint: str, calls: int, watch: float) -> dict[str, Any]:
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True")
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(outbox), endpoint, str(calls), str(watch)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backlog", type=int, default=1_000_000)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--watch", type=float, default=60.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name, sink(idle=True) as endpoint:
        folder = Path(name)
        backlog = folder / "backlog.sqlite3"
        built = build_backlog(backlog, args.backlog)
        result: dict[str, Any] = {
            "backlog": args.backlog,
            "outbox_mib": round(backlog.stat().st_size / 2**20),
            "built_in_s": round(built, 1),
            "empty": run(folder / "empty.sqlite3", endpoint, args.calls, args.watch),
            "with_backlog": run(backlog, endpoint, args.calls, args.watch),
        }
        rate = result["with_backlog"]["delivered_per_s"]
        result["whole_backlog_in_s"] = round(args.backlog / rate) if rate else None
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
