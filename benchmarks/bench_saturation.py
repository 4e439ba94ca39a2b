"""Throughput at saturation: what metering costs LiteLLM when it has no CPU to spare.

usage: bench_saturation.py [--rounds N] [--level-seconds S] [--workers 1,2]
                           [--sdk-concurrency N] [--markdown FILE.json]

The real LiteLLM proxy (``litellm --config``, mock_response models) with 1 and then 2
workers, driven by a load generator in a process of its own (``load`` below, httpx)
at rising concurrency until its throughput stops growing (less than 5 % more than the
best level so far, twice). At the best level's rate it then sends an open-loop load of
80 % of it and measures latency from each request's scheduled time. And the SDK: one
process keeping a few hundred ``acompletion`` calls in flight. Configurations: no
callback, a no-op ``CustomLogger``, ours; the endpoint healthy (``sink.py`` under SCHED_IDLE, as
a remote OpenMeter would be) or down (a closed port). Each round runs every cell
once, the configurations in turn, so that the machine's drift meets all alike.

Per cell: the maximum calls/s, p50 and p99 latency at 80 % of it, CPU per call of the
proxy's workers (LiteLLM's processes, ours' threads included) and of the load
generator, events the endpoint received per second, and, over the rounds, the spread.
Prints one JSON document; ``--markdown`` prints the tables of a saved one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
from common import free_port, sink

CONFIGS = ("none", "noop", "ours")
STATES = ("healthy", "down")
LEVELS = (4, 8, 16, 32, 64, 128)
MASTER_KEY = "sk-bench-master-0123456789"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
NOOP_MODULE = """
from litellm.integrations.custom_logger import CustomLogger


class NoOp(CustomLogger):
    def log_success_event(self, kwargs, response_obj, start_time, end_time):
        return None

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        return None


noop = NoOp()
"""
CALLBACKS = {
    "none": "",
    "noop": "litellm_settings:\n  callbacks: bench_noop.noop\n",
    "ours": "litellm_settings:\n  callbacks: litellm_openmeter.proxy_handler_instance\n",
}
MODEL = """model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      mock_response: "hello from the mock"
      api_key: sk-not-used
"""


# -- the load generator (its own process) ------------------------------------------------


def percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def own_cpu() -> float:
    times = os.times()
    return times.user + times.system


async def closed_loop(url: str, concurrency: int, seconds: float) -> dict[str, Any]:
    """``concurrency`` clients, each sending its next request when the last returns."""
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        warm_until = time.monotonic() + 1.0
        end = warm_until + seconds

        async def one_client(number: int) -> None:
            nonlocal errors
            while time.monotonic() < end:
                started = time.monotonic()
                ok = await request(client, number)
                done = time.monotonic()
                if started >= warm_until and done <= end:
                    if ok:
                        latencies.append(done - started)
                    else:
                        errors += 1

        cpu = own_cpu()
        await asyncio.gather(*(one_client(n) for n in range(concurrency)))
        cpu = own_cpu() - cpu
    return {
        "concurrency": concurrency,
        "calls_per_s": len(latencies) / seconds,
        "p50_ms": _ms(percentile(latencies, 0.5)),
        "p99_ms": _ms(percentile(latencies, 0.99)),
        "errors": errors,
        "load_cpu_s": cpu,
    }


async def open_loop(url: str, rate: float, seconds: float) -> dict[str, Any]:
    """Requests at ``rate`` per second, evenly spaced, whether or not earlier ones
    returned; latency counts from each request's scheduled time."""
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def scheduled(number: int, at: float) -> None:
            nonlocal errors
            ok = await request(client, number)
            if ok:
                latencies.append(time.monotonic() - at)
            else:
                errors += 1

        total = int(rate * seconds)
        start = time.monotonic() + 0.2
        tasks = []
        cpu = own_cpu()
        for number in range(total):
            at = start + number / rate
            delay = at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(scheduled(number, at)))
        await asyncio.gather(*tasks)
        cpu = own_cpu() - cpu
    return {
        "rate": rate,
        "calls": len(latencies),
        "p50_ms": _ms(percentile(latencies, 0.5)),
        "p99_ms": _ms(percentile(latencies, 0.99)),
        "errors": errors,
        "load_cpu_s": cpu,
    }


