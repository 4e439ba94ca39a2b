"""The delivery process: building, storing and sending, in a child process of its own.

Every microsecond a thread of LiteLLM's process spends building events, in SQLite, on
the outbox's claims, the HTTP POSTs and the acknowledgements is taken from LiteLLM's
own threads: they share one GIL. A child process has a GIL of its own, so by default
(``OPENMETER_DELIVERY=process``) the writer thread only relays the hooks' calls as
JSON (and the entries it had to build itself, see ``building``) to the child, which
builds their events, stores them in the outbox and runs the sender.

The parent talks to the child through two pipes of JSON lines: settings (or a
``probe``, which the child answers and exits: ``doctor`` checks so that it starts), then
``store`` (a batch of the writer's calls and entries, numbered), ``wake``, ``flush``,
``ack`` and ``stop`` down the child's stdin; ``stored`` (every batch up to this number
is committed, and how many of their events were new), log records and pause changes
up its stdout, which the parent logs through its own ``litellm_openmeter`` logger, so
that the user's logging configuration applies to them. Batches stay with the parent
until the child confirms them: those a dead child never confirmed go to its successor
or are built and stored by the parent, and storing is idempotent, so none is lost or
stored twice. The child confirms at most once every ``ACK_INTERVAL`` unless the parent
asks (``ack``, ``flush``, ``stop``): each confirmation wakes a thread of LiteLLM's
process, which then waits for the GIL and takes it from LiteLLM's own threads. When the parent
goes away (closes the logger, exits, or is killed) the child reads its stdin to the
end, storing what is there, sends what it can within ``shutdown_timeout`` and exits;
what is left waits in the outbox for the next process.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import orjson

from . import forksafe
from .building import CallBuilder
from .outbox import Entry, Outbox
from .sender import Sender
from .settings import Settings

log = logging.getLogger("litellm_openmeter")

RESTART_INTERVAL = 1.0
"""The shortest time between two starts of the child (one that keeps dying)."""
RELAY_WRITE_TIMEOUT = 5.0
"""How long the writer waits for room in the child's pipe before it stores the
entries itself (a child that reads nothing for that long is stuck)."""
PIPE_BYTES = 1 << 20
"""The pipe to the child is enlarged to this (when the system allows) so that a
commit's worth of entries fits in it at once."""
ACK_INTERVAL = 1.0
"""How long the child may hold back its confirmation of stored batches (unless the
parent asks for it): one wake-up of the parent's listening thread a second instead of
one per batch."""
NICENESS = 10
"""How much the child lowers its CPU priority: where cores are scarce, LiteLLM's own
threads come first, and the child still gets about a tenth of a busy core (some 1,300
events a second)."""

Stored = Callable[[Entry], None]


class _Batch:
    """Entries and calls (as JSON) relayed together, kept until the child says it
    stored them. Only the calls' JSON is kept (bytes, which the garbage collector does
    not track): a batch may wait a second for its confirmation."""

    __slots__ = ("entries", "forms")

    def __init__(self, entries: Sequence[Entry], forms: Sequence[bytes] = ()) -> None:
        self.entries = entries
        self.forms = forms

    @property
    def items(self) -> list[Any]:
        """The calls parsed back, for the writer's ``prepare`` to build their entries
        here (it takes a call's parsed JSON as it takes the call)."""
        return [orjson.loads(form) for form in self.forms]


def settings_message(settings: Settings) -> dict[str, Any]:
    """Settings as JSON for the child's stdin (a pipe: the key is in no argv nor env)."""
    message: dict[str, Any] = {}
    for item in fields(settings):
        value = getattr(settings, item.name)
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        message[item.name] = value
    return message


def settings_from_message(message: dict[str, Any]) -> Settings:
    """The inverse of :func:`settings_message`."""
    values = dict(message)
    values["outbox_path"] = Path(values["outbox_path"])
    values["subject_from"] = tuple(values["subject_from"])
    return Settings(**values)


def child_command() -> list[str]:
    """How the delivery process is started: this Python, ``-m litellm_openmeter.delivery``."""
    return [sys.executable, "-m", "litellm_openmeter.delivery"]


