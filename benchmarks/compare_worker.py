"""One trial of the side-by-side comparison, in a fresh process.

usage: compare_worker.py CONFIG MODE ENDPOINT BLOCK FOLDER
  CONFIG: none | noop | builtin | ours
  MODE:   sync | async | burst (async, 50 calls at a time: throughput)

Makes mock completions through LiteLLM with the given callback in turns of BLOCK
calls, timing each call (and, in async mode, the event
loop's lag). It prints ``READY`` after its warm-up; each ``go`` line on stdin is a
turn, answered ``DONE``; ``end`` ends the turns. The parent runs several workers in
turns, so that all of them meet the same moments of a machine whose speed changes
from second to second. Then it prints one JSON line with the timings and waits for a
line on stdin before it exits (the parent counts what the ingest endpoint received
meanwhile). ``ours`` flushes before it says it is done waiting; the others have no
such thing.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
if os.environ.get("BENCH_WORKER_CORE") and hasattr(os, "sched_setaffinity"):
    # Before any thread starts: every thread inherits it.
    os.sched_setaffinity(0, {int(os.environ["BENCH_WORKER_CORE"])})

import litellm
from litellm.integrations.custom_logger import CustomLogger

WARMUP = 50
BURST_CONCURRENCY = 50
MESSAGES = [{"role": "user", "content": "hello"}]


class NoOpLogger(CustomLogger):
    """The floor: a CustomLogger whose hooks do nothing."""

    def log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        return None

    async def async_log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        return None


def timed(
    hook_times: list[float], hook_cpu: list[float], method: Callable[..., Any]
) -> Callable[..., Any]:
    """Wrap a hook to record how long each call of it takes, and the CPU time of its
    thread meanwhile (microseconds; the difference is time spent waiting, mostly for
    the GIL)."""
    if asyncio.iscoroutinefunction(method):

        @functools.wraps(method)
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            started, cpu = time.perf_counter_ns(), time.thread_time_ns()
            try:
                return await method(*args, **kwargs)
            finally:
                hook_cpu.append((time.thread_time_ns() - cpu) / 1000)
                hook_times.append((time.perf_counter_ns() - started) / 1000)

        return timed_async

    @functools.wraps(method)
    def timed_sync(*args: Any, **kwargs: Any) -> Any:
        started, cpu = time.perf_counter_ns(), time.thread_time_ns()
        try:
            return method(*args, **kwargs)
        finally:
            hook_cpu.append((time.thread_time_ns() - cpu) / 1000)
            hook_times.append((time.perf_counter_ns() - started) / 1000)

    return timed_sync


def make_callback(config: str, endpoint: str, folder: Path) -> CustomLogger | None:
    if config == "none":
        return None
    if config == "noop":
        return NoOpLogger()
    if config == "builtin":
        os.environ["OPENMETER_API_KEY"] = "bench-key"
        os.environ["OPENMETER_API_ENDPOINT"] = endpoint
        from litellm.integrations.openmeter import OpenMeterLogger as BuiltIn

        return BuiltIn()
    if config == "ours":
        from litellm_openmeter import OpenMeterLogger

        logger = OpenMeterLogger(
            api_key="bench-key", endpoint=endpoint, outbox_path=folder / "outbox.sqlite3"
        )
        return logger
    raise SystemExit(f"unknown config {config!r}: use none, noop, builtin or ours")


TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def stat_cpu(stat: Path) -> float | None:
    """User plus system CPU seconds in a /proc ``stat`` file (of a process or a
    thread), or None when there is none."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS


ThreadUsage = tuple[float, int, int, int, int]
"""A thread's CPU seconds (from ``stat``: counted in clock ticks), context switches,
preemptions, and from ``schedstat`` (exact, nanoseconds) its time on a core and its time
waiting for one."""

Usage = tuple[float, dict[str, ThreadUsage]]
"""CPU seconds so far of this process, and ``thread_usage``."""


