"""A process's first and last seconds: loss when killed soon after its last hook, the
first async calls' event-loop lag, and how long a short script takes to exit.

usage: bench_transients.py [--calls 300] [--repeat 5] [--delays 0,50,100,150,200,250]
                           [--only kill,lag,exit]

- **kill**: a fresh process makes ``--calls`` sync mock calls with the endpoint down,
  waits until every success hook returned, waits ``delay`` ms and SIGKILLs itself;
  then the events in its outbox are counted (lost = calls - stored).
- **lag**: a fresh process makes 500 sequential ``acompletion`` mock calls with a 1 ms
  ticker task on the loop; the largest lag of a tick, with no callback, a
  ``CustomLogger`` that overrides no hook, one that overrides the async success hook,
  and ours.
- **exit**: a script of 3 sync mock calls and nothing else, timed from start to exit,
  with no callback and with ours (the endpoint answers 204 at once), and in phases:
  the interpreter's start, each import, building the logger, the calls, and the exit
  (exit handlers: LiteLLM's, then ours, which waits for the hooks and delivers).
Prints one JSON object.
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

from common import free_port, sink

KILL = """
import os, signal, sys, time
import litellm
from litellm_openmeter import OpenMeterLogger
outbox, endpoint, calls, delay = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
logger = OpenMeterLogger(api_key="k", endpoint=endpoint, outbox_path=outbox)
litellm.callbacks = [logger]
for index in range(calls):
    litellm.completion(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                       mock_response="ok", user=f"u{index % 5}")
while logger.stats()["calls_seen"] < calls:
    time.sleep(0.0005)
time.sleep(delay)
os.kill(os.getpid(), signal.SIGKILL)
"""

LAG = """
import asyncio, sys, tempfile, time
import litellm
from litellm.integrations.custom_logger import CustomLogger
config = sys.argv[1]
if config == "plain":
    litellm.callbacks = [CustomLogger()]
elif config == "hooked":
    class Hooked(CustomLogger):
        async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
            return None
    litellm.callbacks = [Hooked()]
elif config == "ours":
    from litellm_openmeter import OpenMeterLogger
    litellm.callbacks = [OpenMeterLogger(api_key="k", endpoint=sys.argv[2],
                                         outbox_path=tempfile.mkdtemp() + "/o.sqlite3")]
async def main():
    lags, running = [], True
    async def tick():
        while running:
            started = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - started - 0.001)
    ticker = asyncio.create_task(tick())
    for _ in range(500):
        await litellm.acompletion(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                  mock_response="ok", user="u")
    running = False
    await ticker
    print(max(lags) * 1000)
asyncio.run(main())
"""

EXIT = """
import sys, time
marks = [("start", time.time())]
import litellm
marks.append(("import litellm", time.time()))
if sys.argv[1] == "ours":
    from litellm_openmeter import OpenMeterLogger
    marks.append(("import litellm_openmeter", time.time()))
    litellm.callbacks = [OpenMeterLogger(api_key="k", endpoint=sys.argv[2],
                                         outbox_path=sys.argv[3])]
    marks.append(("build the logger", time.time()))
for index in range(3):
    litellm.completion(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                       mock_response="ok", user="u")
marks.append(("3 calls", time.time()))
print(" ".join(f"{name.replace(' ', '_')}={value!r}" for name, value in marks))
"""


def python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True")
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=False
    )


def stored(outbox: Path) -> int:
    from litellm_openmeter.delivery.outbox import Outbox

    if not outbox.exists():
        return 0
    box = Outbox(outbox)
    try:
        return box.stats().queued
    finally:
        box.close()


def bench_kill(calls: int, repeat: int, delays: list[int], folder: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    endpoint = f"http://127.0.0.1:{free_port()}"  # down: every event stays in the outbox
    for delay in delays:
        lost = []
        for run in range(repeat):
            outbox = folder / f"kill-{delay}-{run}.sqlite3"
            python(KILL, str(outbox), endpoint, str(calls), str(delay / 1000))
            lost.append(calls - stored(outbox))
        results[f"{delay}_ms"] = {"lost": lost, "of": calls}
    return results


def bench_lag(repeat: int, endpoint: str) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for config in ("none", "plain", "hooked", "ours"):
        lags = [float(python(LAG, config, endpoint).stdout.split()[-1]) for _ in range(repeat)]
        results[config] = {
            "max_lag_ms": [round(lag, 1) for lag in lags],
            "median_ms": round(statistics.median(lags), 1),
        }
    return results


def bench_exit(repeat: int, endpoint: str, folder: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for config in ("none", "ours"):
        seconds = []
        phases: dict[str, list[float]] = {}
        for run in range(repeat):
            started = time.time()
            done = python(EXIT, config, endpoint, str(folder / f"exit-{run}.sqlite3"))
            ended = time.time()
            assert done.returncode == 0, done.stderr
            seconds.append(ended - started)
            marks = [item.split("=") for item in done.stdout.split()]
            previous = started  # up to "start": the interpreter's own start
            for name, value in [*marks, ("exit", str(ended))]:
                phases.setdefault(name, []).append(float(value) - previous)
                previous = float(value)
        results[config] = {
            "seconds": [round(value, 2) for value in seconds],
            "median": round(statistics.median(seconds), 2),
            "phases_median_s": {
                name: round(statistics.median(values), 2) for name, values in phases.items()
            },
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--delays", default="0,50,100,150,200,250")
    parser.add_argument("--only", default="kill,lag,exit")
    args = parser.parse_args()
    delays = [int(item) for item in args.delays.split(",")]
    only = args.only.split(",")
    with tempfile.TemporaryDirectory() as name, sink() as endpoint:
        folder = Path(name)
        result: dict[str, Any] = {}
        if "kill" in only:
            result["kill"] = bench_kill(args.calls, args.repeat, delays, folder)
        if "lag" in only:
            result["lag"] = bench_lag(args.repeat, endpoint)
        if "exit" in only:
            result["exit"] = bench_exit(args.repeat, endpoint, folder)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
