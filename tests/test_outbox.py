"""The outbox's write path: many calls per transaction, each told what became of its events."""

from __future__ import annotations

import os
from pathlib import Path

from litellm_openmeter.events import CloudEvent
from litellm_openmeter.outbox import Entry, Outbox

from conftest import cloud_event


def event(event_id: str, source: str = "litellm") -> CloudEvent:
    return {**cloud_event(event_id, "cust", {"total_tokens": 1}), "source": source}


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
