"""Side by side: no callback, a no-op CustomLogger, LiteLLM's built-in OpenMeter logger
and ours, for sync and async mock completions, with the ingest endpoint healthy, slow
(200 ms per request) and down (it comes back after the calls).

Every trial is a fresh process (``compare_worker.py``). In a round, the processes of
all configurations start together and call in turns of ``--block`` calls, in a
shuffled order each cycle, until each made ``--calls``: the machine's speed changes
from one moment to the next (by 10-30 % here, see ``bench_steadiness.py``), and short
turns let every configuration meet the same moments. With ``--pin`` every worker runs
on the same core (cores of a virtual machine can differ by half in speed), with all
its threads: what ours does in the background then delays
its own calls, as on a machine with no core to spare. Rounds repeat that with new
processes.

Run: python benchmarks/bench_compare.py [--calls 1000] [--block 5] [--rounds 6] [--pin]
     [--configs noop,ours] [--modes async] [--states healthy]   (a subset)
     [--sink-idle]   (the endpoint under SCHED_IDLE, as if on another machine)
Prints one JSON object: every trial, and per (mode, state, config) the medians over
rounds with the ratio of median latency to the no-op floor (paired by round, with a
bootstrap 90 % interval of that median).
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
from contextlib import ExitStack
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


class Worker:
    """One configuration's ``compare_worker.py`` process, driven turn by turn."""

    def __init__(
        self, config: str, mode: str, port: int, block: int, folder: Path, core: int | None
    ) -> None:
        self.config = config
        self.folder = folder / f"{config}-{mode}-{time.monotonic_ns()}"
        self.folder.mkdir()
        command = [sys.executable, str(HERE / "compare_worker.py"), config, mode]
        command += [f"http://127.0.0.1:{port}", str(block), str(self.folder)]
        env = dict(os.environ, PYTHONHASHSEED="0", LITELLM_LOCAL_MODEL_COST_MAP="True")
        if core is not None:
            env["BENCH_WORKER_CORE"] = str(core)
        with (self.folder / "stderr.txt").open("w") as errors:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
                env=env,
            )

    def say(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def hear(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            tail = (self.folder / "stderr.txt").read_text()[-3000:]
            raise RuntimeError(f"worker {self.config} died:\n{tail}")
        return line.strip()

    def finish(self) -> None:
        """Let it exit (ours flushes first); kill it if LiteLLM's exit handlers hang."""
        self.say("go")
        self.hear()  # EXIT
        try:
            self.process.wait(120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def run_round(
    configs: list[str],
    mode: str,
    state: str,
    calls: int,
    block: int,
    folder: Path,
    shuffle: Any,
    sink_idle: bool = False,
    core: int | None = None,
) -> list[dict[str, Any]]:
    """Every configuration in a fresh process, all at once, calling in turns of
    ``block`` calls (a shuffled order each cycle) until each made ``calls``."""
    delay = STATES[state]
    ports = {config: free_port() for config in configs}
    senders = [config for config in configs if config in SENDERS]
    with ExitStack() as sinks:
        urls = {}
        if delay is not None:
            urls = {c: sinks.enter_context(sink(delay, ports[c], sink_idle)) for c in senders}
        workers = {c: Worker(c, mode, ports[c], block, folder, core) for c in configs}
        for worker in workers.values():
            if worker.hear() != "READY":
                raise RuntimeError(f"worker {worker.config} did not start")
        for _ in range(max(1, calls // block)):
            order = list(configs)
            shuffle(order)
            for config in order:
                workers[config].say("go")
                workers[config].hear()  # DONE
        results = {}
        for config, worker in workers.items():
            worker.say("end")
            results[config] = json.loads(worker.hear())
        if delay is None:  # down during the calls, back now
            urls = {c: sinks.enter_context(sink(0.0, ports[c], sink_idle)) for c in senders}
        else:
            for config in senders:
                settle(urls[config], results[config]["calls"], time.monotonic() + 120)
        for worker in workers.values():
            worker.finish()
        for config in senders:
            made = results[config]["calls"]
            received = settle(urls[config], made, time.monotonic() + 60)
            result = results[config]
            result.update(delivered=received["events"], lost=made - received["events"])
            if delay == 0.0 and received["last_at"]:
                elapsed = received["last_at"] - result["first_call_at"]
                if elapsed > 0:
                    result["delivered_per_second"] = round(received["events"] / elapsed)
    for result in results.values():
        result.update(state=state, delivered=result.get("delivered", 0))
    return [results[config] for config in configs]


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
                        "paired_ratios": sorted(round(ratio, 4) for ratio in paired),
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


NAMES = {
    "none": "no callback",
    "noop": "no-op CustomLogger",
    "builtin": "LiteLLM built-in",
    "ours": "**litellm-openmeter**",
}
ENDPOINTS = {"healthy": "healthy", "slow_200ms": "slow", "down": "down"}


def _number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _us(value: float | None) -> str:
    return "-" if value is None else f"{_number(value)} us"


def _pair_us(first: float | None, second: float | None, digits: int = 0) -> str:
    if first is None or second is None:
        return "-"
    return f"{_number(first, digits)} / {_number(second)} us"


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in body),
    ]


def _cell(row: dict[str, Any]) -> list[str]:
    sends = row["config"] in SENDERS
    interval = row["paired_ratio_90pct_interval"]
    return [
        row["mode"],
        ENDPOINTS[row["state"]],
        NAMES[row["config"]],
        _us(row["latency_p50_us"]),
        _us(row["latency_p99_us"]),
        f"{row['paired_ratio_to_noop_p50']:.3f}",
        f"{interval[0]:.3f}-{interval[1]:.3f}" if interval and row["config"] != "noop" else "-",
        _us(row["cpu_per_call_us"]),
        f"{row['cpu_ratio_to_noop']:.3f}",
        _pair_us(row["hook_p50_us"], row["hook_p99_us"], 1),
        _pair_us(row["loop_lag_p50_us"], row["loop_lag_p99_us"]),
        _number(row["delivered"]) if sends else "-",
        f"{_number(row['lost'])} (max {row['max_lost']:,})" if sends else "-",
    ]


def markdown(rows: list[dict[str, Any]]) -> str:
    """The tables of BENCHMARKS.md from a summary: every cell, the per-round paired
    ratios, and the throughput trials."""
    cells = [row for row in rows if row["mode"] != "burst"]
    header = ["mode", "endpoint", "config", "p50 latency", "p99", "p50 / no-op (paired)"]
    header += ["90 % interval", "CPU/call", "CPU / no-op", "hook p50 / p99"]
    header += ["loop lag p50 / p99", "delivered", "lost"]
    lines = _table(header, [_cell(row) for row in cells])

    others = [c for c in ("none", "ours", "builtin") if any(r["config"] == c for r in cells)]
    ratios: dict[tuple[str, str], dict[str, str]] = {}
    for row in cells:
        text = " ".join(f"{ratio:.2f}" for ratio in row["paired_ratios"])
        ratios.setdefault((row["mode"], row["state"]), {})[row["config"]] = text
    body = [
        [mode, ENDPOINTS[state], *(by_config.get(config, "-") for config in others)]
        for (mode, state), by_config in ratios.items()
    ]
    lines += ["", "Per-round paired ratios (p50 / no-op p50 of the same round), sorted:", ""]
    lines += _table(["mode", "endpoint", *(NAMES[config] for config in others)], body)

    burst = [row for row in rows if row["mode"] == "burst"]
    if burst:
        lines += [""]
        lines += _table(
            ["config", "calls/s", "events/s delivered", "p50 latency", "CPU/call"],
            [
                [
                    NAMES[row["config"]],
                    _number(row["calls_per_second"]),
                    _number(row["delivered_per_second"]),
                    _us(row["latency_p50_us"]),
                    _us(row["cpu_per_call_us"]),
                ]
                for row in burst
            ],
        )
    return "\n".join(lines)


def pooled(files: list[Path]) -> list[dict[str, Any]]:
    """The trials of several runs as one run: rounds numbered on across the files, so
    that a trial is still paired with the no-op trial of its own round."""
    trials: list[dict[str, Any]] = []
    for path in files:
        kept = [json.loads(line) for line in path.read_text().splitlines() if line]
        offset = 1 + max((trial["round"] for trial in trials), default=-1)
        trials += [dict(trial, round=trial["round"] + offset) for trial in kept]
    return trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--block", type=int, default=5, help="calls per turn (sync and async)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset")
    parser.add_argument("--states", default=",".join(STATES), help="comma-separated subset")
    parser.add_argument(
        "--sink-idle",
        action="store_true",
        help="run the endpoint under SCHED_IDLE (Linux): it takes only CPU time nothing "
        "else wants, as if it ran on another machine",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="run every worker (with all its threads) on the last "
        "core, and this process and the endpoints on the others (Linux): each "
        "configuration gets the same core, and ours' background work competes with its "
        "own calls",
    )
    parser.add_argument(
        "--trials-file",
        type=Path,
        default=HERE / "results" / "compare-trials.jsonl",
        help="every trial is appended here as it ends (kept if the run stops early)",
    )
    parser.add_argument(
        "--summarise",
        type=Path,
        nargs="+",
        metavar="TRIALS_FILE",
        help="run nothing: print the summary of the trials kept in these files (runs of "
        "the same code, pooled: each run's rounds stay paired within that run)",
    )
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="with --summarise: print the tables of BENCHMARKS.md instead of JSON",
    )
    args = parser.parse_args()
    if args.summarise is not None:
        kept = pooled(args.summarise)
        summary = summarise(kept)
        if args.markdown:
            print(markdown(summary))
        else:
            print(json.dumps({"summary": summary, "trials": kept}, indent=2))
        return
    configs = [config for config in CONFIGS if config in args.configs.split(",")]
    if "noop" not in configs:
        parser.error("--configs must include noop: every ratio is to it")
    modes = [mode for mode in MODES if mode in args.modes.split(",")]
    states = [state for state in STATES if state in args.states.split(",")]
    args.trials_file.parent.mkdir(exist_ok=True)
    args.trials_file.write_text("")
    shuffle = random.Random(args.seed).shuffle
    core = None
    if args.pin and hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0))
        core = cores[-1]
        os.sched_setaffinity(0, set(cores[:-1] or cores))  # the endpoints inherit it
    trials = []
    with tempfile.TemporaryDirectory() as name:
        for round_number in range(args.rounds):
            for state in states:
                for mode in modes:
                    if mode == "burst" and state != "healthy":
                        continue  # throughput is measured against a healthy endpoint
                    # Throughput: one turn of all the calls each, 50 in flight.
                    block = args.calls if mode == "burst" else args.block
                    results = run_round(
                        configs,
                        mode,
                        state,
                        args.calls,
                        block,
                        Path(name),
                        shuffle,
                        args.sink_idle,
                        core,
                    )
                    for result in results:
                        result["round"] = round_number
                        result["sink_idle"] = args.sink_idle
                        result["pinned_core"] = core
                        trials.append(result)
                        with args.trials_file.open("a") as kept:
                            kept.write(json.dumps(result) + "\n")
                        print(
                            f"round {round_number} {state:10} {mode:5} {result['config']:8} "
                            f"p50 {result['latency_us']['p50']} us, "
                            f"delivered {result['delivered']}",
                            file=sys.stderr,
                            flush=True,
                        )
    print(json.dumps({"summary": summarise(trials), "trials": trials}, indent=2))


if __name__ == "__main__":
    main()
