"""Windows as OpenMeter's tumbling windows in UTC instants, against a plain reference
that reads the local wall clock second by second; across DST changes both ways, zones
off UTC by half and three quarters of an hour, and event times from year 1 to 9999.
Then the store: the edges that used to answer wrong numbers or fail."""

from __future__ import annotations

import tempfile
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from litellm_openmeter.meters import Meter
from litellm_openmeter.server.ingest import format_rfc3339
from litellm_openmeter.server.store import Query, QueryCancelled, Store
from litellm_openmeter.server.windows import (
    EARLIEST,
    LATEST,
    MAX_WINDOWS,
    TooManyWindows,
    offset,
    offset_points,
    window,
)

ZONES = [
    "UTC",
    "America/New_York",
    "Europe/Budapest",
    "Asia/Kolkata",  # +05:30
    "Asia/Kathmandu",  # +05:45
    "Australia/Lord_Howe",  # DST of half an hour
    "America/St_Johns",  # -03:30 / -02:30
    "Pacific/Chatham",  # +12:45 / +13:45
    "America/Sao_Paulo",  # DST used to end at midnight
    "Asia/Beirut",  # DST starts at midnight
    "Pacific/Apia",  # skipped a whole day in 2011
]
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def local(moment: int, zone: ZoneInfo) -> datetime:
    return (EPOCH + timedelta(seconds=moment)).astimezone(zone).replace(tzinfo=None)


def reference(size: str, moment: int, zone: ZoneInfo) -> int:
    """The window's start by reading the clock: the first second, going back from
    ``moment``, from which on the clock stays in the same minute, hour, date or month."""
    if size in ("MINUTE", "HOUR"):
        wall = local(moment, zone)
        into = wall.second + (wall.minute * 60 if size == "HOUR" else 0)
        return moment - into

    def name(second: int) -> tuple[int, ...]:
        wall = local(second, zone)
        return (wall.year, wall.month) + ((wall.day,) if size == "DAY" else ())

    def same(second: int) -> bool:
        try:
            return name(second) == target
        except OverflowError:  # before the year 1 in this zone
            return False

    target = name(moment)
    start = moment
    for step in (3600, 60, 1):
        while same(start - step):
            start -= step
    return start


moments = st.one_of(
    st.integers(min_value=EARLIEST, max_value=LATEST - 1),
    # Around DST changes in the zones' modern rules.
    st.integers(
        min_value=int(datetime(2005, 1, 1, tzinfo=timezone.utc).timestamp()),
        max_value=int(datetime(2030, 1, 1, tzinfo=timezone.utc).timestamp()),
    ),
    # The local-mean-time era (offsets in odd seconds) and the first standard offsets.
    st.integers(
        min_value=int(datetime(1850, 1, 1, tzinfo=timezone.utc).timestamp()),
        max_value=int(datetime(1950, 1, 1, tzinfo=timezone.utc).timestamp()),
    ),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    moment=moments,
    size=st.sampled_from(["MINUTE", "HOUR", "DAY", "MONTH"]),
    name=st.sampled_from(ZONES),
)
def test_a_window_starts_where_the_clock_turns(moment: int, size: str, name: str) -> None:
    zone = ZoneInfo(name)
    start, end = window(size, moment, zone)
    assert start <= moment < end
    assert start == reference(size, moment, zone)
    if size in ("DAY", "MONTH") and end < LATEST:
        # Tumbling: the next window starts where this one ends.
        assert window(size, end, zone)[0] == end
        assert window(size, end - 1, zone)[0] == start
    assert format_rfc3339(start)[:4].isdigit() and format_rfc3339(end)[:4].isdigit()


def test_the_hour_repeated_when_summer_time_ends_is_two_windows() -> None:
    zone = ZoneInfo("America/New_York")
    first = int(datetime(2026, 11, 1, 5, 30, tzinfo=timezone.utc).timestamp())
    second = first + 3600  # the clock shows 01:30 both times
    assert local(first, zone) == local(second, zone)
    assert window("HOUR", first, zone) == (first - 1800, first + 1800)
    assert window("HOUR", second, zone) == (second - 1800, second + 1800)
    assert window("MINUTE", first, zone) != window("MINUTE", second, zone)
    day = window("DAY", first, zone)
    assert day[1] - day[0] == 25 * 3600


