"""The writer: one thread per process that turns hooks' calls into stored events.

A hook hands its call over and returns at once; the writer builds the events of
whatever has arrived meanwhile and stores them in one SQLite transaction. The request
path never waits for a commit, nor for the GIL after SQLite gave it up (with another thread busy,
taking it back can cost milliseconds), and many calls share one commit.

While calls keep coming the writer works at most every ``COMMIT_INTERVAL`` seconds:
each turn wakes a thread that then competes with LiteLLM's own for the GIL. A turn per
call would cost every call a few percent of its latency; a turn per many calls costs
a few calls a little each and leaves the median alone. The first call after a quiet
spell waits that interval too, so a burst of calls shares one turn. An event is on
disk within about that interval of its hook; a caller that waits for its entry (a
proxy hold), ``drain`` and ``stop`` end the pause at once.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from . import forksafe
from .outbox import Entry, Outbox

log = logging.getLogger("litellm_openmeter")

MAX_ENTRIES_PER_COMMIT = 2000
COMMIT_INTERVAL = 0.2
"""The shortest time between two commits while calls keep arriving (unless a whole
commit's worth of them is waiting)."""
MAX_PENDING = 10_000
"""Entries waiting for the writer before ``submit`` waits for room: memory stays
bounded when calls come faster than the disk takes them (never the case at LiteLLM's
own pace: the writer stores tens of thousands of events a second)."""

Stored = Callable[[Entry], None]
Prepare = Callable[[Any], "Entry | None"]


class _Waited:
    """A queued item whose submitter waits for its entry (others are queued bare)."""

    __slots__ = ("future", "item")

    def __init__(self, item: object, future: Future[Entry]) -> None:
        self.item = item
        self.future = future


_STOP = object()


class Writer:
    """Stores entries in the outbox from a thread of its own, many per transaction.

    ``on_stored`` is called in the writer thread with every entry once its
    transaction committed (or failed: ``entry.refused`` then says why). ``prepare``
    turns what :meth:`submit_later` was given into an entry (or None: nothing to
    store), in the writer thread, just before the transaction.
    """

    def __init__(
        self,
        outbox: Outbox,
        on_stored: Stored,
        prepare: Prepare | None = None,
    ) -> None:
        self.outbox = outbox
        self._on_stored = on_stored
        self._prepare = prepare
        self.submitted_later = 0
        """Items given to :meth:`submit_later` so far (a LiteLLM hook gives one each)."""
        self._fresh_thread_state()
        forksafe.track(self)

    def _fresh_thread_state(self) -> None:
        """No thread, an empty queue and new locks (at start, and in a forked child)."""
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._pending = 0
        # The hooks take the bare lock (its "with" runs in C; a Condition's in Python).
        self._pending_lock = threading.Lock()
        self._idle = threading.Condition(self._pending_lock)
        self._urgent = threading.Event()
        self._thread: threading.Thread | None = None
        self._alive = False  # Thread.is_alive() costs a hook three Python calls
        self._start_lock = threading.Lock()

    @property
    def pending(self) -> int:
        """Entries submitted and not yet stored."""
        return self._pending

    def submit(self, entry: Entry, wait: bool = False) -> Future[Entry] | None:
        """Queue ``entry`` for the next transaction; with ``wait``, a future that is
        done when it is stored (for callers that must not go on before that)."""
        future: Future[Entry] | None = Future() if wait else None
        self._put(entry, future, False)
        if wait:
            self._urgent.set()  # a caller that waits gets its commit without the pause
        return future

    def submit_later(self, work: object) -> None:
        """Queue ``work`` that ``prepare`` turns into an entry in the writer thread: the
        cheapest hand-over, for the hooks."""
        self._put(work, None, True)

    def _put(self, item: object, future: Future[Entry] | None, later: bool) -> None:
        with self._pending_lock:
            while self._pending >= MAX_PENDING and self._alive:
                self._idle.wait(1.0)
            self._pending += 1
            if later:  # counted here, under the lock the hand-over takes anyway
                self.submitted_later += 1
            full = self._pending == MAX_ENTRIES_PER_COMMIT
        # Bare unless waited for: every object queued here is alive until the writer's
        # turn, long enough to be promoted by the garbage collector.
        self._queue.put(item if future is None else _Waited(item, future))
        if full:
            self._urgent.set()  # a full commit is waiting: no reason to pause
        if not self._alive:
            self._start()

    def drain(self, timeout: float) -> bool:
        """Wait until everything submitted so far is stored; False on timeout."""
        deadline = time.monotonic() + timeout
        self._urgent.set()
        with self._idle:
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def stop(self, timeout: float) -> bool:
        """Store what is queued, then end the thread; False if it did not end in time."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return self._pending == 0
        self._queue.put(_STOP)
        self._urgent.set()
        thread.join(timeout)
        return not thread.is_alive()

    def after_fork_in_child(self) -> None:
        """Forget the parent's thread and queue: the parent stores its own entries."""
        self._fresh_thread_state()

    def _start(self) -> None:
        with self._start_lock:
            if self._alive:
                return
            self._thread = threading.Thread(
                target=self._run, name=f"litellm-openmeter-writer-{os.getpid()}", daemon=True
            )
            self._alive = True
            try:
                self._thread.start()
            except BaseException:
                self._alive = False
                raise

    def _run(self) -> None:
        try:
            self._work()
        finally:
            self._alive = False

    def _work(self) -> None:
        stopping = False
        # An interval starts at a commit, or with the call that ends a quiet spell (the
        # calls that started this thread end one): that call waits for the calls after
        # it, and the burst shares one turn after it rather than one in its middle.
        interval_start = time.monotonic()
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                if stopping:  # once stop() was asked, only what is already queued remains
                    return
                item = self._queue.get()
                interval_start = time.monotonic()
            pause = interval_start + COMMIT_INTERVAL - time.monotonic()
            if (
                pause > 0
                and not stopping
                and item is not _STOP
                and type(item) is not _Waited
                and self._pending < MAX_ENTRIES_PER_COMMIT
            ):
                self._urgent.wait(pause)  # let more calls join this commit
            self._urgent.clear()
            batch = []
            while True:
                if item is _STOP:
                    stopping = True
                else:
                    batch.append(item)
                if len(batch) >= MAX_ENTRIES_PER_COMMIT:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._store(batch)
                interval_start = time.monotonic()
            if not stopping and self._pending < MAX_ENTRIES_PER_COMMIT:
                # Sleep the interval out here, not in get(): a hook's hand-over then
                # wakes no thread while calls keep coming (one wake-up per turn, not
                # two); only the first call after a quiet spell wakes it.
                self._urgent.wait(COMMIT_INTERVAL)

    def _store(self, batch: list[object]) -> None:
        ready: list[tuple[Entry, Future[Entry] | None]] = []
        for queued in batch:
            item, future = (
                (queued.item, queued.future) if isinstance(queued, _Waited) else (queued, None)
            )
            entry = item if isinstance(item, Entry) else self._prepared(item)
            if entry is not None:
                ready.append((entry, future))
        self.outbox.write_or_refuse([entry for entry, _ in ready])
        for entry, future in ready:
            try:
                self._on_stored(entry)
            except Exception:  # pragma: no cover - the callback only logs and counts
                log.exception("litellm-openmeter: error after storing events")
            if future is not None and not future.cancelled():
                future.set_result(entry)
        with self._idle:
            self._pending -= len(batch)
            self._idle.notify_all()

    def _prepared(self, item: Any) -> Entry | None:
        try:
            return self._prepare(item) if self._prepare is not None else None
        except Exception:  # pragma: no cover - prepare keeps what it cannot build
            log.exception("litellm-openmeter: error while preparing events")
            return None
