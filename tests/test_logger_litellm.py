"""Real LiteLLM calls (mock_response) through OpenMeterLogger to a real HTTP server."""

from __future__ import annotations

import asyncio
import logging
import re
import weakref
from datetime import datetime, timezone
from typing import Any

import litellm
import pytest
from litellm.caching.caching import Cache
from litellm.exceptions import RateLimitError

from conftest import async_wait_for, stored, usage_response, wait_for
from ingest_server import RecordingServer

MESSAGES = [{"role": "user", "content": "hello"}]
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def delivered(ingest: RecordingServer, count: int) -> list[dict[str, Any]]:
    wait_for(lambda: len(ingest.accepted_events()) >= count, what=f"{count} event(s)")
    return ingest.accepted_events()


def check_envelope(event: dict[str, Any], subject: str, event_type: str = "litellm_tokens") -> None:
    assert event["specversion"] == "1.0"
    assert event["type"] == event_type
    assert event["source"] == "litellm-proxy"
    assert event["subject"] == subject
    assert TIME_RE.match(event["time"]), event["time"]
    assert isinstance(event["id"], str) and event["id"]


def test_sync_completion_sends_one_complete_event(
    make_logger: Any, callbacks: list[Any], ingest: RecordingServer
) -> None:
    logger = make_logger()
    callbacks.append(logger)
    before = datetime.now(timezone.utc)
    response = litellm.completion(
        model="gpt-4o", messages=MESSAGES, mock_response="hi there", user="user-123"
    )
    [event] = delivered(ingest, 1)
    [request] = ingest.requests
    assert request.path == "/api/v1/events"
    assert request.headers["authorization"] == "Bearer test-key"
    assert request.headers["content-type"] == "application/cloudevents+json"
    check_envelope(event, "user-123")
    assert event["id"] != response.id  # the LiteLLM call id, not the provider's response id
    sent_time = datetime.fromisoformat(event["time"].replace("Z", "+00:00"))
    assert before <= sent_time <= datetime.now(timezone.utc)
    assert event["data"] == {
        "model": "gpt-4o",
        "cost": pytest.approx(0.000225),
        "prompt_tokens": 10,
        "completion_tokens": 20,
        "total_tokens": 30,
        "cache_read_tokens": 0,
        "cache_creation_tokens": 0,
        "reasoning_tokens": 0,
        "provider": "openai",
        "call_type": "completion",
        "usage_accuracy": "exact",
    }


def test_async_completion_and_streams_one_event_per_call(
    make_logger: Any, callbacks: list[Any], ingest: RecordingServer
) -> None:
    logger = make_logger()
    callbacks.append(logger)

    async def run() -> None:
        await litellm.acompletion(
            model="gpt-4o", messages=MESSAGES, mock_response="a b", user="u-a"
        )
        stream = await litellm.acompletion(
            model="gpt-4o",
            messages=MESSAGES,
            mock_response="one two three",
            user="u-as",
            stream=True,
        )
        async for _ in stream:
            pass
        await async_wait_for(lambda: stored(logger) >= 2, what="async hooks")

    asyncio.run(run())
    stream = litellm.completion(
        model="gpt-4o", messages=MESSAGES, mock_response="x y z", user="u-s", stream=True
    )
    for _ in stream:
        pass
    events = delivered(ingest, 3)
    wait_for(lambda: logger.outbox.pending() == 0, what="empty outbox")
    by_subject = {event["subject"]: event for event in ingest.accepted_events()}
    assert sorted(by_subject) == ["u-a", "u-as", "u-s"]
    assert len(events) == 3
    assert by_subject["u-a"]["data"]["call_type"] == "acompletion"
    for subject in ("u-as", "u-s"):
        data = by_subject[subject]["data"]
        assert data["completion_tokens"] > 0 and data["prompt_tokens"] > 0
        assert data["cost"] > 0
    assert len({event["id"] for event in events}) == 3


def test_embedding_call(make_logger: Any, callbacks: list[Any], ingest: RecordingServer) -> None:
    callbacks.append(make_logger())
    odd_user: dict[str, Any] = {"user": 7}  # not a string: the event takes it as text
    litellm.embedding(
        model="text-embedding-3-small", input=["hello world"], mock_response=[0.1, 0.2], **odd_user
    )
    [event] = delivered(ingest, 1)
    check_envelope(event, "7")
    assert event["data"]["call_type"] == "embedding"
    assert event["data"]["prompt_tokens"] > 0
    assert event["data"]["completion_tokens"] == 0
    assert event["data"]["total_tokens"] >= event["data"]["prompt_tokens"]
    assert event["data"]["cost"] > 0


