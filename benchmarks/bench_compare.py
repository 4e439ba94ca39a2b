"""Side by side: no callback, a no-op CustomLogger, LiteLLM's built-in OpenMeter logger
and ours, for sync and async mock completions, with the ingest endpoint healthy, slow
(200 ms per request) and down (it comes back after the calls).

Every trial is a fresh process (``compare_worker.py``); trials are interleaved (each
round runs every configuration once, in a shuffled order) and repeated.

Run: python benchmarks/bench_compare.py [--calls 1000] [--rounds 6]
     [--configs noop,ours] [--modes async] [--states healthy]   (a subset)
Prints one JSON object: every trial, and per (mode, state, config) the medians over
rounds with the ratio of median latency to the no-op floor (paired by round, with a
bootstrap 90 % interval of that median: the machine's speed drifts between trials).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from common import HERE, free_port, sink

CONFIGS = ("none", "noop", "builtin", "ours")
SENDERS = ("builtin", "ours")
"""The configurations that send events."""
MODES = ("sync", "async", "burst")
STATES = {"healthy": 0.0, "slow_200ms": 0.2, "down": None}
SETTLE_SECONDS = 3.0
"""No new event for this long after the calls: the endpoint has all it will get."""


def count(url: str) -> dict[str, Any]:
    return dict(httpx.get(f"{url}/count", timeout=10).json())


def settle(url: str, expected: int, deadline: float) -> dict[str, Any]:
    """Wait until the endpoint has ``expected`` events or stops receiving any."""
    last = count(url)
    quiet_since = time.monotonic()
    while time.monotonic() < deadline and last["events"] < expected:
        time.sleep(0.1)
        now = count(url)
        if now["received"] != last["received"]:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > SETTLE_SECONDS:
            break
        last = now
    return count(url)


def trial(config: str, mode: str, state: str, calls: int, folder: Path) -> dict[str, Any]:
    port = free_port()
    delay = STATES[state]
    endpoint = f"http://127.0.0.1:{port}"
    worker_folder = folder / f"{config}-{mode}-{state}-{time.monotonic_ns()}"
    worker_folder.mkdir()
    command = [sys.executable, str(HERE / "compare_worker.py"), config, mode, endpoint]
    command += [str(calls), str(worker_folder)]

    env = dict(os.environ, PYTHONHASHSEED="0", LITELLM_LOCAL_MODEL_COST_MAP="True")

    def run_worker() -> tuple[subprocess.Popen[str], dict[str, Any]]:
        with (worker_folder / "stderr.txt").open("w") as errors:
            worker = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
                env=env,
            )
        assert worker.stdout is not None
        line = worker.stdout.readline()
        if not line:
            tail = (worker_folder / "stderr.txt").read_text()[-3000:]
            raise RuntimeError(f"worker {config} {mode} {state} died:\n{tail}")
        return worker, json.loads(line)

    def finish(worker: subprocess.Popen[str], url: str) -> dict[str, Any]:
        assert worker.stdin is not None and worker.stdout is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
        worker.stdout.readline()  # EXIT, after ours flushed
        try:
            worker.wait(120)
        except subprocess.TimeoutExpired:  # LiteLLM's exit handlers hung; results are in
            worker.kill()
            worker.wait()
        if config not in SENDERS:
            return count(url)  # nothing to wait for
        return settle(url, calls, time.monotonic() + 60)

    if delay is None:  # down during the calls, back afterwards
        worker, result = run_worker()
        with sink(0.0, port) as url:
            received = finish(worker, url)
    else:
        with sink(delay, port) as url:
            worker, result = run_worker()
            if config in SENDERS:
                settle(url, calls, time.monotonic() + 120)
            received = finish(worker, url)
    delivered = received["events"] if config in SENDERS else 0
    result.update(state=state, delivered=delivered)
    if config in SENDERS:
        result["lost"] = calls - delivered
        if delay == 0.0 and received["last_at"]:
            elapsed = received["last_at"] - result["first_call_at"]
            result["delivered_per_second"] = round(delivered / elapsed) if elapsed > 0 else None
    return result


def interval(ratios: list[float], level: float = 0.9, resamples: int = 10_000) -> list[float]:
    """A bootstrap interval (percentile method) of the median of ``ratios``: how far
    the median could be from the truth, given the spread between rounds."""
    if len(ratios) < 3:
        return []
    pick = random.Random(1).choices
    medians = sorted(statistics.median(pick(ratios, k=len(ratios))) for _ in range(resamples))
    tail = (1 - level) / 2
    low, high = medians[int(tail * resamples)], medians[int((1 - tail) * resamples) - 1]
    return [round(low, 3), round(high, 3)]


def summarise(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for mode in MODES:
        for state in STATES:
            group = [t for t in trials if t["mode"] == mode and t["state"] == state]
            if not group:
                continue
            floor = statistics.median(
                t["latency_us"]["p50"] for t in group if t["config"] == "noop"
            )
            for config in CONFIGS:
                runs = [t for t in group if t["config"] == config]
                if not runs:
                    continue

                def median(*path: str, runs: list[dict[str, Any]] = runs) -> float | None:
                    values = []
                    for run in runs:
                        value: Any = run
                        for key in path:
                            value = value.get(key) if isinstance(value, dict) else None
                        if value is not None:
                            values.append(value)
                    return round(statistics.median(values), 1) if values else None

                p50 = median("latency_us", "p50")
                cpu_floor = statistics.median(
                    t["cpu_per_call_us"] for t in group if t["config"] == "noop"
                )
                cpu = median("cpu_per_call_us")
                paired = [
                    run["latency_us"]["p50"] / noop["latency_us"]["p50"]
                    for run in runs
                    for noop in group
                    if noop["config"] == "noop" and noop["round"] == run["round"]
                ]
                rows.append(
                    {
                        "mode": mode,
                        "state": state,
                        "config": config,
                        "rounds": len(runs),
                        "latency_p50_us": p50,
                        "latency_p99_us": median("latency_us", "p99"),
                        "ratio_to_noop_p50": round(p50 / floor, 3) if p50 and floor else None,
                        "paired_ratio_to_noop_p50": (
                            round(statistics.median(paired), 3) if paired else None
                        ),
                        "paired_ratio_90pct_interval": interval(paired),
                        "mean_latency_us": median("mean_latency_us"),
                        "cpu_per_call_us": cpu,
                        "cpu_ratio_to_noop": round(cpu / cpu_floor, 3)
                        if cpu and cpu_floor
                        else None,
                        "hook_p50_us": median("hook_us", "p50"),
                        "hook_p99_us": median("hook_us", "p99"),
                        "hook_cpu_p50_us": median("hook_cpu_us", "p50"),
                        "loop_lag_p50_us": median("loop_lag_us", "p50"),
                        "loop_lag_p99_us": median("loop_lag_us", "p99"),
                        "delivered": median("delivered"),
                        "lost": median("lost"),
                        "max_lost": max((run.get("lost") or 0) for run in runs),
                        "calls_per_second": median("calls_per_second"),
                        "delivered_per_second": median("delivered_per_second"),
                    }
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset")
    parser.add_argument("--states", default=",".join(STATES), help="comma-separated subset")
    parser.add_argument(
        "--trials-file",
        type=Path,
        default=HERE / "results" / "compare-trials.jsonl",
        help="every trial is appended here as it ends (kept if the run stops early)",
    )
    parser.add_argument(
        "--summarise",
        type=Path,
        metavar="TRIALS_FILE",
        help="run nothing: print the summary of the trials kept in this file",
    )
    args = parser.parse_args()
    if args.summarise is not None:
        kept = [json.loads(line) for line in args.summarise.read_text().splitlines() if line]
        print(json.dumps({"summary": summarise(kept), "trials": kept}, indent=2))
        return
    configs = [config for config in CONFIGS if config in args.configs.split(",")]
    if "noop" not in configs:
        parser.error("--configs must include noop: every ratio is to it")
    modes = [mode for mode in MODES if mode in args.modes.split(",")]
    states = [state for state in STATES if state in args.states.split(",")]
    args.trials_file.parent.mkdir(exist_ok=True)
    args.trials_file.write_text("")
    shuffle = random.Random(args.seed).shuffle
    trials = []
    with tempfile.TemporaryDirectory() as name:
        for round_number in range(args.rounds):
            for state in states:
                for mode in modes:
                    if mode == "burst" and state != "healthy":
                        continue  # throughput is measured against a healthy endpoint
                    order = list(configs)
                    shuffle(order)
                    for config in order:
                        result = trial(config, mode, state, args.calls, Path(name))
                        result["round"] = round_number
                        trials.append(result)
                        with args.trials_file.open("a") as kept:
                            kept.write(json.dumps(result) + "\n")
                        print(
                            f"round {round_number} {state:10} {mode:5} {config:8} "
                            f"p50 {result['latency_us']['p50']} us, "
                            f"delivered {result['delivered']}",
                            file=sys.stderr,
                            flush=True,
                        )
    print(json.dumps({"summary": summarise(trials), "trials": trials}, indent=2))


if __name__ == "__main__":
    main()
