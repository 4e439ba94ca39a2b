"""The demo: the local server, an OpenMeterLogger pointed at it, a mixed workload of real
LiteLLM mock calls, and the usage queried back and checked."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from .common import CommandError, rich_console

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

USERS = ("alice", "bob", "carol")
MESSAGES = [{"role": "user", "content": "Summarise the quarterly report in two lines."}]


@dataclass
class Outcome:
    """What the demo did and what it found."""

    calls: int = 0
    failed: int = 0
    without_user: int = 0
    enqueued: int = 0
    stored: int = 0
    dead_lettered: int = 0
    queued: int = 0
    duplicates: int = 0
    usage: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    server_url: str = ""

    @property
    def lost(self) -> int:
        """Events the logger stored that the server does not have."""
        return max(0, self.enqueued - self.stored)

    def to_json(self) -> dict[str, Any]:
        """Everything measured, for ``--json``."""
        return {
            "server_url": self.server_url,
            "calls": self.calls,
            "failed": self.failed,
            "without_user": self.without_user,
            "events_stored_by_logger": self.enqueued,
            "events_delivered": self.stored,
            "queued": self.queued,
            "dead_lettered": self.dead_lettered,
            "lost": self.lost,
            "duplicated": self.duplicates,
            "verified": self.verified,
            "usage": [
                {"subject": subject, "model": model, **cell}
                for (subject, model), cell in sorted(self.usage.items())
            ],
        }

    @property
    def verified(self) -> bool:
        """True when every event arrived once and nothing is left waiting."""
        return self.lost == 0 and self.duplicates == 0 and self.queued == 0


def _workload(calls: int) -> list[tuple[str, str, str]]:
    """(kind, user, model) for each call; every kind appears at least once."""
    kinds = [
        ("completion", "gpt-4o"),
        ("acompletion", "gpt-4o-mini"),
        ("stream", "gpt-4o"),
        ("astream", "anthropic/claude-sonnet-4-5"),
        ("embedding", "text-embedding-3-small"),
        ("cached", "gpt-4o"),
    ]
    plan = [
        (kind, USERS[(i + i // len(kinds)) % len(USERS)], model)
        for i, (kind, model) in enumerate(kinds * (calls // len(kinds) + 1))
    ]
    plan = plan[: max(0, calls - 2)]
    plan.append(("failure", "alice", "gpt-4o"))
    plan.append(("no_user", "", "gpt-4o-mini"))
    return plan


def _cached_response(litellm: Any, index: int) -> Any:
    prompt = 1200 + 10 * index
    return litellm.ModelResponse(
        model="gpt-4o",
        choices=[{"message": {"role": "assistant", "content": "From cache."}}],
        usage=litellm.Usage(
            prompt_tokens=prompt,
            completion_tokens=40,
            total_tokens=prompt + 40,
            prompt_tokens_details={"cached_tokens": 1024},
        ),
    )


def _run_workload(
    litellm: Any,
    plan: list[tuple[str, str, str]],
    advance: Callable[[], None],
    seen: Callable[[], int],
) -> None:
    async def run_async(kind: str, user: str, model: str, text: str) -> None:
        if kind == "acompletion":
            await litellm.acompletion(model=model, messages=MESSAGES, mock_response=text, user=user)
        else:
            stream = await litellm.acompletion(
                model=model, messages=MESSAGES, mock_response=text, user=user, stream=True
            )
            async for _ in stream:
                pass

    async def main() -> None:
        for index, (kind, user, model) in enumerate(plan):
            text = " ".join(["word"] * (5 + index % 7))
            extra: dict[str, Any] = {"user": user} if user else {}
            if kind in ("acompletion", "astream"):
                await run_async(kind, user, model, text)
            elif kind == "completion" or kind == "no_user":
                litellm.completion(model=model, messages=MESSAGES, mock_response=text, **extra)
            elif kind == "stream":
                for _ in litellm.completion(
                    model=model, messages=MESSAGES, mock_response=text, stream=True, **extra
                ):
                    pass
            elif kind == "embedding":
                litellm.embedding(model=model, input=[text], mock_response=[0.1, 0.2], **extra)
            elif kind == "cached":
                litellm.completion(
                    model=model,
                    messages=MESSAGES,
                    mock_response=_cached_response(litellm, index),
                    **extra,
                )
            elif kind == "failure":
                error = litellm.RateLimitError(
                    "demo rate limit", llm_provider="openai", model=model
                )
                with contextlib.suppress(litellm.RateLimitError):
                    litellm.completion(model=model, messages=MESSAGES, mock_response=error, **extra)
            advance()
        # LiteLLM runs async success hooks on this loop: keep it alive until all ran.
        deadline = time.monotonic() + 20
        while seen() < len(plan) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    asyncio.run(main())


def _usage(
    http: httpx.Client, shape: str, event_type: str
) -> dict[tuple[str, str], dict[str, float]]:
    def query(slug: str, *group: str) -> list[dict[str, Any]]:
        response = http.get(
            f"/api/v1/meters/{slug}/query", params={"groupBy": ["subject", "model", *group]}
        )
        response.raise_for_status()
        rows: list[dict[str, Any]] = response.json()["data"]
        return rows

    usage: dict[tuple[str, str], dict[str, float]] = defaultdict(
        lambda: {"input": 0.0, "output": 0.0, "cached": 0.0, "cost": 0.0}
    )
    if shape == "tokens":
        for row in query("tokens_total", "type"):
            cell = usage[(row["subject"], row["groupBy"]["model"])]
            kind = row["groupBy"]["type"]
            column = "output" if kind in ("output", "reasoning") else "input"
            cell[column] += row["value"]
            if kind == "cache_read":
                cell["cached"] += row["value"]
        cost_slug = f"{event_type}_cost"
    else:
        for column, name in (
            ("input", "prompt_tokens"),
            ("output", "completion_tokens"),
            ("cached", "cache_read_tokens"),
        ):
            for row in query(f"{event_type}_{name}"):
                usage[(row["subject"], row["groupBy"]["model"])][column] += row["value"]
        cost_slug = f"{event_type}_cost"
    for row in query(cost_slug):
        usage[(row["subject"], row["groupBy"]["model"])]["cost"] += row["value"]
    return dict(usage)


def _logger_settings(folder: Path, endpoint: str, shape: str) -> dict[str, Any]:
    """What the demo's logger is given; the rest of its settings come from the
    environment, as any logger's."""
    return {
        "api_key": "demo",
        "endpoint": endpoint,
        "event_shape": shape,
        "outbox_path": folder / "outbox.sqlite3",
        "flush_interval": 0.1,
        "meter_failures": True,
    }


