"""The durable outbox: a SQLite file (WAL) holding every event until it is delivered.

Several processes may share one file. A sender *claims* a batch by writing a lease
(owner, expiry) on its rows, so two senders never send the same rows at once, and a
dead sender's rows become claimable again when its lease runs out. Delivered rows
are deleted and their ids remembered for a while, so a late duplicate of an event
(LiteLLM firing a hook twice) is not sent again. Events that cannot be sent live in
a dead-letter table until an operator requeues or purges them.

An event may also be *held*: stored under a lease of its own process while the call
it bills is still in progress (the proxy has answered but LiteLLM's success hook has
not run yet). The success hook replaces it with the final event in one transaction;
a failure drops it; if the process dies first, its holds are void like its leases and
the held event is sent as it is, so a crash in between loses nothing.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..events import CloudEvent
from ..settings import SettingsError
from ..wal import enter_wal
from . import forksafe

DELIVERED_MEMORY_SECONDS = 600.0
"""How long delivered ids are remembered to drop late duplicates."""
WAL_RESTART_FRAMES = 8192
"""WAL pages (32 MiB at 4 KiB) after which the sender truncates the WAL."""
HOLD_SECONDS = 300.0
"""How long a held event waits for its call's success hook before it is sent as it is."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    id TEXT NOT NULL,
    body TEXT NOT NULL,
    size INTEGER NOT NULL,
    enqueued_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0,
    UNIQUE (source, id)
);
CREATE INDEX IF NOT EXISTS events_lease ON events (lease_until, seq);
CREATE TABLE IF NOT EXISTS dead_letters (
    source TEXT NOT NULL,
    id TEXT NOT NULL,
    body TEXT NOT NULL,
    size INTEGER NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    failed_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (source, id)
);
CREATE TABLE IF NOT EXISTS delivered (
    source TEXT NOT NULL,
    id TEXT NOT NULL,
    delivered_at REAL NOT NULL,
    PRIMARY KEY (source, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS delivered_at ON delivered (delivered_at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (key, value) VALUES
    ('bytes', 0), ('delivered', 0), ('retried', 0), ('refused', 0), ('last_error', ''),
    ('paused', '');
CREATE TRIGGER IF NOT EXISTS events_added AFTER INSERT ON events BEGIN
    UPDATE meta SET value = value + NEW.size WHERE key = 'bytes';
END;
CREATE TRIGGER IF NOT EXISTS events_removed AFTER DELETE ON events BEGIN
    UPDATE meta SET value = value - OLD.size WHERE key = 'bytes';
END;
CREATE TRIGGER IF NOT EXISTS dead_added AFTER INSERT ON dead_letters BEGIN
    UPDATE meta SET value = value + NEW.size WHERE key = 'bytes';
END;
CREATE TRIGGER IF NOT EXISTS dead_removed AFTER DELETE ON dead_letters BEGIN
    UPDATE meta SET value = value - OLD.size WHERE key = 'bytes';
END;
"""


class OutboxFull(RuntimeError):
    """The outbox reached its byte limit; the new events were not stored."""


class OutboxDamaged(RuntimeError):
    """The outbox file is not a readable SQLite database (corrupted or overwritten).

    Nothing in it was changed. ``salvage`` moves such a file aside and recovers what
    can still be read of it.
    """

    def __init__(self, path: Path, detail: str) -> None:
        detail = " ".join(detail.split())  # SQLite's check reports on several lines
        super().__init__(f"the outbox {path} is damaged ({detail})")
        self.path = path
        self.detail = detail


_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26


def is_damage(exc: BaseException) -> bool:
    """Whether a SQLite error says the file is corrupt or not a database at all (as
    opposed to busy, locked, read-only or out of space)."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11 and newer
    if isinstance(code, int):
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text


PATH_FIX = (
    "set OPENMETER_OUTBOX_PATH to a file in a folder this user can write "
    "(or unset it for the default under ~/.cache)"
)


def path_error(path: Path, exc: OSError) -> SettingsError:
    """A clear error for an outbox path where no file can be made or opened."""
    where = exc.filename or path
    if isinstance(exc, IsADirectoryError) or path.is_dir():
        return SettingsError(
            f"OPENMETER_OUTBOX_PATH={str(path)!r} is a folder, not a file",
            f"name a file in it, for example {path / 'outbox.sqlite3'}",
        )
    if isinstance(exc, (FileExistsError, NotADirectoryError)) and Path(where) != path:
        problem = f"{where} is a file, so it cannot hold a folder"
    elif isinstance(exc, FileNotFoundError):
        folder = Path(where).parent if Path(where) == path else where
        problem = f"the folder {folder} cannot be made"
    elif isinstance(exc, PermissionError):
        problem = f"no permission to write {where}"
    else:
        problem = f"{where}: {exc.strerror or exc}"
    return SettingsError(f"OPENMETER_OUTBOX_PATH={str(path)!r} cannot be used: {problem}", PATH_FIX)


def _create(path: Path) -> bool:
    """Make the outbox file (mode 0600) and its folder (0700) where they are missing;
    returns whether the file was there already. A path where no file can be is a
    :class:`SettingsError` that names it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        existed = path.exists()
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)  # a folder: IsADirectoryError
        os.close(fd)
    except OSError as exc:
        raise path_error(path, exc) from None
    return existed


def probe_path(path: Path) -> None:
    """Raise :class:`SettingsError` unless an outbox can be made or opened at ``path``;
    makes its folder (as the logger would) and nothing else."""
    if not _create(path):
        path.unlink()


@dataclass(frozen=True)
class Claimed:
    """One event leased to a sender."""

    seq: int
    source: str
    id: str
    body: str
    attempts: int


@dataclass(frozen=True)
class Held:
    """Events stored by :meth:`Outbox.hold`, to be settled by the final ones."""

    owner: str
    keys: tuple[tuple[str, str], ...]


@dataclass
class Entry:
    """One call's events for :meth:`Outbox.write`, and what became of them."""

    events: Sequence[CloudEvent]
    settle: Held | None = None
    """Held events of the same call that these replace."""
    hold_for: str | None = None
    """A call id: hold these events for that call (see :meth:`Outbox.hold`)."""
    hold_seconds: float = HOLD_SECONDS
    added: int = 0
    settled: int = 0
    """Held events of ``settle`` that were still held and are now gone."""
    held: Held | None = None
    refused: str = ""
    """Why nothing was stored, or empty."""
    full: bool = False
    """Nothing was stored because the outbox reached its byte limit."""

    def refusal_report(self) -> str:
        """Why these events were not stored, with them (only their ids when the outbox
        is full: the events stay with the caller's logs, the ids are enough)."""
        if self.full:
            return f"{self.refused} (event ids {[event['id'] for event in self.events]})"
        return f"{self.refused}; events: {json.dumps(self.events)}"


@dataclass(frozen=True)
class DeadLetter:
    """An event that could not be delivered, with why."""

    source: str
    id: str
    event: CloudEvent
    reason: str
    detail: str
    failed_at: float
    attempts: int


@dataclass(frozen=True)
class OutboxStats:
    """A snapshot of the outbox, shared by every process using the file."""

    queued: int
    in_flight: int
    dead_lettered: int
    delivered: int
    retried: int
    refused: int
    outbox_bytes: int
    oldest_age_seconds: float | None
    last_error: str
    paused: str = ""
    """Why the last sender paused delivery (a key or endpoint the server rejects), or ''."""


def _owner_pid(owner: str | None) -> int | None:
    """The pid in a lease owner (``<pid>-<anything>``), or None when it names none."""
    try:
        return int(str(owner).split("-", 1)[0])
    except ValueError:
        return None


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host still runs.

    The outbox is a local SQLite file, so its senders share this host's pids. A
    lease of a killed process is void at once instead of when it runs out.
    """
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """A killed process that its parent has not reaped yet still answers ``kill(pid, 0)``
    (a proxy worker under its supervisor, say): on Linux /proc tells it is dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def _execute_in(
    conn: sqlite3.Connection, sql: str, params: tuple[object, ...], values: Sequence[object]
) -> int:
    """Run ``sql``, whose ``{}`` is an IN list, for ``values`` in chunks of 500 (older
    SQLite allows 999 variables per statement): one statement per chunk, not per row.
    Returns the rows changed."""
    changed = 0
    for start in range(0, len(values), 500):
        chunk = values[start : start + 500]
        marks = ",".join("?" * len(chunk))
        changed += conn.execute(sql.format(marks), (*params, *chunk)).rowcount
    return changed


_Row = tuple[str, str, str, int]
"""An event as stored: source, id, body (JSON) and its size in bytes."""
_ROWS_PER_INSERT = 199
"""Rows per INSERT: five variables each, within the 999 older SQLite allows."""
_IDS_PER_LOOKUP = 900
"""Ids per lookup of known events: one variable each, plus the source."""


def _existing(conn: sqlite3.Connection, keys: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which of ``keys`` (source, id) are queued, delivered recently or dead-lettered:
    one statement per source and 900 ids (usually one in all)."""
    by_source: dict[str, list[str]] = {}
    for source, event_id in keys:
        by_source.setdefault(source, []).append(event_id)
    found: set[tuple[str, str]] = set()
    for source, ids in by_source.items():
        for start in range(0, len(ids), _IDS_PER_LOOKUP):
            chunk = ids[start : start + _IDS_PER_LOOKUP]
            marks = ",".join(f"?{number}" for number in range(2, len(chunk) + 2))
            rows = conn.execute(
                f"SELECT id FROM events WHERE source = ?1 AND id IN ({marks}) "
                f"UNION ALL SELECT id FROM delivered WHERE source = ?1 AND id IN ({marks}) "
                f"UNION ALL SELECT id FROM dead_letters WHERE source = ?1 AND id IN ({marks})",
                (source, *chunk),
            ).fetchall()
            found.update((source, row[0]) for row in rows)
    return found


def encode(event: CloudEvent) -> str:
    """Compact JSON of one event, as stored and sent (UTF-8, no spaces).

    orjson, several times faster than the standard library, on the writer's path;
    the standard library for what orjson refuses (integers beyond 64 bits). orjson
    would write a NaN as null: events never hold one (``usage`` drops non-finite
    numbers before they get there).
    """
    try:
        return orjson.dumps(event).decode()
    except TypeError:
        return json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class Outbox:
    """A durable, multi-process queue of CloudEvents in one SQLite file.

    Thread-safe. After ``fork`` the child opens its own connection on first use.

    Opening checks the file (``PRAGMA quick_check``, about 0.2 s per 100 MB of
    outbox) unless ``verify`` is false; raises :class:`OutboxDamaged` for a damaged
    file and :class:`SettingsError` for a path where no outbox can be.
    """

    def __init__(
        self, path: str | os.PathLike[str], max_bytes: int = 1024**3, *, verify: bool = True
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._recent: dict[tuple[str, str], None] = {}
        self._checkpointer: sqlite3.Connection | None = None
        self._checkpointer_pid = -1
        self._checkpoint_lock = threading.Lock()
        forksafe.track(self)
        self._prepare_file()
        try:
            with self._lock:
                conn = self._connection()
                if verify:
                    self._verify(conn)
                conn.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}COMMIT;")
        except sqlite3.DatabaseError as exc:
            self.close()
            if is_damage(exc):
                raise OutboxDamaged(self.path, str(exc)) from None
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise
            raise SettingsError(
                f"OPENMETER_OUTBOX_PATH={str(self.path)!r} cannot be opened: {exc}", PATH_FIX
            ) from None

    def _verify(self, conn: sqlite3.Connection) -> None:
        found = conn.execute("PRAGMA quick_check(1)").fetchone()
        if found is None or found[0] != "ok":
            raise OutboxDamaged(self.path, str(found[0] if found else "no answer to a check"))

    def _prepare_file(self) -> None:
        _create(self.path)
        os.chmod(self.path, 0o600)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            # A connection inherited across fork must not be used (nor closed) by the child.
            conn = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            enter_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA wal_autocheckpoint=0")  # the sender checkpoints instead
            self._conn = conn
            self._pid = os.getpid()
            self._recent = {}
            for suffix in ("-wal", "-shm"):
                side = Path(str(self.path) + suffix)
                if side.exists():
                    os.chmod(side, 0o600)
        return self._conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._connection()

    def after_fork_in_child(self) -> None:
        """Drop the parent's lock and connection (another thread may have held them)."""
        self._lock = threading.Lock()
        self._checkpoint_lock = threading.Lock()
        self._conn = None
        self._checkpointer = None
        self._recent = {}

    def close(self) -> None:
        """Close this process's connection (reopened on next use)."""
        with self._lock, self._checkpoint_lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            if self._checkpointer is not None and self._checkpointer_pid == os.getpid():
                self._checkpointer.close()
            self._conn = None
            self._checkpointer = None

    # -- writing -----------------------------------------------------------------

    def enqueue(self, events: Sequence[CloudEvent], settle: Held | None = None) -> int:
        """Store events durably; returns how many were new.

        An event whose (source, id) is already queued, dead-lettered or was
        delivered recently is ignored. ``settle`` names events held for the same
        call (see :meth:`hold`): they are replaced by these in the same transaction.
        Raises :class:`OutboxFull` (storing none of them) when the byte limit would
        be passed; held events then stay held.
        """
        return self._write_one(Entry(list(events), settle=settle)).added

    def hold(self, events: Sequence[CloudEvent], call: str, seconds: float = HOLD_SECONDS) -> Held:
        """Store events that must not be sent yet, because the call they bill may still
        end otherwise: they are sent when this process dies or ``seconds`` pass, unless
        :meth:`enqueue` settles them first or :meth:`drop` removes them."""
        held = self._write_one(Entry(list(events), hold_for=call, hold_seconds=seconds)).held
        assert held is not None
        return held

    def drop(self, held: Held) -> int:
        """Forget held events that are still held (their call failed); returns how many."""
        return self._write_one(Entry([], settle=held)).settled

    def _write_one(self, entry: Entry) -> Entry:
        self.write([entry])
        if entry.refused:
            raise OutboxFull(entry.refused)
        return entry

    def write(self, entries: Sequence[Entry]) -> None:
        """Store several entries in one transaction (one commit for many calls).

        Each entry gets its outcome: ``added``, ``held`` or ``refused`` (the byte
        limit; that entry stores nothing and settles nothing).
        """
        now = time.time()
        pid = os.getpid()
        prepared = []
        for entry in entries:
            rows = []
            for event in entry.events:
                key = (str(event["source"]), str(event["id"]))
                if entry.hold_for is None and key in self._recent:
                    continue
                body = encode(event)
                rows.append((key[0], key[1], body, len(body.encode())))
            if entry.hold_for is None:
                owner, until = None, 0.0
            else:
                owner, until = f"{pid}-hold-{entry.hold_for}", now + entry.hold_seconds
                entry.held = Held(owner, tuple((row[0], row[1]) for row in rows))
            prepared.append((entry, rows, owner, until))
        with self._transaction() as conn:
            stored = conn.execute("SELECT value FROM meta WHERE key = 'bytes'").fetchone()[0]
            refused = 0
            plain: list[tuple[Entry, list[_Row]]] = []
            for entry, rows, owner, until in prepared:
                incoming = sum(row[3] for row in rows)
                if stored + incoming > self.max_bytes:
                    refused += len(rows)
                    entry.refused = (
                        f"outbox {self.path} is full ({stored} of {self.max_bytes} bytes): "
                        f"{len(rows)} event(s) refused; restore delivery or raise "
                        "OPENMETER_OUTBOX_MAX_BYTES"
                    )
                    entry.full = True
                    entry.held = None
                    continue  # held events of its call, if any, stay: better than nothing
                stored += incoming
                if entry.settle is None and owner is None:
                    plain.append((entry, rows))
                    continue
                self._insert_plain(conn, plain, now)  # first those before it, in order
                plain = []
                if entry.settle is not None:
                    entry.settled = self._delete_held(conn, entry.settle)
                for source, event_id, body, size in rows:
                    entry.added += conn.execute(
                        "INSERT INTO events (source, id, body, size, enqueued_at, lease_owner, "
                        "lease_until) SELECT ?, ?, ?, ?, ?, ?, ? WHERE NOT EXISTS "
                        "(SELECT 1 FROM delivered WHERE source = ? AND id = ?) "
                        "AND NOT EXISTS (SELECT 1 FROM dead_letters WHERE source = ? AND id = ?) "
                        "ON CONFLICT (source, id) DO NOTHING",
                        (source, event_id, body, size, now, owner, until, *2 * (source, event_id)),
                    ).rowcount
            self._insert_plain(conn, plain, now)
            if refused:
                conn.execute("UPDATE meta SET value = value + ? WHERE key = 'refused'", (refused,))
        for entry, rows, owner, _ in prepared:
            if owner is None and not entry.refused:
                self._remember((row[0], row[1]) for row in rows)

    def write_or_refuse(self, entries: Sequence[Entry]) -> None:
        """:meth:`write`, except that an error (disk full, database locked too long)
        marks every entry refused with it instead of raising."""
        try:
            if entries:
                self.write(entries)
        except Exception as exc:
            detail = f"cannot store events in the outbox ({type(exc).__name__}: {exc})"
            for entry in entries:
                entry.refused = entry.refused or detail

    @staticmethod
    def _insert_plain(
        conn: sqlite3.Connection, plain: Sequence[tuple[Entry, Sequence[_Row]]], now: float
    ) -> None:
        """Insert the rows of entries that neither hold nor settle, skipping those
        already queued, delivered or dead-lettered, in a few statements for the lot.

        The writer runs in LiteLLM's process: every statement lets go of the GIL, and
        taking it back while LiteLLM's threads run costs a thread switch, so a
        statement per row would spread a commit's work over all the calls around it.
        """
        keys = {(row[0], row[1]) for _, rows in plain for row in rows}
        if not keys:
            return
        taken = _existing(conn, keys)
        new: list[object] = []
        for entry, rows in plain:
            for source, event_id, body, size in rows:
                if (source, event_id) in taken:
                    continue
                taken.add((source, event_id))
                new.extend((source, event_id, body, size, now))
                entry.added += 1
        width = _ROWS_PER_INSERT * 5
        for start in range(0, len(new), width):
            chunk = new[start : start + width]
            marks = ",".join(["(?,?,?,?,?)"] * (len(chunk) // 5))
            conn.execute(
                "INSERT INTO events (source, id, body, size, enqueued_at) "
                f"VALUES {marks} ON CONFLICT (source, id) DO NOTHING",
                chunk,
            )

    @staticmethod
    def _delete_held(conn: sqlite3.Connection, held: Held) -> int:
        return sum(
            conn.execute(
                "DELETE FROM events WHERE source = ? AND id = ? AND lease_owner = ?",
                (source, event_id, held.owner),
            ).rowcount
            for source, event_id in held.keys
        )

    def _remember(self, keys: Iterable[tuple[str, str]]) -> None:
        for key in keys:
            self._recent[key] = None
        while len(self._recent) > 10_000:
            del self._recent[next(iter(self._recent))]

    def dead_letter(self, events: Sequence[CloudEvent], reason: str, detail: str) -> int:
        """Store events straight in the dead-letter table (they cannot be sent as they are)."""
        now = time.time()
        added = 0
        with self._transaction() as conn:
            for event in events:
                body = encode(event)
                cursor = conn.execute(
                    "INSERT INTO dead_letters (source, id, body, size, reason, detail, failed_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (source, id) DO NOTHING",
                    (
                        str(event["source"]),
                        str(event["id"]),
                        body,
                        len(body.encode()),
                        reason,
                        detail,
                        now,
                    ),
                )
                added += cursor.rowcount
        return added

    # -- the sender's side ---------------------------------------------------------

    def claim(self, owner: str, limit: int, lease_seconds: float) -> list[Claimed]:
        """Lease up to ``limit`` of the oldest unleased events to ``owner``."""
        now = time.time()
        with self._transaction() as conn:
            owners = conn.execute(
                "SELECT DISTINCT lease_owner FROM events WHERE lease_until > ?", (now,)
            ).fetchall()
            alive: dict[int, bool] = {}
            dead = []
            for (other,) in owners:
                pid = _owner_pid(other)
                if other == owner or pid is None:
                    continue
                if pid not in alive:
                    alive[pid] = _pid_alive(pid)
                if not alive[pid]:
                    dead.append(other)
            _execute_in(
                conn,
                "UPDATE events SET lease_owner = NULL, lease_until = 0 WHERE lease_until > ? "
                "AND lease_owner IN ({})",
                (now,),
                dead,
            )
            rows = conn.execute(
                "SELECT seq, source, id, body, attempts FROM events "
                "WHERE lease_until <= ? ORDER BY lease_until, seq LIMIT ?",
                (now, limit),
            ).fetchall()
            _execute_in(
                conn,
                "UPDATE events SET lease_owner = ?, lease_until = ? WHERE seq IN ({})",
                (owner, now + lease_seconds),
                [row[0] for row in rows],
            )
        return [Claimed(*row) for row in rows]

    def ack(self, owner: str, batch: Sequence[Claimed]) -> int:
        """The batch was delivered: forget it and remember its ids."""
        now = time.time()
        with self._transaction() as conn:
            removed = _execute_in(
                conn,
                "DELETE FROM events WHERE lease_owner = ? AND seq IN ({})",
                (owner,),
                [item.seq for item in batch],
            )
            conn.executemany(
                "INSERT OR REPLACE INTO delivered (source, id, delivered_at) VALUES (?, ?, ?)",
                [(item.source, item.id, now) for item in batch],
            )
            conn.execute("UPDATE meta SET value = value + ? WHERE key = 'delivered'", (len(batch),))
        return removed

    def release(self, owner: str, batch: Sequence[Claimed], error: str) -> None:
        """The batch could not be delivered now: keep it for a retry."""
        with self._transaction() as conn:
            _execute_in(
                conn,
                "UPDATE events SET lease_owner = NULL, lease_until = 0, attempts = attempts + 1 "
                "WHERE lease_owner = ? AND seq IN ({})",
                (owner,),
                [item.seq for item in batch],
            )
            conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'retried'")
            conn.execute("UPDATE meta SET value = ? WHERE key = 'last_error'", (error,))

    def bury(self, owner: str, batch: Sequence[Claimed], reason: str, detail: str) -> None:
        """Move events the server rejected to the dead-letter table."""
        now = time.time()
        with self._transaction() as conn:
            for item in batch:
                deleted = conn.execute(
                    "DELETE FROM events WHERE seq = ? AND lease_owner = ?", (item.seq, owner)
                ).rowcount
                if deleted:
                    conn.execute(
                        "INSERT OR REPLACE INTO dead_letters "
                        "(source, id, body, size, reason, detail, failed_at, attempts) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            item.source,
                            item.id,
                            item.body,
                            len(item.body.encode()),
                            reason,
                            detail,
                            now,
                            item.attempts + 1,
                        ),
                    )
            conn.execute(
                "UPDATE meta SET value = ? WHERE key = 'last_error'", (f"{reason}: {detail}",)
            )

    def set_last_error(self, error: str) -> None:
        """Record the newest delivery error (shown by stats)."""
        with self._transaction() as conn:
            conn.execute("UPDATE meta SET value = ? WHERE key = 'last_error'", (error,))

    def set_paused(self, reason: str) -> None:
        """Record that delivery is paused and why ('' once it resumed), for every reader
        of the file (``outbox status``, the dashboard)."""
        with self._transaction() as conn:
            conn.execute("UPDATE meta SET value = ? WHERE key = 'paused'", (reason,))

    def forget_delivered(self, older_than: float = DELIVERED_MEMORY_SECONDS) -> int:
        """Drop remembered delivered ids older than ``older_than`` seconds.

        In small transactions, so that hooks never wait long for the outbox.
        """
        cutoff = time.time() - older_than
        removed = 0
        while True:
            with self._transaction() as conn:
                count = conn.execute(
                    "DELETE FROM delivered WHERE (source, id) IN (SELECT source, id FROM "
                    "delivered WHERE delivered_at < ? LIMIT 500)",
                    (cutoff,),
                ).rowcount
            removed += count
            if count < 500:
                return removed

    def checkpoint(self) -> None:
        """Copy the WAL back into the database, on a connection of its own.

        Hooks' commits never checkpoint (that could take milliseconds on the request
        path); the sender calls this instead. A passive checkpoint does not
        block writers. Under a steady stream of hooks it may never catch up with the
        end of the WAL, which then never starts over; past ``WAL_RESTART_FRAMES`` a
        truncating checkpoint, which holds writers back for its few milliseconds,
        brings the file back to nothing.
        """
        with self._checkpoint_lock:  # close() from another thread must wait for it
            if self._checkpointer is None or self._checkpointer_pid != os.getpid():
                self._checkpointer = sqlite3.connect(
                    self.path, timeout=30.0, isolation_level=None, check_same_thread=False
                )
                self._checkpointer.execute("PRAGMA busy_timeout=2000")
                self._checkpointer_pid = os.getpid()
            checkpointer = self._checkpointer
            _, frames, _ = checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if frames > WAL_RESTART_FRAMES:
                checkpointer.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- operators' side ------------------------------------------------------------

    def dead_letters(
        self, limit: int | None = None, *, newest_first: bool = False
    ) -> list[DeadLetter]:
        """Dead letters, oldest first (or newest first)."""
        order = "failed_at DESC, id DESC" if newest_first else "failed_at, id"
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT source, id, body, reason, detail, failed_at, attempts "
                f"FROM dead_letters ORDER BY {order} LIMIT ?",
                (-1 if limit is None else limit,),
            ).fetchall()
        return [
            DeadLetter(row[0], row[1], json.loads(row[2]), row[3], row[4], row[5], row[6])
            for row in rows
        ]

    def dead_letter_reasons(self) -> dict[str, int]:
        """How many dead letters there are for each reason."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT reason, COUNT(*) FROM dead_letters GROUP BY reason ORDER BY reason"
            ).fetchall()
        return {str(reason): int(count) for reason, count in rows}

    def requeue(self, ids: Sequence[str] | None = None, subject: str | None = None) -> int:
        """Move dead letters back to the queue (all when ``ids`` is None).

        ``subject`` sets the subject of each requeued event (for events that had
        none). An event that still has no subject stays dead and raises.
        """
        if subject is not None and not subject.strip():
            raise ValueError("subject must be a non-empty string")
        now = time.time()
        with self._transaction() as conn:
            if ids is None:
                rows = conn.execute("SELECT source, id, body FROM dead_letters").fetchall()
            else:
                rows = []
                for event_id in ids:
                    found = conn.execute(
                        "SELECT source, id, body FROM dead_letters WHERE id = ?", (event_id,)
                    ).fetchall()
                    if not found:
                        raise KeyError(f"no dead letter with id {event_id!r}")
                    rows.extend(found)
            for source, event_id, body in rows:
                event: dict[str, Any] = json.loads(body)
                if subject is not None:
                    event["subject"] = subject
                if not str(event.get("subject") or "").strip():
                    raise ValueError(
                        f"dead letter {event_id!r} has no subject: requeue it with a subject"
                    )
                new_body = encode(event)
                conn.execute(
                    "DELETE FROM dead_letters WHERE source = ? AND id = ?", (source, event_id)
                )
                conn.execute(
                    "INSERT INTO events (source, id, body, size, enqueued_at) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (source, id) DO NOTHING",
                    (source, event_id, new_body, len(new_body.encode()), now),
                )
        return len(rows)

    def purge_dead(self) -> int:
        """Delete every dead letter; returns how many."""
        with self._transaction() as conn:
            return conn.execute("DELETE FROM dead_letters").rowcount

    def is_empty(self, through: int | None = None) -> bool:
        """True when no event waits (cheap, unlike counting them); with ``through``, no
        event stored up to that :meth:`last_seq`."""
        with self._reading() as conn:
            if through is None:
                return conn.execute("SELECT 1 FROM events LIMIT 1").fetchone() is None
            found = conn.execute("SELECT 1 FROM events WHERE seq <= ? LIMIT 1", (through,))
            return found.fetchone() is None

    def last_seq(self) -> int:
        """The place in the queue of the last event stored so far (0 for none)."""
        with self._reading() as conn:
            last: int | None = conn.execute("SELECT MAX(seq) FROM events").fetchone()[0]
        return last or 0

    def pending(self) -> int:
        """Events waiting to be delivered, leased or not."""
        with self._reading() as conn:
            count: int = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        return count

    def ready(self, limit: int) -> tuple[int, float | None]:
        """How many unleased events wait (counted up to ``limit``) and the oldest's age."""
        now = time.time()
        with self._reading() as conn:
            count = conn.execute(
                "SELECT COUNT(*) FROM (SELECT 1 FROM events WHERE lease_until <= ? LIMIT ?)",
                (now, limit),
            ).fetchone()[0]
            oldest = conn.execute(
                "SELECT enqueued_at FROM events WHERE lease_until <= ? "
                "ORDER BY lease_until, seq LIMIT 1",
                (now,),
            ).fetchone()
        return count, (now - oldest[0]) if oldest else None

    def stats(self) -> OutboxStats:
        """Counts and sizes for every process sharing this file."""
        now = time.time()
        with self._reading() as conn:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            queued, in_flight, oldest = conn.execute(
                "SELECT COUNT(*), TOTAL(lease_until > ?), MIN(enqueued_at) FROM events", (now,)
            ).fetchone()
            dead = conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]
        return OutboxStats(
            queued=int(queued),
            in_flight=int(in_flight),
            dead_lettered=int(dead),
            delivered=int(meta["delivered"]),
            retried=int(meta["retried"]),
            refused=int(meta["refused"]),
            outbox_bytes=int(meta["bytes"]),
            oldest_age_seconds=None if oldest is None else max(0.0, now - oldest),
            last_error=str(meta["last_error"]),
            paused=str(meta.get("paused") or ""),
        )