def test_cached_and_reasoning_tokens_reach_the_event(
    make_logger: Any, callbacks: list[Any], ingest: RecordingServer
) -> None:
    callbacks.append(make_logger())
    mocked = usage_response(reasoning=30)
    litellm.completion(model="gpt-4o", messages=MESSAGES, mock_response=mocked, user="u")
    [event] = delivered(ingest, 1)
    data = event["data"]
    assert (data["prompt_tokens"], data["cache_read_tokens"], data["reasoning_tokens"]) == (
        100,
        40,
        30,
    )
    assert data["cost"] == pytest.approx(0.0007)


def test_litellm_cache_hit_is_its_own_event(
    make_logger: Any, callbacks: list[Any], ingest: RecordingServer
) -> None:
    callbacks.append(make_logger())
    litellm.cache = Cache()
    try:
        first = litellm.completion(
            model="gpt-4o", messages=MESSAGES, mock_response="same", user="u", caching=True
        )
        second = litellm.completion(
            model="gpt-4o", messages=MESSAGES, mock_response="same", user="u", caching=True
        )
    finally:
        litellm.cache = None
    assert first.id == second.id  # LiteLLM hands back the cached response...
    events = delivered(ingest, 2)
    assert len({event["id"] for event in events}) == 2  # ...but each call is billed once


def spy_on_hooks(callbacks: list[Any]) -> list[dict[str, Any]]:
    """Register a callback that keeps the kwargs LiteLLM passes to sync success hooks."""
    seen: list[dict[str, Any]] = []

    class Spy(litellm.integrations.custom_logger.CustomLogger):
        def log_success_event(self, kwargs: Any, *args: Any, **kw: Any) -> None:
            seen.append(kwargs)

    callbacks.append(Spy())
    return seen


def test_hook_fired_twice_gives_one_event(
    make_logger: Any, callbacks: list[Any], ingest: RecordingServer
) -> None:
    logger = make_logger()
    seen = spy_on_hooks(callbacks)
    litellm.completion(model="gpt-4o", messages=MESSAGES, mock_response="hi", user="u")
    kwargs = wait_for(lambda: seen and seen[0])
    first = logger.record_call(kwargs, success=True)
    second = logger.record_call(kwargs, success=True)
    assert first[0]["id"] == second[0]["id"]
    assert logger.flush(10)
    assert len(ingest.accepted_events()) == 1


def test_hook_keeps_the_call_as_it_was_when_the_hook_ran(
    make_logger: Any, callbacks: list[Any], ingest: RecordingServer
) -> None:
    """The writer stores the events later (its turn comes up to a commit interval
    after the hook); what LiteLLM changes in its kwargs after the hook must not reach
    them."""
    logger = make_logger()
    seen = spy_on_hooks(callbacks)
    for user in ("alice", "bob"):
        litellm.completion(model="gpt-4o", messages=MESSAGES, mock_response="hi", user=user)
    first, second = wait_for(lambda: len(seen) == 2 and seen)
    for kwargs in (first, second):
        logger.log_success_event(kwargs, None, None, None)
        kwargs["user"] = "mallory"
        kwargs["litellm_call_id"] = "changed-after-the-hook"
        kwargs["standard_logging_object"]["model"] = "changed-model"
    assert logger.flush(10)
    events = delivered(ingest, 2)
    assert sorted(event["subject"] for event in events) == ["alice", "bob"]
    assert "changed-after-the-hook" not in {event["id"] for event in events}
    assert {event["data"]["model"] for event in events} == {"gpt-4o"}


class Tracked(dict[str, Any]):
    """A dict that a weak reference can follow."""


def test_hook_keeps_nothing_of_the_call_alive(
    make_logger: Any, callbacks: list[Any], ingest: RecordingServer
) -> None:
    """Once a hook returns, LiteLLM's objects for the call are freed with it: kept
    until the writer's turn, they would outlive young garbage collections and pile
    up in the oldest generation, whose full collections sweep all of LiteLLM."""
    logger = make_logger()
    seen = spy_on_hooks(callbacks)
    for user in ("alice", "bob", "carol"):
        litellm.completion(model="gpt-4o", messages=MESSAGES, mock_response="hi", user=user)
    wait_for(lambda: len(seen) == 3)
    refs = []
    for kwargs in seen:
        call = Tracked(kwargs)
        for name in ("standard_logging_object", "litellm_params"):
            call[name] = Tracked(kwargs[name])
        refs += [weakref.ref(call[name]) for name in ("standard_logging_object", "litellm_params")]
        refs.append(weakref.ref(call))
        logger.log_success_event(call, None, None, None)
        del call
    assert [ref for ref in refs if ref() is not None] == []
    assert logger.flush(10)
    events = delivered(ingest, 3)
    assert sorted(event["subject"] for event in events) == ["alice", "bob", "carol"]


