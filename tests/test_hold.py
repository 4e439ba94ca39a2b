"""Held events: stored before a proxy answers, settled by the success hook, dropped on
failure, and sent as they are when their process dies or the hold runs out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from litellm_openmeter.delivery.outbox import Claimed, Outbox, OutboxFull, encode
from litellm_openmeter.events import CloudEvent

from conftest import cloud_event, wait_for


def event(event_id: str, tokens: int = 1, subject: str = "cust") -> CloudEvent:
    return cloud_event(event_id, subject, {"total_tokens": tokens})


def bodies(outbox: Outbox) -> dict[str, dict[str, Any]]:
    """Every claimable event, by id (claims them)."""
    return {item.id: json.loads(item.body) for item in outbox.claim(f"{os.getpid()}-s", 100, 60)}


def test_a_held_event_is_not_sent_until_settled(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3")
    held = outbox.hold([event("c1", tokens=5)], "c1")
    assert outbox.claim(f"{os.getpid()}-s", 10, 60) == []
    assert outbox.stats().queued == 1 and not outbox.is_empty()

    assert outbox.enqueue([event("c1", tokens=7)], settle=held) == 1
    assert {k: v["data"] for k, v in bodies(outbox).items()} == {"c1": {"total_tokens": 7}}
    stats = outbox.stats()
    assert stats.queued == 1 and stats.outbox_bytes == len(encode(event("c1", tokens=7)))


def test_settling_replaces_every_held_event_of_the_call(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3")
    held = outbox.hold([event("c1-input"), event("c1-output"), event("c1-cache_read")], "c1")
    outbox.enqueue([event("c1-input", 9), event("c1-output", 9)], settle=held)
    assert sorted(bodies(outbox)) == ["c1-input", "c1-output"]


def test_a_dropped_hold_bills_nothing(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3")
    held = outbox.hold([event("c1")], "c1")
    assert outbox.drop(held) == 1
    assert outbox.is_empty() and outbox.stats().outbox_bytes == 0


def test_an_expired_hold_is_sent_as_it_is_and_the_late_event_is_not(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3")
    held = outbox.hold([event("c1", tokens=5)], "c1", seconds=0.2)
    claimed: list[Claimed] = []

    def expired() -> bool:
        claimed.extend(outbox.claim("1-s", 10, 60))
        return bool(claimed)

    wait_for(expired, what="expiry")
    assert [json.loads(item.body)["data"] for item in claimed] == [{"total_tokens": 5}]
    # The row now belongs to the sender: the late final event changes nothing.
    assert outbox.enqueue([event("c1", tokens=7)], settle=held) == 0
    outbox.ack("1-s", claimed)
    assert outbox.enqueue([event("c1", tokens=7)]) == 0  # delivered: a duplicate
    assert outbox.is_empty()


def test_a_full_outbox_keeps_the_held_events(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3", max_bytes=300)
    held = outbox.hold([event("c1")], "c1")
    with pytest.raises(OutboxFull):
        outbox.enqueue([event("c1", tokens=10**200)], settle=held)
    assert outbox.stats().queued == 1 and outbox.stats().refused == 1


HOLDER = """
import sys, time
from litellm_openmeter.delivery.outbox import Outbox
Outbox(sys.argv[1]).hold(
    [{"specversion": "1.0", "type": "t", "id": f"h{n}", "source": "test", "subject": "u",
      "data": {}} for n in range(3)],
    "call-1",
)
print("HELD", flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_the_holds_of_a_killed_process_are_sent(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "HELD"
        outbox = Outbox(path)
        assert outbox.claim(f"{os.getpid()}-s", 10, 60) == []  # its holder is alive
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
        # At once, not after the hold (five minutes) runs out.
        claimed = outbox.claim(f"{os.getpid()}-s", 10, 60)
        assert sorted(item.id for item in claimed) == ["h0", "h1", "h2"]
    finally:
        holder.kill()
        holder.wait()


def test_the_writer_bounds_what_waits_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3
    import threading

    from litellm_openmeter.delivery import writer as writer_module
    from litellm_openmeter.delivery.outbox import Entry
    from litellm_openmeter.delivery.writer import Writer

    monkeypatch.setattr(writer_module, "MAX_PENDING", 5)
    outbox = Outbox(tmp_path / "o.sqlite3")
    stored: list[Entry] = []
    writer = Writer(outbox, stored.append)
    blocker = sqlite3.connect(tmp_path / "o.sqlite3", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the disk is stuck: the writer cannot commit
    submitted: list[int] = []

    def produce() -> None:
        for n in range(20):
            writer.submit(Entry([event(f"w{n}")]))
            submitted.append(n)

    producer = threading.Thread(target=produce)
    producer.start()
    wait_for(lambda: len(submitted) == 5, what="the producer to fill the queue")
    assert not wait_for_quietly(lambda: len(submitted) > 5, seconds=0.5)
    blocker.execute("COMMIT")
    producer.join(60)
    assert writer.drain(60)
    assert len(submitted) == 20 and sum(entry.added for entry in stored) == 20
    assert outbox.stats().queued == 20


def wait_for_quietly(condition: Any, seconds: float) -> bool:
    """Whether ``condition`` becomes true within ``seconds`` (False is the expected
    outcome here: the producer must stay blocked)."""
    try:
        wait_for(condition, timeout=seconds, what="")
    except AssertionError:
        return False
    return True
