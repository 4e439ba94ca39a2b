"""Time windows in a time zone: the SQL that buckets an event time into its local
window, and the UTC bounds of each bucket. Pure functions."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

WINDOW_SIZES = ("MINUTE", "HOUR", "DAY", "MONTH")
_SECONDS = {"MINUTE": 60, "HOUR": 3600, "DAY": 86400}
_STEP = 900  # every real UTC offset and DST change falls on a quarter hour


def zone(name: str) -> ZoneInfo:
    """The IANA zone, or ValueError naming the bad value."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"windowTimeZone {name!r} is not an IANA time zone (e.g. UTC, Europe/Berlin)"
        ) from None


def _offset(tz: ZoneInfo, epoch: int) -> int:
    delta = datetime.fromtimestamp(epoch, tz=timezone.utc).astimezone(tz).utcoffset()
    return int(delta.total_seconds()) if delta is not None else 0


def offset_segments(tz: ZoneInfo, start: int, end: int) -> list[tuple[int, int]]:
    """``[(until, offset), ...]``: the UTC offset in force before each ``until``.

    The last segment's ``until`` is ``end``; offsets change only at quarter hours.
    """
    start -= start % _STEP
    segments: list[tuple[int, int]] = []
    current = _offset(tz, start)
    moment = start
    while moment < end:
        following = _offset(tz, moment + _STEP)
        if following != current:
            segments.append((moment + _STEP, current))
            current = following
        moment += _STEP
    segments.append((end, current))
    return segments


def local_seconds_sql(
    tz: ZoneInfo, start: int, end: int, column: str = "time"
) -> tuple[str, list[int]]:
    """SQL for the local wall-clock seconds of ``column``, with its parameters."""
    segments = offset_segments(tz, start, end)
    if len(segments) == 1:
        return f"({column} + ?)", [segments[0][1]]
    parts, params = [], []
    for until, offset in segments[:-1]:
        parts.append(f"WHEN {column} < ? THEN ?")
        params += [until, offset]
    params.append(segments[-1][1])
    return f"({column} + CASE {' '.join(parts)} ELSE ? END)", params


def window_key_sql(size: str, local: str) -> str:
    """SQL for the window key of a local-seconds expression."""
    if size == "MONTH":
        return f"strftime('%Y-%m', {local}, 'unixepoch')"
    return f"({local} / {_SECONDS[size]})"


def window_bounds(size: str, key: int | str, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """UTC start and end of the window a key names."""
    if size == "MONTH":
        year, month = (int(part) for part in str(key).split("-"))
        local_start = datetime(year, month, 1)
        local_end = datetime(year + (month == 12), month % 12 + 1, 1)
    else:
        seconds = _SECONDS[size]
        local_start = datetime(1970, 1, 1) + timedelta(seconds=int(key) * seconds)
        local_end = local_start + timedelta(seconds=seconds)
    return _to_utc(local_start, tz), _to_utc(local_end, tz)


def _to_utc(local: datetime, tz: ZoneInfo) -> datetime:
    return local.replace(tzinfo=tz).astimezone(timezone.utc)
