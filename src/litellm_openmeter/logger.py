"""The LiteLLM adapter: a ``CustomLogger`` whose hooks only hand the call over.

Drop-in for ``litellm.integrations.openmeter.OpenMeterLogger``: same constructor
(no required arguments), same environment, same default event shape. The writer
thread builds the events and stores them (see ``writer`` and ``building``); the sender
thread delivers them, and is the only one that touches the network.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib
import importlib.util
import logging
import sys
import threading
import time
import weakref
from contextlib import suppress
from dataclasses import asdict
from datetime import datetime
from typing import Any

from litellm.integrations.custom_logger import CustomLogger

from .delivery import forksafe, metrics, stopping
from .delivery.building import CallBuilder, Unreadable, cannot_build, text_or
from .delivery.outbox import Entry, Held
from .delivery.salvage import open_outbox
from .delivery.sender import Sender
from .delivery.writer import Writer
from .estimates import unfinished_record
from .events import CloudEvent, SubjectResolver, build_events
from .record import CallForm, call_form, record_from_kwargs
from .settings import Settings

log = logging.getLogger("litellm_openmeter")

_live_loggers: weakref.WeakSet[OpenMeterLogger] = weakref.WeakSet()

HOLD_WAIT_SECONDS = 2.0
"""The longest a proxy response waits for its held events to be stored."""
MAX_STARTED = 10_000
"""Calls counted as started and not yet ended: past this, the oldest are forgotten (a
stream never read to its end ends no call)."""


class OpenMeterLogger(CustomLogger):
    """Meters every LiteLLM call as OpenMeter CloudEvents, durably and off the request path.

    Register it with ``litellm.callbacks = [OpenMeterLogger()]``. Settings come from
    the ``OPENMETER_*`` environment; keyword arguments override them (``api_key=``,
    ``endpoint=``, ``event_shape=``, ...). ``resolve_subject`` is an optional callable
    that gets the call's identities (``user``, ``key_user_id``, ``end_user``,
    ``team_id``, ``key_alias``, ``org_id``) and returns the subject to bill.
    """

    def __init__(
        self,
        *,
        resolve_subject: SubjectResolver | None = None,
        settings: Settings | None = None,
        **overrides: object,
    ) -> None:
        super().__init__()
        self.settings = settings if settings is not None else Settings.from_env(**overrides)
        self.resolve_subject = resolve_subject
        # LiteLLM drops a callback whose class name and public str/int/bool attributes
        # equal another registered one's: this keeps ours apart from LiteLLM's
        # same-named logger and from our own loggers with other destinations.
        self.metering_target = (
            f"litellm_openmeter|{self.settings.endpoint}|{self.settings.event_type}|"
            f"{self.settings.event_shape}|{self.settings.outbox_path}"
        )
        self.outbox = open_outbox(self.settings.outbox_path, self.settings.outbox_max_bytes)
        self.builder = CallBuilder(self.settings, self.outbox)
        self.sender = Sender(self.settings, self.outbox)
        self.writer = Writer(self.outbox, self._stored, self._prepare_call)
        self._held: dict[str, Held] = {}
        self._started: dict[str, dict[str, Any]] = {}
        """LiteLLM's details of each call that started and whose hooks have not come."""
        self._warned_loop = False
        self._since_wake = 0
        self._enqueued = 0
        self._unmetered_failures = 0
        self._unfinished = 0
        self._unfinished_streak = False
        self._watching = False
        self._stop_watching = threading.Event()
        self._closed = False
        self._lock = threading.Lock()
        self._repr = (
            f"OpenMeterLogger(endpoint={self.settings.endpoint!r}, "
            f"event_type={self.settings.event_type!r}, shape={self.settings.event_shape!r}, "
            f"outbox={str(self.settings.outbox_path)!r})"
        )
        _warm_litellm_imports()
        _live_loggers.add(self)
        if self.settings.handle_sigterm:
            stopping.install(_close_all_on_sigterm)
        forksafe.track(self)
        metrics.register(lambda: list(_live_loggers))
        if not self.outbox.is_empty():
            self.sender.ensure_started()

    def __repr__(self) -> str:
        # Made once: LiteLLM formats its list of callbacks into a debug message on
        # every call, whatever the log level, so this runs on the request path.
        return self._repr

    # -- LiteLLM hooks: hand the call to the writer, nothing else --------------------

    def log_pre_api_call(self, model: Any, messages: Any, kwargs: Any) -> None:
        """Every call, before the provider is asked: counted as started, so that
        :meth:`flush` and :meth:`close` wait for its success or failure hook, which
        LiteLLM runs later, in its thread pool or on the event loop."""
        call_id = kwargs.get("litellm_call_id") if type(kwargs) is dict else None
        if type(call_id) is str:
            started = self._started
            started[call_id] = kwargs
            if len(started) > MAX_STARTED:
                with suppress(RuntimeError, StopIteration, KeyError):  # another hook's trim
                    del started[next(iter(started))]
            if not self._watching:
                self._watch_unfinished()

    def log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        """Sync calls and sync streams (once, at the end); runs in LiteLLM's logging
        thread pool."""
        self.writer.submit_later(self._handed_over(kwargs, True))
        self._ended(kwargs)

    async def async_log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        """Async calls and async streams; runs on the caller's event loop."""
        self.writer.submit_later(self._handed_over(kwargs, True))
        self._ended(kwargs)

    def log_failure_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        """Failed sync calls (metered only with ``OPENMETER_METER_FAILURES=true``)."""
        self._on_failure(kwargs)

    async def async_log_failure_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        """Failed async calls (metered only with ``OPENMETER_METER_FAILURES=true``)."""
        self._on_failure(kwargs)

    async def async_post_call_success_hook(
        self, data: dict[str, Any], user_api_key_dict: Any, response: Any
    ) -> None:
        """Proxy only, before the response is sent: store the call's events *held*.

        LiteLLM's proxy runs success hooks only after the response has gone out; a
        worker killed in between would lose the event. A held event is not sent while
        its process lives: the success hook replaces it with the final event (or a
        failure drops it); if the process dies first it is sent as it is, and after
        ``outbox.HOLD_SECONDS`` without a success hook too. Needs the logging payload
        the proxy prepares before this hook (``prepared_cost``); without it nothing is
        held and the success hook alone records the call. Never raises.
        """
        prepared = self._events_to_hold(data)
        if prepared is None:
            return
        call_id, events = prepared
        future = self.writer.submit(Entry(events, hold_for=call_id), wait=True)
        assert future is not None
        try:
            entry = await asyncio.wait_for(
                asyncio.shield(asyncio.wrap_future(future)), HOLD_WAIT_SECONDS
            )
        except asyncio.TimeoutError:
            # The outbox is slow (locked by another process?): answer anyway. The held
            # events are still stored; without the hold's key the success hook cannot
            # replace them, so they are sent as held when the hold runs out.
            log.warning(
                "litellm-openmeter: holding call %s took over %ss", call_id, HOLD_WAIT_SECONDS
            )
            return
        if entry.held is None:
            return
        with self._lock:
            self._held[call_id] = entry.held
            while len(self._held) > 10_000:  # calls whose hooks never came: sent at expiry
                del self._held[next(iter(self._held))]

    async def async_post_call_failure_hook(
        self,
        request_data: dict[str, Any],
        original_exception: Exception,
        user_api_key_dict: Any,
        traceback_str: str | None = None,
    ) -> None:
        """Proxy only: a request that failed after its hold (a post-call guardrail
        refused the answer, say) is not billed."""
        if isinstance(request_data, dict):
            self._drop_hold(str(request_data.get("litellm_call_id") or ""))

    def _handed_over(self, kwargs: Any, success: bool) -> CallForm | Unreadable:
        """A hook's whole work, with ``writer.submit_later`` (which also counts the
        call): read the values the call's record needs (``record.call_form``: lookups
        that run in C into plain tuples) for the writer thread, which builds the events
        (``_prepare_call``). Never raises.

        Everything else waits for the writer's turn, where it runs for many calls at
        once: work in a hook delays every call (a sync hook runs in LiteLLM's logging
        threads and holds the GIL the caller needs next; an async hook runs on the
        caller's event loop), where a turn delays one call in many. Turning the form
        into JSON here, say, cost a sync hook 11-17 us of its 30-39 (CPU, in place)."""
        try:
            return call_form(kwargs, success)
        except Exception as exc:
            call_id = _call_id(kwargs)
            return Unreadable(call_id, cannot_build(call_id, exc))

    def _on_failure(self, kwargs: Any) -> None:
        if isinstance(kwargs, dict):
            self._drop_hold(str(kwargs.get("litellm_call_id") or ""))
        if self.settings.meter_failures:
            self.writer.submit_later(self._handed_over(kwargs, False))
        else:
            with self._lock:
                self._unmetered_failures += 1
        self._ended(kwargs)

    def _ended(self, kwargs: Any) -> None:
        """After the call was handed over: no longer started (see ``flush``); a call
        that reported ends a streak of unfinished ones."""
        if self._unfinished_streak:
            self._unfinished_streak = False
        if self._started and type(kwargs) is dict:
            call_id = kwargs.get("litellm_call_id")
            if type(call_id) is str:
                self._started.pop(call_id, None)

    def _prepare_call(self, form: CallForm | Unreadable) -> Entry | None:
        """A call as the entry to store (settling its held events), or None; the
        writer thread runs it for the hooks, ``record_call`` in the caller."""
        built = self.builder.build(form, self.resolve_subject)
        if built is None:
            return None
        call_id, events = built
        return Entry(events, settle=self._take_hold(call_id))

    def _events_to_hold(self, data: Any) -> tuple[str, list[CloudEvent]] | None:
        try:
            logging_obj = data.get("litellm_logging_obj") if isinstance(data, dict) else None
            details = getattr(logging_obj, "model_call_details", None)
            payload = getattr(getattr(logging_obj, "prepared_cost", None), "payload", None)
            if not isinstance(details, dict) or not isinstance(payload, dict):
                return None
            record = record_from_kwargs({**details, "standard_logging_object": payload})
            events = build_events(record, self.settings, self.resolve_subject)
        except Exception as exc:  # the success hook will still record the call
            log.debug("litellm-openmeter: nothing held for a proxy call: %s", exc)
            return None
        return (record.call_id, events) if events else None

    def _take_hold(self, call_id: str) -> Held | None:
        if not self._held:
            return None
        with self._lock:
            return self._held.pop(call_id, None)

    def _drop_hold(self, call_id: str) -> None:
        held = self._take_hold(call_id)
        if held is not None:
            self.writer.submit(Entry([], settle=held))

    def record_call(self, kwargs: Any, *, success: bool) -> list[CloudEvent]:
        """Turn one call's hook arguments into events and hand them to the writer
        thread, which stores them in the outbox within ``writer.COMMIT_INTERVAL``; never
        raises. Returns the events (empty when none or on failure). The hooks do the
        same, but leave the building to the writer thread.
        """
        entry = self._prepare_call(self._handed_over(kwargs, success))
        if entry is None:
            return []
        self.writer.submit(entry)
        return list(entry.events)

    # -- delivery control ------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Deliver every call that started so far; True if they and everything stored
        before them were delivered within ``timeout`` seconds (default
        ``OPENMETER_SHUTDOWN_TIMEOUT``). Calls that start meanwhile are not waited for.

        Waits first for the success or failure hooks of the calls that started (LiteLLM
        runs them after the call returned), then for the writer, then for the sender.
        On an event loop's thread use ``await logger.aflush()``: the loop must run for
        the hooks of async calls to come."""
        wait = self.settings.shutdown_timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        # Half the time at most for hooks: a stream its caller stopped reading never
        # reports, and waiting for it must leave time to deliver the rest.
        self._settle_started(time.monotonic() + wait / 2, wait=True)
        if not self.writer.drain(max(0.0, deadline - time.monotonic())):
            return False
        through = self.outbox.last_seq()
        return self.sender.flush(max(0.0, deadline - time.monotonic()), through)

    async def aflush(self, timeout: float | None = None) -> bool:
        """:meth:`flush` for async code: the event loop goes on meanwhile."""
        return await asyncio.to_thread(self.flush, timeout)

    async def aclose(self, timeout: float | None = None) -> bool:
        """:meth:`close` for async code: the event loop goes on meanwhile."""
        return await asyncio.to_thread(self.close, timeout)

    def _watch_unfinished(self) -> None:
        """Start the thread that gives up on calls without hooks (see ``_give_up``):
        a look every quarter of ``OPENMETER_UNFINISHED_AFTER`` (at most 15 s)."""
        with self._lock:
            if self._watching or self._closed:
                return
            self._watching = True
        period = min(max(self.settings.unfinished_after / 4, 0.05), 15.0)

        def watch() -> None:
            while not self._stop_watching.wait(period):
                try:
                    self._give_up(self._overdue())
                except Exception:  # pragma: no cover - a look never ends the watch
                    log.exception("litellm-openmeter: error while looking for unfinished calls")

        threading.Thread(target=watch, name="litellm-openmeter-unfinished", daemon=True).start()

    def _overdue(self) -> list[tuple[str, dict[str, Any]]]:
        """Started calls whose hooks have not come within ``OPENMETER_UNFINISHED_AFTER``,
        oldest first (the map is in the order the calls started)."""
        limit = self.settings.unfinished_after
        now = datetime.now()
        overdue = []
        for call_id, details in list(self._started.items()):
            started = details.get("start_time")
            if not isinstance(started, datetime):
                continue
            moment = now if started.tzinfo is None else datetime.now(started.tzinfo)
            if (moment - started).total_seconds() < limit:
                break
            overdue.append((call_id, details))
        return overdue

    def _give_up(self, calls: list[tuple[str, dict[str, Any]]]) -> None:
        """Stop waiting for these calls' hooks. A call LiteLLM finished is recorded as
        its hook would have; the others are unfinished: counted, reported once per
        streak, and with ``OPENMETER_METER_UNFINISHED`` billed as an estimate."""
        unfinished = []
        for call_id, details in calls:
            payload = details.get("standard_logging_object")
            status = payload.get("status") if isinstance(payload, dict) else None
            if status == "success":
                self.writer.submit_later(self._handed_over(details, True))
            elif status == "failure":
                self._on_failure(details)
            else:
                unfinished.append(details)
            self._started.pop(call_id, None)
        if not unfinished:
            return
        with self._lock:
            self._unfinished += len(unfinished)
        metered = self.settings.meter_unfinished
        if metered:
            for details in unfinished:
                events = self.builder.build_record(unfinished_record(details), self.resolve_subject)
                if events:
                    self.writer.submit(Entry(events))
        if not self._unfinished_streak:
            self._unfinished_streak = True
            log.warning(
                "litellm-openmeter: %d LiteLLM call(s) started and never reported their "
                "usage to the logging hooks within %gs (a stream its caller stopped "
                "reading, a call cut short); %s",
                len(unfinished),
                self.settings.unfinished_after,
                "billed as estimates of their prompts (usage_accuracy=estimated, "
                "estimate_reason=unfinished)"
                if metered
                else "not billed: read streams to their end or close them, or set "
                "OPENMETER_METER_UNFINISHED=true to bill their prompts as estimates",
            )

    def _settle_started(self, deadline: float, wait: bool) -> None:
        """Wait (within ``deadline``) for the hooks of the calls that started, then
        record the calls LiteLLM finished whose hooks never came: its exit handler runs
        the queued async hooks of an ``asyncio.run`` that ended, but not one it had
        begun when the loop ended. Recording a call twice stores it once (same id)."""
        if not self._started:
            return
        if wait:
            self._wait_for_started(deadline)
        for details in list(self._started.values()):
            payload = details.get("standard_logging_object")
            status = payload.get("status") if isinstance(payload, dict) else None
            if status == "success":  # as its hook would have
                self.writer.submit_later(self._handed_over(details, True))
                self._ended(details)
            elif status == "failure":
                self._on_failure(details)

    def _wait_for_started(self, deadline: float) -> None:
        if _on_a_running_loop():
            # This thread's loop is blocked here: the hooks of its calls cannot come.
            if not self._warned_loop:
                self._warned_loop = True
                log.warning(
                    "litellm-openmeter: flush() or close() on a running event loop cannot "
                    "wait for the hooks of %d started call(s); use await logger.aflush() "
                    "or await logger.aclose()",
                    len(self._started),
                )
            return
        # The calls started so far: under load new ones start all the time.
        waiting = list(self._started)
        while waiting and time.monotonic() < deadline:
            started = self._started
            waiting = [call_id for call_id in waiting if call_id in started]
            if waiting:
                time.sleep(0.005)

    def close(self, timeout: float | None = None) -> bool:
        """Flush as :meth:`flush` does, within ``timeout`` seconds in all (default
        ``OPENMETER_SHUTDOWN_TIMEOUT``), stop the threads and close the outbox.
        Undelivered events stay in the outbox and are sent by the next process that
        opens it."""
        return self._close(timeout, at_exit=False)

    def _close(self, timeout: float | None, at_exit: bool) -> bool:
        with self._lock:
            if self._closed:
                return self.outbox.is_empty()
            self._closed = True
        wait = self.settings.shutdown_timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        # At exit LiteLLM's thread pool has ended and its exit handler has run the async
        # hooks still queued (see _exit_after_litellm): no hook can come any more.
        self._settle_started(time.monotonic() + wait / 2, wait=not at_exit)  # see flush
        self._stop_watching.set()
        # What is left never reported: at exit, mostly async calls whose event loop
        # ended before LiteLLM ran their hooks (end async code with aclose()).
        self._give_up(list(self._started.items()))
        self.writer.stop(max(0.0, deadline - time.monotonic()))
        through = self.outbox.last_seq()
        delivered = self.outbox.is_empty(through) or self.sender.flush(
            max(0.0, deadline - time.monotonic()), through
        )
        self.sender.stop(timeout=1.0)
        # Hooks of calls that ended meanwhile (other threads still calling) restarted
        # the writer: stored, they wait in the outbox for the next process.
        self.writer.stop(max(0.0, min(1.0, deadline - time.monotonic())))
        self.outbox.close()
        return delivered

    def stats(self) -> dict[str, Any]:
        """Delivery counters: queued, in_flight, delivered, retried, dead_lettered,
        refused, outbox_bytes, oldest_age_seconds, last_error, paused (shared by every
        process using the outbox file), enqueued (events this logger stored) and
        calls_seen (LiteLLM success and failure hooks this logger ran) and unfinished
        (calls that started and never reported within ``OPENMETER_UNFINISHED_AFTER``, or
        by ``close()``)."""
        snapshot = asdict(self.outbox.stats())
        snapshot["enqueued"] = self._enqueued
        snapshot["calls_seen"] = self.writer.submitted_later + self._unmetered_failures
        snapshot["unfinished"] = self._unfinished
        snapshot["paused"] = self.sender.paused_reason
        return snapshot

    def dead_letters(self) -> list[dict[str, Any]]:
        """The dead letters (events that cannot be sent as they are), with reasons."""
        return [asdict(item) for item in self.outbox.dead_letters()]

    def requeue(self, ids: list[str] | None = None, subject: str | None = None) -> int:
        """Move dead letters back to the queue, optionally giving them a subject."""
        moved = self.outbox.requeue(ids, subject)
        if moved:
            self.sender.ensure_started()
            self.sender.wake()
        return moved

    def after_fork_in_child(self) -> None:
        """Drop a lock another thread of the parent may have held at fork; the child
        watches its own calls."""
        self._lock = threading.Lock()
        self._started = {}
        self._watching = False
        self._stop_watching = threading.Event()

    # -- internals ---------------------------------------------------------------------

    def _stored(self, entry: Entry) -> None:
        """In the writer thread, after each entry's transaction."""
        if entry.refused:
            log.error("litellm-openmeter: %s", entry.refusal_report())
            return
        with self._lock:
            self._enqueued += entry.added
        if self._closed or not entry.added:
            return  # kept in the outbox for the next process; no thread after close()
        self.sender.ensure_started()
        self._since_wake += entry.added
        if self._since_wake >= self.settings.batch_size:
            self._since_wake = 0
            self.sender.wake()


