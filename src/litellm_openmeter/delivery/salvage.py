"""Damaged outboxes: moved aside, never deleted, and what can still be read recovered.

A disk fault, a bad copy or a stray write can damage an outbox file. A logger that
finds its outbox damaged when it opens it moves the file aside (``<name>.damaged-<UTC
time>``, with its WAL) and starts a fresh outbox, so LiteLLM keeps running and
metering. ``litellm-openmeter outbox salvage FILE`` then copies every event that can
still be read from the damaged file into the current outbox, where they are sent as
usual (an event keeps its ``source`` and ``id``, so one that was already delivered is
dropped by OpenMeter's deduplication), and renames the file ``<name>.salvaged-<time>``.

The damaged file is read from a copy (with its WAL), never changed, twice:

- through SQLite, range by range of rows, halving a range whose read fails: every row
  that its table still reaches, with what the WAL adds and removes;
- page by page (``pages``): every row on an intact table leaf page, even where the
  pages above it are damaged. A row found only this way is taken unless SQLite's read
  shows it delivered (the outbox remembers delivered ids for ten minutes) or moved.

(SQLite's ``.recover`` does much the same, but it needs a build with the
``sqlite_dbpage`` table, which Debian's ``sqlite3`` program lacks.)
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from glob import escape
from pathlib import Path
from typing import Any, BinaryIO

from ..events import CloudEvent
from . import pages
from .outbox import Entry, Outbox, OutboxDamaged

log = logging.getLogger("litellm_openmeter")

DAMAGED = ".damaged-"
SALVAGED = ".salvaged-"
_SIDE_FILES = ("-wal", "-shm", "-journal")
_CHUNK = 500
_MAX_FAILED_PROBES = 100_000
"""Reads that fail before the row-by-row reader gives up on a table."""


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def _rename_with_sides(path: Path, target: Path) -> None:
    os.rename(path, target)
    for suffix in _SIDE_FILES:
        with suppress(FileNotFoundError):
            os.rename(f"{path}{suffix}", f"{target}{suffix}")


def move_aside(path: Path) -> Path | None:
    """Rename a damaged outbox (and its WAL files) to ``<name>.damaged-<UTC time>``
    beside it; returns the new name, or None when the file was gone already (another
    process sharing it moved it first)."""
    stamp = _stamp()
    target = path.with_name(f"{path.name}{DAMAGED}{stamp}")
    number = 1
    while target.exists():
        number += 1
        target = path.with_name(f"{path.name}{DAMAGED}{stamp}-{number}")
    try:
        _rename_with_sides(path, target)
    except FileNotFoundError:
        return None
    return target


def damaged_files(path: Path) -> list[Path]:
    """Damaged outboxes moved aside from ``path`` and not salvaged yet."""
    found = path.parent.glob(f"{escape(path.name)}{DAMAGED}*")
    return sorted(item for item in found if not item.name.endswith(_SIDE_FILES))


def salvage_command(path: Path) -> str:
    """The command that recovers a damaged file's events."""
    return f"litellm-openmeter outbox salvage {path}"


def open_outbox(path: Path, max_bytes: int) -> Outbox:
    """Open the outbox at ``path``; a damaged one is moved aside (and logged at ERROR
    with its new name and what to do) and a fresh one takes its place."""
    try:
        return Outbox(path, max_bytes)
    except OutboxDamaged as exc:
        moved = move_aside(path)
        if moved is not None:
            log.error(
                "litellm-openmeter: %s; it was moved aside to %s (kept, with every event "
                "in it) and a fresh outbox started. Recover its events into the new "
                "outbox: %s",
                exc,
                moved,
                salvage_command(moved),
            )
        return Outbox(path, max_bytes)


@dataclass(frozen=True)
class SalvageReport:
    """What :func:`salvage` read and stored."""

    file: Path
    events_read: int
    events_added: int
    dead_letters_read: int
    dead_letters_added: int
    damaged_pages: int
    """Pages of the file that are no kind of page SQLite writes: their rows are lost."""
    unreadable: int
    """Rows on leaf pages that could not be read, or held no event."""
    found_on_pages_only: int
    """Events and dead letters that only the page-by-page read found."""
    free_pages_known: bool
    """False when the file's free-page list was damaged too: then rows of pages freed
    earlier (events delivered long ago) may be among those found on pages only, and
    are sent again; OpenMeter drops them by (source, id) where deduplication is on."""
    renamed_to: Path | None


@dataclass
class _Found:
    events: dict[tuple[str, str], CloudEvent]
    dead: dict[tuple[str, str], tuple[CloudEvent, str, str]]
    unreadable: int = 0

    def add(self, body: object, dead: tuple[str, str] | None = None) -> None:
        event = body if isinstance(body, dict) else _event(body)
        if event is None:
            self.unreadable += 1
            return
        key = (str(event["source"]), str(event["id"]))
        if dead is None:
            self.events.setdefault(key, event)
        else:
            self.dead.setdefault(key, (event, *dead))


def _event(body: object) -> CloudEvent | None:
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str):
        return None
    try:
        event = json.loads(body)
    except ValueError:
        return None
    if not isinstance(event, dict) or not all(
        isinstance(event.get(key), str) and event[key] for key in ("id", "source", "type")
    ):
        return None
    return event


