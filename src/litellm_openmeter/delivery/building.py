"""From what a hook read of a call (its ``record.call_form``) to the events to store.

The logger's writer thread runs it for a whole turn of calls at once, off the request
path; what cannot be built is kept as a dead letter.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..estimates import count_like_litellm
from ..events import CloudEvent, MissingSubjectError, SubjectResolver, build_events
from ..record import CALL_FIELDS, UsageRecord, record_from_form
from ..settings import Settings
from .outbox import Outbox

log = logging.getLogger("litellm_openmeter")

_CALL_ID = CALL_FIELDS.index("litellm_call_id")


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A call whose usage could not be read: kept as a dead letter."""

    call_id: str
    detail: str


class CallBuilder:
    """Builds a call's events, keeping what cannot be built (or has no subject) as a
    dead letter in the outbox, and warning once per model LiteLLM could not price."""

    def __init__(self, settings: Settings, outbox: Outbox) -> None:
        self.settings = settings
        self.outbox = outbox
        self._unpriced_models: set[str] = set()

    def build(
        self, form: Sequence[Any] | Unreadable, resolver: SubjectResolver | None = None
    ) -> tuple[str, list[CloudEvent]] | None:
        """The call's id and events from its :func:`usage.call_form`; None when there
        are none, or when they cannot be built (then they are kept as a dead letter).
        Never raises."""
        if isinstance(form, Unreadable):
            call_id, detail = form.call_id, form.detail
        else:
            call_id = "unknown"
            try:
                call_id = text_or(form[1][_CALL_ID], call_id)
                record = record_from_form(form, count_like_litellm)
                call_id = record.call_id
                self._warn_if_unpriced(record)
                events = build_events(record, self.settings, resolver)
            except MissingSubjectError as exc:
                log.warning("litellm-openmeter: %s; kept as a dead letter (reason no_subject)", exc)
                self.keep_dead(exc.events, "no_subject", str(exc))
                return None
            except Exception as exc:
                detail = cannot_build(call_id, exc)
            else:
                return (call_id, events) if events else None
        self.keep_unbuilt(call_id, detail)
        return None

    def build_record(
        self, record: UsageRecord, resolver: SubjectResolver | None = None
    ) -> list[CloudEvent]:
        """The events of a record made elsewhere (an unfinished call's estimate); a
        record without a subject is kept as a dead letter. Never raises."""
        try:
            return build_events(record, self.settings, resolver)
        except MissingSubjectError as exc:
            log.warning("litellm-openmeter: %s; kept as a dead letter (reason no_subject)", exc)
            self.keep_dead(exc.events, "no_subject", str(exc))
        except Exception as exc:
            self.keep_unbuilt(record.call_id, cannot_build(record.call_id, exc))
        return []

    def keep_unbuilt(self, call_id: str, detail: str) -> None:
        """Keep a placeholder event for a call whose events could not be built."""
        log.error("litellm-openmeter: %s; kept as a dead letter (reason build_error)", detail)
        self.keep_dead([self._placeholder(call_id, detail)], "build_error", detail)

    def keep_dead(self, events: list[CloudEvent], reason: str, detail: str) -> None:
        """Store events as dead letters; log them whole if even that fails."""
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


def text_or(value: object, default: str) -> str:
    """``str(value)``, or ``default`` for an empty or missing one."""
    return str(value) if value else default


def cannot_build(call_id: str, exc: Exception) -> str:
    """Why a call's events could not be built."""
    return f"cannot build the event for LiteLLM call {call_id}: {type(exc).__name__}: {exc}"