LAZY_LITELLM_MODULES = ("litellm.litellm_core_utils.custom_logger_registry",)
"""What LiteLLM imports at the first call that reaches a logger overriding a hook, when
``litellm-enterprise`` is installed (as with the proxy): some 450 modules (fastapi,
the proxy's hooks, integrations), most of a second on the event loop of that call."""


def _warm_litellm_imports() -> None:
    """Import now, while the logger is built (at start-up), what LiteLLM would import
    on the request path; only where that happens, and never fatal."""
    if importlib.util.find_spec("litellm_enterprise") is None:
        return
    for name in LAZY_LITELLM_MODULES:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except Exception as exc:  # another LiteLLM: it imports what it needs itself
            log.debug("litellm-openmeter: %s not imported ahead: %s", name, exc)


def _on_a_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _call_id(kwargs: Any) -> str:
    found = kwargs.get("litellm_call_id") if isinstance(kwargs, dict) else None
    return text_or(found, "unknown")


def _close_all(at_exit: bool) -> None:
    for logger in list(_live_loggers):
        if logger._closed:  # closed by its owner, whose outbox may be gone by now
            continue
        try:
            logger._close(logger.settings.shutdown_timeout, at_exit=at_exit)
        except Exception:  # pragma: no cover - best effort while the process ends
            log.exception("litellm-openmeter: error while closing")


def _close_all_on_sigterm() -> None:
    _close_all(at_exit=False)


def _close_all_at_exit() -> None:
    try:
        _close_all(at_exit=True)
    finally:
        stopping.release()


def _exit_after_litellm() -> None:
    """Close every logger at exit, after LiteLLM's own exit handler.

    LiteLLM registers its exit handler when it is imported, before this module, and
    exit handlers run last registered first: ours would close the loggers before
    LiteLLM runs the async success hooks still queued (an ``asyncio.run`` that ended
    right after its last call), whose events would then wait for the next process.
    Registering LiteLLM's handler again, after ours, lets it run first. Where this
    LiteLLM has no such handler, nothing is moved."""
    atexit.register(_close_all_at_exit)
    try:
        from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER
    except ImportError:
        return
    flush_on_exit = getattr(GLOBAL_LOGGING_WORKER, "_flush_on_exit", None)
    if callable(flush_on_exit):
        atexit.unregister(flush_on_exit)
        atexit.register(flush_on_exit)


_exit_after_litellm()
