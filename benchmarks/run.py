"""Run every benchmark and keep the results: python benchmarks/run.py [--quick] [NAME ...]

Writes benchmarks/results/<name>.json (ignored by git) and, after ``compare``, the plot
benchmarks/compare.png (benchmarks/results/compare.png with ``--quick``); BENCHMARKS.md
records the numbers of a full run with the machine and versions. ``--quick`` uses small
sizes to check that the scripts work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

FULL = {
    # First: how steady the machine is says how far the comparison can be trusted.
    "steadiness": ["--seconds", "30"],
    "server": ["--events", "200000", "--query-events", "1000000"],
    "delivery": ["--hooks", "20000", "--drain", "200000", "--backlog", "1000000"],
    # Turns of 5 calls, every worker on the same core: the machine's drift and its
    # cores' different speeds cancel; rounds repeat it with new processes. The
    # endpoint stands in for OpenMeter, which runs on another machine: under
    # SCHED_IDLE, on the other cores, it takes none of the CPU time LiteLLM wants.
    "compare": ["--calls", "1000", "--rounds", "8", "--block", "5", "--pin", "--sink-idle"],
    "gc": ["--calls", "3000", "--repeat", "2"],
    "hook": ["--calls", "1500", "--repeat", "4"],
    # The real proxy (1 and 2 workers) and the SDK at saturation: no callback, a no-op
    # one, ours.
    "saturation": ["--rounds", "2", "--level-seconds", "5"],
    # A process's first and last seconds: kill soon after the last hook, the first
    # calls' event-loop lag, a short script's exit.
    "transients": ["--calls", "300", "--repeat", "5"],
    # A restart on a million queued events: the first calls, the drain, memory.
    "backlog": ["--backlog", "1000000", "--calls", "1000", "--watch", "60"],
    # A million stored events exported into a 204 sink and into a fresh serve.
    "export": ["--events", "1000000"],
    # The dashboard's 30-day view over a million events in Debian's Chromium.
    "dashboard": ["--events", "1000000", "--rounds", "5"],
}
QUICK = {
    "steadiness": ["--seconds", "3"],
    "server": ["--events", "5000", "--query-events", "20000"],
    "delivery": ["--hooks", "2000", "--drain", "5000", "--backlog", "20000"],
    "compare": ["--calls", "200", "--rounds", "1", "--pin", "--sink-idle"],
    "gc": ["--calls", "300", "--repeat", "1"],
    "hook": ["--calls", "200", "--repeat", "1"],
    "saturation": [
        *("--rounds", "1", "--level-seconds", "1", "--workers", "1"),
        *("--sdk-concurrency", "20", "--states", "healthy"),
    ],
    "transients": ["--calls", "50", "--repeat", "1", "--delays", "0,250"],
    "backlog": ["--backlog", "20000", "--calls", "100", "--watch", "3"],
    "export": ["--events", "20000"],
    "dashboard": ["--events", "20000", "--rounds", "1"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the scripts")
    parser.add_argument(
        "only", nargs="*", metavar="NAME", help=f"run only these: {', '.join(FULL)}"
    )
    args = parser.parse_args()
    unknown = sorted(set(args.only) - set(FULL))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(FULL)}")
    sizes = QUICK if args.quick else FULL
    RESULTS.mkdir(exist_ok=True)
    machine = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "litellm": version("litellm"),
        "litellm_openmeter": version("litellm-openmeter"),
        "httpx": version("httpx"),
        "uvicorn": version("uvicorn"),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    (RESULTS / "machine.json").write_text(json.dumps(machine, indent=2) + "\n")
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True")
    for name in args.only or list(sizes):
        script = HERE / f"bench_{name}.py"
        print(f"running {script.name} {' '.join(sizes[name])}", flush=True)
        started = time.monotonic()
        output = subprocess.run(
            [sys.executable, str(script), *sizes[name]],
            env=env,
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        ).stdout
        (RESULTS / f"{name}.json").write_text(output)
        print(f"  done in {time.monotonic() - started:.0f}s -> {RESULTS / (name + '.json')}")
        if name == "compare":
            # A quick run's plot stays with its results, not over the recorded one.
            plot = [str(RESULTS / "compare.png")] if args.quick else []
            subprocess.run(
                [sys.executable, str(HERE / "plot.py"), str(RESULTS / "compare.json"), *plot],
                check=True,
            )


if __name__ == "__main__":
    main()