def test_call_without_subject_is_kept_and_logged(
    make_logger: Any,
    callbacks: list[Any],
    ingest: RecordingServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = make_logger()
    callbacks.append(logger)
    with caplog.at_level(logging.WARNING, logger="litellm_openmeter"):
        litellm.completion(model="gpt-4o", messages=MESSAGES, mock_response="hi")
        dead = wait_for(logger.dead_letters, what="a dead letter")
    [letter] = dead
    assert letter["reason"] == "no_subject"
    assert letter["event"]["data"]["prompt_tokens"] == 10
    assert letter["id"] in caplog.text and "OPENMETER_SUBJECT_FROM" in caplog.text
    assert ingest.requests == []
    assert logger.requeue([letter["id"]], subject="fixed-user") == 1
    [event] = delivered(ingest, 1)
    assert event["subject"] == "fixed-user" and event["id"] == letter["id"]


def test_failures_are_not_metered_by_default(
    make_logger: Any, callbacks: list[Any], ingest: RecordingServer
) -> None:
    logger = make_logger()
    callbacks.append(logger)
    with pytest.raises(litellm.exceptions.InternalServerError):
        litellm.completion(
            model="gpt-4o", messages=MESSAGES, mock_response=Exception("x"), user="u"
        )
    litellm.completion(model="gpt-4o", messages=MESSAGES, mock_response="fine", user="u")
    delivered(ingest, 1)
    assert logger.flush(5)
    assert [e["type"] for e in ingest.accepted_events()] == ["litellm_tokens"]
    wait_for(lambda: logger.stats()["calls_seen"] >= 2, what="both hooks counted")
    assert logger.stats()["calls_seen"] == 2  # the failure too, though not metered


def test_failures_metered_when_asked(
    make_logger: Any, callbacks: list[Any], ingest: RecordingServer
) -> None:
    async def run() -> None:
        with pytest.raises(RateLimitError):
            await litellm.acompletion(
                model="gpt-4o",
                messages=MESSAGES,
                user="u-f",
                mock_response=RateLimitError("slow down", llm_provider="openai", model="gpt-4o"),
            )
        await async_wait_for(lambda: stored(logger) >= 1, what="async failure hook")

    logger = make_logger(meter_failures=True)
    callbacks.append(logger)
    asyncio.run(run())
    [event] = delivered(ingest, 1)
    check_envelope(event, "u-f", "litellm_tokens_failure")
    assert event["id"].endswith(":failure")
    assert event["data"]["error_class"] == "RateLimitError"
    assert event["data"]["error_code"] == "429"
    assert event["data"]["model"] == "gpt-4o"
    assert logger.stats()["calls_seen"] == 1


def test_tokens_shape_one_event_per_kind(
    make_logger: Any, callbacks: list[Any], ingest: RecordingServer
) -> None:
    callbacks.append(make_logger(event_shape="tokens"))
    mocked = usage_response()
    litellm.completion(model="gpt-4o", messages=MESSAGES, mock_response=mocked, user="u")
    events = delivered(ingest, 3)
    [request] = ingest.requests
    assert request.headers["content-type"] == "application/cloudevents-batch+json"
    kinds = {event["data"]["type"]: event for event in events}
    assert {k: e["data"]["tokens"] for k, e in kinds.items()} == {
        "input": 60,
        "output": 50,
        "cache_read": 40,
    }
    call_id = kinds["input"]["data"]["call_id"]
    for kind, event in kinds.items():
        check_envelope(event, "u", "prompt")
        assert event["id"] == f"{call_id}:{kind}"
    assert sum(e["data"]["cost"] for e in events) == pytest.approx(0.0007)


def test_unpriced_model_warns_and_sends_zero_cost(
    make_logger: Any,
    callbacks: list[Any],
    ingest: RecordingServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    callbacks.append(make_logger())
    with caplog.at_level(logging.WARNING, logger="litellm_openmeter"):
        litellm.completion(
            model="openai/no-such-model-xyz", messages=MESSAGES, mock_response="hi", user="u"
        )
        [event] = delivered(ingest, 1)
    assert event["data"]["cost"] == 0
    assert "no price for model 'no-such-model-xyz'" in caplog.text