def thread_usage() -> dict[str, ThreadUsage]:
    """CPU seconds, context switches, preemptions (involuntary switches: another task
    took the core), and nanoseconds on a core and waiting for one (runnable, in the run
    queue) so far of every live thread, by thread name (Linux /proc; empty elsewhere).
    Names are made unique with their native id."""
    usage: dict[str, ThreadUsage] = {}
    for thread in threading.enumerate():
        task = Path(f"/proc/self/task/{thread.native_id}")
        cpu = stat_cpu(task / "stat")
        if cpu is None:  # the thread has ended
            continue
        try:
            status = (task / "status").read_text().splitlines()
            ran, waited = (int(value) for value in (task / "schedstat").read_text().split()[:2])
        except (OSError, ValueError):  # it ended between the reads, or no schedstats
            continue
        switches = sum(int(line.split()[1]) for line in status if "ctxt_switches:" in line)
        preempted = sum(
            int(line.split()[1]) for line in status if line.startswith("nonvoluntary_ctxt")
        )
        name = thread.name.split("-")[0] if thread.name.startswith("ThreadPool") else thread.name
        usage[f"{name}#{thread.native_id}"] = (cpu, switches, preempted, ran, waited)
    return usage


def per_thread(before: dict[str, ThreadUsage], calls: int) -> dict[str, dict[str, float]]:
    """Per call, for each thread since ``before``: CPU microseconds (``cpu_us`` from
    clock ticks, ``run_us`` exact), microseconds spent runnable but waiting for a core
    (``wait_us``), context switches and preemptions."""
    result = {}
    for key, (cpu, switches, preempted, ran, waited) in thread_usage().items():
        cpu0, switches0, preempted0, ran0, waited0 = before.get(key, (0.0, 0, 0, 0, 0))
        if ran - ran0 <= 0 and switches - switches0 <= 0:
            continue
        result[key.rsplit("#", 1)[0] + "#" + key.rsplit("#", 1)[1][-4:]] = {
            "cpu_us": round((cpu - cpu0) / calls * 1e6, 1),
            "run_us": round((ran - ran0) / calls / 1e3, 1),
            "wait_us": round((waited - waited0) / calls / 1e3, 1),
            "switches": round((switches - switches0) / calls, 2),
            "preempted": round((preempted - preempted0) / calls, 3),
        }
    return result


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    ordered = sorted(values)

    def pick(share: float) -> float:
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]

    return {"p50": round(pick(0.5), 1), "p99": round(pick(0.99), 1), "max": round(ordered[-1], 1)}


def run_sync(calls: int, user: Callable[[int], str]) -> list[float]:
    latencies = []
    for index in range(calls):
        started = time.perf_counter_ns()
        litellm.completion(
            model="gpt-4o", messages=MESSAGES, mock_response="hi there", user=user(index)
        )
        latencies.append((time.perf_counter_ns() - started) / 1000)
    return latencies


async def run_async(calls: int, user: Callable[[int], str]) -> tuple[list[float], list[float]]:
    latencies: list[float] = []
    lags: list[float] = []
    running = True

    async def ticker() -> None:
        while running:
            started = time.perf_counter_ns()
            await asyncio.sleep(0.001)
            lags.append(max(0.0, (time.perf_counter_ns() - started) / 1000 - 1000))

    tick = asyncio.create_task(ticker())
    for index in range(calls):
        started = time.perf_counter_ns()
        await litellm.acompletion(
            model="gpt-4o", messages=MESSAGES, mock_response="hi there", user=user(index)
        )
        latencies.append((time.perf_counter_ns() - started) / 1000)
    running = False
    await tick
    return latencies, lags


async def run_burst(calls: int, user: Callable[[int], str]) -> list[float]:
    latencies: list[float] = []
    gate = asyncio.Semaphore(BURST_CONCURRENCY)

    async def one(index: int) -> None:
        async with gate:
            started = time.perf_counter_ns()
            await litellm.acompletion(
                model="gpt-4o", messages=MESSAGES, mock_response="hi there", user=user(index)
            )
            latencies.append((time.perf_counter_ns() - started) / 1000)

    await asyncio.gather(*(one(index) for index in range(calls)))
    return latencies


def commands(block: int) -> Iterator[int]:
    """The parent's turns: after ``READY``, each ``go`` line is a turn of ``block``
    calls (answered ``DONE``) until ``end``."""
    print("READY", flush=True)
    while sys.stdin.readline().strip() == "go":
        yield block