def check_environment(shape: str = "litellm") -> None:
    """Raise ``SettingsError`` at once for an ``OPENMETER_*`` setting the demo's logger
    could not use, before the seconds that starting LiteLLM takes."""
    from ..settings import Settings

    Settings.from_env(**_logger_settings(Path("demo"), "http://127.0.0.1", shape))


def run_demo(
    calls: int = 24,
    shape: str = "litellm",
    keep: bool = False,
    console: Console | None = None,
    as_json: bool = False,
) -> Outcome:
    """Run the demo end to end; returns what it measured (and prints it). The server's
    database and the outbox live in a temporary folder, removed when the demo ends
    (with ``keep``, once Ctrl-C ended it)."""
    with tempfile.TemporaryDirectory(
        prefix="litellm-openmeter-demo-", ignore_cleanup_errors=True
    ) as folder:
        return _run_in(Path(folder), calls, shape, keep, console or Console(), as_json)


def _run_in(
    folder: Path, calls: int, shape: str, keep: bool, out: Console, as_json: bool
) -> Outcome:
    import litellm

    from ..logger import OpenMeterLogger
    from ..server import BackgroundServer, open_store

    server = BackgroundServer(open_store(folder / "server.sqlite3")).start()
    outcome = Outcome(server_url=server.url)
    event_type = "prompt" if shape == "tokens" else "litellm_tokens"
    logger = OpenMeterLogger(**_logger_settings(folder, server.url, shape))
    saved_callbacks = list(litellm.callbacks)
    litellm.callbacks = [logger]
    plan = _workload(calls)
    handlers = _stop_on_signals() if keep else {}
    try:
        if not as_json:
            out.print(
                f"[bold]litellm-openmeter demo[/]: local OpenMeter API at {server.url}, "
                f"event shape [cyan]{shape}[/], {len(plan)} LiteLLM mock calls"
            )
        with Progress(console=out, transient=True, disable=as_json) as progress:
            task = progress.add_task("calling LiteLLM", total=len(plan))
            _run_workload(
                litellm,
                plan,
                lambda: progress.advance(task),
                lambda: int(logger.stats()["calls_seen"]),
            )
            progress.update(task, description="delivering")
            logger.flush(15)
        stats = logger.stats()
        outcome.calls = len(plan)
        outcome.failed = sum(1 for kind, _, _ in plan if kind == "failure")
        outcome.without_user = sum(1 for kind, _, _ in plan if kind == "no_user")
        outcome.enqueued = int(stats["enqueued"])
        outcome.dead_lettered = int(stats["dead_lettered"])
        outcome.queued = int(stats["queued"])
        outcome.stored = server.store.count_events()
        outcome.duplicates = server.store.duplicates
        with httpx.Client(base_url=server.url) as http:
            outcome.usage = _usage(http, shape, event_type)
        if as_json:
            print(json.dumps(outcome.to_json()), flush=True)
        else:
            _print(out, outcome, logger.dead_letters())
        if keep and not as_json:
            shape_env = " OPENMETER_EVENT_SHAPE=tokens" if shape == "tokens" else ""
            out.print(
                f"\nThe server keeps running at [bold]{server.url}[/] (data in {folder}, "
                "removed when it stops); press Ctrl-C to stop.\n"
                f"See the usage in a browser: [bold]{server.url}/[/]\n"
                "Point the CLI (and a LiteLLM app) at it from another shell:\n"
                f"  export OPENMETER_API_ENDPOINT={server.url} OPENMETER_API_KEY=demo"
                f"{shape_env}\n"
                "  litellm-openmeter usage --group-by model",
                highlight=False,
                soft_wrap=True,
            )
        if keep:
            _wait_for_interrupt()
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
        litellm.callbacks = saved_callbacks
        logger.close(timeout=1)
        if not keep:
            server.stop()
    return outcome