async def request(client: httpx.AsyncClient, number: int) -> bool:
    try:
        response = await client.post(
            "/chat/completions",
            headers={"Authorization": f"Bearer {MASTER_KEY}"},
            json={
                "model": "gpt-4o",
                "messages": [{"role": "user", "content": "hello"}],
                "user": f"customer-{number % 50}",
            },
        )
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def load_main(argv: list[str]) -> None:
    """``load closed URL CONCURRENCY SECONDS`` or ``load open URL RATE SECONDS``."""
    kind, url, amount, seconds = argv
    if kind == "closed":
        result = asyncio.run(closed_loop(url, int(amount), float(seconds)))
    else:
        result = asyncio.run(open_loop(url, float(amount), float(seconds)))
    print(json.dumps(result), flush=True)


def run_load(kind: str, url: str, amount: float, seconds: float) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "load", kind, url, str(amount), str(seconds)],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# -- CPU of the proxy's processes -------------------------------------------------------


def process_tree(root: int) -> dict[int, str]:
    """Every process below ``root`` (itself included), with its command line."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
    found: dict[int, str] = {}
    pending = [root]
    while pending:
        pid = pending.pop()
        try:
            found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        pending.extend(children.get(pid, []))
    return found


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def tree_cpu(root: int) -> float:
    """CPU seconds so far of the proxy's processes."""
    return sum(cpu_seconds(pid) for pid in process_tree(root))


# -- one proxy cell ---------------------------------------------------------------------


