"""The local server's SQLite store: events deduplicated by (source, id), meters, and one
value table per meter filled at ingest, so queries never parse JSON."""

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

from ..meters import Extracted, Meter, extract, meter_from_json
from .ingest import IngestError, format_rfc3339, parse_rfc3339, validate_event
from .windows import local_seconds_sql, window_bounds, window_key_sql, zone

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
CREATE INDEX IF NOT EXISTS events_type_time ON events (type, time);
CREATE INDEX IF NOT EXISTS events_time ON events (time);
CREATE TABLE IF NOT EXISTS meters (
    slug TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    value_table TEXT NOT NULL
);
"""

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_ulid(now: float | None = None) -> str:
    """A ULID: 48 bits of milliseconds and 80 random bits, Crockford base32."""
    number = (int((time.time() if now is None else now) * 1000) << 80) | secrets.randbits(80)
    return "".join(_CROCKFORD[(number >> shift) & 31] for shift in range(125, -1, -5))


class MeterExists(ValueError):
    """A meter with that slug already exists."""


@dataclass
class StoredMeter:
    """A meter as the server keeps it."""

    meter: Meter
    id: str
    created_at: float
    updated_at: float
    table: str

    def to_json(self) -> dict[str, Any]:
        """The ``Meter`` schema of OpenMeter's API."""
        body = self.meter.to_create()
        body.setdefault("name", self.meter.slug)
        body["id"] = self.id
        body["createdAt"] = format_rfc3339(self.created_at)
        body["updatedAt"] = format_rfc3339(self.updated_at)
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
        self.meters: dict[str, StoredMeter] = {}
        self.received = 0
        """Events received by this process, duplicates included."""
        self.duplicates = 0
        """Events received by this process that were already stored (dropped)."""
        for slug, meter_id, body, created, updated, table in self._writer.execute(
            "SELECT slug, id, body, created_at, updated_at, value_table FROM meters"
        ):
            self.meters[slug] = StoredMeter(
                meter_from_json(json.loads(body)), meter_id, created, updated, table
            )
        self._by_type: dict[str, list[StoredMeter]] = {}
        self._index_meters()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA cache_size=-65536")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only=1")
            self._local.conn = conn
        return conn

    def _index_meters(self) -> None:
        by_type: dict[str, list[StoredMeter]] = {}
        for stored in self.meters.values():
            by_type.setdefault(stored.meter.event_type, []).append(stored)
        self._by_type = by_type

    def close(self) -> None:
        """Close the writer connection."""
        self._writer.close()

    # -- meters ------------------------------------------------------------------------

    def create_meter(self, meter: Meter, *, replace: bool = False) -> StoredMeter:
        """Add a meter and fill its values from the events already stored."""
        with self._write_lock:
            existing = self.meters.get(meter.slug)
            if existing is not None:
                if existing.meter == meter:
                    return existing
                if not replace:
                    raise MeterExists(f"meter {meter.slug!r} already exists")
            now = time.time()
            table = f"mv_{new_ulid().lower()}"
            columns = "".join(f", g{i} TEXT" for i in range(len(meter.group_by)))
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    f"CREATE TABLE {table} (time INTEGER NOT NULL, subject TEXT NOT NULL, "
                    f"value REAL, text TEXT, seq INTEGER NOT NULL{columns})"
                )
                conn.execute(f"CREATE INDEX {table}_time ON {table} (time)")
                stored = StoredMeter(
                    meter,
                    existing.id if existing else new_ulid(now),
                    existing.created_at if existing else now,
                    now,
                    table,
                )
                conn.execute(
                    "INSERT OR REPLACE INTO meters (slug, id, body, created_at, updated_at, "
                    "value_table) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        meter.slug,
                        stored.id,
                        json.dumps(meter.to_create()),
                        stored.created_at,
                        now,
                        table,
                    ),
                )
                if existing is not None:
                    conn.execute(f"DROP TABLE {existing.table}")
                self._backfill(stored)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self.meters[meter.slug] = stored
            self._index_meters()
            return stored

    def _backfill(self, stored: StoredMeter) -> None:
        rows = self._writer.execute(
            "SELECT rowid, subject, time, body FROM events WHERE type = ? ORDER BY rowid",
            (stored.meter.event_type,),
        ).fetchall()
        values = []
        for rowid, subject, moment, body in rows:
            if not _applies(stored.meter, moment):
                continue
            found = extract(stored.meter, json.loads(body).get("data"))
            if isinstance(found, Extracted):
                values.append(_value_row(moment, subject, rowid, found))
        if values:
            self._writer.executemany(_insert_sql(stored), values)

    # -- events ------------------------------------------------------------------------

    def ingest(self, events: Sequence[Any], now: float | None = None) -> int:
        """Store events in order; returns how many were new.

        Like OpenMeter's v1 endpoint a batch is not a transaction: the events before
        the first invalid one are kept, and the invalid one raises
        :class:`IngestError` naming its position.
        """
        moment = time.time() if now is None else now
        added = 0
        with self._write_lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                for position, raw in enumerate(events):
                    try:
                        valid = validate_event(raw, moment)
                    except IngestError as exc:
                        where = f"event {position}" if len(events) > 1 else "event"
                        event_id = raw.get("id") if isinstance(raw, dict) else None
                        label = f"{where} (id {event_id!r})" if event_id else where
                        raise IngestError(f"{label}: {exc.detail}") from None
                    new = self._insert(valid.body, valid.time, moment)
                    added += new
                    self.received += 1
                    self.duplicates += 1 - new
            finally:
                conn.execute("COMMIT")
        return added

    def _insert(self, body: dict[str, Any], moment: int, ingested_at: float) -> int:
        conn = self._writer
        cursor = conn.execute(
            "INSERT INTO events (source, id, type, subject, time, ingested_at, body) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (source, id) DO NOTHING",
            (
                body["source"],
                body["id"],
                body["type"],
                body["subject"],
                moment,
                ingested_at,
                json.dumps(body, separators=(",", ":")),
            ),
        )
        if cursor.rowcount == 0:
            return 0
        rowid = cursor.lastrowid
        errors = []
        data = body.get("data")
        for stored in self._by_type.get(body["type"], ()):
            if not _applies(stored.meter, moment):
                continue
            found = extract(stored.meter, data)
            if isinstance(found, str):
                errors.append(found)
                continue
            conn.execute(_insert_sql(stored), _value_row(moment, body["subject"], rowid, found))
        if errors:
            conn.execute(
                "UPDATE events SET validation_error = ? WHERE rowid = ?", ("; ".join(errors), rowid)
            )
        return 1

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

    def subjects(self, slug: str, start: int | None = None, end: int | None = None) -> list[str]:
        """Distinct subjects with values for a meter."""
        stored = self.meters[slug]
        clauses, params = _time_clauses(start, end)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = (
            self._reader()
            .execute(
                f"SELECT DISTINCT subject FROM {stored.table} {where} ORDER BY subject", params
            )
            .fetchall()
        )
        return [row[0] for row in rows]

    def query(self, slug: str, query: Query, now: float | None = None) -> dict[str, Any]:
        """Run a meter query; returns OpenMeter's ``MeterQueryResult``."""
        stored = self.meters[slug]
        meter = stored.meter
        tz = zone(query.time_zone)
        keys = list(meter.group_by)
        conn = self._reader()
        clauses, params = _time_clauses(query.start, query.end)
        if query.subjects:
            clauses.append(f"subject IN ({','.join('?' * len(query.subjects))})")
            params += query.subjects
        for key, values in query.filter_group_by.items():
            clauses.append(f"g{keys.index(key)} IN ({','.join('?' * len(values))})")
            params += values
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""

        by_subject = "subject" in query.group_by or bool(query.subjects)
        group_keys = [key for key in query.group_by if key != "subject"]
        select: list[str] = []
        select_params: list[Any] = []
        if query.window_size:
            bounds = conn.execute(
                f"SELECT MIN(time), MAX(time) FROM {stored.table} {where}", params
            ).fetchone()
            if bounds[0] is None:
                return _result(query, [])
            local, local_params = local_seconds_sql(tz, bounds[0], bounds[1] + 1)
            select.append(window_key_sql(query.window_size, local))
            select_params += local_params
        else:
            select.append("0")
        if by_subject:
            select.append("subject")
        select += [f"g{keys.index(key)}" for key in group_keys]
        grouping = ", ".join(str(i + 1) for i in range(len(select)))
        sql = (
            f"SELECT {', '.join(select)}, {_aggregate_sql(meter.aggregation)} "
            f"FROM {stored.table} {where} GROUP BY {grouping}"
        )
        rows = conn.execute(sql, [*select_params, *params]).fetchall()

        result_rows = []
        moment = time.time() if now is None else now
        if not query.window_size and rows:
            earliest = conn.execute(
                f"SELECT MIN(time) FROM {stored.table} {where}", params
            ).fetchone()[0]
            start_text = format_rfc3339(query.start if query.start is not None else earliest)
            end_text = format_rfc3339(query.end if query.end is not None else int(moment))
        for row in rows:
            key, rest = row[0], list(row[1:])
            subject = rest.pop(0) if by_subject else None
            groups = {name: rest.pop(0) for name in group_keys}
            value = rest.pop(0)
            if query.window_size:
                window_start, window_end = window_bounds(query.window_size, key, tz)
                start_text, end_text = format_rfc3339(window_start), format_rfc3339(window_end)
            result_rows.append(
                {
                    "value": float(value or 0),
                    "windowStart": start_text,
                    "windowEnd": end_text,
                    "subject": subject,
                    "groupBy": groups,
                }
            )
        result_rows.sort(
            key=lambda r: (
                r["windowStart"],
                r["subject"] or "",
                json.dumps(r["groupBy"], sort_keys=True),
            )
        )
        return _result(query, result_rows)


