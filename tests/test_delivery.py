"""Delivery through a real HTTP server on 127.0.0.1 that fails in each of the ways
OpenMeter or a network can: nothing lost, ids stable, bad events dead-lettered."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import litellm
import pytest

from litellm_openmeter.delivery.outbox import Outbox
from litellm_openmeter.delivery.sender import Sender, backoff_delay
from litellm_openmeter.delivery.transport import HttpTransport, parse_retry_after
from litellm_openmeter.settings import Settings

from conftest import cloud_event, free_port, hook_kwargs, stored, wait_for
from ingest_server import Answer, Recorded, RecordingServer, problem


def record(logger: Any, count: int, prefix: str = "call") -> set[str]:
    """Record ``count`` calls; returns their event ids once the writer stored them."""
    ids = set()
    for index in range(count):
        events = logger.record_call(hook_kwargs(f"{prefix}-{index}"), success=True)
        assert len(events) == 1
        ids.add(events[0]["id"])
    assert logger.writer.drain(10)
    return ids


class FailThen:
    """Answers with ``failure`` ``times`` times, then 204."""

    def __init__(self, failure: Answer, times: int) -> None:
        self.failure, self.left = failure, times
        self.lock = threading.Lock()

    def __call__(self, request: Recorded) -> Answer:
        with self.lock:
            if self.left > 0:
                self.left -= 1
                return self.failure
        return 204, {}, b""


@pytest.mark.parametrize(
    "failure",
    [
        problem(500, "Internal Server Error", "boom"),
        problem(503, "Service Unavailable", "down for maintenance"),
        (502, {}, b"bad gateway"),
    ],
    ids=["500", "503", "502"],
)
def test_server_errors_are_retried_with_the_same_ids(
    make_logger: Any, ingest: RecordingServer, failure: Answer
) -> None:
    ingest.respond = FailThen(failure, times=3)
    logger = make_logger(batch_size=4)
    ids = record(logger, 10)
    assert logger.flush(20)
    assert ingest.accepted_ids() == ids
    assert len(ingest.accepted_events()) == 10  # none twice
    posted = ingest.all_posted_events()
    assert {e["id"] for e in posted} == ids  # retries carried the same ids
    assert logger.stats()["retried"] >= 3
    assert logger.stats()["queued"] == 0


def test_429_retry_after_is_honoured(make_logger: Any, ingest: RecordingServer) -> None:
    ingest.respond = FailThen((429, {"Retry-After": "1"}, b""), times=1)
    logger = make_logger()
    ids = record(logger, 3)
    assert logger.flush(20)
    assert ingest.accepted_ids() == ids
    first, second = ingest.requests[0], ingest.requests[1]
    assert first.status == 429 and second.status == 204
    assert first.events() == second.events()
    assert second.received - first.received >= 0.9


def test_hang_past_the_timeout_is_retried(make_logger: Any, ingest: RecordingServer) -> None:
    hung = threading.Event()

    def respond(request: Recorded) -> Answer:
        if not hung.is_set():
            hung.set()
            ingest.release.wait(3.0)  # longer than the client's timeout
        return 204, {}, b""

    ingest.respond = respond
    logger = make_logger(http_timeout=0.3)
    ids = record(logger, 5)
    assert logger.flush(20)
    # The hung request may have been accepted late: OpenMeter's (source, id) dedup
    # collapses it. What matters is that every id arrived and none changed.
    assert ingest.accepted_ids() == ids
    assert "timeout" in logger.stats()["last_error"]


def test_connection_refused_then_server_comes_up(make_logger: Any) -> None:
    port = free_port()
    logger = make_logger(endpoint=f"http://127.0.0.1:{port}")
    ids = record(logger, 7)
    wait_for(lambda: "cannot reach" in logger.stats()["last_error"], what="a refused connection")
    assert logger.stats()["queued"] == 7
    server = RecordingServer(port_wanted=port)
    try:
        assert logger.flush(20)
        assert server.accepted_ids() == ids
        assert len(server.accepted_events()) == 7
    finally:
        server.stop()


def test_400_isolates_the_bad_event(make_logger: Any, ingest: RecordingServer) -> None:
    def respond(request: Recorded) -> Answer:
        if any(event["subject"] == "bad-user" for event in request.events()):
            return problem(400, "Bad Request", "invalid event: subject bad-user is not allowed")
        return 204, {}, b""

    ingest.respond = respond
    logger = make_logger(batch_size=10)
    good = record(logger, 9)
    bad = logger.record_call(hook_kwargs("call-bad", user="bad-user"), success=True)[0]["id"]
    assert logger.flush(20)
    assert ingest.accepted_ids() == good
    [letter] = logger.dead_letters()
    assert letter["id"] == bad and letter["reason"] == "rejected"
    assert "subject bad-user is not allowed" in letter["detail"]
    assert logger.stats()["dead_lettered"] == 1


def test_401_pauses_keeps_everything_and_says_so_once(
    make_logger: Any, ingest: RecordingServer, caplog: pytest.LogCaptureFixture
) -> None:
    ingest.respond = lambda request: problem(401, "Unauthorized", "invalid token")
    logger = make_logger(retry_max_delay=0.05)
    ids = record(logger, 4)
    with caplog.at_level(logging.ERROR, logger="litellm_openmeter"):
        wait_for(lambda: len(ingest.requests) >= 3, what="several attempts")
        wait_for(lambda: logger.stats()["paused"], what="the pause in the stats")
    paused = [r for r in caplog.records if "paused" in r.getMessage()]
    assert len(paused) == 1 and "OPENMETER_API_KEY" in paused[0].getMessage()
    assert "test-key" not in caplog.text
    assert logger.stats()["queued"] == 4
    assert logger.dead_letters() == []
    ingest.respond = None  # the operator fixed it
    assert logger.flush(20)
    assert ingest.accepted_ids() == ids


def test_404_pauses_with_endpoint_hint(make_logger: Any, ingest: RecordingServer) -> None:
    ingest.respond = lambda request: (404, {}, b"not found")
    logger = make_logger()
    record(logger, 2)
    wait_for(lambda: logger.stats()["paused"], what="a pause")
    assert "OPENMETER_API_ENDPOINT" in logger.stats()["paused"]
    assert logger.stats()["queued"] == 2


def test_batches_use_the_batch_content_type_and_size(
    make_logger: Any, ingest: RecordingServer
) -> None:
    logger = make_logger(batch_size=4, flush_interval=30)
    record(logger, 8)
    wait_for(lambda: len(ingest.accepted_events()) == 8, what="two full batches")
    assert [len(r.events()) for r in ingest.requests] == [4, 4]
    assert {r.headers["content-type"] for r in ingest.requests} == {
        "application/cloudevents-batch+json"
    }
    assert all("charset" not in r.headers["content-type"] for r in ingest.requests)


def test_a_partial_batch_waits_for_the_flush_interval(
    make_logger: Any, ingest: RecordingServer
) -> None:
    logger = make_logger(batch_size=100, flush_interval=0.3)
    record(logger, 3)
    wait_for(lambda: len(ingest.accepted_events()) == 3, what="the partial batch")
    assert len(ingest.requests) == 1


def test_duplicate_event_is_stored_once(make_logger: Any, ingest: RecordingServer) -> None:
    logger = make_logger()
    kwargs = hook_kwargs("dup-call")
    logger.record_call(kwargs, success=True)
    assert logger.flush(10)
    logger.record_call(kwargs, success=True)  # LiteLLM firing the hook again, later
    assert logger.flush(10)
    assert len(ingest.accepted_events()) == 1


def test_full_outbox_refuses_new_events_and_reports(
    make_logger: Any, caplog: pytest.LogCaptureFixture
) -> None:
    logger = make_logger(endpoint=f"http://127.0.0.1:{free_port()}", outbox_max_bytes=3000)
    with caplog.at_level(logging.ERROR, logger="litellm_openmeter"):
        for index in range(20):
            logger.record_call(hook_kwargs(f"fill-{index}"), success=True)
        assert logger.writer.drain(30)  # the writer thread stored (or refused) them all
    stats = logger.stats()
    assert 0 < stats["queued"] < 20
    assert stats["refused"] == 20 - stats["queued"]
    assert stats["outbox_bytes"] <= 3000
    assert "is full" in caplog.text and "OPENMETER_OUTBOX_MAX_BYTES" in caplog.text


def test_outbox_file_is_private(make_logger: Any) -> None:
    logger = make_logger()
    record(logger, 1)
    for suffix in ("", "-wal", "-shm"):
        path = str(logger.settings.outbox_path) + suffix
        if os.path.exists(path):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path


def test_async_hooks_do_not_stall_the_loop_during_an_outage(
    make_logger: Any, callbacks: list[Any], ingest: RecordingServer
) -> None:
    ingest.respond = lambda request: (ingest.release.wait(5.0), (503, {}, b""))[1]
    logger = make_logger(http_timeout=5.0)
    callbacks.append(logger)
    calls = 50

    async def run() -> float:
        worst = 0.0
        done = asyncio.Event()
        # LiteLLM imports modules on its first calls (a second or more on a slow
        # machine, on this loop): that is not the logger's doing, so it happens first.
        await litellm.acompletion(
            model="gpt-4o", messages=[{"role": "user", "content": "x"}], mock_response="hi"
        )

        async def ticker() -> None:
            nonlocal worst
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                worst = max(worst, now - last)
                last = now

        tick = asyncio.create_task(ticker())
        for index in range(calls):
            await litellm.acompletion(
                model="gpt-4o",
                messages=[{"role": "user", "content": "x"}],
                mock_response="hi",
                user=f"lag-{index}",
            )
        deadline = time.monotonic() + 20
        while stored(logger) < calls and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        done.set()
        await tick
        return worst

    worst = asyncio.run(run())
    assert stored(logger) == calls  # the warm-up call has no user: a dead letter
    assert logger.stats()["delivered"] == 0
    # A blocking POST would hold the loop for the 5 s timeout of the hung server.
    assert worst < 2.5, f"event loop stalled for {worst:.3f}s"


def test_backoff_and_retry_after_parsing() -> None:
    assert backoff_delay(0, 60, lambda: 1.0) == 0.5
    assert backoff_delay(3, 60, lambda: 1.0) == 4.0
    assert backoff_delay(30, 60, lambda: 1.0) == 60
    assert backoff_delay(5, 60, lambda: 0.0) == 0.0
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0


def test_prometheus_metrics(make_logger: Any, ingest: RecordingServer) -> None:
    prometheus = pytest.importorskip("prometheus_client")
    ingest.respond = lambda request: problem(503, "Service Unavailable", "later")
    logger = make_logger()
    record(logger, 3)
    wait_for(lambda: logger.stats()["retried"] >= 1, what="a retry")
    text = prometheus.generate_latest().decode()
    path = str(logger.settings.outbox_path)
    assert f'litellm_openmeter_queued{{outbox="{path}"}} 3.0' in text
    assert f'litellm_openmeter_retried_total{{outbox="{path}"}}' in text
    assert "litellm_openmeter_delivered_total" in text and "litellm_openmeter_paused" in text
    assert "test-key" not in text


def test_202_from_the_v3_path_counts_as_delivered(
    make_logger: Any, ingest: RecordingServer
) -> None:
    ingest.respond = lambda request: (202, {}, b"")
    logger = make_logger()
    ids = record(logger, 4)
    assert logger.flush(10)
    assert ingest.accepted_ids() == ids
    assert logger.stats()["delivered"] == 4 and logger.stats()["retried"] == 0


def test_backoff_is_not_cut_short_by_new_events(make_logger: Any, ingest: RecordingServer) -> None:
    ingest.respond = lambda request: problem(503, "Service Unavailable", "down")
    logger = make_logger(retry_max_delay=30.0, batch_size=2)
    record(logger, 2)
    wait_for(lambda: len(ingest.requests) >= 1, what="a first attempt")
    started = len(ingest.requests)
    record(logger, 50, prefix="more")  # each full batch wakes the sender...
    # ...but during a backoff only flush() may end the wait: a burst of new events must
    # not turn an outage into a stream of retries.
    assert len(ingest.requests) <= started + 2


def outbox_and_sender(
    tmp_path: Path, ingest: RecordingServer, transport: Callable[[Settings], HttpTransport]
) -> tuple[Outbox, Sender]:
    """A sender of its own (no logger) to ``ingest``, whose client ``transport`` makes."""
    settings = Settings.from_env(
        {}, api_key="k", endpoint=ingest.url, outbox_path=tmp_path / "o.sqlite3"
    )
    outbox = Outbox(settings.outbox_path)
    return outbox, Sender(settings, outbox, transport_factory=lambda: transport(settings))


def test_a_client_that_cannot_be_made_is_made_again_at_the_next_send(
    tmp_path: Path, ingest: RecordingServer
) -> None:
    """A failure to make the HTTP client (no CA bundle yet, say) is retried like any
    failed send, and the events still arrive."""
    attempts: list[str] = []

    def transport(settings: Settings) -> HttpTransport:
        attempts.append("made")
        if len(attempts) == 1:
            raise OSError("no CA bundle yet")
        return HttpTransport(settings)

    outbox, sender = outbox_and_sender(tmp_path, ingest, transport)
    outbox.enqueue([cloud_event("late-client", "cust", {"total_tokens": 1})])
    try:
        assert sender.flush(10)
    finally:
        sender.stop(5)
    assert ingest.accepted_ids() == {"late-client"}
    assert len(attempts) == 2


def test_a_pause_is_recorded_in_the_outbox_for_its_other_readers(
    make_logger: Any, ingest: RecordingServer
) -> None:
    """``outbox status`` and the dashboard read the file, not the logger: a pause and
    its reason are there while it lasts, and gone once delivery resumes."""
    from litellm_openmeter.delivery.outbox import Outbox

    ingest.respond = lambda request: (401, {}, b"bad key")
    logger = make_logger(retry_max_delay=0.2)
    record(logger, 2)
    reader = Outbox(logger.outbox.path)
    try:
        wait_for(lambda: reader.stats().paused, what="the pause in the file")
        assert "OPENMETER_API_KEY" in reader.stats().paused
        ingest.respond = None
        wait_for(lambda: len(ingest.accepted_events()) == 2, what="delivery after the pause")
        wait_for(lambda: reader.stats().paused == "", what="the pause gone from the file")
    finally:
        reader.close()
