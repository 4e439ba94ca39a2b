"""A success hook's CPU time inside a real LiteLLM process:
python benchmarks/bench_hook.py [--calls N] [--repeat R]

A hook's cost alone, in a tight loop with the same ``kwargs``, says little about what
it costs a caller: between two calls LiteLLM runs a great deal of its own code, and a
hook then meets cold caches. Here each configuration (a no-op ``CustomLogger``, ours)
runs in fresh processes, in turns, making 100 warm-up calls and then N sequential mock
calls, sync (``litellm.completion``; the hook runs in LiteLLM's logging pool) or async
(``litellm.acompletion``; the hook runs on the caller's event loop), and times the CPU
of the hook's thread across each success hook (``time.thread_time_ns``, which costs
itself about a microsecond: the no-op hook shows that floor). Ours points at a closed
port, so its delivery only waits. Prints one JSON object: per mode and configuration,
the median over processes of each process's hook CPU p50 and p90, in microseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Any

WORKER = """
import asyncio, json, os, statistics, sys, time
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
import litellm
from litellm.integrations.custom_logger import CustomLogger

class NoOp(CustomLogger):
    def log_success_event(self, kwargs, response_obj, start_time, end_time):
        return None

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        return None

config, mode, calls, folder = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if config == "ours":
    from litellm_openmeter import OpenMeterLogger
    callback = OpenMeterLogger(api_key="bench", endpoint="http://127.0.0.1:9",
                               outbox_path=os.path.join(folder, "outbox.sqlite3"))
else:
    callback = NoOp()
cpu = []
measuring = [False]
if mode == "async":
    hook = callback.async_log_success_event
    async def timed(kwargs, response_obj, start_time, end_time):
        started = time.thread_time_ns()
        await hook(kwargs, response_obj, start_time, end_time)
        if measuring[0]:
            cpu.append((time.thread_time_ns() - started) / 1000)
    callback.async_log_success_event = timed
else:
    hook = callback.log_success_event
    def timed(kwargs, response_obj, start_time, end_time):
        started = time.thread_time_ns()
        hook(kwargs, response_obj, start_time, end_time)
        if measuring[0]:
            cpu.append((time.thread_time_ns() - started) / 1000)
    callback.log_success_event = timed
litellm.callbacks = [callback]
messages = [{"role": "user", "content": "hello"}]

async def run_async(first, count):
    for index in range(first, first + count):
        await litellm.acompletion(model="gpt-4o", messages=messages,
                                  mock_response="hi there", user=f"customer-{index % 50}")
    await asyncio.sleep(0.2)  # the last hooks run as tasks after their calls

def run(first, count):
    if mode == "async":
        asyncio.run(run_async(first, count))
    else:
        for index in range(first, first + count):
            litellm.completion(model="gpt-4o", messages=messages, mock_response="hi there",
                               user=f"customer-{index % 50}")

run(0, 100)
measuring[0] = True
run(100, calls)
deadline = time.monotonic() + 10
while len(cpu) < calls and time.monotonic() < deadline:
    time.sleep(0.01)  # sync hooks run in LiteLLM's pool after their calls return
measuring[0] = False
deciles = statistics.quantiles(cpu, n=10)
print(json.dumps({"hooks": len(cpu), "p50": statistics.median(cpu), "p90": deciles[-1]}))
sys.stdout.flush()
os._exit(0)
"""

CONFIGS = ("noop", "ours")
MODES = ("sync", "async")


def one(config: str, mode: str, calls: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        done = subprocess.run(
            [sys.executable, "-c", WORKER, config, mode, str(calls), folder],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
        )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if result["hooks"] < calls:
        raise SystemExit(f"{config} {mode}: {result['hooks']} of {calls} hooks ran")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1500)
    parser.add_argument("--repeat", type=int, default=4)
    args = parser.parse_args()
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        mode: {config: [] for config in CONFIGS} for mode in MODES
    }
    for turn in range(args.repeat):
        for mode in MODES:
            order = CONFIGS if turn % 2 == 0 else CONFIGS[::-1]
            for config in order:
                runs[mode][config].append(one(config, mode, args.calls))
    summary = {
        mode: {
            config: {
                "hook_cpu_p50_us": round(statistics.median(r["p50"] for r in results), 1),
                "hook_cpu_p90_us": round(statistics.median(r["p90"] for r in results), 1),
                "per_process_p50_us": [round(r["p50"], 1) for r in results],
            }
            for config, results in by_config.items()
        }
        for mode, by_config in runs.items()
    }
    print(json.dumps({"calls": args.calls, "repeat": args.repeat, "hook": summary}, indent=2))


if __name__ == "__main__":
    main()
