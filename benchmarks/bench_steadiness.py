"""How steady is this machine? usage: bench_steadiness.py [--seconds N] [--unit-loops N]

One process per core, pinned to it, all at once, each running the same small
pure-Python unit of work over and over for ``--seconds`` and timing every unit. For
windows of 5 ms to 1 s it prints, per core, how much the window's median unit time
varies (standard deviation of its logarithm: 0.05 is about 5 %) and how much two
adjacent windows differ, and how alike the cores' windows are (correlation). Nothing
else should run meanwhile.

Why it matters: the comparison pairs a turn of one configuration with the next turn
of another. The spread of that pair's ratio is about the adjacent-window figure for
windows as long as a turn, and a mean over ``n`` pairs narrows it by the square root
of ``n``; so the figure says how many turns a cell needs to tell 1 % from 2 %
(printed as ``pairs_for``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

WINDOWS_MS = (5, 10, 30, 100, 300, 1000)


def unit(loops: int) -> int:
    """The unit of work: integer arithmetic in a Python loop, no allocation to speak of."""
    total = 0
    for index in range(loops):
        total += index * index % 7
    return total


def probe(core: int, start: float, seconds: float, loops: int) -> None:
    """Child: wait for ``start`` (wall clock), then time units for ``seconds``; print
    JSON pairs (start, duration)."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})
    unit(loops)
    while time.time() < start:
        pass
    timings = []
    end = start + seconds
    while (began := time.time()) < end:
        unit(loops)
        timings.append((began, time.time() - began))
    print(json.dumps(timings))


def windows(timings: list[list[float]], origin: float, width: float) -> dict[int, float]:
    """Median unit time in each window of ``width`` seconds (windows of 2+ units)."""
    grouped: dict[int, list[float]] = {}
    for began, duration in timings:
        grouped.setdefault(int((began - origin) / width), []).append(duration)
    return {key: statistics.median(values) for key, values in grouped.items() if len(values) > 1}


def spread(medians: dict[int, float]) -> tuple[float, float]:
    """Standard deviation of the logarithm of window medians, and of adjacent ratios."""
    keys = sorted(medians)
    logs = [math.log(medians[key]) for key in keys]
    steps = [logs[i + 1] - logs[i] for i in range(len(logs) - 1) if keys[i + 1] == keys[i] + 1]
    return statistics.stdev(logs), statistics.stdev(steps)


def correlation(first: dict[int, float], second: dict[int, float]) -> float:
    """Pearson correlation of two cores' log window medians over common windows."""
    keys = sorted(set(first) & set(second))
    xs = [math.log(first[key]) for key in keys]
    ys = [math.log(second[key]) for key in keys]
    return statistics.correlation(xs, ys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--unit-loops", type=int, default=20_000, help="about 1 ms here")
    parser.add_argument("--child", nargs=2, type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        probe(int(args.child[0]), args.child[1], args.seconds, args.unit_loops)
        return
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    start = time.time() + 1.0
    children = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--seconds",
                str(args.seconds),
                "--unit-loops",
                str(args.unit_loops),
                "--child",
                str(core),
                str(start),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for core in cores
    ]
    timings = [json.loads(child.communicate()[0]) for child in children]
    result: dict[str, object] = {
        "cores": len(cores),
        "seconds": args.seconds,
        "unit_p50_us": [
            round(statistics.median(duration for _, duration in core) * 1e6, 1) for core in timings
        ],
    }
    by_window = {}
    for width_ms in WINDOWS_MS:
        medians = [windows(core, start, width_ms / 1000) for core in timings]
        spreads = [spread(core) for core in medians]
        adjacent = statistics.mean(step for _, step in spreads)
        by_window[f"{width_ms}ms"] = {
            "log_sd": [round(level, 3) for level, _ in spreads],
            "adjacent_log_sd": [round(step, 3) for _, step in spreads],
            "core_correlation": round(correlation(medians[0], medians[1]), 2)
            if len(medians) > 1
            else None,
            # pairs of windows this long for a 90 % interval of +-1 % and +-0.5 %
            "pairs_for": {
                f"{target:g}%": math.ceil((1.645 * adjacent / (target / 100)) ** 2)
                for target in (1.0, 0.5)
            },
        }
    result["windows"] = by_window
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
