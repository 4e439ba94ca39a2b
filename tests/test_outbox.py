"""The outbox's write path: many calls per transaction, each told what became of its events."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from litellm_openmeter.delivery import writer as writer_module
from litellm_openmeter.delivery.outbox import Entry, Outbox
from litellm_openmeter.delivery.writer import Writer
from litellm_openmeter.events import CloudEvent

from conftest import cloud_event, wait_for


def event(event_id: str, source: str = "litellm") -> CloudEvent:
    return cloud_event(event_id, "cust", {"total_tokens": 1}, source=source)


def test_each_entry_counts_only_its_new_events(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3")
    outbox.enqueue([event("queued")])
    outbox.dead_letter([event("dead")], "no_subject", "no subject")
    sent = outbox.enqueue([event("sent")])
    assert sent == 1
    owner = f"{os.getpid()}-s"
    outbox.ack(owner, [item for item in outbox.claim(owner, 10, 60) if item.id == "sent"])
    other = Outbox(tmp_path / "o.sqlite3")  # another process: none of these in memory

    entries = [
        Entry([event("new-1"), event("queued")]),
        Entry([event("dead"), event("sent")]),
        Entry([event("twice"), event("new-2")]),
        Entry([event("twice"), event("new-1", source="elsewhere")]),
    ]
    other.write(entries)

    assert [entry.added for entry in entries] == [1, 0, 2, 1]
    assert other.pending() == 5  # queued, new-1, twice, new-2, new-1 from elsewhere


def test_one_commit_for_many_calls(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3")
    outbox.enqueue([event("e-7")])
    entries = [Entry([event(f"e-{n}")]) for n in range(1207)]
    outbox.write(entries)
    assert [n for n, entry in enumerate(entries) if not entry.added] == [7]
    assert outbox.pending() == 1207


def test_a_commit_of_many_calls_is_a_handful_of_statements(tmp_path: Path) -> None:
    """Each statement lets go of the GIL, which LiteLLM's threads then hold: a statement
    per row would spread the writer's work over every call around it."""
    outbox = Outbox(tmp_path / "o.sqlite3")
    statements: list[str] = []
    outbox._connection().set_trace_callback(statements.append)
    outbox.write([Entry([event(f"s-{n}")]) for n in range(500)])
    # Triggers repeat their statement's text in the trace: count the distinct texts.
    distinct = set(statements)
    assert len(distinct) <= 7, distinct  # begin, byte count, one lookup, 3 inserts, commit
    assert outbox.pending() == 500


def test_entries_that_settle_holds_keep_their_place_among_the_others(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3")
    held = outbox.hold([event("h")], call="call-1")
    entries = [
        Entry([event("a")]),
        Entry([event("h")], settle=held),
        Entry([event("a")]),
        Entry([event("b")]),
    ]
    outbox.write(entries)
    assert [entry.added for entry in entries] == [1, 1, 0, 1]
    assert [entry.settled for entry in entries] == [0, 1, 0, 0]
    assert outbox.pending() == 3
    assert len(outbox.claim(f"{os.getpid()}-x", 10, 60)) == 3  # "h" is no longer held


class CountingOutbox(Outbox):
    """An outbox that records how many entries each transaction stored."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.commits: list[int] = []

    def write(self, entries: Any) -> None:
        self.commits.append(len(entries))
        super().write(entries)


def test_calls_in_quick_succession_share_a_commit(tmp_path: Path) -> None:
    outbox = CountingOutbox(tmp_path / "o.sqlite3")
    stored: list[Entry] = []
    writer = Writer(outbox, stored.append)
    writer.submit(Entry([event("first")]))
    for n in range(50):  # within the pause the first call after a quiet spell waits
        writer.submit(Entry([event(f"next{n}")]))
    wait_for(lambda: len(stored) == 51, what="the pause to end on its own")
    assert outbox.commits[0] > 1, outbox.commits  # the first call did not go alone
    assert len(outbox.commits) <= 5, outbox.commits  # not one commit per call
    assert outbox.stats().queued == 51

    for n in range(10):
        writer.submit(Entry([event(f"last{n}")]))
    future = writer.submit(Entry([event("waited")]), wait=True)  # a proxy hold: no pause
    assert future is not None and future.result(60).added == 1
    assert writer.drain(60) and outbox.stats().queued == 62
    assert writer.stop(60)


def test_a_full_commit_does_not_wait_for_the_pause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calls arriving faster than one commit per pause holds are stored without it."""
    monkeypatch.setattr(writer_module, "COMMIT_INTERVAL", 3600.0)
    outbox = CountingOutbox(tmp_path / "o.sqlite3")
    stored: list[Entry] = []
    writer = Writer(outbox, stored.append)
    writer.submit(Entry([event("first")]))
    assert writer.drain(60) and len(stored) == 1  # drain ends the pause
    count = 2 * writer_module.MAX_ENTRIES_PER_COMMIT + 1
    for n in range(count):  # the last one alone waits out the (hour-long) pause
        writer.submit(Entry([event(f"burst{n}")]))
    wait_for(
        lambda: len(stored) == count,
        what="two full commits without the pause",
    )
    assert outbox.commits[1:] == [writer_module.MAX_ENTRIES_PER_COMMIT] * 2
    assert writer.drain(60) and outbox.stats().queued == count + 1
    assert writer.stop(60)


def test_many_openers_of_a_new_outbox_all_succeed(tmp_path: Path) -> None:
    # Connections that switch a new file to WAL at the same moment can deadlock on
    # the lock upgrade, which SQLite reports as "locked" without waiting; every
    # opener must still get its outbox (a rolling restart opens one file from many
    # processes at once).
    failures: list[str] = []
    for round_ in range(200):
        path = tmp_path / f"o{round_}.sqlite3"
        barrier = threading.Barrier(8)

        def open_it(path: Path = path, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                Outbox(path).close()
            except Exception as exc:
                failures.append(repr(exc))

        threads = [threading.Thread(target=open_it) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []
