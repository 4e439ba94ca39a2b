"""The local server's SQLite store.

Events are kept whole (deduplicated by source and id) and, at ingest, the values that
meters read are extracted once per event into a *facts* table per event type: one
column per JSONPath any meter of that type uses. Hourly and daily *rollups* per event type
(sums and counts per subject and group values) answer most
queries without touching the facts, so queries never parse JSON and stay fast over
millions of events.

Rollups are written at most once a second (and before every query), from deltas
merged in memory: live traffic adds to the same few rollup rows, and updating them
per request would rewrite the same pages for every batch. ``rollup_marks`` records
the last facts row included, so rows whose deltas were still in memory when the
process died are rolled up again from the facts when the store opens.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..meters import (
    MISSING,
    Meter,
    MeterError,
    as_number,
    compile_path,
    group_text,
    meter_from_json,
    read_path,
    unique_text,
    value_error,
)
from ..wal import enter_wal
from .filters import LIKE_FUNCTION, Filter, filter_sql, like
from .ingest import IngestError, ValidEvent, format_rfc3339, parse_rfc3339, validate_event
from .subjects import SubjectUpsert, subject_json
from .windows import (
    MAX_WINDOWS,
    Merger,
    TooManyWindows,
    offset_points,
    value_of,
    window,
    window_key_sql,
    zone,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    rowid INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    id TEXT NOT NULL,
    type TEXT NOT NULL,
    subject TEXT NOT NULL,
    time INTEGER NOT NULL,
    ingested_at REAL NOT NULL,
    body TEXT NOT NULL,
    validation_error TEXT,
    UNIQUE (source, id)
);
-- The newest events first (GET /api/v1/events) without reading them all.
CREATE INDEX IF NOT EXISTS events_time ON events (time);
CREATE TABLE IF NOT EXISTS meters (
    slug TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deleted_meters (
    id TEXT PRIMARY KEY,
    slug TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    deleted_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS subjects (
    key TEXT PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS layouts (
    event_type TEXT PRIMARY KEY,
    tag TEXT NOT NULL,
    columns TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rollup_marks (
    tag TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
"""
ROLLUP_INTERVAL = 1.0
"""Seconds rollup deltas may wait in memory (queries write them first)."""

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_NO_GROUP = "\x00"  # NULL stand-in in rollup keys (NULLs never conflict in SQLite keys)
_HOUR = 3600
_DAY = 86400
_ENCODE = orjson.dumps


def new_ulid(now: float | None = None) -> str:
    """A ULID: 48 bits of milliseconds and 80 random bits, Crockford base32."""
    number = (int((time.time() if now is None else now) * 1000) << 80) | secrets.randbits(80)
    return "".join(_CROCKFORD[(number >> shift) & 31] for shift in range(125, -1, -5))


class MeterExists(ValueError):
    """A meter with that slug already exists."""


class QueryCancelled(Exception):
    """A query stopped because its client went away."""


PROGRESS_STEPS = 10_000
"""SQLite steps between two looks at whether a query's client went away."""


@dataclass
class StoredMeter:
    """A meter as the server keeps it."""

    meter: Meter
    id: str
    created_at: float
    updated_at: float
    deleted_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``Meter`` schema of OpenMeter's API."""
        body = self.meter.to_create()
        body.setdefault("name", self.meter.slug)
        body["id"] = self.id
        body["createdAt"] = format_rfc3339(self.created_at)
        body["updatedAt"] = format_rfc3339(self.updated_at)
        if self.deleted_at is not None:
            body["deletedAt"] = format_rfc3339(self.deleted_at)
        body.setdefault("groupBy", {})
        return body


@dataclass
class Query:
    """A meter query, validated."""

    start: int | None = None
    end: int | None = None
    window_size: str | None = None
    time_zone: str = "UTC"
    subjects: list[str] = field(default_factory=list)
    group_by: list[str] = field(default_factory=list)
    filter_group_by: dict[str, list[str]] = field(default_factory=dict)
    advanced_filters: dict[str, Filter] = field(default_factory=dict)
    """``advancedMeterGroupByFilters``, checked (see ``filters.check_filters``)."""


@dataclass(frozen=True)
class Column:
    """One extracted value: a JSONPath read as a group (g), number (n) or string (s)."""

    role: str
    path: str
    name: str


def _wanted(meters: Iterable[Meter]) -> list[tuple[str, str]]:
    """The (role, path) columns a set of meters reads."""
    keys: list[tuple[str, str]] = []
    for meter in meters:
        keys += [("g", path) for path in meter.group_by.values()]
        if meter.value_property is not None:
            role = "s" if meter.aggregation == "UNIQUE_COUNT" else "n"
            keys.append((role, meter.value_property))
    return list(dict.fromkeys(keys))


def _merge(
    merged: dict[tuple[Any, ...], list[Any]], rows: Iterable[tuple[Any, ...]], key_width: int
) -> None:
    """Add rollup rows (key columns, then rows, then sum and count pairs) into ``merged``."""
    for row in rows:
        key = row[:key_width]
        into = merged.get(key)
        if into is None:
            merged[key] = list(row)
            continue
        for at in range(key_width, len(row)):
            into[at] += row[at]