@contextmanager
def proxy(config: str, workers: int, endpoint: str, folder: Path) -> Iterator[tuple[str, int]]:
    (folder / "bench_noop.py").write_text(NOOP_MODULE)
    (folder / "config.yaml").write_text(MODEL + CALLBACKS[config])
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("OPENMETER_")}
    env.update(
        LITELLM_MASTER_KEY=MASTER_KEY,
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_LOG="ERROR",
        OPENMETER_API_KEY="bench-key",
        OPENMETER_API_ENDPOINT=endpoint,
        OPENMETER_OUTBOX_PATH=str(folder / "outbox.sqlite3"),
        PYTHONPATH=os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]),
    )
    process = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("litellm")),
            "--config",
            str(folder / "config.yaml"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            str(workers),
        ],
        env=env,
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the proxy exited with {process.returncode}")
            try:
                if httpx.get(f"{url}/health/liveliness", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the proxy did not start")
            time.sleep(0.2)
        yield url, process.pid
    finally:
        tree = process_tree(process.pid)
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for pid in tree:  # no worker may take CPU from the next cell
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def received(sink_url: str | None) -> int:
    if sink_url is None:
        return 0
    return int(httpx.get(f"{sink_url}/count", timeout=10).json()["received"])


def proxy_cell(
    config: str, workers: int, state: str, level_seconds: float, sink_url: str | None
) -> dict[str, Any]:
    endpoint = sink_url or f"http://127.0.0.1:{free_port()}"
    with (
        tempfile.TemporaryDirectory(prefix="bench-saturation-") as folder,
        proxy(config, workers, endpoint, Path(folder)) as (url, pid),
    ):
        run_load("closed", url, 8, 2.0)  # warm-up: every worker has served
        levels = []
        best: dict[str, Any] | None = None
        flat = 0
        for concurrency in LEVELS:
            level = run_load("closed", url, concurrency, level_seconds)
            levels.append(level)
            if best is None or level["calls_per_s"] > best["calls_per_s"] * 1.05:
                best, flat = level, 0
            else:
                best = max(best, level, key=lambda item: float(item["calls_per_s"]))
                flat += 1
                if flat == 2:
                    break
        assert best is not None
        rate = 0.8 * best["calls_per_s"]
        cpu_before, events_before = tree_cpu(pid), received(sink_url)
        at_80 = run_load("open", url, rate, level_seconds * 2)
        cpu_after, events_after = tree_cpu(pid), received(sink_url)
    calls = max(1, at_80["calls"])
    return {
        "kind": "proxy",
        "config": config,
        "workers": workers,
        "state": state,
        "levels": levels,
        "max_calls_per_s": best["calls_per_s"],
        "max_at_concurrency": best["concurrency"],
        "at_80": at_80,
        "proxy_cpu_us_per_call": (cpu_after - cpu_before) / calls * 1e6,
        "load_cpu_us_per_call": at_80["load_cpu_s"] / calls * 1e6,
        "events_per_s": (events_after - events_before) / (level_seconds * 2),
    }


# -- the SDK ----------------------------------------------------------------------------


SDK_WORKER = """
import asyncio, json, os, sys, time
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
import litellm
from litellm.integrations.custom_logger import CustomLogger

config, concurrency, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])


class NoOp(CustomLogger):
    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        return None


if config == "noop":
    litellm.callbacks = [NoOp()]
elif config == "ours":
    from litellm_openmeter import OpenMeterLogger

    litellm.callbacks = [OpenMeterLogger()]


async def main():
    latencies = []
    messages = [{"role": "user", "content": "hello"}]

    async def client(number, until, keep):
        while time.monotonic() < until:
            started = time.monotonic()
            await litellm.acompletion(
                model="gpt-4o", messages=messages, mock_response="hi", user=f"c{number % 50}"
            )
            if keep:
                latencies.append(time.monotonic() - started)

    await asyncio.gather(*(client(n, time.monotonic() + 2, False) for n in range(concurrency)))
    cpu = sum(os.times()[:2])
    start = time.monotonic()
    await asyncio.gather(*(client(n, start + seconds, True) for n in range(concurrency)))
    elapsed = time.monotonic() - start
    cpu = sum(os.times()[:2]) - cpu
    latencies.sort()
    print(json.dumps({
        "calls_per_s": len(latencies) / elapsed,
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
        "cpu_us_per_call": cpu / len(latencies) * 1e6,
    }), flush=True)
    os._exit(0)  # the measurement is done: no exit-time flush in the numbers


asyncio.run(main())
"""


def sdk_cell(
    config: str, state: str, concurrency: int, seconds: float, sink_url: str | None
) -> dict[str, Any]:
    endpoint = sink_url or f"http://127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory(prefix="bench-saturation-") as folder:
        env = {key: value for key, value in os.environ.items() if not key.startswith("OPENMETER_")}
        env.update(
            LITELLM_LOCAL_MODEL_COST_MAP="True",
            OPENMETER_API_KEY="bench-key",
            OPENMETER_API_ENDPOINT=endpoint,
            OPENMETER_OUTBOX_PATH=str(Path(folder) / "outbox.sqlite3"),
        )
        before = received(sink_url)
        done = subprocess.run(
            [sys.executable, "-c", SDK_WORKER, config, str(concurrency), str(seconds)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        events = received(sink_url) - before
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(kind="sdk", config=config, state=state, concurrency=concurrency, events=events)
    return result


# -- summary ----------------------------------------------------------------------------


def summarise(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (kind, workers, state, config): medians over the rounds and their range."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for cell in cells:
        key = (cell["kind"], cell.get("workers", 0), cell["state"], cell["config"])
        groups.setdefault(key, []).append(cell)
    rows = []
    for (kind, workers, state, config), runs in sorted(groups.items()):
        if kind == "proxy":
            peak = [run["max_calls_per_s"] for run in runs]
            p50 = [run["at_80"]["p50_ms"] for run in runs if run["at_80"]["p50_ms"] is not None]
            p99 = [run["at_80"]["p99_ms"] for run in runs if run["at_80"]["p99_ms"] is not None]
            row = {
                "max_calls_per_s": _spread(peak),
                "p50_ms_at_80": _spread(p50),
                "p99_ms_at_80": _spread(p99),
                "proxy_cpu_us": _spread([run["proxy_cpu_us_per_call"] for run in runs]),
                "load_cpu_us": _spread([run["load_cpu_us_per_call"] for run in runs]),
                "events_per_s": _spread([run["events_per_s"] for run in runs]),
            }
        else:
            row = {
                "max_calls_per_s": _spread([run["calls_per_s"] for run in runs]),
                "p50_ms": _spread([run["p50_ms"] for run in runs]),
                "p99_ms": _spread([run["p99_ms"] for run in runs]),
                "cpu_us": _spread([run["cpu_us_per_call"] for run in runs]),
            }
        rows.append({"kind": kind, "workers": workers, "state": state, "config": config, **row})
    return rows


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "low": min(values), "high": max(values)}


def _fmt(value: dict[str, float] | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    middle = f"{value['median']:,.{digits}f}"
    if value["low"] == value["high"]:
        return middle
    return f"{middle} ({value['low']:,.{digits}f}-{value['high']:,.{digits}f})"


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| workers | endpoint | config | max calls/s | p50 ms at 80 % | p99 ms at 80 % "
        "| proxy CPU us/call | events/s at 80 % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row["kind"] != "proxy":
            continue
        lines.append(
            f"| {row['workers']} | {row['state']} | {row['config']} "
            f"| {_fmt(row['max_calls_per_s'])} | {_fmt(row['p50_ms_at_80'], 1)} "
            f"| {_fmt(row['p99_ms_at_80'], 1)} | {_fmt(row['proxy_cpu_us'])} "
            f"| {_fmt(row['events_per_s'])} |"
        )
    lines += [
        "",
        "| SDK endpoint | config | calls/s | p50 ms | p99 ms | CPU us/call (LiteLLM's process) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row["kind"] != "sdk":
            continue
        lines.append(
            f"| {row['state']} | {row['config']} | {_fmt(row['max_calls_per_s'])} "
            f"| {_fmt(row['p50_ms'], 1)} | {_fmt(row['p99_ms'], 1)} | {_fmt(row['cpu_us'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["load"]:
        load_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--level-seconds", type=float, default=5.0)
    parser.add_argument("--workers", default="1,2", help="proxy worker counts, comma-separated")
    parser.add_argument("--sdk-concurrency", type=int, default=300)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--states", default=",".join(STATES))
    parser.add_argument("--markdown", type=Path, help="print the tables of a saved result")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())["summary"]))
        return
    configs = args.configs.split(",")
    states = args.states.split(",")
    cells: list[dict[str, Any]] = []
    with sink(idle=True) as sink_url:
        for round_number in range(args.rounds):
            for state in states:
                live = sink_url if state == "healthy" else None
                for workers in (int(item) for item in args.workers.split(",")):
                    for config in configs:
                        cell = proxy_cell(config, workers, state, args.level_seconds, live)
                        cell["round"] = round_number
                        cells.append(cell)
                        print(
                            f"round {round_number} proxy x{workers} {state} {config}: "
                            f"{cell['max_calls_per_s']:.0f} calls/s at "
                            f"{cell['max_at_concurrency']}, 80 %: p99 "
                            f"{cell['at_80']['p99_ms']} ms",
                            file=sys.stderr,
                            flush=True,
                        )
                for config in configs:
                    cell = sdk_cell(config, state, args.sdk_concurrency, args.level_seconds, live)
                    cell["round"] = round_number
                    cell["seconds"] = args.level_seconds
                    cells.append(cell)
                    print(
                        f"round {round_number} sdk {state} {config}: "
                        f"{cell['calls_per_s']:.0f} calls/s",
                        file=sys.stderr,
                        flush=True,
                    )
    print(json.dumps({"cells": cells, "summary": summarise(cells)}, indent=1))


if __name__ == "__main__":
    main()