def main() -> None:
    config, mode, endpoint, block_text, folder = sys.argv[1:6]
    block = int(block_text)
    callback = make_callback(config, endpoint, Path(folder))
    hook_times: list[float] = []
    hook_cpu: list[float] = []
    if callback is not None:
        for name in ("log_success_event", "async_log_success_event"):
            setattr(callback, name, timed(hook_times, hook_cpu, getattr(callback, name)))
        litellm.callbacks = [callback]

    def hooks_done(expected: int) -> bool:
        """Wait for LiteLLM to run every success hook of the measured calls (sync hooks
        run later in LiteLLM's thread pool, async ones as tasks on the loop)."""
        return callback is None or len(hook_times) >= expected

    customer = lambda index: f"customer-{index % 50}"  # noqa: E731
    latencies: list[float] = []
    lags: list[float] = []
    block_p50: list[float] = []
    calling = 0.0  # seconds spent in turns
    first_call_at: list[float] = []

    def usage_now() -> Usage:
        """CPU so far: this process and each of its threads."""
        return time.process_time(), thread_usage()

    def measuring_starts() -> Usage:
        """After the warm-up: wait until ours stored the warm-up's calls; then forget
        the warm-up's hooks and take the CPU so far."""
        writer = getattr(callback, "writer", None)
        if writer is not None:
            writer.drain(60)
        hook_times.clear()
        hook_cpu.clear()
        return usage_now()

    def measured_usage(before: Usage) -> dict[str, Any]:
        """Per call since ``before``: CPU of this process, and per thread."""
        made = max(1, len(latencies))
        cpu, _ = usage_now()
        return {
            # CPU time of every thread of the process, calls and hooks, per call:
            # steadier than wall time on a shared machine.
            "cpu_per_call_us": round((cpu - before[0]) / made * 1e6, 1),
            # per thread, per call: where the CPU went and how often threads switched
            "threads": per_thread(before[1], made),
        }

    def turn_starts() -> float:
        if not first_call_at:
            first_call_at.append(time.time())
        return time.perf_counter()

    def turn_done(started: float, turn: list[float]) -> None:
        nonlocal calling
        calling += time.perf_counter() - started
        latencies.extend(turn)
        block_p50.append(statistics.median(turn))
        if mode == "sync":
            # LiteLLM runs sync hooks in its thread pool, after the call returned: wait
            # for this turn's, so that they (the built-in logger's HTTP posts, say) run
            # in this configuration's turn and not in the next one's.
            deadline = time.monotonic() + 300
            while not hooks_done(len(latencies)) and time.monotonic() < deadline:
                time.sleep(0.001)
        print("DONE", flush=True)

    if mode == "sync":
        run_sync(WARMUP, lambda index: "warmup")
        deadline = time.monotonic() + 60
        while not hooks_done(WARMUP) and time.monotonic() < deadline:
            time.sleep(0.01)
        before = measuring_starts()
        for size in commands(block):
            started = turn_starts()
            turn_done(started, run_sync(size, customer))
        made = len(latencies)
        deadline = time.monotonic() + 300
        while not hooks_done(made) and time.monotonic() < deadline:
            time.sleep(0.01)
        usage = measured_usage(before)
    else:

        async def measured() -> dict[str, Any]:
            await run_async(WARMUP, lambda index: "warmup")
            deadline = time.monotonic() + 60
            while not hooks_done(WARMUP) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            before = measuring_starts()
            # Waiting for the parent blocks the loop: hooks still pending then run in
            # this process's next turn, not in another configuration's.
            for size in commands(block):
                started = turn_starts()
                if mode == "burst":
                    turn = await run_burst(size, customer)
                else:
                    turn, turn_lags = await run_async(size, customer)
                    lags.extend(turn_lags)
                turn_done(started, turn)
            made = len(latencies)
            # LiteLLM's logging tasks must finish before the loop closes.
            deadline = time.monotonic() + 300
            while not hooks_done(made) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            return measured_usage(before)

        usage = asyncio.run(measured())
    made = max(1, len(latencies))
    print(
        json.dumps(
            {
                "config": config,
                "mode": mode,
                "calls": len(latencies),
                "block": block,
                "first_call_at": first_call_at[0] if first_call_at else None,
                "latency_us": percentiles(latencies),
                "mean_latency_us": round(sum(latencies) / made, 1),
                "block_p50_us": [round(value, 1) for value in block_p50],
                **usage,
                "hook_us": percentiles(hook_times),
                "hook_cpu_us": percentiles(hook_cpu),
                "hooks_run": len(hook_times),
                "calls_per_second": round(made / calling) if calling else None,
                "loop_lag_us": percentiles(lags) if mode == "async" else None,
            }
        ),
        flush=True,
    )
    sys.stdin.readline()  # the parent is done counting (or the endpoint is back up)
    if config == "ours":
        callback.flush(120)  # type: ignore[union-attr]
    print("EXIT", flush=True)


if __name__ == "__main__":
    main()
