"""Exact and estimated usage through the SDK, with a slow streaming provider registered
the way LiteLLM supports (``slow_provider``): a provider's own count is ``exact``; a
stream whose provider reported none is ``estimated`` (``no_provider_usage``); a stream
its caller stopped reading never reports, and is counted as unfinished (billed as an
estimate of its prompt with ``OPENMETER_METER_UNFINISHED``). The proxy's cases are in
``test_proxy.py``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import litellm
import pytest

from litellm_openmeter.record import estimate_reason
from slow_provider import CHUNKS, PROMPT_TOKENS, slow_provider

from conftest import wait_for
from ingest_server import RecordingServer

MESSAGES = [{"role": "user", "content": "tell me a long story about the sea"}]


@pytest.fixture(autouse=True)
def slow() -> Iterator[None]:
    before = litellm.custom_provider_map
    litellm.custom_provider_map = [{"provider": "slow", "custom_handler": slow_provider}]
    yield
    litellm.custom_provider_map = before


def stream_to_the_end(model: str, user: str, asynchronous: bool) -> None:
    if not asynchronous:
        for _ in litellm.completion(model=model, messages=MESSAGES, user=user, stream=True):
            pass
        return

    async def run() -> None:
        stream = await litellm.acompletion(model=model, messages=MESSAGES, user=user, stream=True)
        async for _ in stream:
            pass

    asyncio.run(run())


def event_of(ingest: RecordingServer, subject: str) -> dict[str, Any]:
    def found() -> list[dict[str, Any]]:
        return [event for event in ingest.accepted_events() if event["subject"] == subject]

    [event] = wait_for(found, what=f"the event of {subject}")
    data: dict[str, Any] = event["data"]
    return data


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_stream_with_the_providers_usage_is_exact(
    make_logger: Any, callbacks: list[Any], ingest: RecordingServer, asynchronous: bool
) -> None:
    callbacks.append(make_logger())
    stream_to_the_end("slow/usage", "reported", asynchronous)
    data = event_of(ingest, "reported")
    assert (data["prompt_tokens"], data["completion_tokens"]) == (PROMPT_TOKENS, CHUNKS)
    assert data["usage_accuracy"] == "exact"
    assert "estimate_reason" not in data


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_stream_without_the_providers_usage_is_an_estimate(
    make_logger: Any, callbacks: list[Any], ingest: RecordingServer, asynchronous: bool
) -> None:
    callbacks.append(make_logger())
    stream_to_the_end("slow/silent", "silent", asynchronous)
    data = event_of(ingest, "silent")
    assert data["prompt_tokens"] == litellm.token_counter(model="silent", messages=MESSAGES)
    assert data["prompt_tokens"] != PROMPT_TOKENS
    assert (data["usage_accuracy"], data["estimate_reason"]) == ("estimated", "no_provider_usage")


def test_tokens_shape_events_say_it_too(
    make_logger: Any, callbacks: list[Any], ingest: RecordingServer
) -> None:
    callbacks.append(make_logger(event_shape="tokens"))
    stream_to_the_end("slow/silent", "silent", asynchronous=False)
    events = wait_for(lambda: ingest.accepted_events(), what="the events")
    assert {event["data"]["type"] for event in events} == {"input", "output"}
    for event in events:
        assert event["data"]["usage_accuracy"] == "estimated"
        assert event["data"]["estimate_reason"] == "no_provider_usage"


def stop_early(how: str, user: str) -> None:
    """Read three chunks of a stream, then stop as a caller would."""
    if how == "sync-break":
        for index, _ in enumerate(
            litellm.completion(model="slow/usage", messages=MESSAGES, user=user, stream=True)
        ):
            if index == 2:
                break
        return
    if how == "sync-drop":
        stream = litellm.completion(model="slow/usage", messages=MESSAGES, user=user, stream=True)
        for _ in range(3):
            next(stream)
        del stream
        return

    async def run() -> None:
        stream = await litellm.acompletion(
            model="slow/usage", messages=MESSAGES, user=user, stream=True
        )
        index = 0
        async for _ in stream:
            index += 1
            if index == 3:
                break
        if how == "async-aclose":
            await stream.aclose()

    asyncio.run(run())


@pytest.mark.parametrize("how", ["sync-break", "sync-drop", "async-break", "async-aclose"])
def test_a_stream_stopped_early_is_counted_as_unfinished(
    make_logger: Any,
    callbacks: list[Any],
    ingest: RecordingServer,
    caplog: pytest.LogCaptureFixture,
    how: str,
) -> None:
    logger = make_logger(unfinished_after=0.5)
    callbacks.append(logger)
    with caplog.at_level(logging.WARNING, logger="litellm_openmeter"):
        stop_early(how, "quitter")
        stop_early(how, "quitter-too")
        wait_for(lambda: logger.stats()["unfinished"] == 2, what="two unfinished calls")
    # caplog may see a record twice (its handler on this logger and on the root).
    warnings = {id(r): r.getMessage() for r in caplog.records if "never reported" in r.getMessage()}
    assert len(warnings) == 1, warnings  # once for the streak
    assert "OPENMETER_METER_UNFINISHED" in next(iter(warnings.values()))
    prometheus = pytest.importorskip("prometheus_client")
    outbox = str(logger.settings.outbox_path)
    assert f'litellm_openmeter_unfinished_total{{outbox="{outbox}"}} 2.0' in (
        prometheus.generate_latest().decode()
    )
    assert logger.flush(timeout=5)
    assert ingest.accepted_events() == []  # not billed unless asked


def test_unfinished_calls_are_billed_as_estimates_when_asked(
    make_logger: Any, callbacks: list[Any], ingest: RecordingServer
) -> None:
    logger = make_logger(unfinished_after=0.5, meter_unfinished=True)
    callbacks.append(logger)
    stop_early("sync-break", "quitter")
    data = event_of(ingest, "quitter")
    assert data["prompt_tokens"] == litellm.token_counter(model="usage", messages=MESSAGES)
    assert data["completion_tokens"] == 0
    assert (data["usage_accuracy"], data["estimate_reason"]) == ("estimated", "unfinished")
    assert logger.stats()["unfinished"] == 1


def test_close_gives_up_on_calls_that_never_reported(
    make_logger: Any,
    callbacks: list[Any],
    ingest: RecordingServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = make_logger(meter_unfinished=True)  # the default wait: minutes
    callbacks.append(logger)
    stop_early("sync-break", "quitter")
    with caplog.at_level(logging.WARNING, logger="litellm_openmeter"):
        logger.close(timeout=1.0)
    assert any("never reported" in r.getMessage() for r in caplog.records)
    assert event_of(ingest, "quitter")["estimate_reason"] == "unfinished"


# -- how a usage is told exact or estimated (pure: record.estimate_reason) ------------


def counter(prompt: int, completion: int) -> Any:
    """A TokenCounter that counts every prompt and every completion alike."""
    return lambda model, messages, text: prompt if messages is not None else completion


TOKENS = {"prompt_tokens": 9, "completion_tokens": 12, "reasoning_tokens": 0}
STREAM = ([{"role": "user", "content": "hi"}], "some text")


@pytest.mark.parametrize(
    ("disconnected", "error_information", "usage", "stream", "count", "expected"),
    [
        (True, {}, {}, None, None, "client_disconnected"),
        (None, {"error_code": "499"}, {}, None, None, "client_disconnected"),
        (None, {}, {}, None, counter(9, 12), None),  # not a stream: the provider's
        (None, {}, {}, STREAM, counter(9, 12), "no_provider_usage"),
        (None, {}, {}, STREAM, counter(9, 11), None),
        (None, {}, {}, STREAM, counter(8, 12), None),
        (None, {}, {"prompt_tokens_details": {"cached_tokens": 0}}, STREAM, counter(9, 12), None),
        (
            None,
            {},
            {"prompt_tokens_details": {"cached_tokens": None}},
            STREAM,
            counter(9, 12),
            "no_provider_usage",
        ),
        (None, {}, {}, STREAM, lambda *args: None, None),  # LiteLLM cannot count
        (None, {}, {}, STREAM, None, None),
    ],
)
def test_estimate_reason(
    disconnected: object,
    error_information: dict[str, object],
    usage: dict[str, object],
    stream: Any,
    count: Any,
    expected: str | None,
) -> None:
    reason = estimate_reason(disconnected, error_information, usage, TOKENS, "m", stream, count)
    assert reason == expected
