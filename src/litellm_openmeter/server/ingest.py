"""Ingest rules of OpenMeter's v1 events endpoint: content types, body shapes, event
validation. Pure functions."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from .windows import ACCEPTED_RANGE, in_range

CONTENT_TYPES = (
    "application/cloudevents+json",
    "application/cloudevents-batch+json",
    "application/json",
)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_RFC3339 = re.compile(r"^(\d{4}-\d\d-\d\d)[Tt ](\d\d:\d\d:\d\d)(\.\d+)?([Zz]|[+-]\d\d:\d\d)$")


class IngestError(ValueError):
    """A request OpenMeter would refuse; ``status`` is its HTTP status."""

    def __init__(self, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


@dataclass(frozen=True)
class ValidEvent:
    """An event that passed validation, with its parsed time in whole seconds."""

    body: dict[str, Any]
    time: int


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 date-time (offset required; any fraction length)."""
    match = _RFC3339.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"{text!r} is not an RFC 3339 date-time")
    date, clock, fraction, offset = match.groups()
    micro = (fraction or ".0")[1:7].ljust(6, "0")
    return _in_utc(date, f"{clock}.{micro}", offset)


def _in_utc(date: str, clock: str, offset: str) -> datetime:
    """The instant in UTC; ValueError also when it falls outside the years 1-9999 there
    (``0001-01-01T00:00:00+01:00`` is a valid RFC 3339 text, but no Python datetime)."""
    offset = "+00:00" if offset in ("Z", "z") else offset
    text = f"{date}T{clock}{offset}"
    try:
        return datetime.fromisoformat(text).astimezone(timezone.utc)
    except OverflowError:
        raise ValueError(f"{text!r} is outside the years 0001-9999 in UTC") from None


def format_rfc3339(moment: float | datetime) -> str:
    """UTC RFC 3339 with a Z suffix (whole seconds unless the value has a fraction)."""
    if not isinstance(moment, datetime):
        moment = _EPOCH + timedelta(seconds=moment)  # fromtimestamp fails before year 1000
    moment = moment.astimezone(timezone.utc)
    # Not strftime: its %Y writes the year 12 as "12", where RFC 3339 wants "0012".
    text = (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    )
    if moment.microsecond:
        return f"{text}.{moment.microsecond // 1000:03d}Z"
    return text + "Z"


def parse_body(content_type: str | None, raw: bytes) -> list[Any]:
    """The events of a request body, by OpenMeter's v1 content-type rules."""
    # OpenMeter's v1 handler compares the header as a plain string: a charset
    # parameter is an error there, and so it is here.
    if content_type not in CONTENT_TYPES:
        raise IngestError(
            f"invalid content type: {content_type!r}; use one of {', '.join(CONTENT_TYPES)} "
            "(without parameters)"
        )
    try:
        parsed = orjson.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise IngestError(f"malformed JSON body: {exc}") from None
    if content_type == "application/cloudevents+json":
        if not isinstance(parsed, dict):
            raise IngestError("application/cloudevents+json body must be one event (a JSON object)")
        return [parsed]
    if content_type == "application/cloudevents-batch+json":
        if not isinstance(parsed, list):
            raise IngestError("application/cloudevents-batch+json body must be a JSON array")
        return parsed
    if isinstance(parsed, dict):
        return [parsed]
    if isinstance(parsed, list):
        return parsed
    raise IngestError("application/json body must be an event object or an array of events")


def validate_event(event: object, now: float) -> ValidEvent:
    """Check one event as OpenMeter does; raises :class:`IngestError` naming the field."""
    if not isinstance(event, dict):
        raise IngestError("event must be a JSON object")
    for name in ("id", "source", "specversion", "type", "subject"):
        value = event.get(name)
        if not isinstance(value, str) or not value:
            raise IngestError(f"{name}: required, must be a non-empty string")
    if event["specversion"] != "1.0":
        raise IngestError(f'specversion: {event["specversion"]!r} is not supported, use "1.0"')
    content_type = event.get("datacontenttype")
    if content_type is not None and content_type != "application/json":
        raise IngestError("datacontenttype: only application/json is allowed")
    data = event.get("data")
    if data is not None and not isinstance(data, dict):
        raise IngestError("data: must be a JSON object or null")
    raw_time = event.get("time")
    if raw_time is None:
        moment = int(now)
    else:
        match = _RFC3339.match(raw_time) if isinstance(raw_time, str) else None
        try:
            if match is None:
                raise ValueError(raw_time)
            date, clock, _, offset = match.groups()
            # Whole seconds: the fraction never changes the second (it is below one).
            moment = _epoch_seconds(date, clock, offset)
        except ValueError:
            raise IngestError(f"time: {raw_time!r} is not an RFC 3339 date-time") from None
        if not in_range(moment):
            raise IngestError(
                f"time: {raw_time!r} is outside the times the server can window ({ACCEPTED_RANGE})"
            )
    body = {
        key: event[key]
        for key in ("id", "source", "specversion", "type", "subject", "datacontenttype", "data")
        if key in event
    }
    body["time"] = _whole_seconds(moment)
    return ValidEvent(body=body, time=moment)


@functools.lru_cache(maxsize=8192)
def _epoch_seconds(date: str, clock: str, offset: str) -> int:
    # Live traffic repeats the same seconds: cache their parse.
    return int(_in_utc(date, clock, offset).timestamp())


@functools.lru_cache(maxsize=4096)
def _whole_seconds(moment: int) -> str:
    # Live traffic repeats the same seconds: cache their text.
    return format_rfc3339(moment)