def salvage(damaged: Path, into: Outbox) -> SalvageReport:
    """Copy every event that can be read from ``damaged`` into ``into``: queued events
    to the queue, dead letters to the dead letters (with their reason). Events already
    there are not stored twice. A file named ``*.damaged-*`` is renamed ``*.salvaged-*``
    afterwards; nothing is deleted."""
    with tempfile.TemporaryDirectory(prefix="litellm-openmeter-salvage-") as folder:
        copy = Path(folder) / "damaged.sqlite3"
        shutil.copyfile(damaged, copy)
        wal = Path(f"{damaged}-wal")
        if wal.exists():
            shutil.copyfile(wal, f"{copy}-wal")
        found = _read_row_by_row(copy)
        known = set(found.events) | set(found.dead) | _delivered(copy)
        with open(copy, "rb") as file, _mapped(file) as data:
            scanned = pages.scan(data)
        before = len(found.events) + len(found.dead)
        for row in scanned.rows:
            _add_page_row(found, row, known)
        on_pages_only = len(found.events) + len(found.dead) - before
    events_added = 0
    events = list(found.events.values())
    for start in range(0, len(events), _CHUNK):
        entry = Entry(events[start : start + _CHUNK])
        into.write([entry])
        if entry.refused:
            raise RuntimeError(entry.refused)
        events_added += entry.added
    dead_added = 0
    groups: dict[tuple[str, str], list[CloudEvent]] = {}
    for event, reason, detail in found.dead.values():
        groups.setdefault((reason, detail), []).append(event)
    for (reason, detail), letters in groups.items():
        dead_added += into.dead_letter(letters, reason, detail)
    renamed = None
    if DAMAGED in damaged.name:
        renamed = damaged.with_name(damaged.name.replace(DAMAGED, SALVAGED, 1))
        _rename_with_sides(damaged, renamed)
    return SalvageReport(
        file=damaged,
        events_read=len(found.events),
        events_added=events_added,
        dead_letters_read=len(found.dead),
        dead_letters_added=dead_added,
        damaged_pages=scanned.damaged_pages,
        unreadable=scanned.skipped_cells + found.unreadable,
        found_on_pages_only=on_pages_only,
        free_pages_known=scanned.free_pages_known,
        renamed_to=renamed,
    )


@contextmanager
def _mapped(file: BinaryIO) -> Iterator[pages.Data]:
    size = os.fstat(file.fileno()).st_size
    if size == 0:
        yield b""
        return
    with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        yield data


def _add_page_row(found: _Found, row: list[pages.Value], known: set[tuple[str, str]]) -> None:
    """A row of an ``events`` leaf page has nine fields with the body fourth, one of a
    ``dead_letters`` page eight with the body third and the reason and detail after
    the size; rows of other tables are neither."""
    if len(row) == 9 and isinstance(row[3], str):
        event, dead = _event(row[3]), None
    elif len(row) == 8 and isinstance(row[2], str) and isinstance(row[4], str):
        event, dead = _event(row[2]), (row[4], str(row[5] or ""))
    else:
        return
    if event is None:
        found.unreadable += 1
        return
    if (str(event["source"]), str(event["id"])) not in known:
        found.add(event, dead)


def _delivered(copy: Path) -> set[tuple[str, str]]:
    """The delivered ids SQLite can still read (best effort)."""
    conn = sqlite3.connect(copy)
    try:
        return {
            (str(row[0]), str(row[1])) for row in conn.execute("SELECT source, id FROM delivered")
        }
    except sqlite3.Error:
        return set()
    finally:
        conn.close()


def _read_row_by_row(copy: Path) -> _Found:
    """Every row the tables still reach: ranges of rowids, halved around each read
    that fails, down to single rows."""
    found = _Found({}, {})
    conn = sqlite3.connect(copy)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error:  # its first page is gone: no table can be found
        conn.close()
        return found
    try:
        for table, columns in (("events", "body"), ("dead_letters", "body, reason, detail")):
            for row in _readable_rows(conn, table, columns):
                if table == "events":
                    found.add(row[0])
                else:
                    found.add(row[0], (str(row[1] or "salvaged"), str(row[2] or "")))
    finally:
        conn.close()
    return found


def _highest_rowid(conn: sqlite3.Connection, table: str) -> int | None:
    for sql in (
        f"SELECT max(rowid) FROM {table}",
        f"SELECT seq FROM sqlite_sequence WHERE name = '{table}'",
    ):
        try:
            row = conn.execute(sql).fetchone()
        except sqlite3.Error:
            continue
        if row and isinstance(row[0], int):
            return row[0]
    return None


def _readable_rows(conn: sqlite3.Connection, table: str, columns: str) -> Iterator[tuple[Any, ...]]:
    highest = _highest_rowid(conn, table)
    if highest is None:  # both unreadable: the failed probes bound the search
        highest = 1 << 40
    sql = f"SELECT {columns} FROM {table} WHERE rowid BETWEEN ? AND ?"
    ranges = [(1, highest)]
    failures = 0
    while ranges and failures < _MAX_FAILED_PROBES:
        low, high = ranges.pop()
        try:
            rows = conn.execute(sql, (low, high)).fetchall()
        except sqlite3.Error:  # the page-by-page read counts what is lost
            failures += 1
            if low < high:
                middle = (low + high) // 2
                ranges.extend(((middle + 1, high), (low, middle)))
            continue
        yield from rows
