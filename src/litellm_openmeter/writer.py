"""The writer: one thread per process that turns hooks' calls into stored events.

A hook hands its call over and returns at once; the writer builds the events of
whatever has arrived meanwhile and stores them in one SQLite transaction, or hands
the calls to the delivery process, which does both (a ``Relay``: then LiteLLM's
process spends no time building events nor in SQLite). The request path never waits
for a commit, nor for the GIL after SQLite gave it up (with another thread busy,
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
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Protocol

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
RelayForm = Callable[[Any], "bytes | None"]


class _Waited:
    """A queued item whose submitter waits for its entry (others are queued bare)."""

    __slots__ = ("future", "item")

    def __init__(self, item: object, future: Future[Entry]) -> None:
        self.item = item
        self.future = future


_STOP = object()


class Relay(Protocol):
    """Another process that stores entries for the writer (see ``delivery``)."""

    def relay(
        self, entries: Sequence[Entry], calls: Sequence[tuple[Any, bytes]] = ()
    ) -> tuple[Sequence[Entry], Sequence[Any]]:
        """Take entries to store, and calls (what ``prepare`` would have turned into
        entries, with their JSON) to build and store; returns the entries and the calls
        the writer must store itself."""

    def wait_relayed(self, timeout: float) -> bool:
        """Wait until what was taken is stored; False on timeout."""


class Writer:
    """Stores entries in the outbox from a thread of its own, many per transaction.

    ``on_stored`` is called in the writer thread with every entry once its
    transaction committed (or failed: ``entry.refused`` then says why). ``prepare``
    turns what :meth:`submit_later` was given into an entry (or None: nothing to
    store), in the writer thread, just before the transaction. With a ``relay``, the
    entries that neither hold nor settle nor are waited for go to it instead (the
    delivery process stores them); ``on_stored`` is not called for those. With a
    ``relay_form`` too, what it turns into JSON goes to the relay unprepared (the
    delivery process builds the entries), and the rest is prepared here.
    """

    def __init__(
        self,
        outbox: Outbox,
        on_stored: Stored,
        prepare: Prepare | None = None,
        relay: Relay | None = None,
        relay_form: RelayForm | None = None,
    ) -> None:
        self.outbox = outbox
        self._on_stored = on_stored
        self._prepare = prepare
        self._relay = relay
        self._relay_form = relay_form if relay is not None else None
        self.calls_relayed = 0
        """Calls handed to the relay unprepared, for it to build their entries (those
        it gives back are prepared here after all)."""
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
        """Entries submitted and not yet stored (nor handed to the relay)."""
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
        """Queue ``work`` that ``prepare`` turns into an entry in the writer thread (or
        ``relay_form`` into JSON for the relay): the cheapest hand-over, for the hooks."""
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
        if self._relay is not None:
            return self._relay.wait_relayed(max(0.0, deadline - time.monotonic()))
        return True

    def stop(self, timeout: float) -> bool:
        """Store what is queued, then end the thread; False if it did not end in time."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return self._pending == 0
        deadline = time.monotonic() + timeout
        self._queue.put(_STOP)
        self._urgent.set()
        thread.join(timeout)
        if thread.is_alive():
            return False
        if self._relay is not None:
            return self._relay.wait_relayed(max(0.0, deadline - time.monotonic()))
        return True

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
        calls: list[tuple[Any, bytes]] = []
        for queued in batch:
            item, future = (
                (queued.item, queued.future) if isinstance(queued, _Waited) else (queued, None)
            )
            if isinstance(item, Entry):
                ready.append((item, future))
                continue
            if self._relay_form is not None and future is None:
                form = self._relay_form(item)
                if form is not None:
                    calls.append((item, form))
                    continue
            entry = self._prepared(item)
            if entry is not None:
                ready.append((entry, future))
        if self._relay is not None:
            ready = self._hand_over(ready, calls)
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

    def _hand_over(
        self, ready: list[tuple[Entry, Future[Entry] | None]], calls: list[tuple[Any, bytes]]
    ) -> list[tuple[Entry, Future[Entry] | None]]:
        """Relay the plain entries and the calls; returns the entries to store here:
        the others, and any the relay gave back (calls given back prepared here)."""
        assert self._relay is not None
        plain, others = [], []
        for entry, future in ready:
            if future is None and entry.hold_for is None and entry.settle is None:
                plain.append(entry)
            else:
                others.append((entry, future))
        if not plain and not calls:
            return ready
        try:
            back, unbuilt = self._relay.relay(plain, calls)
        except Exception:  # pragma: no cover - the relay gives back what it cannot take
            log.exception("litellm-openmeter: error while relaying events")
            back, unbuilt = plain, [item for item, _ in calls]
        self.calls_relayed += len(calls)
        built = [entry for entry in map(self._prepared, unbuilt) if entry is not None]
        return others + [(entry, None) for entry in [*back, *built]]
