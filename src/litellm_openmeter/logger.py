"""The LiteLLM adapter: a ``CustomLogger`` whose hooks only build events and store them.

Drop-in for ``litellm.integrations.openmeter.OpenMeterLogger``: same constructor
(no required arguments), same environment, same default event shape. Network I/O
happens only in the sender thread, never in a hook.
"""

from __future__ import annotations

import atexit
import json
import logging
import threading
import uuid
import weakref
from dataclasses import asdict
from typing import Any

from litellm.integrations.custom_logger import CustomLogger

from . import forksafe, metrics
from .events import CloudEvent, MissingSubjectError, SubjectResolver, build_events
from .outbox import Outbox, OutboxFull
from .sender import Sender
from .settings import Settings
from .usage import UsageRecord, record_from_kwargs

log = logging.getLogger("litellm_openmeter")

_live_loggers: weakref.WeakSet[OpenMeterLogger] = weakref.WeakSet()


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
        self.outbox = Outbox(self.settings.outbox_path, self.settings.outbox_max_bytes)
        self.sender = Sender(self.settings, self.outbox)
        self._unpriced_models: set[str] = set()
        self._since_wake = 0
        self._enqueued = 0
        self._calls_seen = 0
        self._closed = False
        self._lock = threading.Lock()
        _live_loggers.add(self)
        forksafe.track(self)
        metrics.register(lambda: list(_live_loggers))
        if not self.outbox.is_empty():
            self.sender.ensure_started()

    def __repr__(self) -> str:
        return (
            f"OpenMeterLogger(endpoint={self.settings.endpoint!r}, "
            f"event_type={self.settings.event_type!r}, shape={self.settings.event_shape!r}, "
            f"outbox={str(self.settings.outbox_path)!r})"
        )

    # -- LiteLLM hooks: build and store, nothing else --------------------------------

    def log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        """Sync calls and sync streams (once, at the end)."""
        self._on_call(kwargs, success=True)

    async def async_log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        """Async calls and async streams; runs on the caller's event loop."""
        self._on_call(kwargs, success=True)

    def log_failure_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        """Failed sync calls (metered only with ``OPENMETER_METER_FAILURES=true``)."""
        self._on_call(kwargs, success=False)

    async def async_log_failure_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        """Failed async calls (metered only with ``OPENMETER_METER_FAILURES=true``)."""
        self._on_call(kwargs, success=False)

    def _on_call(self, kwargs: Any, *, success: bool) -> None:
        if success or self.settings.meter_failures:
            self.record_call(kwargs, success=success)
        with self._lock:
            self._calls_seen += 1

    def record_call(self, kwargs: Any, *, success: bool) -> list[CloudEvent]:
        """Turn one call's hook arguments into stored events; never raises.

        Returns the events stored in the queue (empty when none or on failure).
        """
        call_id = "unknown"
        try:
            if isinstance(kwargs, dict):
                call_id = str(kwargs.get("litellm_call_id") or call_id)
            record = record_from_kwargs(kwargs, success=success)
            call_id = record.call_id
            self._warn_if_unpriced(record)
            events = build_events(record, self.settings, self.resolve_subject)
        except MissingSubjectError as exc:
            log.warning("litellm-openmeter: %s; kept as a dead letter (reason no_subject)", exc)
            self._keep_dead(exc.events, "no_subject", str(exc))
            return []
        except Exception as exc:
            detail = (
                f"cannot build the event for LiteLLM call {call_id}: {type(exc).__name__}: {exc}"
            )
            log.error("litellm-openmeter: %s; kept as a dead letter (reason build_error)", detail)
            self._keep_dead([self._placeholder(call_id, detail)], "build_error", detail)
            return []
        if events:
            self._store(events)
        return events

    # -- delivery control ------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Deliver what is queued; True if the outbox is empty within ``timeout`` seconds."""
        wait = self.settings.shutdown_timeout if timeout is None else timeout
        return self.sender.flush(wait)

    def close(self, timeout: float | None = None) -> bool:
        """Flush (bounded), stop the sender and close the outbox. Undelivered events
        stay in the outbox and are sent by the next process that opens it."""
        with self._lock:
            if self._closed:
                return self.outbox.is_empty()
            self._closed = True
        delivered = self.flush(timeout) if not self.outbox.is_empty() else True
        self.sender.stop(timeout=1.0)
        self.outbox.close()
        return delivered

    def stats(self) -> dict[str, Any]:
        """Delivery counters: queued, in_flight, delivered, retried, dead_lettered,
        refused, outbox_bytes, oldest_age_seconds, last_error, paused (shared by every
        process using the outbox file), enqueued (events this logger stored) and
        calls_seen (LiteLLM success and failure hooks this logger ran)."""
        snapshot = asdict(self.outbox.stats())
        snapshot["enqueued"] = self._enqueued
        snapshot["calls_seen"] = self._calls_seen
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
        """Drop a lock another thread of the parent may have held at fork."""
        self._lock = threading.Lock()

    # -- internals ---------------------------------------------------------------------

    def _store(self, events: list[CloudEvent]) -> None:
        try:
            added = self.outbox.enqueue(events)
        except OutboxFull as exc:
            log.error("litellm-openmeter: %s (event ids %s)", exc, [e["id"] for e in events])
            return
        except Exception as exc:
            log.error(
                "litellm-openmeter: cannot store events in the outbox (%s: %s); events: %s",
                type(exc).__name__,
                exc,
                json.dumps(events),
            )
            return
        with self._lock:
            self._enqueued += added
        if self._closed:
            return  # kept in the outbox for the next process; no thread after close()
        self.sender.ensure_started()
        self._since_wake += len(events)
        if self._since_wake >= self.settings.batch_size:
            self._since_wake = 0
            self.sender.wake()

    def _keep_dead(self, events: list[CloudEvent], reason: str, detail: str) -> None:
        try:
            self.outbox.dead_letter(events, reason, detail)
        except Exception as exc:
            log.error(
                "litellm-openmeter: cannot store dead letter (%s); events: %s",
                exc,
                json.dumps(events),
            )

    def _placeholder(self, call_id: str, detail: str) -> CloudEvent:
        return {
            "specversion": "1.0",
            "type": self.settings.event_type,
            "id": call_id if call_id != "unknown" else f"unknown-{uuid.uuid4()}",
            "subject": "",
            "source": self.settings.source,
            "data": {"build_error": detail},
        }

    def _warn_if_unpriced(self, record: UsageRecord) -> None:
        if record.priced or record.model in self._unpriced_models:
            return
        self._unpriced_models.add(record.model)
        log.warning(
            "litellm-openmeter: LiteLLM has no price for model %r (call %s): its cost is "
            "sent as 0. Add the model to LiteLLM's model cost map (litellm.register_model) "
            "to bill its cost; tokens are metered either way.",
            record.model,
            record.call_id,
        )


def _close_all_at_exit() -> None:
    for logger in list(_live_loggers):
        try:
            logger.close(logger.settings.shutdown_timeout)
        except Exception:  # pragma: no cover - best effort at interpreter exit
            log.exception("litellm-openmeter: error while closing at exit")


atexit.register(_close_all_at_exit)