class Layout:
    """The facts and rollup tables of one event type."""

    def __init__(self, event_type: str, tag: str, columns: list[Column]) -> None:
        self.event_type = event_type
        self.tag = tag
        self.columns = columns
        self.facts = f"facts_{tag}"
        # Rollups by granularity in seconds: hours, and days in UTC.
        self.rollups = {_HOUR: f"rollup_{tag}", _DAY: f"rollup_{tag}_day"}
        # The same with every subject together (subject ''), and with every group value
        # together (NULL's stand-in): what a query without subjects, or with subjects
        # and no group values, reads, far fewer rows than one per subject and group.
        self.together = {_HOUR: f"rollup_{tag}_all", _DAY: f"rollup_{tag}_all_day"}
        self.per_subject = {_HOUR: f"rollup_{tag}_subj", _DAY: f"rollup_{tag}_subj_day"}
        self.summaries = [*self.together.values(), *self.per_subject.values()]
        self.by_key = {(c.role, c.path): c for c in columns}
        self.groups = [c for c in columns if c.role == "g"]
        self.numbers = [c for c in columns if c.role == "n"]
        # Unique paths read once per event, then converted per role.
        self.paths = sorted({c.path for c in columns})
        self.path_steps = [compile_path(path) for path in self.paths]
        self.meters: list[Meter] = []
        self.pending: dict[tuple[Any, ...], list[Any]] = {}
        """Hourly rollup deltas not written yet, by rollup key."""
        self.pending_seq = 0
        """The last facts row whose delta is in ``pending``."""

    def column(self, role: str, path: str) -> Column:
        return self.by_key[(role, path)]

    def facts_sql(self) -> str:
        names = "".join(f", {c.name}" for c in self.columns)
        marks = ", ?" * len(self.columns)
        return f"INSERT INTO {self.facts} (seq, time, subject{names}) VALUES (?, ?, ?{marks})"

    def rollup_table_sql(self, table: str) -> str:
        """``CREATE TABLE`` of one of the rollups."""
        groups = "".join(f", {c.name} TEXT NOT NULL" for c in self.groups)
        stats = "".join(
            f", sum_{c.name} REAL NOT NULL, cnt_{c.name} INTEGER NOT NULL" for c in self.numbers
        )
        key = ", ".join(["hour", "subject", *[c.name for c in self.groups]])
        return (
            f"CREATE TABLE {table} (hour INTEGER NOT NULL, subject TEXT NOT NULL"
            f"{groups}, rows INTEGER NOT NULL{stats}, PRIMARY KEY ({key})) WITHOUT ROWID"
        )

    def rollup_sql(self, table: str) -> str:
        groups = [c.name for c in self.groups]
        stats = [f"{kind}_{c.name}" for c in self.numbers for kind in ("sum", "cnt")]
        names = ", ".join(["hour", "subject", *groups, "rows", *stats])
        marks = ", ".join("?" * (3 + len(groups) + len(stats)))
        updates = ["rows = rows + excluded.rows"]
        for c in self.numbers:
            updates.append(f"sum_{c.name} = sum_{c.name} + excluded.sum_{c.name}")
            updates.append(f"cnt_{c.name} = cnt_{c.name} + excluded.cnt_{c.name}")
        key = ", ".join(["hour", "subject", *groups])
        return (
            f"INSERT INTO {table} ({names}) VALUES ({marks}) "
            f"ON CONFLICT ({key}) DO UPDATE SET {', '.join(updates)}"
        )

    def plan(self) -> None:
        """Precompute what :meth:`extract` does per column (it runs once per event)."""
        index = {path: n for n, path in enumerate(self.paths)}
        # group_text, as_number and unique_text all read MISSING as None.
        convert = {"g": group_text, "n": as_number, "s": unique_text}
        self._plan = [(index[c.path], convert[c.role]) for c in self.columns]
        flat = [
            steps[0] for steps in self.path_steps if len(steps) == 1 and isinstance(steps[0], str)
        ]
        self._flat = flat if len(flat) == len(self.path_steps) else None
        self._group_at = [n for n, c in enumerate(self.columns) if c.role == "g"]
        self._number_at = [n for n, c in enumerate(self.columns) if c.role == "n"]
        self._checks = []
        for meter in self.meters:
            if meter.value_property is not None:
                role = "s" if meter.aggregation == "UNIQUE_COUNT" else "n"
                column = self.columns.index(self.column(role, meter.value_property))
                self._checks.append((meter, column, index[meter.value_property]))

    def add_pending(self, rows: Iterable[tuple[Any, ...]], last_seq: int) -> None:
        """Merge hourly rollup rows (from :meth:`rollup_row`) into the unwritten deltas."""
        _merge(self.pending, rows, 2 + len(self._group_at))
        self.pending_seq = max(self.pending_seq, last_seq)

    def write_pending(self, conn: sqlite3.Connection) -> None:
        """Write the deltas to every rollup table and move the mark (in the caller's
        transaction)."""
        hourly = [tuple(row) for row in self.pending.values()]
        width = 2 + len(self._group_at)
        nothing = (_NO_GROUP,) * len(self._group_at)

        def every_subject(row: tuple[Any, ...]) -> tuple[Any, ...]:
            return (row[0], "", *row[2:])

        def every_group(row: tuple[Any, ...]) -> tuple[Any, ...]:
            return (*row[:2], *nothing, *row[width:])

        for granularity, table in self.rollups.items():
            if granularity != _HOUR:
                merged: dict[tuple[Any, ...], list[Any]] = {}
                coarser = ((row[0] // granularity * granularity, *row[1:]) for row in hourly)
                _merge(merged, coarser, width)
                rows = [tuple(row) for row in merged.values()]
            else:
                rows = hourly
            conn.executemany(self.rollup_sql(table), rows)
            for summary, view in (
                (self.together[granularity], every_subject),
                (self.per_subject[granularity], every_group),
            ):
                merged = {}
                _merge(merged, map(view, rows), width)
                conn.executemany(self.rollup_sql(summary), [tuple(r) for r in merged.values()])
        conn.execute(
            "INSERT INTO rollup_marks (tag, seq) VALUES (?, ?) "
            "ON CONFLICT (tag) DO UPDATE SET seq = MAX(seq, excluded.seq)",
            (self.tag, self.pending_seq),
        )
        self.pending = {}

    def rollup_row(self, moment: int, subject: str, values: Sequence[Any]) -> tuple[Any, ...]:
        """The hourly rollup row of one event, from its facts values."""
        roll: list[Any] = [moment // _HOUR * _HOUR, subject]
        roll += [_NO_GROUP if values[at] is None else values[at] for at in self._group_at]
        roll.append(1)
        for at in self._number_at:
            value = values[at]
            roll += (value or 0.0, 0 if value is None else 1)
        return tuple(roll)

    def extract(
        self, data: object, moment: int, subject: str, seq: int
    ) -> tuple[tuple[Any, ...], tuple[Any, ...], str | None]:
        """The facts row, the rollup row and the validation errors of one event."""
        if type(data) is dict and self._flat is not None:
            get = data.get  # every path is a top-level key: the common case, fast
            raw = [get(key, MISSING) for key in self._flat]
        else:
            raw = [read_path(data, steps) for steps in self.path_steps]
        values = [convert(raw[at]) for at, convert in self._plan]
        errors = [
            value_error(meter, raw[path_at])
            for meter, column, path_at in self._checks
            if values[column] is None
        ]
        return (
            (seq, moment, subject, *values),
            self.rollup_row(moment, subject, values),
            "; ".join(e for e in errors if e) or None,
        )


class Store:
    """Events and meters in one SQLite file (WAL). Writes from one thread at a time."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._writer = self._connect()
        self._writer.executescript(_SCHEMA)
        self.received = 0
        """Events received by this process, duplicates included."""
        self.duplicates = 0
        """Events received by this process that were already stored (dropped)."""
        self.meters: dict[str, StoredMeter] = {}
        for slug, meter_id, body, created, updated in self._writer.execute(
            "SELECT slug, id, body, created_at, updated_at FROM meters"
        ):
            self.meters[slug] = StoredMeter(
                meter_from_json(json.loads(body)), meter_id, created, updated
            )
        self.layouts: dict[str, Layout] = {}
        for event_type, tag, columns in self._writer.execute(
            "SELECT event_type, tag, columns FROM layouts"
        ):
            self.layouts[event_type] = Layout(
                event_type, tag, [Column(**c) for c in json.loads(columns)]
            )
        self._rolled_at = time.monotonic()
        self._attach_meters()
        self._repair()
        self._catch_up()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        enter_wal(conn)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA cache_size=-131072")
        # A checkpoint (with its fsync) every 40 MB of WAL instead of every 4 MB: under
        # steady ingest a tenth of the fsyncs, for a WAL file of up to about 40 MB.
        conn.execute("PRAGMA wal_autocheckpoint=10000")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only=1")
            conn.create_function(LIKE_FUNCTION, 3, like, deterministic=True)
            self._local.conn = conn
        return conn

    def _repair(self) -> None:
        """Rebuild the tables of any layout whose tables are missing (older files)."""
        tables = {
            row[0]
            for row in self._writer.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        for event_type, layout in list(self.layouts.items()):
            if {layout.facts, *layout.rollups.values()} <= tables:
                if not set(layout.summaries) <= tables:
                    self._add_summaries(layout)
                continue
            with self._write_lock:
                self._writer.execute("BEGIN IMMEDIATE")
                for table in (layout.facts, *layout.rollups.values(), *layout.summaries):
                    self._writer.execute(f"DROP TABLE IF EXISTS {table}")
                del self.layouts[event_type]
                self._relayout(event_type)
                self._writer.execute("COMMIT")
        self._attach_meters()

    def _add_summaries(self, layout: Layout) -> None:
        """Make the summary rollups (every subject together, every group together) of a
        file from before them, from its full rollups, in one transaction."""
        groups = [c.name for c in layout.groups]
        sums = ", ".join(
            f"SUM({name})"
            for name in ["rows", *(f"{k}_{c.name}" for c in layout.numbers for k in ("sum", "cnt"))]
        )
        with self._write_lock:
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                for granularity, full in layout.rollups.items():
                    for table, keys, values in (
                        (layout.together[granularity], ["hour", *groups], ["hour", "''", *groups]),
                        (
                            layout.per_subject[granularity],
                            ["hour", "subject"],
                            ["hour", "subject", *("char(0)" for _ in groups)],
                        ),
                    ):
                        self._writer.execute(f"DROP TABLE IF EXISTS {table}")
                        self._writer.execute(layout.rollup_table_sql(table))
                        self._writer.execute(
                            f"INSERT INTO {table} SELECT {', '.join(values)}, {sums} "
                            f"FROM {full} GROUP BY {', '.join(keys)}"
                        )
                self._writer.execute("COMMIT")
            except BaseException:
                self._writer.execute("ROLLBACK")
                raise

    def _catch_up(self) -> None:
        """Roll up the facts rows whose deltas had not been written (the process ended
        between a batch and the next rollup write)."""
        with self._write_lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                for layout in self.layouts.values():
                    row = conn.execute(
                        "SELECT seq FROM rollup_marks WHERE tag = ?", (layout.tag,)
                    ).fetchone()
                    if row is None:  # a file from before marks: its rollups are complete
                        last = conn.execute(f"SELECT MAX(seq) FROM {layout.facts}").fetchone()
                        layout.pending_seq = last[0] or 0
                        layout.write_pending(conn)
                        continue
                    last_seq = row[0]
                    rolls = []
                    for seq, moment, subject, *values in conn.execute(
                        f"SELECT * FROM {layout.facts} WHERE seq > ? ORDER BY seq", (last_seq,)
                    ):
                        rolls.append(layout.rollup_row(moment, subject, values))
                        last_seq = seq
                    if rolls:
                        layout.add_pending(rolls, last_seq)
                        layout.write_pending(conn)
            finally:
                conn.execute("COMMIT")

    def flush_rollups(self) -> None:
        """Write the rollup deltas waiting in memory (queries call this first)."""
        with self._write_lock:
            if not any(layout.pending for layout in self.layouts.values()):
                return
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                self._write_rollups()
            finally:
                self._writer.execute("COMMIT")

    def _write_rollups(self) -> None:
        for layout in self.layouts.values():
            if layout.pending:
                layout.write_pending(self._writer)
        self._rolled_at = time.monotonic()

    def _attach_meters(self) -> None:
        for layout in self.layouts.values():
            layout.meters = [
                m.meter for m in self.meters.values() if m.meter.event_type == layout.event_type
            ]
            layout.plan()

    def close(self) -> None:
        """Write the rollup deltas and close the writer connection."""
        self.flush_rollups()
        self._writer.close()

    # -- meters ------------------------------------------------------------------------

    def create_meter(self, meter: Meter, *, replace: bool = False) -> StoredMeter:
        """Add a meter; its values are filled from the events already stored."""
        if meter.event_from is not None:
            try:
                parse_rfc3339(meter.event_from)
            except ValueError as exc:
                raise MeterError(
                    f"eventFrom: {exc}; use an RFC 3339 date-time such as 2024-01-01T00:00:00Z"
                ) from None
        with self._write_lock:
            existing = self.meters.get(meter.slug)
            if existing is not None:
                if existing.meter == meter:
                    return existing
                if not replace:
                    raise MeterExists(f"meter {meter.slug!r} already exists")
            now = time.time()
            stored = StoredMeter(
                meter,
                existing.id if existing else new_ulid(now),
                existing.created_at if existing else now,
                now,
            )
            self._change_meter(meter.slug, stored, meter.event_type)
            return stored

    def deleted_meters(self) -> list[StoredMeter]:
        """The meters deleted so far, with their deletion time."""
        rows = self._reader().execute(
            "SELECT slug, id, body, created_at, updated_at, deleted_at FROM deleted_meters"
        )
        return [
            StoredMeter(meter_from_json(json.loads(body)), meter_id, created, updated, deleted)
            for slug, meter_id, body, created, updated, deleted in rows
        ]

    def delete_meter(self, slug: str) -> bool:
        """Remove a meter (the events stay, for the other meters and later ones);
        False when there is none by that slug."""
        with self._write_lock:
            existing = self.meters.get(slug)
            if existing is None:
                return False
            self._change_meter(slug, None, existing.meter.event_type)
            return True

    def _change_meter(self, slug: str, stored: StoredMeter | None, event_type: str) -> None:
        """Write a meter (or with None, delete it) and lay out its event type's tables
        again, in one transaction; on failure nothing changes. Hold the write lock."""
        existing = self.meters.get(slug)
        conn = self._writer
        conn.execute("BEGIN IMMEDIATE")
        try:
            if stored is None:
                # Kept, as OpenMeter keeps them: listed with includeDeleted, and found
                # by id, with deletedAt.
                conn.execute(
                    "INSERT OR REPLACE INTO deleted_meters "
                    "SELECT id, slug, body, created_at, updated_at, ? FROM meters WHERE slug = ?",
                    (time.time(), slug),
                )
                conn.execute("DELETE FROM meters WHERE slug = ?", (slug,))
                self.meters.pop(slug, None)
            else:
                conn.execute(
                    "INSERT OR REPLACE INTO meters (slug, id, body, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (
                        slug,
                        stored.id,
                        json.dumps(stored.meter.to_create()),
                        stored.created_at,
                        stored.updated_at,
                    ),
                )
                self.meters[slug] = stored
            self._relayout(event_type)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            self.meters.pop(slug, None)
            if existing is not None:
                self.meters[slug] = existing
            raise
        self._attach_meters()

    def _relayout(self, event_type: str) -> None:
        """Make the facts and rollup tables of a type fit its meters, and refill them."""
        meters = [m.meter for m in self.meters.values() if m.meter.event_type == event_type]
        current = self.layouts.get(event_type)
        wanted = _wanted(meters)
        if current is not None and set(wanted) <= set(current.by_key):
            current.meters = meters
            current.plan()
            self._refresh_errors(current)
            return
        columns = list(current.columns) if current else []
        have = {(c.role, c.path) for c in columns}
        for role, path in wanted:
            if (role, path) not in have:
                columns.append(Column(role, path, f"{role}{len(columns)}"))
        tag = new_ulid().lower()
        layout = Layout(event_type, tag, columns)
        layout.meters = meters
        layout.plan()
        conn = self._writer
        types = {"g": "TEXT", "n": "REAL", "s": "TEXT"}
        defs = "".join(f", {c.name} {types[c.role]}" for c in columns)
        conn.execute(
            f"CREATE TABLE {layout.facts} (seq INTEGER PRIMARY KEY, "
            f"time INTEGER NOT NULL, subject TEXT NOT NULL{defs})"
        )
        conn.execute(f"CREATE INDEX {layout.facts}_time ON {layout.facts} (time)")
        for table in (*layout.rollups.values(), *layout.summaries):
            conn.execute(layout.rollup_table_sql(table))
        if current is not None:
            for table in (current.facts, *current.rollups.values(), *current.summaries):
                conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.execute("DELETE FROM rollup_marks WHERE tag = ?", (current.tag,))
        conn.execute(
            "INSERT OR REPLACE INTO layouts (event_type, tag, columns) VALUES (?, ?, ?)",
            (event_type, tag, json.dumps([c.__dict__ for c in columns])),
        )
        self.layouts[event_type] = layout
        self._refill(layout)

    def _refill(self, layout: Layout) -> None:
        conn = self._writer
        facts, rollups, errors = [], [], []
        rows = conn.execute(
            "SELECT rowid, subject, time, body FROM events WHERE type = ? ORDER BY rowid",
            (layout.event_type,),
        )
        for rowid, subject, moment, body in rows:
            fact, rollup, error = layout.extract(
                json.loads(body).get("data"), moment, subject, rowid
            )
            facts.append(fact)
            rollups.append(rollup)
            errors.append((error, rowid))
        conn.executemany(layout.facts_sql(), facts)
        layout.pending = {}
        layout.add_pending(rollups, facts[-1][0] if facts else 0)
        layout.write_pending(conn)
        conn.executemany("UPDATE events SET validation_error = ? WHERE rowid = ?", errors)

    def _refresh_errors(self, layout: Layout) -> None:
        conn = self._writer
        updates = []
        for rowid, body in conn.execute(
            "SELECT rowid, body FROM events WHERE type = ?", (layout.event_type,)
        ):
            _, _, error = layout.extract(json.loads(body).get("data"), 0, "", rowid)
            updates.append((error, rowid))
        conn.executemany("UPDATE events SET validation_error = ? WHERE rowid = ?", updates)

    # -- events ------------------------------------------------------------------------

    def ingest(self, events: Sequence[Any], now: float | None = None) -> int:
        """Store events in order; returns how many were new.

        Like OpenMeter's v1 endpoint a batch is not a transaction: the events before
        the first invalid one are kept, and the invalid one raises
        :class:`IngestError` naming its position.
        """
        moment = time.time() if now is None else now
        valid = []
        failure: IngestError | None = None
        for position, raw in enumerate(events):
            try:
                valid.append(validate_event(raw, moment))
            except IngestError as exc:
                where = f"event {position}" if len(events) > 1 else "event"
                event_id = raw.get("id") if isinstance(raw, dict) else None
                label = f"{where} (id {event_id!r})" if event_id else where
                failure = IngestError(f"{label}: {exc.detail}")
                break
        added = 0
        with self._write_lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                facts: dict[str, list[tuple[Any, ...]]] = {}
                rollups: dict[str, list[tuple[Any, ...]]] = {}
                errors = []
                for rowid, item in self._insert_events(conn, valid, moment):
                    added += 1
                    body = item.body
                    layout = self.layouts.get(body["type"])
                    if layout is None:
                        continue
                    fact, rollup, error = layout.extract(
                        body.get("data"), item.time, body["subject"], rowid
                    )
                    facts.setdefault(layout.event_type, []).append(fact)
                    rollups.setdefault(layout.event_type, []).append(rollup)
                    if error:
                        errors.append((error, rowid))
                for event_type, rows in facts.items():
                    layout = self.layouts[event_type]
                    conn.executemany(layout.facts_sql(), rows)
                    layout.add_pending(rollups[event_type], rows[-1][0])
                if time.monotonic() - self._rolled_at >= ROLLUP_INTERVAL:
                    self._write_rollups()
                if errors:
                    conn.executemany(
                        "UPDATE events SET validation_error = ? WHERE rowid = ?", errors
                    )
            finally:
                conn.execute("COMMIT")
        if failure is not None:
            raise failure
        return added

    def _insert_events(
        self, conn: sqlite3.Connection, valid: list[ValidEvent], moment: float
    ) -> list[tuple[int, ValidEvent]]:
        """Insert a batch in one statement; returns the new rows (duplicates left out).

        The rows get explicit rowids past the largest one (what SQLite would give
        them), so the new ones are known without a statement per event.
        """
        if not valid:
            return []
        base = conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM events").fetchone()[0]
        rows = [
            (
                base + n,
                item.body["source"],
                item.body["id"],
                item.body["type"],
                item.body["subject"],
                item.time,
                moment,
                _ENCODE(item.body),
            )
            for n, item in enumerate(valid, start=1)
        ]
        before = conn.total_changes
        conn.executemany(
            "INSERT INTO events (rowid, source, id, type, subject, time, ingested_at, body) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (source, id) DO NOTHING",
            rows,
        )
        inserted = conn.total_changes - before
        self.received += len(rows)
        self.duplicates += len(rows) - inserted
        numbered = [(row[0], item) for row, item in zip(rows, valid, strict=True)]
        if inserted == len(rows):
            return numbered
        stored = {
            row[0] for row in conn.execute("SELECT rowid FROM events WHERE rowid > ?", (base,))
        }
        return [(rowid, item) for rowid, item in numbered if rowid in stored]

    def list_events(
        self,
        *,
        limit: int = 100,
        subject: str | None = None,
        event_id: str | None = None,
        start: int | None = None,
        end: int | None = None,
        ingested_from: float | None = None,
        ingested_to: float | None = None,
    ) -> list[dict[str, Any]]:
        """Recent events, newest first, as OpenMeter's ``IngestedEvent``."""
        clauses: list[str] = []
        params: list[Any] = []
        if subject:
            clauses.append("instr(subject, ?) > 0")
            params.append(subject)
        if event_id:
            clauses.append("instr(id, ?) > 0")
            params.append(event_id)
        for column, operator, value in (
            ("time", ">=", start),
            ("time", "<=", end),
            ("ingested_at", ">=", ingested_from),
            ("ingested_at", "<=", ingested_to),
        ):
            if value is not None:
                clauses.append(f"{column} {operator} ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = (
            self._reader()
            .execute(
                f"SELECT body, ingested_at, validation_error FROM events {where} "
                "ORDER BY time DESC, rowid DESC LIMIT ?",
                (*params, limit),
            )
            .fetchall()
        )
        result = []
        for body, ingested_at, error in rows:
            item: dict[str, Any] = {
                "event": json.loads(body),
                "ingestedAt": format_rfc3339(ingested_at),
                "storedAt": format_rfc3339(ingested_at),
            }
            if error:
                item["validationError"] = error
            result.append(item)
        return result

    def count_events(self) -> int:
        """How many distinct events are stored."""
        count: int = self._reader().execute("SELECT COUNT(*) FROM events").fetchone()[0]
        return count

    # -- queries -----------------------------------------------------------------------

    def _meter_scope(self, meter: Meter) -> tuple[Layout | None, list[str], list[Any]]:
        layout = self.layouts.get(meter.event_type)
        clauses: list[str] = []
        params: list[Any] = []
        if layout is not None and meter.value_property is not None:
            role = "s" if meter.aggregation == "UNIQUE_COUNT" else "n"
            clauses.append(f"{layout.column(role, meter.value_property).name} IS NOT NULL")
        if meter.event_from is not None:
            clauses.append("time >= ?")
            params.append(int(parse_rfc3339(meter.event_from).timestamp()))
        return layout, clauses, params

    def subjects(self, slug: str, start: int | None = None, end: int | None = None) -> list[str]:
        """Distinct subjects with values for a meter."""
        layout, clauses, params = self._meter_scope(self.meters[slug].meter)
        if layout is None:
            return []
        more, more_params = _time_clauses(start, end)
        where = _where(clauses + more)
        rows = (
            self._reader()
            .execute(
                f"SELECT DISTINCT subject FROM {layout.facts} {where} ORDER BY subject",
                params + more_params,
            )
            .fetchall()
        )
        return [row[0] for row in rows]

    def group_by_values(
        self, slug: str, key: str, start: int | None = None, end: int | None = None
    ) -> list[str]:
        """Distinct values of a meter's groupBy key in its events from ``start`` to
        ``end`` (both inclusive), missing ones left out."""
        meter = self.meters[slug].meter
        layout, clauses, params = self._meter_scope(meter)
        if layout is None:
            return []
        column = layout.column("g", meter.group_by[key]).name
        if start is not None:
            clauses = [*clauses, "time >= ?"]
            params = [*params, start]
        if end is not None:
            clauses = [*clauses, "time <= ?"]
            params = [*params, end]
        clauses = [*clauses, f"{column} IS NOT NULL", f"{column} NOT IN ('', char(0))"]
        rows = self._reader().execute(
            f"SELECT DISTINCT {column} FROM {layout.facts} {_where(clauses)} ORDER BY 1", params
        )
        return [str(row[0]) for row in rows]

    # -- subjects ----------------------------------------------------------------------

    def upsert_subjects(self, items: Sequence[SubjectUpsert]) -> list[dict[str, Any]]:
        """Create each subject, or update the fields given of one that exists."""
        now = time.time()
        with self._write_lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                for item in items:
                    found = conn.execute(
                        "SELECT body FROM subjects WHERE key = ?", (item.key,)
                    ).fetchone()
                    if found is None:
                        conn.execute(
                            "INSERT INTO subjects (key, id, body, created_at, updated_at) "
                            "VALUES (?, ?, ?, ?, ?)",
                            (item.key, new_ulid(now), json.dumps(item.fields), now, now),
                        )
                    else:
                        body = {**json.loads(found[0]), **item.fields}
                        conn.execute(
                            "UPDATE subjects SET body = ?, updated_at = ? WHERE key = ?",
                            (json.dumps(body), now, item.key),
                        )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return [self.subject(item.key) or {} for item in items]

    def list_subjects(self) -> list[dict[str, Any]]:
        """Every subject, by key."""
        rows = self._reader().execute(
            "SELECT key, id, body, created_at, updated_at FROM subjects ORDER BY key"
        )
        return [subject_json(*row) for row in rows]

    def subject(self, id_or_key: str) -> dict[str, Any] | None:
        """A subject by id or key."""
        row = (
            self._reader()
            .execute(
                "SELECT key, id, body, created_at, updated_at FROM subjects "
                "WHERE id = ? OR key = ? ORDER BY id = ? DESC LIMIT 1",
                (id_or_key, id_or_key, id_or_key),
            )
            .fetchone()
        )
        return subject_json(*row) if row else None

    def delete_subject(self, id_or_key: str) -> bool:
        """Delete a subject (its events stay); False when there is none."""
        found = self.subject(id_or_key)
        if found is None:
            return False
        with self._write_lock:
            self._writer.execute("DELETE FROM subjects WHERE id = ?", (found["id"],))
        return True

    def query(
        self, slug: str, query: Query, cancelled: threading.Event | None = None
    ) -> dict[str, Any]:
        """Run a meter query; returns OpenMeter's ``MeterQueryResult``. Once
        ``cancelled`` is set (its client went away) the query stops with
        :class:`QueryCancelled`."""
        conn = self._reader()
        if cancelled is not None:
            conn.set_progress_handler(lambda: int(cancelled.is_set()), PROGRESS_STEPS)
        try:
            return self._query(slug, query)
        except sqlite3.OperationalError as exc:
            if cancelled is not None and cancelled.is_set():
                raise QueryCancelled(slug) from exc
            raise
        finally:
            if cancelled is not None:
                conn.set_progress_handler(None, 0)

    def _query(self, slug: str, query: Query) -> dict[str, Any]:
        self.flush_rollups()
        meter = self.meters[slug].meter
        layout, scope, scope_params = self._meter_scope(meter)
        if layout is None:
            return _result(query, [])
        tz = zone(query.time_zone)
        conn = self._reader()
        by_subject = "subject" in query.group_by or bool(query.subjects)
        group_keys = [key for key in query.group_by if key != "subject"]
        group_cols = {key: layout.column("g", path).name for key, path in meter.group_by.items()}

        time_clauses, time_params = _time_clauses(query.start, query.end)
        filters: list[str] = []
        filter_params: list[Any] = []
        if query.subjects:
            filters.append(f"subject IN ({','.join('?' * len(query.subjects))})")
            filter_params += query.subjects
        # filterGroupBy is the simple form of advancedMeterGroupByFilters' $in.
        conditions = [(key, ("$in", values)) for key, values in query.filter_group_by.items()]
        for key, checked in [*conditions, *query.advanced_filters.items()]:
            # A missing value is NULL in the facts and _NO_GROUP in the rollups; OpenMeter
            # reads it as "".
            value = f"COALESCE(NULLIF({group_cols[key]}, char(0)), '')"
            condition, params = filter_sql(value, checked)
            filters.append(condition)
            filter_params += params

        # The first event, through the time index: none, no rows.
        span_where = _where(time_clauses)
        first = conn.execute(
            f"SELECT time FROM {layout.facts} {span_where} ORDER BY time LIMIT 1", time_params
        ).fetchone()
        if first is None:
            return _result(query, [])
        head = (["subject"] if by_subject else []) + [group_cols[key] for key in group_keys]
        by_group = bool(group_keys or query.filter_group_by or query.advanced_filters)
        reader = _Reader(conn, meter, layout, head, filters, filter_params, by_subject, by_group)
        if not query.window_size:
            if _rolls_up(meter):
                # Whole UTC days from the daily rollup, the ragged ends from the hourly
                # one and the facts: a period in a customer's zone reads a few rows a day.
                source = []
                for granularity, start, end in period_pieces(query.start, query.end):
                    if granularity is None:
                        source += reader.facts(scope, scope_params, start, end)
                    else:
                        source += reader.rollups(granularity, start, end)
            else:
                source = reader.facts(scope, scope_params, query.start, query.end)
            return _result(query, _merge_period(reader, source, query, scope, scope_params))
        days = self._days_with_data(layout, first[0], query.end)
        points = offset_points(tz, days)
        granularity = _rollup_granularity(meter, query, points)
        if granularity == _HOUR and query.window_size in ("DAY", "MONTH") and _rolls_up(meter):
            # Windows on the zone's hours: the daily rollup, corrected by the hours each
            # UTC day shares with the window next to it.
            source = _owned_days(reader, query, points, tz, days)
            return _result(query, _merge_windows(reader, source, query, tz))
        column = "time" if granularity is None else "hour"
        key, key_params = window_key_sql(query.window_size, column, points)
        if granularity is None:
            source = reader.facts(scope, scope_params, query.start, query.end, key, key_params)
        else:
            source = reader.rollups(granularity, query.start, query.end, key, key_params)
        return _result(query, _merge_windows(reader, source, query, tz))

    def _days_with_data(self, layout: Layout, first: int, end: int | None) -> list[int]:
        """The UTC days (day numbers) that hold events of a type, from ``first`` on: one
        look in the time index per day with data."""
        days = []
        found: int | None = first
        while found is not None:
            day = found // 86400
            days.append(day)
            clauses, params = _time_clauses((day + 1) * 86400, end)
            found = (
                self._reader()
                .execute(f"SELECT MIN(time) FROM {layout.facts} {_where(clauses)}", params)
                .fetchone()[0]
            )
        return days


class _Reader:
    """The SQL of a meter query: bucket rows with the aggregation's partial values
    (see ``windows.Merger``), from the facts or from a rollup."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        meter: Meter,
        layout: Layout,
        head: list[str],
        filters: list[str],
        filter_params: list[Any],
        by_subject: bool,
        by_group: bool,
    ) -> None:
        self.conn = conn
        self.meter = meter
        self.layout = layout
        self.head = head
        self.filters = filters
        self.filter_params = filter_params
        self.by_subject = by_subject
        self.by_group = by_group
        """Grouped or filtered by subject, and by group values: which rollups serve."""

    def rollup_tables(self) -> dict[int, str]:
        """The smallest rollups (by granularity) that hold what the query asks for."""
        if not self.by_subject:
            return self.layout.together
        return self.layout.rollups if self.by_group else self.layout.per_subject

    def facts(
        self,
        scope: list[str],
        params: list[Any],
        start: int | None,
        end: int | None,
        key: str = "0",
        key_params: list[Any] | None = None,
    ) -> list[tuple[Any, ...]]:
        """Rows per window ``key`` names (SQL), with a time in the window first."""
        partial, extra = _partial_sql(self.meter, self.layout, rollup=False)
        return self._select(
            self.layout.facts, key, key_params or [], partial, extra, scope, params, start, end
        )

    def rollups(
        self,
        granularity: int,
        start: int | None,
        end: int | None,
        key: str = "0",
        key_params: list[Any] | None = None,
    ) -> list[tuple[Any, ...]]:
        """Rows per window ``key`` names, from a rollup (hour or day)."""
        scope: list[str] = []
        params: list[Any] = []
        if self.meter.event_from is not None:
            # eventFrom is whole seconds; a rollup only fits when it is aligned to it.
            scope.append("hour >= ?")
            params.append(int(parse_rfc3339(self.meter.event_from).timestamp()))
        partial, extra = _partial_sql(self.meter, self.layout, rollup=True)
        table = self.rollup_tables()[granularity]
        return self._select(
            table, key, key_params or [], partial, extra, scope, params, start, end, "hour"
        )

    def _rollup_having(self) -> str:
        """A rollup bucket counts for SUM and AVG only where it holds a value."""
        if self.meter.aggregation not in ("SUM", "AVG"):
            return ""
        column = self.layout.column("n", self.meter.value_property or "").name
        return f"HAVING SUM(cnt_{column}) > 0"

    def shared_hours(
        self, hours: Sequence[int], key: str, owner: str, key_params: list[Any]
    ) -> list[tuple[Any, ...]]:
        """The given hourly buckets summed by the window their hour is in, the window
        their UTC day's middle is in, and the head: ``(key, owner, *head, an hour,
        *partial)``."""
        partial, _ = _partial_sql(self.meter, self.layout, rollup=True)
        columns = [key, owner, *self.head]
        grouping = ", ".join(str(i + 1) for i in range(len(columns)))
        having = self._rollup_having()
        where = _where([f"hour IN ({','.join('?' * len(hours))})", *self.filters])
        table = self.rollup_tables()[_HOUR]
        sql = (
            f"SELECT {', '.join(columns)}, MIN(hour), {partial} "
            f"FROM {table} {where} GROUP BY {grouping} {having}"
        )
        return self.conn.execute(sql, [*key_params, *hours, *self.filter_params]).fetchall()

    def _select(
        self,
        table: str,
        key: str,
        key_params: list[Any],
        partial: str,
        extra: list[str],
        scope: list[str],
        params: list[Any],
        start: int | None,
        end: int | None,
        time_column: str = "time",
    ) -> list[tuple[Any, ...]]:
        clauses, time_params = _time_clauses(start, end, time_column)
        # A time in the window, to find its bounds by: LATEST has one in its partial (a
        # second MIN/MAX would take its value from another row).
        moment = [] if self.meter.aggregation == "LATEST" else [f"MIN({time_column})"]
        columns = [key, *self.head]
        grouping = ", ".join([str(i + 1) for i in range(len(columns))] + extra)
        having = self._rollup_having() if time_column == "hour" else ""
        sql = (
            f"SELECT {', '.join(columns)}, {', '.join([*moment, partial])} FROM {table} "
            f"{_where(scope + clauses + self.filters)} GROUP BY {grouping} {having} "
            f"ORDER BY {grouping}"
        )
        return self.conn.execute(
            sql, [*key_params, *params, *time_params, *self.filter_params]
        ).fetchall()


def _merge_windows(
    reader: _Reader, rows: list[tuple[Any, ...]], query: Query, tz: Any
) -> list[dict[str, Any]]:
    """Rows per window key, subject and group (SQL ordered them so), each window with
    its bounds; UNIQUE_COUNT's rows, one per value, merged."""
    size = query.window_size
    assert size is not None
    aggregation = reader.meter.aggregation
    latest = aggregation == "LATEST"
    spans: dict[Any, tuple[int, str, str]] = {}
    width = 1 + len(reader.head)
    by_subject = "subject" in reader.head
    group_keys = [key for key in query.group_by if key != "subject"]
    merger = Merger(aggregation) if aggregation == "UNIQUE_COUNT" else None
    result = []
    for row in rows:
        span = spans.get(row[0])
        if span is None:
            if len(spans) >= MAX_WINDOWS:
                raise TooManyWindows()
            start, end = window(size, row[-1] >> 32 if latest else row[width], tz)
            span = spans[row[0]] = (start, format_rfc3339(start), format_rfc3339(end))
        partial = row[width:] if latest else row[width + 1 :]
        groups = row[1:width]
        if None in groups or _NO_GROUP in groups:
            groups = _group_values(groups)
        if merger is not None:
            merger.add((span, *groups), partial)
        else:
            result.append(
                _row(value_of(aggregation, partial), span, groups, by_subject, group_keys)
            )
    if merger is not None:
        for key in merger.cells:  # in SQL's order, the first row of each
            value = merger.value(merger.cells[key])
            result.append(_row(value, key[0], key[1:], by_subject, group_keys))
    return result


def _merge_period(
    reader: _Reader,
    rows: list[tuple[Any, ...]],
    query: Query,
    scope: list[str],
    scope_params: list[Any],
) -> list[dict[str, Any]]:
    """Bucket rows merged into one row per subject and group for the whole period:
    ``from`` to ``to``, or, where not given, the minute of the first event to the
    minute after the last (as OpenMeter)."""
    merger = Merger(reader.meter.aggregation)
    width = 1 + len(reader.head)
    skip = 0 if reader.meter.aggregation == "LATEST" else 1  # the window's moment
    for row in rows:
        merger.add((0, *_group_values(row[1:width])), row[width + skip :])
    if not merger.cells:
        return []
    where = _where(scope + _time_clauses(query.start, query.end)[0] + reader.filters)
    params = [*scope_params, *_time_clauses(query.start, query.end)[1], *reader.filter_params]
    start, end = query.start, query.end
    if start is None or end is None:
        low, high = reader.conn.execute(
            f"SELECT MIN(time), MAX(time) FROM {reader.layout.facts} {where}", params
        ).fetchone()
        if start is None:
            start = low - low % 60
        if end is None:
            end = high - high % 60 + 60
    by_subject = "subject" in reader.head
    group_keys = [key for key in query.group_by if key != "subject"]
    span = (start, format_rfc3339(start), format_rfc3339(end))
    return [
        _row(merger.value(merger.cells[key]), span, key[1:], by_subject, group_keys)
        for key in sorted(merger.cells, key=lambda key: tuple(map(str, key[1:])))
    ]


def _group_values(values: tuple[Any, ...]) -> tuple[Any, ...]:
    # A missing group value is NULL in the facts and _NO_GROUP in the rollups; OpenMeter
    # answers "".
    return tuple("" if value is None or value == _NO_GROUP else value for value in values)


def _row(
    value: float,
    span: tuple[Any, str, str],
    key: tuple[Any, ...],
    by_subject: bool,
    group_keys: list[str],
) -> dict[str, Any]:
    """A ``MeterQueryRow``; ``span`` ends in the window's start and end, formatted."""
    subject = key[0] if by_subject else None
    groups = key[1:] if by_subject else key
    return {
        "value": value,
        "windowStart": span[1],
        "windowEnd": span[2],
        "subject": subject,
        "groupBy": dict(zip(group_keys, groups, strict=True)),
    }


def _rollup_granularity(meter: Meter, query: Query, points: list[tuple[int, int]]) -> int | None:
    """The coarsest rollup (day, hour) that answers this query exactly, or None: its
    buckets must lie whole in the query's period and windows (``points``: the zone's
    offsets over the data, see ``windows.offset_points``)."""
    # Rollups keep sums and counts: SUM, COUNT and AVG. The rest read the facts.
    if meter.aggregation not in ("SUM", "COUNT", "AVG") or query.window_size == "MINUTE":
        return None
    for granularity in (_DAY, _HOUR):
        if granularity == _DAY and query.window_size == "HOUR":
            continue
        edges = [query.start, query.end]
        if meter.event_from is not None:
            edges.append(int(parse_rfc3339(meter.event_from).timestamp()))
        if any(edge is not None and edge % granularity for edge in edges):
            continue
        if query.window_size is not None and any(
            since % granularity or offset % granularity for since, offset in points
        ):
            continue
        return granularity
    return None


def _rolls_up(meter: Meter) -> bool:
    """Whether the rollups can answer this meter (sums and counts, no ``eventFrom``)."""
    return meter.aggregation in ("SUM", "COUNT", "AVG") and meter.event_from is None


def period_pieces(
    start: int | None, end: int | None, sizes: tuple[int, ...] = (_DAY, _HOUR)
) -> list[tuple[int | None, int | None, int | None]]:
    """``[start, end)`` cut into ``(size, start, end)`` pieces in time order: whole
    buckets of the first size in the middle, of the next sizes towards the ends, and
    what no bucket covers (size None: the facts) at the very ends. None is open."""
    if start is not None and end is not None and start >= end:
        return []
    for index, size in enumerate(sizes):
        low = None if start is None else -(-start // size) * size
        high = None if end is None else end // size * size
        if low is None or high is None or low < high:
            finer = sizes[index + 1 :]
            before = period_pieces(start, low, finer) if low != start else []
            after = period_pieces(high, end, finer) if high != end else []
            return [*before, (size, low, high), *after]
    return [(None, start, end)]


def _owned_days(
    reader: _Reader, query: Query, points: list[tuple[int, int]], tz: Any, days: list[int]
) -> list[tuple[Any, ...]]:
    """Bucket rows of DAY or MONTH windows on the zone's whole hours, from the daily
    rollup: each UTC day inside the period goes whole to the window that holds its
    middle, and the hours it shares with the window next to it move there (taken from
    the hourly rollup, once with each sign). A zone's day thus reads its UTC day and a
    few hours, not 24 hours. The ends of the period that are not whole days are read
    hour by hour. Rows as :meth:`_Reader.rollups` gives them, in its order."""
    size = query.window_size
    assert size is not None
    low = None if query.start is None else -(-query.start // _DAY) * _DAY
    high = None if query.end is None else query.end // _DAY * _DAY
    hourly_key, hourly_params = window_key_sql(size, "hour", points)
    if low is not None and high is not None and low >= high:
        return reader.rollups(_HOUR, query.start, query.end, hourly_key, hourly_params)
    middle = _DAY // 2
    moved: list[int] = []
    for day in days:
        first = day * _DAY
        if (low is not None and first < low) or (high is not None and first + _DAY > high):
            continue
        start, end = window(size, first + middle, tz)
        moved += range(first, max(first, start), _HOUR)
        moved += range(min(max(end, first), first + _DAY), first + _DAY, _HOUR)
    owner_key, owner_params = window_key_sql(size, f"(hour - hour % {_DAY} + {middle})", points)
    # (sign, what to add to a row's first hour for a moment inside its window, rows)
    signed: list[tuple[int, int, list[tuple[Any, ...]]]] = [
        (1, middle, reader.rollups(_DAY, low, high, owner_key, owner_params)),
    ]
    for piece_start, piece_end in ((query.start, low), (high, query.end)):
        if piece_start != piece_end:
            rows = reader.rollups(_HOUR, piece_start, piece_end, hourly_key, hourly_params)
            signed.append((1, 0, rows))
    width = 1 + len(reader.head)
    for chunk in range(0, len(moved), 10_000):
        # Each shared hour: added to its own window, taken from its day's owner.
        hours = moved[chunk : chunk + 10_000]
        added, taken = [], []
        for row in reader.shared_hours(
            hours, hourly_key, owner_key, [*hourly_params, *owner_params]
        ):
            added.append((row[0], *row[2:]))
            taken.append((row[1], *row[2:]))
        signed += [(1, 0, added), (-1, 0, taken)]
    cells: dict[tuple[Any, ...], list[Any]] = {}
    for sign, shift, rows in signed:
        for row in rows:
            moment = row[width] + shift if sign > 0 else None
            cell = cells.get(row[:width])
            if cell is None:
                cells[row[:width]] = [moment, *(sign * part for part in row[width + 1 :])]
                continue
            if cell[0] is None:
                cell[0] = moment
            for index, part in enumerate(row[width + 1 :], 1):
                cell[index] += sign * part
    return [
        (*key, cell[0] if cell[0] is not None else 0, *cell[1:])
        for key, cell in sorted(cells.items())
        if cell[-1] > 0
    ]


def _partial_sql(meter: Meter, layout: Layout, rollup: bool) -> tuple[str, list[str]]:
    """The partial aggregate columns of a bucket (see ``windows.Merger``), and what
    else to group by."""
    aggregation = meter.aggregation
    if aggregation == "COUNT":
        return ("SUM(rows)" if rollup else "COUNT(*)"), []
    role = "s" if aggregation == "UNIQUE_COUNT" else "n"
    column = layout.column(role, meter.value_property or "").name
    if rollup:
        return f"SUM(sum_{column}), SUM(cnt_{column})", []
    if aggregation in ("SUM", "AVG"):
        return f"SUM({column}), COUNT({column})", []
    if aggregation == "UNIQUE_COUNT":
        return column, [column]
    if aggregation == "LATEST":
        # SQLite takes a bare column from the row that holds the one MAX(): the latest
        # event's value, ties in whole seconds going to the later ingested.
        return f"{column}, MAX(time * 4294967296 + seq)", []
    return f"{aggregation}({column})", []


def _result(query: Query, rows: list[dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {"data": rows}
    if query.start is not None:
        result["from"] = format_rfc3339(query.start)
    if query.end is not None:
        result["to"] = format_rfc3339(query.end)
    if query.window_size:
        result["windowSize"] = query.window_size
    return result


def _where(clauses: list[str]) -> str:
    return f"WHERE {' AND '.join(clauses)}" if clauses else ""


def _time_clauses(
    start: int | None, end: int | None, column: str = "time"
) -> tuple[list[str], list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if start is not None:
        clauses.append(f"{column} >= ?")
        params.append(start)
    if end is not None:
        clauses.append(f"{column} < ?")
        params.append(end)
    return clauses, params


def seconds(text: str | None, name: str) -> int | None:
    """Whole seconds of an RFC 3339 query parameter; ValueError names the parameter."""
    if text is None or text == "":
        return None
    try:
        return int(parse_rfc3339(text).timestamp() // 1)
    except ValueError:
        raise ValueError(f"{name}: {text!r} is not an RFC 3339 date-time") from None


def unique(items: Iterable[str]) -> list[str]:
    """Items in first-seen order without repeats."""
    return list(dict.fromkeys(items))
