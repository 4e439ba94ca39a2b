"""Property tests: the local server's meter queries against a plain-Python reference."""

from __future__ import annotations

import itertools
import math
import tempfile
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from litellm_openmeter.meters import AGGREGATIONS, Meter
from litellm_openmeter.server.ingest import format_rfc3339
from litellm_openmeter.server.store import Query, Store, period_pieces

BASE = int(datetime(2026, 3, 28, tzinfo=timezone.utc).timestamp())  # spans a DST change
SPAN = 9 * 86400
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Adelaide"]

values = st.one_of(
    st.integers(-1000, 1000),
    st.floats(-1000, 1000, allow_nan=False, allow_infinity=False).map(lambda v: round(v, 3)),
    st.integers(0, 500).map(str),
    st.none(),
    st.just("not-a-number"),
    st.just(True),
)


def event_lists(
    base: int, span: int, step: int, nudges: list[int], max_size: int
) -> st.SearchStrategy[list[dict[str, Any]]]:
    """Events from ``base`` to ``base + span``, some next to multiples of ``step`` (by
    ``nudges`` seconds): window edges."""
    return st.lists(
        st.fixed_dictionaries(
            {
                "time": st.one_of(
                    st.integers(base, base + span),
                    st.builds(
                        lambda q, d: base + q * step + d,
                        st.integers(0, span // step),
                        st.sampled_from(nudges),
                    ),
                ),
                "subject": st.sampled_from(["a", "b", "c"]),
                "model": st.sampled_from(["m1", "m2", None]),
                "value": values,
                "has_value": st.booleans(),
            }
        ),
        max_size=max_size,
    )


# Times next to quarter hours probe window edges in every zone.
events = event_lists(BASE, SPAN, 900, [-1, 0, 1, 1799], 40)
queries = st.fixed_dictionaries(
    {
        "aggregation": st.sampled_from(AGGREGATIONS),
        "window": st.sampled_from([None, "MINUTE", "HOUR", "DAY", "MONTH"]),
        "zone": st.sampled_from(ZONES),
        "group_subject": st.booleans(),
        "group_model": st.booleans(),
        # Hour-aligned bounds let the hourly rollup answer; others go to the facts.
        "start": st.one_of(
            st.none(),
            st.integers(BASE - 3600, BASE + SPAN),
            st.integers(BASE // 3600 - 1, (BASE + SPAN) // 3600).map(lambda h: h * 3600),
        ),
        "length": st.one_of(
            st.none(), st.integers(0, SPAN), st.integers(0, SPAN // 3600).map(lambda h: h * 3600)
        ),
        "subjects": st.lists(st.sampled_from(["a", "b", "c"]), max_size=2, unique=True),
    }
)


def reference_value(aggregation: str, raw: Any, present: bool) -> tuple[bool, Any]:
    """Whether an event counts for a meter, and the value it contributes."""
    if aggregation == "COUNT":
        return True, 1.0
    if not present or raw is None:
        return False, None
    if aggregation == "UNIQUE_COUNT":
        if isinstance(raw, bool):
            return False, None
        if isinstance(raw, (int, float)):
            return True, str(int(raw)) if float(raw).is_integer() else repr(float(raw))
        return True, raw
    if isinstance(raw, bool):
        return False, None
    try:
        return True, float(raw)
    except ValueError:
        return False, None


def local_window(moment: int, size: str, zone: ZoneInfo) -> tuple[str, str]:
    local = datetime.fromtimestamp(moment, tz=timezone.utc).astimezone(zone).replace(tzinfo=None)
    if size == "MONTH":
        start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = start.replace(year=start.year + (start.month == 12), month=start.month % 12 + 1)
    else:
        unit = {"MINUTE": 60, "HOUR": 3600, "DAY": 86400}[size]
        seconds = int((local - datetime(1970, 1, 1)).total_seconds()) // unit * unit
        start = datetime(1970, 1, 1) + timedelta(seconds=seconds)
        end = start + timedelta(seconds=unit)

    def utc(naive: datetime) -> str:
        return format_rfc3339(naive.replace(tzinfo=zone).astimezone(timezone.utc))

    return utc(start), utc(end)


def reference(
    rows: list[dict[str, Any]], spec: dict[str, Any], query: Query
) -> set[tuple[Any, ...]]:
    zone = ZoneInfo(spec["zone"])
    by_subject = spec["group_subject"] or bool(spec["subjects"])
    buckets: dict[tuple[Any, ...], list[tuple[int, int, Any]]] = defaultdict(list)
    for seq, row in enumerate(rows):
        if query.start is not None and row["time"] < query.start:
            continue
        if query.end is not None and row["time"] >= query.end:
            continue
        if spec["subjects"] and row["subject"] not in spec["subjects"]:
            continue
        counts, value = reference_value(spec["aggregation"], row["value"], row["has_value"])
        if not counts:
            continue
        window = local_window(row["time"], spec["window"], zone) if spec["window"] else None
        key = (
            window,
            row["subject"] if by_subject else None,
            (row["model"] or "") if spec["group_model"] else None,
        )
        buckets[key].append((row["time"], seq, value))
    result = set()
    for (window, subject, model), items in buckets.items():
        numbers = [v for _, _, v in items]
        aggregation = spec["aggregation"]
        if aggregation == "SUM":
            value = sum(numbers)
        elif aggregation == "COUNT":
            value = float(len(items))
        elif aggregation == "AVG":
            value = sum(numbers) / len(numbers)
        elif aggregation == "MIN":
            value = min(numbers)
        elif aggregation == "MAX":
            value = max(numbers)
        elif aggregation == "LATEST":
            value = max(items, key=lambda item: (item[0], item[1]))[2]
        else:
            value = float(len(set(numbers)))
        result.add((window, subject, model, round(value, 6)))
    return result


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=events, spec=queries)
def test_queries_match_the_reference(rows: list[dict[str, Any]], spec: dict[str, Any]) -> None:
    check_against_reference(rows, spec)


LONG_BASE = int(datetime(2026, 2, 26, tzinfo=timezone.utc).timestamp())
LONG_SPAN = 40 * 86400  # two month ends, and America's and Europe's summer time starting
long_events = event_lists(LONG_BASE, LONG_SPAN, 3600, [-1, 0, 1], 60)
owned_day_queries = st.fixed_dictionaries(
    {
        "aggregation": st.sampled_from(["SUM", "COUNT", "AVG"]),
        "window": st.sampled_from(["DAY", "MONTH"]),
        # Whole-hour offsets east and west, up to 14 hours, and none.
        "zone": st.sampled_from(
            ["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo", "Pacific/Kiritimati"]
        ),
        "group_subject": st.booleans(),
        "group_model": st.booleans(),
        "start": st.one_of(
            st.none(),
            st.integers(LONG_BASE // 3600 - 24, (LONG_BASE + LONG_SPAN) // 3600).map(
                lambda h: h * 3600
            ),
        ),
        "length": st.one_of(st.none(), st.integers(0, LONG_SPAN // 3600).map(lambda h: h * 3600)),
        "subjects": st.lists(st.sampled_from(["a", "b", "c"]), max_size=2, unique=True),
    }
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=long_events, spec=owned_day_queries)
def test_days_and_months_in_a_zone_from_the_daily_rollup(
    rows: list[dict[str, Any]], spec: dict[str, Any]
) -> None:
    """Windows on a zone's whole hours are read from the daily rollup plus the hours
    each UTC day shares with the next window; over weeks, month ends and offset changes
    they equal the reference."""
    check_against_reference(rows, spec)


def check_against_reference(rows: list[dict[str, Any]], spec: dict[str, Any]) -> None:
    """Store ``rows`` as events of one meter, query it as ``spec`` says and compare
    with :func:`reference`."""
    with tempfile.TemporaryDirectory() as folder:
        store = Store(Path(folder) / "p.sqlite3")
        meter = Meter(
            slug="m",
            aggregation=spec["aggregation"],
            event_type="t",
            value_property=None if spec["aggregation"] == "COUNT" else "$.value",
            group_by={"model": "$.model"},
        )
        store.create_meter(meter)
        batch = []
        for index, row in enumerate(rows):
            data: dict[str, Any] = {"model": row["model"]}
            if row["has_value"]:
                data["value"] = row["value"]
            batch.append(
                {
                    "specversion": "1.0",
                    "type": "t",
                    "source": "p",
                    "id": str(index),
                    "subject": row["subject"],
                    "time": format_rfc3339(row["time"]),
                    "data": data,
                }
            )
        store.ingest(batch)
        start = spec["start"]
        end = None if start is None or spec["length"] is None else start + spec["length"]
        group_by = (["subject"] if spec["group_subject"] else []) + (
            ["model"] if spec["group_model"] else []
        )
        query = Query(
            start=start,
            end=end,
            window_size=spec["window"],
            time_zone=spec["zone"],
            subjects=spec["subjects"],
            group_by=group_by,
        )
        result = store.query("m", query)
        store.close()
    got = set()
    for row in result["data"]:
        window = (row["windowStart"], row["windowEnd"]) if spec["window"] else None
        value = row["value"]
        assert not math.isnan(value)
        got.add((window, row["subject"], row["groupBy"].get("model"), round(value, 6)))
    assert got == reference(rows, spec, query)


def test_half_hour_zone_day_windows() -> None:
    """18:45 UTC is 00:15 the next day in Kolkata (UTC+05:30)."""
    with tempfile.TemporaryDirectory() as folder:
        store = Store(Path(folder) / "k.sqlite3")
        store.create_meter(Meter(slug="m", aggregation="SUM", event_type="t", value_property="$.v"))
        store.ingest(
            [
                {
                    "specversion": "1.0",
                    "type": "t",
                    "source": "p",
                    "id": "1",
                    "subject": "a",
                    "time": "2026-03-28T18:45:00Z",
                    "data": {"v": 1},
                }
            ]
        )
        [row] = store.query("m", Query(window_size="DAY", time_zone="Asia/Kolkata"))["data"]
        store.close()
    assert (row["windowStart"], row["windowEnd"]) == (
        "2026-03-28T18:30:00Z",
        "2026-03-29T18:30:00Z",
    )


def test_rollups_respect_unaligned_bounds() -> None:
    """Bounds on, off and between hour and day edges give the same sums as the facts."""
    times = [BASE + offset for offset in (0, 1, 3599, 3600, 5 * 3600 + 7, 86399, 86400, 90000)]
    with tempfile.TemporaryDirectory() as folder:
        store = Store(Path(folder) / "e.sqlite3")
        store.create_meter(Meter(slug="m", aggregation="SUM", event_type="t", value_property="$.v"))
        store.ingest(
            [
                {
                    "specversion": "1.0",
                    "type": "t",
                    "source": "p",
                    "id": str(n),
                    "subject": "a",
                    "time": format_rfc3339(t),
                    "data": {"v": 2**n},
                }
                for n, t in enumerate(times)
            ]
        )
        for start in (BASE, BASE + 1, BASE + 3600, BASE + 5 * 3600, BASE + 86400):
            for end in (None, BASE + 3600, BASE + 86400, BASE + 86401, BASE + 2 * 86400):
                for window in (None, "HOUR", "DAY"):
                    query = Query(start=start, end=end, window_size=window)
                    got = sum(r["value"] for r in store.query("m", query)["data"])
                    want = sum(
                        2**n for n, t in enumerate(times) if t >= start and (end is None or t < end)
                    )
                    assert got == want, (start - BASE, end and end - BASE, window)
        store.close()


@given(
    start=st.one_of(st.none(), st.integers(0, 40 * 86400)),
    length=st.one_of(st.none(), st.integers(0, 40 * 86400)),
)
def test_a_period_is_cut_into_whole_buckets_in_time_order(
    start: int | None, length: int | None
) -> None:
    """Pieces follow each other without gap or overlap from start to end; each rollup
    piece is whole days or hours; the facts hold no whole hour."""
    end = None if start is None or length is None else start + length
    pieces = period_pieces(start, end)
    if start is not None and end is not None and start >= end:
        assert pieces == []
        return
    assert pieces[0][1] == start and pieces[-1][2] == end
    for (_, _, before), (_, after, _) in itertools.pairwise(pieces):
        assert before == after
    for size, low, high in pieces:
        assert low is None or high is None or low < high
        if size is None:
            assert low is not None and high is not None
            assert -(-low // 3600) * 3600 + 3600 > high
        else:
            assert all(edge is None or edge % size == 0 for edge in (low, high))
    # The coarsest first: no run of hours or facts holds a whole day that could be one.
    days = [piece for piece in pieces if piece[0] == 86400]
    if start is not None and end is not None and (end // 86400) - (-(-start // 86400)) >= 1:
        assert len(days) == 1
