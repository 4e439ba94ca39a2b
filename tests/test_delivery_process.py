"""The sender in a child process: started on first use, restarted when it dies, ended
with the logger, never given the key through argv or the environment, and replaced by
a thread where no child can be started."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from conftest import cloud_event, hook_kwargs, wait_for
from ingest_server import RecordingServer


def record(logger: Any, prefix: str, count: int, via: str = "record_call") -> None:
    """Calls through ``record_call`` (events built here) or a success hook, sync or
    async (the writer relays the call and the delivery process builds its events)."""
    for index in range(count):
        if via == "hook":
            logger.log_success_event(hook_kwargs(f"{prefix}-{index}"), None, None, None)
        elif via == "async hook":
            hooked = logger.async_log_success_event(
                hook_kwargs(f"{prefix}-{index}"), None, None, None
            )
            asyncio.run(hooked)
        else:
            logger.record_call(hook_kwargs(f"{prefix}-{index}"), success=True)


def sender_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "litellm-openmeter-sender"]


def test_events_are_sent_from_a_child_process_that_never_sees_the_key_in_argv_or_env(
    make_logger: Any, ingest: RecordingServer
) -> None:
    logger = make_logger()
    record(logger, "child", 3)
    assert logger.flush(20)
    assert {event["id"] for event in ingest.accepted_events()} == {
        "child-0",
        "child-1",
        "child-2",
    }
    pid = logger.sender.pid
    assert pid is not None and pid != os.getpid() and logger.sender.running
    assert sender_threads() == []  # no HTTP from this process
    proc = Path(f"/proc/{pid}")
    if proc.exists():
        assert b"test-key" not in (proc / "cmdline").read_bytes()
        assert b"test-key" not in (proc / "environ").read_bytes()


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies")
def test_the_delivery_process_runs_below_litellms_priority(
    make_logger: Any, ingest: RecordingServer
) -> None:
    from litellm_openmeter.delivery import NICENESS

    logger = make_logger()
    record(logger, "nice", 2)
    assert logger.flush(20)
    pid = logger.sender.pid
    assert pid is not None
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, ours + NICENESS)
    assert os.sched_getscheduler(pid) == os.SCHED_BATCH
    for thread in os.listdir(f"/proc/{pid}/task"):  # the sender thread inherited both
        assert os.getpriority(os.PRIO_PROCESS, int(thread)) == min(19, ours + NICENESS)
        assert os.sched_getscheduler(int(thread)) == os.SCHED_BATCH
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # LiteLLM's process is untouched


def test_a_killed_delivery_process_is_replaced_and_nothing_is_lost(
    make_logger: Any, ingest: RecordingServer
) -> None:
    logger = make_logger()
    record(logger, "before", 2)
    assert logger.flush(20)
    first = logger.sender.pid
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: not logger.sender.running, what="the delivery process to die")
    record(logger, "after", 3)
    assert logger.flush(20)
    assert logger.sender.pid not in (None, first)
    ids = [event["id"] for event in ingest.accepted_events()]
    assert sorted(ids) == ["after-0", "after-1", "after-2", "before-0", "before-1"]


@pytest.mark.parametrize("via", ["record_call", "hook", "async hook"])
def test_the_delivery_process_stores_the_calls_and_says_so(
    make_logger: Any, ingest: RecordingServer, via: str
) -> None:
    """The writer hands the calls to the child (a hook's call unbuilt: the child
    builds its events), which stores them: the parent counts them as stored only once
    the child said so."""
    logger = make_logger(flush_interval=60)
    logger.sender.ensure_started()
    pid = logger.sender.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        record(logger, "relayed", 5, via)
        wait_for(lambda: logger.writer.pending == 0, what="the writer to hand the calls over")
        assert logger.stats()["enqueued"] == 0 and logger.outbox.stats().queued == 0
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: logger.stats()["enqueued"] == 5, what="the child to store them")
    assert logger.flush(20)
    events = ingest.accepted_events()
    assert sorted(event["id"] for event in events) == [f"relayed-{index}" for index in range(5)]
    assert logger.writer.calls_relayed == (0 if via == "record_call" else 5)
    built_here = logger.record_call(hook_kwargs("relayed-0"), success=True)
    assert all(event == {**built_here[0], "id": event["id"]} for event in events)


@pytest.mark.parametrize("via", ["record_call", "hook", "async hook"])
@pytest.mark.parametrize("then", ["flush", "more calls"])
def test_calls_a_killed_delivery_process_never_stored_are_stored_once(
    make_logger: Any, ingest: RecordingServer, then: str, via: str
) -> None:
    """A child killed after the calls were handed to it, before it read them: the
    parent stores them itself (flush; it builds a hook's events then) or hands them
    to the next child (more calls)."""
    logger = make_logger()
    logger.sender.ensure_started()
    first = logger.sender.pid
    os.kill(first, signal.SIGSTOP)
    record(logger, "unread", 4, via)
    wait_for(lambda: logger.writer.pending == 0, what="the writer to hand the calls over")
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: not logger.sender.running, what="the delivery process to die")
    if then == "more calls":
        record(logger, "later", 2, via)
    assert logger.flush(30)
    ids = sorted(event["id"] for event in ingest.accepted_events())
    expected = [f"unread-{index}" for index in range(4)]
    if then == "more calls":
        expected += ["later-0", "later-1"]
    assert ids == sorted(expected)
    assert logger.stats()["enqueued"] == len(expected)


def test_the_child_confirms_stored_batches_together_and_at_once_when_asked(
    tmp_path: Path, ingest: RecordingServer
) -> None:
    """Each confirmation wakes a thread of LiteLLM's process, so the child confirms
    the batches stored in a while at once: the highest number stored and how many of
    their events were new. Asked (``ack``), it confirms what it stored without delay."""
    from litellm_openmeter.delivery import settings_message, start_child
    from litellm_openmeter.settings import Settings

    settings = Settings.from_env(
        {}, api_key="test-key", endpoint=ingest.url, outbox_path=tmp_path / "outbox.sqlite3"
    )
    child = start_child()
    assert child.stdin is not None and child.stdout is not None
    told: list[dict[str, Any]] = []

    def send(*messages: dict[str, Any]) -> None:
        assert child.stdin is not None
        child.stdin.write(b"".join(json.dumps(message).encode() + b"\n" for message in messages))
        child.stdin.flush()

    pending = b""

    def read_until(done: Any) -> None:
        # From the descriptor: a buffered reader keeps lines where select cannot see them.
        nonlocal pending
        assert child.stdout is not None
        while not done():
            ready, _, _ = select.select([child.stdout.fileno()], [], [], 30)
            assert ready, f"the child said nothing more within 30 s after {told}"
            chunk = os.read(child.stdout.fileno(), 1 << 16)
            assert chunk, f"the child exited after {told}"
            *lines, pending = (pending + chunk).split(b"\n")
            told.extend(json.loads(line) for line in lines)

    try:
        send({"settings": settings_message(settings), "log_level": logging.WARNING})
        read_until(lambda: {"ready": True} in told)
        # Five batches, the last two with an event stored before: idempotent, not new.
        batches = [[[cloud_event(f"batch-{number}", "acme", {"tokens": 1})]] for number in range(4)]
        batches.append(batches[0] + batches[1])
        send(*({"store": number, "entries": entries} for number, entries in enumerate(batches, 1)))
        send({"ack": True})
        read_until(lambda: any(message.get("stored") == 5 for message in told))
        stored = [message for message in told if "stored" in message]
        numbers = [message["stored"] for message in stored]
        assert numbers == sorted(numbers) and len(numbers) < 5, stored
        assert sum(message["added"] for message in stored) == 4
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(30)
        child.stdout.close()


def test_closing_the_logger_ends_its_delivery_process(
    make_logger: Any, ingest: RecordingServer
) -> None:
    logger = make_logger()
    record(logger, "close", 2)
    assert logger.flush(20)
    process = logger.sender._process
    assert process is not None and process.poll() is None
    assert logger.close(5)
    assert process.poll() == 0
    assert not logger.sender.running


def test_the_pause_and_its_log_reach_the_parent(
    make_logger: Any, ingest: RecordingServer, caplog: pytest.LogCaptureFixture
) -> None:
    ingest.respond = lambda request: (403, {}, b"forbidden")
    logger = make_logger()
    with caplog.at_level(logging.ERROR, logger="litellm_openmeter"):
        record(logger, "paused", 1)
        wait_for(lambda: logger.stats()["paused"], what="the pause")
        wait_for(lambda: "delivery paused" in caplog.text, what="the child's log record")
    assert "403" in logger.stats()["paused"]
    ingest.respond = None
    assert logger.flush(20)  # the next try, after retry_max_delay, gets through
    wait_for(lambda: logger.stats()["paused"] is None, what="the resume")


@pytest.mark.parametrize(
    ("python", "says", "calls"),
    [("missing", "cannot start the delivery process", 2), ("exits", "exited at start", 3)],
)
def test_delivery_falls_back_to_a_thread_when_the_child_cannot_run(
    make_logger: Any,
    ingest: RecordingServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    python: str,
    says: str,
    calls: int,
) -> None:
    """No Python at ``sys.executable``, or one that starts but cannot run the child
    (the package not importable there, say): events must not wait for a child that
    never runs."""
    executable = tmp_path / "python"
    if python == "exits":
        executable.write_text("#!/bin/sh\necho 'No module named litellm_openmeter' >&2\nexit 1\n")
        executable.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(executable))
    logger = make_logger()
    with caplog.at_level(logging.WARNING, logger="litellm_openmeter"):
        record(logger, python, calls)
        assert logger.flush(20)
    assert says in caplog.text
    assert "OPENMETER_DELIVERY=thread" in caplog.text
    assert logger.sender.pid is None and sender_threads() == ["litellm-openmeter-sender"]
    assert len(ingest.accepted_events()) == calls