def test_a_day_without_midnight_starts_when_the_clock_jumps() -> None:
    # Beirut, 2024-03-31: the clock went from 23:59:59 to 01:00 (UTC+2 -> UTC+3).
    zone = ZoneInfo("Asia/Beirut")
    jump = int(datetime(2024, 3, 30, 22, 0, tzinfo=timezone.utc).timestamp())
    assert local(jump, zone) == datetime(2024, 3, 31, 1, 0)
    assert window("DAY", jump + 5, zone) == (jump, jump + 23 * 3600)


def changing_days(zone: ZoneInfo, year: int) -> list[int]:
    """The UTC days of ``year`` (day numbers) in which the zone's offset changes."""
    first = int(datetime(year, 1, 1, tzinfo=timezone.utc).timestamp()) // 86400
    last = int(datetime(year + 1, 1, 1, tzinfo=timezone.utc).timestamp()) // 86400
    first, last = max(first, EARLIEST // 86400), min(last, LATEST // 86400)
    return [
        day
        for day in range(first, last)
        if offset(day * 86400, zone) != offset((day + 1) * 86400 - 1, zone)
    ]


@settings(max_examples=60, deadline=None)
@given(
    year=st.one_of(st.integers(1, 9998), st.integers(1850, 2030), st.integers(2000, 2030)),
    day_of_year=st.integers(0, 364),
    name=st.sampled_from(ZONES),
)
def test_offset_points_name_each_change_to_the_second(
    year: int, day_of_year: int, name: str
) -> None:
    """Each point is the first second of its offset, and every second of a day reads
    the offset of the last point before it: on every day of a year the zone changes,
    and on one more."""
    zone = ZoneInfo(name)
    some_day = int(datetime(year, 1, 1, tzinfo=timezone.utc).timestamp()) // 86400 + day_of_year
    some_day = min(max(some_day, EARLIEST // 86400), LATEST // 86400 - 1)
    for day in [*changing_days(zone, year), some_day]:
        points = offset_points(zone, [day])
        assert points[0] == (day * 86400, offset(day * 86400, zone))
        for since, value in points[1:]:
            assert offset(since, zone) == value != offset(since - 1, zone)
        for second in range(day * 86400, (day + 1) * 86400, 900):
            in_effect = [value for since, value in points if since <= second][-1]
            assert in_effect == offset(second, zone)


@pytest.mark.parametrize("aggregation", ["SUM", "MAX"])  # rollups and facts
def test_an_event_on_the_second_the_clock_turns_back(aggregation: str) -> None:
    """Beirut, 2024-10-26T21:00:00Z: 00:00 of the 27th became 23:00 of the 26th, and
    the event on that very second belongs to the 26th."""
    store = store_with(["2024-10-26T21:00:00Z", "2024-10-26T22:30:00Z"], aggregation)
    assert rows(store, window_size="DAY", time_zone="Asia/Beirut") == [
        ("2024-10-25T21:00:00Z", "2024-10-26T22:00:00Z", 1.0),
        ("2024-10-26T22:00:00Z", "2024-10-27T22:00:00Z", 2.0),
    ]


def store_with(times: list[str], aggregation: str = "SUM", **meter: Any) -> Store:
    store = Store(Path(tempfile.mkdtemp()) / "w.sqlite3")
    store.create_meter(
        Meter(
            slug="m",
            aggregation=aggregation,
            event_type="t",
            value_property=None if aggregation == "COUNT" else "$.v",
            **meter,
        )
    )
    store.ingest(
        [
            {
                "specversion": "1.0",
                "type": "t",
                "source": "p",
                "id": str(index),
                "subject": "a",
                "time": moment,
                "data": {"v": index + 1},
            }
            for index, moment in enumerate(times)
        ]
    )
    return store


def rows(store: Store, **query: Any) -> list[tuple[str, str, float]]:
    data = store.query("m", Query(**query))["data"]
    return [(row["windowStart"], row["windowEnd"], row["value"]) for row in data]


@pytest.mark.parametrize("aggregation", ["SUM", "MAX"])  # rollups and facts
def test_the_store_answers_two_rows_for_the_repeated_hour(aggregation: str) -> None:
    store = store_with(["2026-11-01T05:30:00Z", "2026-11-01T06:30:00Z"], aggregation)
    answer = rows(store, window_size="HOUR", time_zone="America/New_York")
    assert answer == [
        ("2026-11-01T05:00:00Z", "2026-11-01T06:00:00Z", 1.0),
        ("2026-11-01T06:00:00Z", "2026-11-01T07:00:00Z", 2.0),
    ]


@pytest.mark.parametrize("aggregation", ["SUM", "MIN", "LATEST", "UNIQUE_COUNT"])
def test_events_before_1970_fall_in_their_own_minute(aggregation: str) -> None:
    store = store_with(["1969-12-31T23:59:30Z", "1969-12-31T23:58:59Z"], aggregation)
    answer = rows(store, window_size="MINUTE", time_zone="UTC")
    assert [row[:2] for row in answer] == [
        ("1969-12-31T23:58:00Z", "1969-12-31T23:59:00Z"),
        ("1969-12-31T23:59:00Z", "1970-01-01T00:00:00Z"),
    ]


def test_years_before_1000_are_written_with_four_digits() -> None:
    store = store_with(["0012-03-04T05:06:07Z"])
    assert rows(store, window_size="DAY", time_zone="UTC") == [
        ("0012-03-04T00:00:00Z", "0012-03-05T00:00:00Z", 1.0)
    ]
    [event] = store.list_events(limit=1, start=EARLIEST)
    assert event["event"]["time"] == "0012-03-04T05:06:07Z"


def test_without_a_period_the_row_spans_the_minutes_of_its_events() -> None:
    store = store_with(["2026-11-01T05:30:10Z", "2999-01-01T00:00:59Z"])
    assert rows(store) == [("2026-11-01T05:30:00Z", "2999-01-01T00:01:00Z", 3.0)]


def test_an_hour_in_lmt_is_read_by_the_second() -> None:
    """New York ran 4:56:02 behind UTC before 1883: its local midnight falls inside a
    UTC hour, which the store then reads second by second."""
    store = store_with(["1880-05-01T04:56:01Z", "1880-05-01T04:56:02Z"])
    assert rows(store, window_size="DAY", time_zone="America/New_York") == [
        ("1880-04-30T04:56:02Z", "1880-05-01T04:56:02Z", 1.0),
        ("1880-05-01T04:56:02Z", "1880-05-02T04:56:02Z", 2.0),
    ]


def test_a_query_over_a_wide_span_costs_its_rows() -> None:
    store = store_with(["0001-02-01T00:00:00Z", "1900-01-01T00:00:00Z", "9999-11-28T23:59:59Z"])
    # The zone's offsets were stepped through quarter hour by quarter hour, from the
    # first event to the last: minutes for this span.
    answer = rows(store, window_size="DAY", time_zone="America/New_York")
    assert len(answer) == 3
    assert answer[-1][1] == "9999-11-29T05:00:00Z"


def test_too_many_windows_is_refused() -> None:
    store = store_with([format_rfc3339(60 * minute) for minute in range(MAX_WINDOWS + 1)], "COUNT")
    with pytest.raises(TooManyWindows, match="windowSize or a shorter period"):
        rows(store, window_size="MINUTE", time_zone="UTC")


def test_a_query_whose_client_went_away_stops() -> None:
    store = store_with([format_rfc3339(60 * minute) for minute in range(20_000)], "COUNT")
    gone = threading.Event()
    gone.set()
    with pytest.raises(QueryCancelled):
        store.query("m", Query(window_size="MINUTE", time_zone="UTC"), gone)
    # The same connection answers the next query in full.
    assert len(rows(store, window_size="HOUR", time_zone="UTC")) == 334
