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

CLOSED_PORT = "http://127.0.0.1:9"
WARMUP = 100


def worker(config: str, mode: str, calls: int, folder: str) -> None:
    """One process's measurement (``--worker``): prints its hook CPU p50 and p90."""
    import asyncio
    import time
    from pathlib import Path

    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    import litellm
    from compare_worker import make_callback, timed

    callback = make_callback(config, CLOSED_PORT, Path(folder))
    assert callback is not None, "a configuration with a callback"
    name = "async_log_success_event" if mode == "async" else "log_success_event"
    hook_times: list[float] = []
    cpu: list[float] = []
    setattr(callback, name, timed(hook_times, cpu, getattr(callback, name)))
    litellm.callbacks = [callback]
    messages = [{"role": "user", "content": "hello"}]

    async def run_async(first: int, count: int) -> None:
        for index in range(first, first + count):
            await litellm.acompletion(
                model="gpt-4o",
                messages=messages,
                mock_response="hi there",
                user=f"customer-{index % 50}",
            )
        deadline = time.monotonic() + 10  # the last hooks run as tasks after their calls
        while len(cpu) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    def run(first: int, count: int) -> None:
        if mode == "async":
            asyncio.run(run_async(first, count))
            return
        for index in range(first, first + count):
            litellm.completion(
                model="gpt-4o",
                messages=messages,
                mock_response="hi there",
                user=f"customer-{index % 50}",
            )
        deadline = time.monotonic() + 10  # sync hooks run in LiteLLM's pool afterwards
        while len(cpu) < count and time.monotonic() < deadline:
            time.sleep(0.01)

    run(0, WARMUP)
    cpu.clear()
    run(WARMUP, calls)
    deciles = statistics.quantiles(cpu, n=10)
    print(json.dumps({"hooks": len(cpu), "p50": statistics.median(cpu), "p90": deciles[-1]}))
    sys.stdout.flush()
    os._exit(0)  # LiteLLM's exit handlers are not measured


CONFIGS = ("noop", "ours")
MODES = ("sync", "async")


def one(config: str, mode: str, calls: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        done = subprocess.run(
            [sys.executable, __file__, "--worker", config, mode, str(calls), folder],
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
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        config, mode, calls, folder = args.worker
        worker(config, mode, int(calls), folder)
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