def _result(query: Query, rows: list[dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {"data": rows}
    if query.start is not None:
        result["from"] = format_rfc3339(query.start)
    if query.end is not None:
        result["to"] = format_rfc3339(query.end)
    if query.window_size:
        result["windowSize"] = query.window_size
    return result


def _aggregate_sql(aggregation: str) -> str:
    return {
        "SUM": "SUM(value)",
        "COUNT": "COUNT(*)",
        "AVG": "AVG(value)",
        "MIN": "MIN(value)",
        "MAX": "MAX(value)",
        "UNIQUE_COUNT": "COUNT(DISTINCT text)",
        # SQLite takes a bare column from the row that holds the one MAX(): the latest
        # event's value, ties in whole seconds going to the later ingested.
        "LATEST": "value, MAX(time * 4294967296 + seq)",
    }[aggregation]


def _time_clauses(start: int | None, end: int | None) -> tuple[list[str], list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if start is not None:
        clauses.append("time >= ?")
        params.append(start)
    if end is not None:
        clauses.append("time < ?")
        params.append(end)
    return clauses, params


def _applies(meter: Meter, moment: int) -> bool:
    if meter.event_from is None:
        return True
    return moment >= parse_rfc3339(meter.event_from).timestamp()


def _insert_sql(stored: StoredMeter) -> str:
    groups = len(stored.meter.group_by)
    columns = "".join(f", g{i}" for i in range(groups))
    return (
        f"INSERT INTO {stored.table} (time, subject, value, text, seq{columns}) "
        f"VALUES (?, ?, ?, ?, ?{', ?' * groups})"
    )


def _value_row(moment: int, subject: str, rowid: int | None, found: Extracted) -> tuple[Any, ...]:
    return (moment, subject, found.value, found.text, rowid or 0, *found.groups)


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
