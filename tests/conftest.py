from __future__ import annotations

import os

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import litellm
import pytest

from ingest_server import RecordingServer

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
OPENAPI = REFERENCE / "openmeter" / "openapi.yaml"


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it is truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


async def async_wait_for(
    predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition"
) -> Any:
    """``wait_for`` for a test running on an event loop: LiteLLM's async hooks run
    on the caller's loop, so the loop must stay alive until they have run."""
    import asyncio

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


def stored(logger: Any) -> int:
    """Events a logger has stored so far (queued or delivered)."""
    stats = logger.stats()
    return int(stats["queued"]) + int(stats["delivered"])


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("OPENMETER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture
def ingest() -> Iterator[RecordingServer]:
    server = RecordingServer()
    yield server
    server.stop()


@pytest.fixture
def callbacks() -> Iterator[list[Any]]:
    """litellm.callbacks for one test, restored after."""
    manager = litellm.logging_callback_manager
    manager._reset_all_callbacks()  # type: ignore[no-untyped-call]
    registered: list[Any] = []
    litellm.callbacks = registered
    yield registered
    manager._reset_all_callbacks()  # type: ignore[no-untyped-call]


@pytest.fixture
def make_logger(tmp_path: Path, ingest: RecordingServer) -> Iterator[Callable[..., Any]]:
    from litellm_openmeter import OpenMeterLogger

    made: list[OpenMeterLogger] = []

    def make(**overrides: Any) -> OpenMeterLogger:
        settings: dict[str, Any] = {
            "api_key": "test-key",
            "endpoint": ingest.url,
            "outbox_path": tmp_path / f"outbox{len(made)}.sqlite3",
            "flush_interval": 0.05,
            "retry_max_delay": 0.2,
            "http_timeout": 2.0,
        }
        settings.update(overrides)
        logger = OpenMeterLogger(**settings)
        made.append(logger)
        return logger

    yield make
    for logger in made:
        logger.close(timeout=1.0)


def cloud_event(
    event_id: str, subject: str, data: dict[str, Any] | None, **fields: Any
) -> dict[str, Any]:
    """A valid CloudEvent of type litellm_tokens from source "test" (``fields`` add to
    or replace the envelope's)."""
    return {
        "specversion": "1.0",
        "type": "litellm_tokens",
        "id": event_id,
        "source": "test",
        "subject": subject,
        "data": data,
        **fields,
    }


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


FIXTURES = Path(__file__).parent / "fixtures"
ALL_TIME = {"from": "1970-01-01T00:00:00Z"}
"""An explicit period for listing events: events built from recorded hook arguments
carry the recording's time (``endTime`` in the fixture), which the server's default
period for ``GET /api/v1/events`` (the last 72 hours) leaves out once it is old."""


def hook_kwargs(call_id: str, user: str = "user-1") -> dict[str, Any]:
    """Recorded LiteLLM hook arguments of one call, with a new call id and user. Its
    event's time is the recording's (2026-11-26T22:52:50Z): list such events with an
    explicit period (``ALL_TIME``)."""
    import json

    kwargs: dict[str, Any] = json.loads((FIXTURES / "openai_cached.json").read_text())
    kwargs["litellm_call_id"] = call_id
    kwargs["user"] = user
    return kwargs


def usage_response(
    prompt: int = 100, completion: int = 50, cached: int = 40, reasoning: int | None = None
) -> Any:
    """A mock gpt-4o response whose usage reports cached (and reasoning) tokens."""
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }
    if reasoning is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return litellm.ModelResponse(
        model="gpt-4o",
        choices=[{"message": {"role": "assistant", "content": "ok"}}],
        usage=litellm.Usage(**usage),
    )


def fill_outbox(path: Path, calls: int, endpoint: str, no_subject: int = 0) -> None:
    """An outbox as a logger leaves it while ``endpoint`` is down: ``calls`` recorded
    calls (real hook arguments, users ``user-0`` and ``user-1``) and ``no_subject``
    dead letters."""
    from litellm_openmeter import OpenMeterLogger

    logger = OpenMeterLogger(
        api_key="x",
        endpoint=endpoint,
        outbox_path=path,
        flush_interval=3600,
        batch_size=100_000,
    )
    for index in range(calls):
        logger.record_call(hook_kwargs(f"call-{index:05}", user=f"user-{index % 2}"), success=True)
    for index in range(no_subject):
        kwargs = hook_kwargs(f"nosub-{index}", user="")
        kwargs["standard_logging_object"]["model_parameters"] = {}
        logger.record_call(kwargs, success=True)
    assert logger.writer.stop(10)
    logger.sender.stop(1)
    logger.outbox.close()