def start_child(stderr: int | None = None) -> subprocess.Popen[bytes]:
    """Start a delivery process, its stdin and stdout piped (``stderr`` as given:
    by default this process's own)."""
    # The child imports what this process can import, however its path was set.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path for path in sys.path if path))
    return subprocess.Popen(
        child_command(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        close_fds=True,
        env=env,
    )


def probe(timeout: float = 30.0) -> str | None:
    """Start a delivery process the way a logger does, one that only says it runs and
    exits (it opens no outbox and sends nothing). None when it answered within
    ``timeout`` seconds; otherwise what went wrong, in one line."""
    try:
        process = start_child(stderr=subprocess.PIPE)
    except OSError as exc:
        return f"cannot run {sys.executable}: {type(exc).__name__}: {exc}"
    try:
        out, err = process.communicate(b'{"probe": true}\n', timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        return f"no answer within {timeout:g}s"
    for line in out.splitlines():
        with contextlib.suppress(ValueError):
            if json.loads(line).get("ready"):
                return None
    lines = [line.strip() for line in err.decode(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line]  # the traceback's last line
    detail = f": {(errors or lines)[-1]}" if lines else ""
    return f"exited with code {process.returncode} before it ran{detail}"


class DeliveryProcess:
    """The sender in a child process, driven like :class:`~.sender.Sender` (start, wake,
    flush, stop, ``paused_reason``), which also stores what :meth:`relay` hands it.
    ``on_stored`` gets the entries the parent had to store itself after all,
    ``on_relayed`` the number of new events in each batch the child stored;
    ``prepare`` turns a relayed call the child never stored into its entry."""

    def __init__(
        self,
        settings: Settings,
        outbox: Outbox,
        on_stored: Stored | None = None,
        on_relayed: Callable[[int], None] | None = None,
        prepare: Callable[[Any], Entry | None] | None = None,
    ) -> None:
        self.settings = settings
        self.outbox = outbox
        self._on_stored = on_stored
        self._on_relayed = on_relayed
        self._prepare = prepare
        self._unacked: dict[int, _Batch] = {}
        self._unacked_by: subprocess.Popen[bytes] | None = None
        self._stuck: subprocess.Popen[bytes] | None = None
        self._numbers = itertools.count(1)
        self._relayed = threading.Condition()
        self._write_lock = threading.Lock()
        self._paused: str | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._started_at = -RESTART_INTERVAL
        self._fallback: Sender | None = None
        self._broken: str | None = None
        forksafe.track(self)

    @property
    def paused_reason(self) -> str | None:
        """Why delivery is paused (key rejected, wrong endpoint), or None."""
        if self._fallback is not None:
            return self._fallback.paused_reason
        return self._paused

    @property
    def pid(self) -> int | None:
        """The child's process id (None before it started, or when delivery fell back
        to a thread)."""
        process = self._process
        return process.pid if process is not None else None

    @property
    def running(self) -> bool:
        """True while the child lives (the writer asks after every commit: no system
        call, the listening thread reaps the child when it ends)."""
        if self._fallback is not None:
            return self._fallback.running
        process = self._process
        return process is not None and process.returncode is None

    def ensure_started(self) -> None:
        """Start the child if there is none (first use, after it died, after fork)."""
        if self._fallback is not None:
            self._fallback.ensure_started()
            return
        if self.running:
            return
        with self._lock:
            if self.running or time.monotonic() - self._started_at < RESTART_INTERVAL:
                return
            self._started_at = time.monotonic()
            if self._broken is None:
                try:
                    self._process = self._spawn()
                    return
                except OSError as exc:
                    self._broken = f"{type(exc).__name__}: {exc}"
            log.warning(
                "litellm-openmeter: cannot start the delivery process (%s); sending from "
                "a thread of this process instead (OPENMETER_DELIVERY=thread does so "
                "from the start)",
                self._broken,
            )
            self._process = None
            self._fallback = Sender(self.settings, self.outbox)
            self._fallback.ensure_started()

    def _spawn(self) -> subprocess.Popen[bytes]:
        process = start_child()
        assert process.stdin is not None and process.stdout is not None
        os.set_blocking(process.stdin.fileno(), False)
        with contextlib.suppress(AttributeError, OSError):  # Linux only; best effort
            fcntl.fcntl(process.stdin.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        hello = {
            "settings": settings_message(self.settings),
            "log_level": log.getEffectiveLevel(),
        }
        self._send(process, hello)
        threading.Thread(
            target=self._listen,
            args=(process,),
            name=f"litellm-openmeter-delivery-{process.pid}",
            daemon=True,
        ).start()
        return process

    def _send(self, process: subprocess.Popen[bytes] | None, message: dict[str, Any]) -> None:
        """One message to the child; a child that is gone or not reading misses it (it
        looks at the outbox on its own every ``flush_interval`` anyway)."""
        if process is None or process.stdin is None:
            return
        # Under PIPE_BUF bytes a write to a pipe is whole or nothing, never a part.
        with self._write_lock, contextlib.suppress(OSError, ValueError):
            os.write(process.stdin.fileno(), json.dumps(message).encode() + b"\n")

    def _listen(self, process: subprocess.Popen[bytes]) -> None:
        """Relay the child's log records and pause changes until it exits, then reap it.
        A child that ends before it said it runs cannot run here: the next start falls
        back to a thread."""
        stream = process.stdout
        assert stream is not None
        ready = False
        for raw in stream:
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            ready = ready or bool(message.get("ready"))
            if "paused" in message:
                self._paused = message["paused"]
            if "log" in message:
                log.log(int(message["log"]), "%s", message.get("message", ""))
            if "stored" in message:
                self._acknowledged(int(message["stored"]), int(message.get("added", 0)))
        stream.close()
        process.wait()
        if not ready:
            self._broken = f"{sys.executable} -m litellm_openmeter.delivery exited at start"

    def wake(self) -> None:
        """Ask the child to look at the outbox now."""
        if self._fallback is not None:
            self._fallback.wake()
        self._send(self._process, {"wake": True})

    def flush(self, timeout: float) -> bool:
        """Have the child send what is waiting; True when the outbox emptied in time."""
        if self._fallback is not None:
            return self._fallback.flush(timeout)
        deadline = time.monotonic() + timeout
        self.ensure_started()
        if not self.wait_relayed(timeout):
            return False
        self._send(self._process, {"flush": max(0.0, deadline - time.monotonic())})
        while not self.outbox.is_empty():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if not self.running:
                self.ensure_started()
                if self._fallback is not None:
                    return self._fallback.flush(remaining)
                self._send(self._process, {"flush": remaining})
            time.sleep(min(remaining, 0.01))
        return True

    def stop(self, timeout: float) -> None:
        """End the child after the batch in hand (what is left stays in the outbox);
        wait ``timeout`` seconds for that."""
        with self._lock:
            process, self._process = self._process, None
        if self._fallback is not None:
            self._fallback.stop(timeout)
        if process is None:
            return
        self._send(process, {"stop": True})
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)  # if not, it ends after its batch in hand
        self._store_here(self._take_unacked())  # what it did not say it stored

    def after_fork_in_child(self) -> None:
        """Let go of the parent's child: its pipes stay open here, so close them (the
        child must see its parent end) and start a child of our own when needed."""
        process, self._process = self._process, None
        if process is not None:
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        os.close(stream.fileno())
        self._lock = threading.Lock()
        self._started_at = -RESTART_INTERVAL
        self._unacked = {}  # the parent's, which it stores itself
        self._unacked_by = self._stuck = None
        self._relayed = threading.Condition()
        self._write_lock = threading.Lock()

    # -- relaying entries to the child, which stores them -------------------------------

    def relay(
        self, entries: Sequence[Entry], calls: Sequence[tuple[Any, bytes]] = ()
    ) -> tuple[list[Entry], list[Any]]:
        """Hand entries to the child, which stores them in the outbox (so that
        LiteLLM's process spends no time in SQLite), and calls as JSON (see
        ``building.call_json``), whose events the child builds and stores; returns
        the entries and the calls the caller must store itself: all of them, and any
        the child took but never acknowledged, when no child runs. The child
        acknowledges the batches once committed (all up to a number, in a while: see
        ``ACK_INTERVAL``); a batch that a dead child never acknowledged goes again to
        the next one (storing is idempotent: an event already stored is not stored
        twice)."""
        self.ensure_started()
        batch = _Batch(entries, [form for _, form in calls])
        with self._relayed:
            process = self._taking()
            if process is None:
                back = self._take_unacked_locked()
                return [*back.entries, *entries], [*back.items, *(item for item, _ in calls)]
            resend = self._unacked_by is not process
            self._unacked_by = process
            number = next(self._numbers)
            self._unacked[number] = batch
            batches = sorted(self._unacked.items()) if resend else [(number, batch)]
        for sent_number, sent in batches:
            if not self._send_entries(process, sent_number, sent):
                with self._relayed:
                    self._stuck = process  # relay no more to it; it may still send
                    back = self._take_unacked_locked()
                    return list(back.entries), back.items
        return [], []

    def wait_relayed(self, timeout: float) -> bool:
        """Wait until the child acknowledged every entry relayed so far; entries a dead
        child left are stored here. False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            with self._relayed:
                if not self._unacked:
                    return True
                process = self._taking()
                if process is None:
                    self._store_here(self._take_unacked_locked())
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
            # Now rather than within ACK_INTERVAL (outside the lock: a batch being
            # written to the child holds the pipe).
            self._send(process, {"ack": True})
            with self._relayed:
                if self._unacked:
                    self._relayed.wait(min(remaining, 0.05))

    def _taking(self) -> subprocess.Popen[bytes] | None:
        """The child, if it runs and takes batches."""
        process = self._process
        if process is None or process.returncode is not None or process is self._stuck:
            return None
        return process

    def _send_entries(self, process: subprocess.Popen[bytes], number: int, batch: _Batch) -> bool:
        """One batch down the pipe, however long; False if the child does not take it
        within RELAY_WRITE_TIMEOUT (a line cut short is skipped by the child)."""
        message = {"store": number, "entries": [entry.events for entry in batch.entries]}
        try:
            data = orjson.dumps(message)
        except TypeError:  # integers beyond 64 bits
            data = json.dumps(message, separators=(",", ":")).encode()
        if batch.forms:  # already JSON: spliced in, not parsed and encoded again
            data = data[:-1] + b',"calls":[' + b",".join(batch.forms) + b"]}"
        data += b"\n"
        if process.stdin is None:
            return False
        deadline = time.monotonic() + RELAY_WRITE_TIMEOUT
        view = memoryview(data)
        with self._write_lock:
            try:
                fd = process.stdin.fileno()
                while view:
                    try:
                        view = view[os.write(fd, view) :]
                    except BlockingIOError:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            return False
                        select.select([], [fd], [], min(remaining, 0.1))
            except (OSError, ValueError):  # the child is gone
                return False
        return True

    def _acknowledged(self, number: int, added: int) -> None:
        """The child stored every batch up to ``number`` (it stores them in order)."""
        with self._relayed:
            for stored in [key for key in self._unacked if key <= number]:
                del self._unacked[stored]
            self._relayed.notify_all()
        if self._on_relayed is not None:
            self._on_relayed(added)

    def _take_unacked(self) -> _Batch:
        with self._relayed:
            return self._take_unacked_locked()

    def _take_unacked_locked(self) -> _Batch:
        batches = [batch for _, batch in sorted(self._unacked.items())]
        self._unacked.clear()
        self._relayed.notify_all()
        return _Batch(
            [entry for batch in batches for entry in batch.entries],
            [form for batch in batches for form in batch.forms],
        )

    def _store_here(self, batch: _Batch) -> None:
        """Store in this process what no child will (idempotent if one did), building
        the calls' entries here."""
        entries = list(batch.entries)
        if self._prepare is not None:
            entries += [entry for entry in map(self._prepare, batch.items) if entry is not None]
        if not entries:
            return
        self.outbox.write_or_refuse(entries)
        if self._on_stored is not None:
            for entry in entries:
                self._on_stored(entry)


class _Parent:
    """JSON lines up to the parent, on our stdout; once the parent is gone (its end of
    the pipe closed), nothing more is written and nothing fails for it."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self._gone = False

    def tell(self, message: dict[str, Any]) -> None:
        """Send one message; dropped if the parent is gone."""
        data = json.dumps(message).encode() + b"\n"
        with self._lock:
            if self._gone:
                return
            try:
                while data:
                    data = data[os.write(self._fd, data) :]
            except OSError:  # EPIPE: the parent exited or was killed
                self._gone = True


class _PipeHandler(logging.Handler):
    """Log records of the child as messages to the parent."""

    def __init__(self, parent: _Parent) -> None:
        super().__init__()
        self._parent = parent

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        self._parent.tell({"log": record.levelno, "message": text})


class _Commands:
    """Lines from the parent on our stdin, read from the descriptor itself (Python's
    buffered reader would keep lines where ``select`` cannot see them)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.closed = False
        self._pending = b""

    def read(self, timeout: float) -> list[bytes]:
        """The lines that arrive within ``timeout`` seconds (maybe none)."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return []
        chunk = os.read(self.fd, PIPE_BYTES)  # a relayed batch at once, not in parts
        if not chunk:
            self.closed = True  # the parent is gone, or closed the logger
            return []
        self._pending += chunk
        *lines, self._pending = self._pending.split(b"\n")
        return lines


class _Acks:
    """The child's confirmations of stored batches: cumulative (the highest number
    stored, and how many new events since the last confirmation), sent at once when
    ``ACK_INTERVAL`` has passed since the last one or when the parent asks."""

    def __init__(self, parent: _Parent) -> None:
        self._parent = parent
        self._number: int | None = None
        self._added = 0
        self._told_at = -ACK_INTERVAL

    def stored(self, number: int, added: int) -> None:
        """A batch is committed; confirm it if the last confirmation is old enough."""
        self._number = number
        self._added += added
        self.tell(due_only=True)

    def due_in(self) -> float | None:
        """Seconds until a held-back confirmation is due, or None when none waits."""
        if self._number is None:
            return None
        return max(0.0, self._told_at + ACK_INTERVAL - time.monotonic())

    def tell(self, due_only: bool = False) -> None:
        """Confirm what is stored and not yet confirmed (with ``due_only``, only when
        ``ACK_INTERVAL`` has passed since the last confirmation)."""
        if self._number is None or (due_only and self.due_in()):
            return
        self._parent.tell({"stored": self._number, "added": self._added})
        self._number, self._added = None, 0
        self._told_at = time.monotonic()


def _store(outbox: Outbox, builder: CallBuilder, command: dict[str, Any], acks: _Acks) -> int:
    """Build the events of the calls the parent relayed, store them with its entries
    and acknowledge the batch (maybe later, see ``_Acks``); returns how many were new."""
    entries = [Entry(events) for events in command["entries"]]
    for form in command.get("calls", ()):
        built = builder.build(form)  # never raises: what it cannot build, it keeps
        if built is not None:
            entries.append(Entry(built[1]))
    outbox.write_or_refuse(entries)
    for entry in entries:
        if entry.refused:
            log.error("litellm-openmeter: %s", entry.refusal_report())
    added = sum(entry.added for entry in entries)
    acks.stored(int(command["store"]), added)
    return added


def yield_to_litellm() -> None:
    """Lower this process's CPU priority (before it starts threads, which inherit it):
    a niceness of ``NICENESS``, and on Linux the batch policy, under which waking up
    does not preempt a running thread of LiteLLM. Where the system refuses, nothing
    changes."""
    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    batch = getattr(os, "SCHED_BATCH", None)
    if batch is not None:
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, batch, os.sched_param(0))


def main() -> None:
    """The child: run a sender until the parent closes our stdin."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    yield_to_litellm()
    commands = _Commands(sys.stdin.fileno())
    lines: list[bytes] = []
    while not lines and not commands.closed:
        lines = commands.read(5.0)
    if not lines:
        return
    hello = json.loads(lines.pop(0))
    parent = _Parent(sys.stdout.fileno())
    if hello.get("probe"):  # see probe(): it started, and that is all
        parent.tell({"ready": True})
        return
    settings = settings_from_message(hello["settings"])
    logger = logging.getLogger("litellm_openmeter")
    logger.handlers[:] = [_PipeHandler(parent)]
    logger.setLevel(int(hello.get("log_level", logging.WARNING)))
    logger.propagate = False

    # The parent checked the file when it opened it (and moved a damaged one aside).
    outbox = Outbox(settings.outbox_path, settings.outbox_max_bytes, verify=False)
    builder = CallBuilder(settings, outbox)
    sender = Sender(settings, outbox, on_pause=lambda reason: parent.tell({"paused": reason}))
    sender.prepare()
    sender.ensure_started()
    parent.tell({"ready": True})
    acks = _Acks(parent)
    stopping = False
    since_wake = 0
    while not stopping and not commands.closed:
        for line in lines:
            try:
                command = orjson.loads(line)
            except orjson.JSONDecodeError:  # a batch the parent gave up writing
                continue
            if "store" in command:
                since_wake += _store(outbox, builder, command, acks)
                if since_wake >= settings.batch_size:
                    since_wake = 0
                    sender.wake()
            if "wake" in command:
                sender.wake()
            if "ack" in command or "flush" in command:
                acks.tell()
            if "flush" in command:
                sender.request_flush(float(command["flush"]))
            stopping = stopping or bool(command.get("stop"))
        if stopping:
            acks.tell()
            break
        due = acks.due_in()
        lines = commands.read(0.25 if due is None else min(0.25, due))
        acks.tell(due_only=True)
    if stopping:  # the parent flushed already and is closing
        sender.stop(timeout=settings.http_timeout)
        outbox.close()
        return
    # The parent went away without closing the logger (killed, say): deliver what we
    # can in the time a close would have had.
    deadline = time.monotonic() + settings.shutdown_timeout
    sender.request_flush(settings.shutdown_timeout)
    while not outbox.is_empty() and time.monotonic() < deadline and sender.running:
        time.sleep(0.01)
    sender.stop(timeout=1.0)
    outbox.close()


if __name__ == "__main__":
    main()
