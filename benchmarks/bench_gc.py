"""Python's garbage collector under each callback: python benchmarks/bench_gc.py [--calls N]

For each configuration (a no-op ``CustomLogger``, ours) a fresh process makes 100
warm-up calls, waits a second (LiteLLM's own start-up work would otherwise show in the
counts), then makes sync mock completions and reports the collections per generation,
the time spent in them (``gc.callbacks``) and the median call latency. Ours points at a
closed port, so its delivery only waits: what is measured is the hooks and the writer.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

WORKER = """
import gc, json, os, sys, time
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
import litellm
from litellm.integrations.custom_logger import CustomLogger

class NoOp(CustomLogger):
    def log_success_event(self, kwargs, response_obj, start_time, end_time):
        return None

config, calls, folder = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if config == "ours":
    from litellm_openmeter import OpenMeterLogger
    callback = OpenMeterLogger(api_key="bench", endpoint="http://127.0.0.1:9",
                               outbox_path=os.path.join(folder, "outbox.sqlite3"))
else:
    callback = NoOp()
litellm.callbacks = [callback]
messages = [{"role": "user", "content": "hello"}]
def call(index):
    litellm.completion(model="gpt-4o", messages=messages, mock_response="hi there",
                       user=f"customer-{index % 50}")
for index in range(100):
    call(index)
time.sleep(1)
spent, started = [0.0], [0.0]
def timer(phase, info):
    if phase == "start":
        started[0] = time.perf_counter()
    else:
        spent[0] += time.perf_counter() - started[0]
before = [stats["collections"] for stats in gc.get_stats()]
gc.callbacks.append(timer)
latencies = []
for index in range(calls):
    begun = time.perf_counter()
    call(index)
    latencies.append(time.perf_counter() - begun)
gc.callbacks.remove(timer)
after = [stats["collections"] for stats in gc.get_stats()]
latencies.sort()
print(json.dumps({
    "config": config,
    "calls": calls,
    "collections_per_generation": [b - a for a, b in zip(before, after)],
    "gc_seconds": round(spent[0], 4),
    "gc_us_per_call": round(spent[0] / calls * 1e6, 1),
    "p50_us": round(latencies[len(latencies) // 2] * 1e6, 1),
    "tracked_objects": len(gc.get_objects()),
}), flush=True)
os._exit(0)  # the endpoint is a closed port: no flush at exit
"""


def run(config: str, calls: int) -> dict[str, Any]:
    """One fresh process of ``config``; its JSON line."""
    with tempfile.TemporaryDirectory() as folder:
        env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True")
        done = subprocess.run(
            [sys.executable, "-c", WORKER, config, str(calls), folder],
            capture_output=True,
            text=True,
            env=env,
            check=True,
            timeout=600,
        )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    results = []
    for _ in range(args.repeat):
        for config in ("noop", "ours"):
            results.append(run(config, args.calls))
            print(json.dumps(results[-1]), file=sys.stderr)
    print(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC"), "runs": results}, indent=2))


if __name__ == "__main__":
    main()