def _stop_on_signals() -> dict[int, Any]:
    """Turn Ctrl-C and SIGTERM into KeyboardInterrupt (in the main thread only), set
    before the report is printed so that a signal sent right after it counts: a process
    started in the background by a shell script inherits SIGINT ignored, and Python
    then installs no handler of its own. Returns the handlers replaced, to restore."""

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {number: signal.signal(number, stop) for number in (signal.SIGINT, signal.SIGTERM)}


def _wait_for_interrupt() -> None:
    """Block until KeyboardInterrupt. Wakes every half second: Linux may hand a signal
    to any thread (LiteLLM's pools have dozens), and Python runs its handler only when
    the main thread runs again, so an untimed wait could sleep through it."""
    while True:
        time.sleep(0.5)


def _print(out: Console, outcome: Outcome, dead: list[dict[str, Any]]) -> None:
    table = Table(title="Usage per subject and model (queried back from the meters)")
    table.add_column("subject")
    table.add_column("model", overflow="fold")
    for name in ("input tokens", "output tokens", "cached tokens", "cost (USD)"):
        table.add_column(name, justify="right")
    for (subject, model), cell in sorted(outcome.usage.items()):
        table.add_row(
            subject,
            model,
            f"{cell['input']:,.0f}",
            f"{cell['output']:,.0f}",
            f"{cell['cached']:,.0f}",
            f"{cell['cost']:.6f}",
        )
    out.print(table)
    succeeded = outcome.calls - outcome.failed
    out.print(
        f"calls made: {outcome.calls} ({succeeded} succeeded, {outcome.failed} failed, "
        f"{outcome.without_user} without a user)"
    )
    out.print(
        f"events stored by the logger: {outcome.enqueued}; delivered to the server: "
        f"{outcome.stored}; still queued: {outcome.queued}; dead-lettered: "
        f"{outcome.dead_lettered}"
    )
    for letter in dead:
        out.print(f"  dead letter {letter['id']}: {letter['reason']}")
    if outcome.verified:
        out.print(
            "[bold green]0 lost, 0 duplicated[/] (checked against the events the server stored)"
        )
    else:
        out.print(
            f"[bold red]{outcome.lost} lost, {outcome.duplicates} duplicated, "
            f"{outcome.queued} still queued[/]"
        )


def demo_command(args: argparse.Namespace) -> int:
    """Run the demo; exit 1 unless every event arrived once."""
    check_environment(args.shape)  # before the seconds of start-up
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    outcome = run_demo(
        calls=args.calls,
        shape=args.shape,
        keep=args.keep,
        console=rich_console(),
        as_json=args.json,
    )
    if not outcome.verified:
        raise CommandError(f"{outcome.lost} event(s) lost, {outcome.duplicates} duplicated")
    return 0
