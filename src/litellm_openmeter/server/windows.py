"""Time windows as OpenMeter's tumbling windows: UTC instants, cut where the wall clock
of a time zone turns a minute, an hour, a day or a month. Pure functions.

A window is named by the instant it starts. MINUTE and HOUR windows start where the
local clock shows a whole minute or hour (so the hour repeated when summer time ends
is two windows, and in a zone half an hour off UTC hours start at half past); DAY and
MONTH windows start at the first instant of a local date or month (the end of a gap
where midnight does not exist). Every event time falls in exactly one window, and the
window of a later time never starts earlier.

Queries name each event's window in SQL (:func:`window_key_sql`), from the zone's
offsets over the days that hold data (:func:`offset_points`), and :func:`window` gives
the bounds of each window named.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

WINDOW_SIZES = ("MINUTE", "HOUR", "DAY", "MONTH")
_SECONDS = {"MINUTE": 60, "HOUR": 3600}
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

EARLIEST = -62132918400
"""0001-02-01T00:00:00Z: the first event time accepted (every window of it, in any
zone, starts at a date Python and RFC 3339 can write)."""
LATEST = 253399449600
"""9999-11-29T00:00:00Z: event times must be before it (so must a window's end)."""
ACCEPTED_RANGE = "from 0001-02-01T00:00:00Z up to (not including) 9999-11-29T00:00:00Z"

MAX_WINDOWS = 100_000
"""The most windows one query may return: a larger answer is refused (a bigger window
size or a shorter period answers it)."""


def zone(name: str) -> ZoneInfo:
    """The IANA zone, or ValueError naming the bad value."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"windowTimeZone {name!r} is not an IANA time zone (e.g. UTC, Europe/Berlin)"
        ) from None


def in_range(moment: int) -> bool:
    """True for an event time the server can window (see :data:`ACCEPTED_RANGE`)."""
    return EARLIEST <= moment < LATEST


def _aware(moment: int, tz: ZoneInfo) -> datetime:
    return (_EPOCH + timedelta(seconds=moment)).astimezone(tz)


def _local(moment: int, tz: ZoneInfo) -> datetime:
    return _aware(moment, tz).replace(tzinfo=None)


def _instant(local: datetime, tz: ZoneInfo, fold: int = 0) -> int:
    return int((local.replace(tzinfo=tz, fold=fold) - _EPOCH).total_seconds())


def _first_instant(local: datetime, tz: ZoneInfo) -> int:
    """The first instant the zone's clock shows ``local`` (naive), or, where the clock
    skips it, the first instant after the gap."""
    first = _instant(local, tz)  # fold 0: the earlier of two, or mapped past a gap
    if _local(first, tz) == local:
        return first
    low, high = _instant(local, tz, fold=1), first  # the gap lies between them
    while high - low > 1:
        middle = (low + high) // 2
        if _local(middle, tz) >= local:
            high = middle
        else:
            low = middle
    return high


@functools.lru_cache(maxsize=65536)
def window(size: str, moment: int, tz: ZoneInfo) -> tuple[int, int]:
    """The UTC start and end (epoch seconds) of the window of ``moment``."""
    if size in _SECONDS:
        seconds = _SECONDS[size]
        offset = _aware(moment, tz).utcoffset() or timedelta(0)
        start = moment - (moment + int(offset.total_seconds())) % seconds
        return start, start + seconds
    local = _local(moment, tz)
    if size == "DAY":
        first = datetime(local.year, local.month, local.day)
        following = first + timedelta(days=1)
    else:
        first = datetime(local.year, local.month, 1)
        following = datetime(local.year + local.month // 12, local.month % 12 + 1, 1)
    return _first_instant(first, tz), _first_instant(following, tz)


def offset(moment: int, tz: ZoneInfo) -> int:
    """The zone's UTC offset at ``moment``, in seconds."""
    delta = _aware(moment, tz).utcoffset()
    return int(delta.total_seconds()) if delta is not None else 0


def offset_points(tz: ZoneInfo, days: Iterable[int]) -> list[tuple[int, int]]:
    """``[(since, offset), ...]``: the zone's UTC offset from each ``since`` on, right
    for every second of the given UTC days (day numbers since 1970) and nothing more:
    the cost follows the days that hold data, never the time between them."""
    points: list[tuple[int, int]] = []
    for day in sorted(set(days)):
        start = day * 86400
        current = offset(start, tz)
        if not points or points[-1][1] != current:
            points.append((start, current))
        for hour in range(1, 25):
            end = start + hour * 3600
            following = offset(end - 1, tz)
            if following == current:
                continue
            # The change is after ``low`` (a second known to have ``current``: the one
            # before this hour, or the day's first) and at or before ``high``.
            low, high = max(start, end - 3601), end - 1
            while high - low > 1:
                middle = (low + high) // 2
                if offset(middle, tz) == current:
                    low = middle
                else:
                    high = middle
            current = offset(high, tz)
            points.append((high, current))
    return points or [(0, 0)]


# Added to local seconds so that they are positive (from the year 1 on) and a multiple of
# every window length: SQLite's % and / truncate toward zero.
_SHIFT = 800_000 * 86400


def window_key_sql(size: str, column: str, points: list[tuple[int, int]]) -> tuple[str, list[int]]:
    """SQL naming the window of ``column`` (epoch seconds), with its parameters:
    MINUTE and HOUR the UTC start, DAY the local date, MONTH the local month. Right for
    the seconds ``points`` covers (see :func:`offset_points`)."""
    if len(points) == 1:
        local, params = f"({column} + ?)", [points[0][1]]
    else:
        # Newest first: most events are recent, and a row stops at its first match.
        cases = " ".join(f"WHEN {column} >= ? THEN ?" for _ in points[1:])
        local = f"({column} + CASE {cases} ELSE ? END)"
        params = []
        for since, value in reversed(points[1:]):
            params += [since, value]
        params.append(points[0][1])
    if size == "MONTH":
        return f"strftime('%Y-%m', {local}, 'unixepoch')", params
    if size == "DAY":
        return f"(({local} + {_SHIFT}) / 86400)", params
    seconds = _SECONDS[size]
    return f"({column} - ({local} + {_SHIFT}) % {seconds})", params


# -- merging partial aggregates of buckets into windows --------------------------------


@dataclass
class Cell:
    """One row of a result being merged: a window, a subject and group values."""

    total: float = 0.0
    count: int = 0
    extreme: Any = None
    latest: tuple[int, Any] | None = None
    distinct: set[Any] = field(default_factory=set)


class Merger:
    """Merges bucket rows into window rows for one aggregation.

    Every bucket row ends in the aggregation's partial values, as the store selects
    them: SUM and AVG ``(sum, count)``, COUNT ``(count,)``, MIN and MAX ``(value,)``,
    LATEST ``(value, order)`` (the larger order is the later event) and UNIQUE_COUNT
    ``(value,)`` (one row per distinct value of a bucket). A key starts with the
    window's start.
    """

    def __init__(self, aggregation: str) -> None:
        self.aggregation = aggregation
        self.cells: dict[tuple[Any, ...], Cell] = {}
        self.windows: set[Any] = set()

    def add(self, key: tuple[Any, ...], partial: tuple[Any, ...]) -> None:
        """Fold one bucket row's partial values into the row ``key`` names."""
        cell = self.cells.get(key)
        if cell is None:
            if key[0] not in self.windows:
                if len(self.windows) >= MAX_WINDOWS:
                    raise TooManyWindows()
                self.windows.add(key[0])
            cell = self.cells[key] = Cell()
        aggregation = self.aggregation
        if aggregation in ("SUM", "AVG"):
            total, count = partial
            cell.total += total or 0
            cell.count += count or 0
        elif aggregation == "COUNT":
            cell.count += partial[0] or 0
        elif aggregation == "MIN":
            if partial[0] is not None and (cell.extreme is None or partial[0] < cell.extreme):
                cell.extreme = partial[0]
        elif aggregation == "MAX":
            if partial[0] is not None and (cell.extreme is None or partial[0] > cell.extreme):
                cell.extreme = partial[0]
        elif aggregation == "LATEST":
            value, order = partial
            if order is not None and (cell.latest is None or order > cell.latest[0]):
                cell.latest = (order, value)
        elif partial[0] is not None:  # UNIQUE_COUNT
            cell.distinct.add(partial[0])

    def value(self, cell: Cell) -> float:
        """The merged value of a row."""
        aggregation = self.aggregation
        if aggregation == "SUM":
            return float(cell.total)
        if aggregation == "AVG":
            return float(cell.total) / cell.count if cell.count else 0.0
        if aggregation == "COUNT":
            return float(cell.count)
        if aggregation in ("MIN", "MAX"):
            return float(cell.extreme or 0)
        if aggregation == "LATEST":
            return float((cell.latest[1] if cell.latest is not None else 0) or 0)
        return float(len(cell.distinct))


def value_of(aggregation: str, partial: tuple[Any, ...]) -> float:
    """The value of one row's partial values, where nothing is left to merge (every
    aggregation but UNIQUE_COUNT, whose rows are one per value)."""
    if aggregation in ("SUM", "AVG"):
        total, count = partial
        if aggregation == "AVG":
            return float(total or 0) / count if count else 0.0
        return float(total or 0)
    return float(partial[0] or 0)


class TooManyWindows(ValueError):
    """A query whose answer would hold more than :data:`MAX_WINDOWS` windows."""

    def __init__(self) -> None:
        super().__init__(
            f"the answer would hold more than {MAX_WINDOWS} windows: use a larger "
            "windowSize or a shorter period (from, to)"
        )
