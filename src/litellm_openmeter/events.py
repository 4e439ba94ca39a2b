"""Event building: from a :class:`UsageRecord` to OpenMeter CloudEvents.

Pure functions, no I/O. Two shapes:

``litellm`` (default)
    One event per call, the shape of LiteLLM's built-in logger with fields added.
``tokens``
    OpenMeter's recommended LLM form: one event per non-zero token kind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from .record import UsageRecord
from .settings import Settings

CloudEvent = dict[str, Any]
SubjectResolver = Callable[[Mapping[str, str]], "str | None"]

TOKEN_KINDS = ("input", "output", "cache_read", "cache_creation", "reasoning")
DIMENSIONS = ("model_group", "provider", "call_type", "team_id", "key_alias", "end_user")


class EventBuildError(ValueError):
    """An event for a call could not be built; ``events`` holds what could be."""

    def __init__(self, message: str, call_id: str, events: list[CloudEvent]) -> None:
        super().__init__(message)
        self.call_id = call_id
        self.events = events


class MissingSubjectError(EventBuildError):
    """No subject could be found for a call (OpenMeter requires one)."""


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` suffix and microseconds."""
    utc = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return utc.isoformat(timespec="microseconds") + "Z"  # several times faster than strftime


def resolve_subject(
    record: UsageRecord,
    order: tuple[str, ...],
    resolver: SubjectResolver | None = None,
) -> str | None:
    """The billing subject: the custom ``resolver`` if given, else the first
    identity in ``order`` that the call has. Empty strings count as missing."""
    if resolver is not None:
        chosen = resolver(dict(record.identities))
        if chosen is None:
            return None
        text = str(chosen)
        return text if text.strip() else None
    for name in order:
        value = record.identities.get(name)
        if value is not None and value.strip():
            return value
    return None


def build_events(
    record: UsageRecord,
    settings: Settings,
    resolver: SubjectResolver | None = None,
) -> list[CloudEvent]:
    """The CloudEvents for one call, ready to send (possibly none).

    Raises :class:`MissingSubjectError` when no subject is found; the error
    carries the events with an empty subject so they can be kept and fixed.
    """
    if not record.success:
        events = [_failure_event(record, settings)] if settings.meter_failures else []
    elif settings.event_shape == "tokens":
        events = _token_events(record, settings)
    else:
        events = [_call_event(record, settings)]
    if not events:
        return events
    subject = resolve_subject(record, settings.subject_from, resolver)
    for event in events:
        event["subject"] = subject or ""
    if subject is None:
        tried = ", ".join(settings.subject_from) if resolver is None else "the custom resolver"
        raise MissingSubjectError(
            f"no subject for LiteLLM call {record.call_id} (tried {tried}): pass "
            "user=... on the request, use a key that has a user_id, or set "
            "OPENMETER_SUBJECT_FROM to a source this traffic has",
            record.call_id,
            events,
        )
    return events


def _envelope(
    settings: Settings, event_type: str, event_id: str, record: UsageRecord
) -> CloudEvent:
    return {
        "specversion": "1.0",
        "type": event_type,
        "id": event_id,
        "time": format_time(record.end_time),
        "subject": "",
        "source": settings.source,
    }


def _dimensions(record: UsageRecord) -> dict[str, str]:
    values = {name: getattr(record, name) for name in DIMENSIONS}
    return {name: value for name, value in values.items() if value}


def accuracy(record: UsageRecord) -> dict[str, str]:
    """``usage_accuracy`` (``exact``: the provider's count; ``estimated``: LiteLLM's or
    ours) and, for an estimate, ``estimate_reason``."""
    if record.estimate_reason is None:
        return {"usage_accuracy": "exact"}
    return {"usage_accuracy": "estimated", "estimate_reason": record.estimate_reason}


def _call_event(record: UsageRecord, settings: Settings) -> CloudEvent:
    event = _envelope(settings, settings.event_type, record.call_id, record)
    event["data"] = {
        "model": record.model,
        "cost": record.cost,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "total_tokens": record.total_tokens,
        "cache_read_tokens": record.cache_read_tokens,
        "cache_creation_tokens": record.cache_creation_tokens,
        "reasoning_tokens": record.reasoning_tokens,
        **_dimensions(record),
        **accuracy(record),
    }
    return event


def token_counts(record: UsageRecord) -> dict[str, int]:
    """Tokens per kind; the kinds add up to prompt + completion tokens."""
    return {
        "input": record.uncached_input_tokens,
        "output": record.non_reasoning_output_tokens,
        "cache_read": record.cache_read_tokens,
        "cache_creation": record.cache_creation_tokens,
        "reasoning": record.reasoning_tokens,
    }


def _token_events(record: UsageRecord, settings: Settings) -> list[CloudEvent]:
    counts = {kind: n for kind, n in token_counts(record).items() if n > 0}
    if not counts and record.cost > 0:
        counts = {"input": 0}  # keep the cost of a call that reports no tokens
    events = []
    for position, (kind, tokens) in enumerate(counts.items()):
        event = _envelope(settings, settings.event_type, f"{record.call_id}:{kind}", record)
        event["data"] = {
            "tokens": tokens,
            "model": record.model,
            "type": kind,
            # The call's cost rides on its first event so SUM($.cost) is exact.
            "cost": record.cost if position == 0 else 0,
            "call_id": record.call_id,
            **_dimensions(record),
            **accuracy(record),
        }
        events.append(event)
    return events


def _failure_event(record: UsageRecord, settings: Settings) -> CloudEvent:
    event = _envelope(settings, settings.failure_event_type, f"{record.call_id}:failure", record)
    data: dict[str, Any] = {
        "model": record.model,
        "error_class": record.error_class or "UnknownError",
    }
    if record.error_code:
        data["error_code"] = record.error_code
    data.update(_dimensions(record))
    event["data"] = data
    return event
