"""The local server driven by OpenMeter's official Python SDK (``openmeter``), as a
client of ours would: ingest, events, meters, queries in JSON and CSV, group-by values,
subjects and errors. Every answer parses into the SDK's models."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from litellm_openmeter.server import BackgroundServer, open_store

openmeter = pytest.importorskip("openmeter")
models = pytest.importorskip("openmeter.models")
HttpResponseError = pytest.importorskip("corehttp.exceptions").HttpResponseError

T0 = datetime(2026, 11, 1, 5, 30, tzinfo=timezone.utc)  # 01:30 in New York, twice


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Any]:
    with BackgroundServer(open_store(tmp_path / "server.sqlite3"), token="sdk-token") as server:
        yield openmeter.Client(endpoint=server.url, token="sdk-token")


def event(event_id: str, moment: datetime, subject: str = "acme", **data: Any) -> Any:
    """A ``litellm_tokens`` event; a property given as None is left out."""
    fields = {"model": "gpt-4o", "total_tokens": 10, **data}
    return models.Event(
        id=event_id,
        source="sdk-test",
        specversion="1.0",
        type="litellm_tokens",
        subject=subject,
        time=moment,
        data={key: value for key, value in fields.items() if value is not None},
    )


def windows(result: Any) -> list[tuple[datetime, datetime, float]]:
    return [(row.window_start, row.window_end, row.value) for row in result.data]


def status(call: Any) -> int:
    with pytest.raises(HttpResponseError) as caught:
        call()
    response = caught.value.response
    assert response.headers["content-type"].startswith("application/problem+json")
    code: int = response.status_code
    return code


def test_ingest_list_and_query(client: Any) -> None:
    client.events.ingest_event(event("one", T0))
    client.events.ingest_events(
        [event("two", T0 + timedelta(hours=1)), event("three", T0, subject="globex", model="o3")]
    )
    listed = client.events.list(from_parameter=T0 - timedelta(days=1), limit=10)
    assert sorted(item.event.id for item in listed) == ["one", "three", "two"]
    assert all(isinstance(item.ingested_at, datetime) for item in listed)

    # The hour New York repeats when summer time ends: two windows.
    result = client.meters.query_json(
        "litellm_tokens_total_tokens",
        from_parameter=T0 - timedelta(hours=1),
        to=T0 + timedelta(hours=3),
        window_size="HOUR",
        window_time_zone="America/New_York",
        group_by=["subject"],
        subject=["acme"],
    )
    assert windows(result) == [
        (T0 - timedelta(minutes=30), T0 + timedelta(minutes=30), 10.0),
        (T0 + timedelta(minutes=30), T0 + timedelta(minutes=90), 10.0),
    ]
    assert result.window_size == "HOUR"

    by_model = client.meters.query(
        "litellm_tokens_total_tokens",
        models.MeterQueryRequest(
            from_property=T0 - timedelta(days=1), to=T0 + timedelta(days=1), group_by=["model"]
        ),
    )
    assert sorted((row.group_by["model"], row.value) for row in by_model.data) == [
        ("gpt-4o", 20.0),
        ("o3", 10.0),
    ]
    csv = client.meters.query_csv(
        "litellm_tokens_total_tokens",
        from_parameter=T0 - timedelta(days=1),
        to=T0 + timedelta(days=1),
        group_by=["subject"],
    )
    assert csv.splitlines()[0] == "window_start,window_end,subject,value"
    assert sorted(csv.splitlines()[1:])[0].endswith("acme,20.000000")
    by_model_csv = client.meters.query_csv(
        "litellm_tokens_total_tokens",
        from_parameter=T0 - timedelta(days=1),
        to=T0 + timedelta(days=1),
        group_by=["model"],
    )
    assert by_model_csv.splitlines()[0] == "window_start,window_end,model,value"
    assert client.meters.list_subjects("litellm_tokens_total_tokens") == ["acme", "globex"]
    assert client.meters.list_group_by_values(
        "litellm_tokens_total_tokens", "model", from_parameter=T0 - timedelta(days=1)
    ) == ["gpt-4o", "o3"]


def test_old_and_far_times_parse(client: Any) -> None:
    old = datetime(12, 3, 4, 5, 6, 7, tzinfo=timezone.utc)
    before_1970 = datetime(1969, 12, 31, 23, 59, 30, tzinfo=timezone.utc)
    client.events.ingest_events([event("old", old), event("sixties", before_1970)])
    result = client.meters.query_json(
        "litellm_tokens_total_tokens",
        from_parameter=datetime(1, 2, 1, tzinfo=timezone.utc),
        to=datetime(1970, 1, 2, tzinfo=timezone.utc),
        window_size="MINUTE",
    )
    assert [row.window_start for row in result.data] == [
        old.replace(second=0),
        before_1970.replace(second=0),
    ]
    assert (
        status(
            lambda: client.events.ingest_event(
                event("far", datetime(9999, 12, 31, tzinfo=timezone.utc))
            )
        )
        == 400
    )


def test_the_repeated_hour_by_the_minute_and_on_the_facts(client: Any) -> None:
    """Summer time ends: New York's 01:30 comes twice, an hour apart (MINUTE windows);
    Budapest's 02:00-03:00 too, read from the facts by a MAX meter (HOUR windows)."""
    budapest = datetime(2026, 10, 25, 0, 30, tzinfo=timezone.utc)  # 02:30 CEST
    client.events.ingest_events(
        [
            event("ny-1", T0, total_tokens=1),
            event("ny-2", T0 + timedelta(hours=1), total_tokens=2),
            event("bp-1", budapest, total_tokens=3),
            event("bp-2", budapest + timedelta(hours=1), total_tokens=4),
        ]
    )
    minutes = client.meters.query_json(
        "litellm_tokens_total_tokens",
        from_parameter=T0 - timedelta(hours=1),
        to=T0 + timedelta(hours=2),
        window_size="MINUTE",
        window_time_zone="America/New_York",
    )
    minute = timedelta(minutes=1)
    assert windows(minutes) == [
        (T0, T0 + minute, 1.0),
        (T0 + timedelta(hours=1), T0 + timedelta(hours=1) + minute, 2.0),
    ]
    client.meters.create(
        models.MeterCreate(
            slug="max_tokens",
            aggregation="MAX",
            event_type="litellm_tokens",
            value_property="$.total_tokens",
        )
    )
    hours = client.meters.query_json(
        "max_tokens",
        from_parameter=budapest - timedelta(hours=2),
        to=budapest + timedelta(hours=2),
        window_size="HOUR",
        window_time_zone="Europe/Budapest",
    )
    hour = timedelta(hours=1)
    start = budapest - timedelta(minutes=30)
    assert windows(hours) == [(start, start + hour, 3.0), (start + hour, start + 2 * hour, 4.0)]


def test_without_a_period_the_row_spans_its_events(client: Any) -> None:
    """No from/to: one row from the first event's minute to the minute after the last,
    even with an event far in the future; a missing group value is ""."""
    future = datetime(2999, 1, 1, 0, 0, 59, tzinfo=timezone.utc)
    client.events.ingest_events(
        [event("now", T0 + timedelta(seconds=10), model=None), event("future", future)]
    )
    result = client.meters.query_json("litellm_tokens_total_tokens", group_by=["model"])
    assert sorted(
        (row.group_by["model"], row.window_start, row.window_end, row.value) for row in result.data
    ) == [
        ("", T0, future.replace(second=0) + timedelta(minutes=1), 10.0),
        ("gpt-4o", T0, future.replace(second=0) + timedelta(minutes=1), 10.0),
    ]


@pytest.mark.parametrize("zone", ["America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"])
def test_a_wide_span_answers_its_rows(client: Any, zone: str) -> None:
    """Events in years 1, 1900 and 9999: DAY windows in a zone with summer time (or a
    half-hour offset) come back one per event. The time-zone code once stepped through
    every quarter hour between the first event and the last: hours for this span, far
    beyond the suite's time limit."""
    moments = [
        datetime(1, 2, 1, 12, tzinfo=timezone.utc),
        datetime(1900, 6, 1, 12, tzinfo=timezone.utc),
        datetime(9999, 11, 28, 12, tzinfo=timezone.utc),
    ]
    client.events.ingest_events([event(f"e{i}", moment) for i, moment in enumerate(moments)])
    result = client.meters.query_json(
        "litellm_tokens_total_tokens", window_size="DAY", window_time_zone=zone
    )
    assert [row.value for row in result.data] == [10.0, 10.0, 10.0]
    for row, moment in zip(result.data, moments, strict=True):
        assert row.window_start <= moment < row.window_end
        assert row.window_end - row.window_start == timedelta(days=1)


def test_meters(client: Any) -> None:
    created = client.meters.create(
        models.MeterCreate(
            slug="sdk_meter",
            aggregation="SUM",
            event_type="litellm_tokens",
            value_property="$.total_tokens",
            group_by={"model": "$.model"},
        )
    )
    assert client.meters.get("sdk_meter").id == created.id
    updated = client.meters.update(
        "sdk_meter", models.MeterUpdate(name="SDK", group_by={"model": "$.model"})
    )
    assert updated.name == "SDK"
    slugs = [meter.slug for meter in client.meters.list(order_by="key", order="DESC")]
    assert slugs == sorted(slugs, reverse=True) and "sdk_meter" in slugs
    assert len(client.meters.list(page_size=2, page=1)) == 2
    client.meters.delete("sdk_meter")
    assert "sdk_meter" not in [meter.slug for meter in client.meters.list()]
    assert "sdk_meter" in [meter.slug for meter in client.meters.list(include_deleted=True)]
    assert isinstance(client.meters.get(created.id).deleted_at, datetime)
    assert status(lambda: client.meters.get("sdk_meter")) == 404


def test_subjects(client: Any) -> None:
    [acme] = client.subjects.upsert(
        [models.SubjectUpsert(key="acme", display_name="Acme", metadata={"plan": "pro"})]
    )
    assert isinstance(acme.created_at, datetime)
    client.subjects.upsert([models.SubjectUpsert(key="acme", stripe_customer_id="cus_1")])
    found = client.subjects.get(acme.id)
    assert (found.key, found.display_name, found.stripe_customer_id) == ("acme", "Acme", "cus_1")
    assert [subject.key for subject in client.subjects.list()] == ["acme"]
    client.subjects.delete("acme")
    assert status(lambda: client.subjects.get("acme")) == 404


def test_errors_are_problems(client: Any) -> None:
    slug = "litellm_tokens_total_tokens"
    assert status(lambda: client.meters.query_json(slug, filter_customer_id=["c1"])) == 400
    by_customer = models.MeterQueryRequest(filter_customer_id=["c1"])
    assert status(lambda: client.meters.query(slug, by_customer)) == 400
    both = models.MeterQueryRequest(
        filter_group_by={"model": ["gpt-4o"]},
        advanced_meter_group_by_filters={"model": models.FilterString(eq="gpt-4o")},
    )
    assert status(lambda: client.meters.query(slug, both)) == 400
    assert status(lambda: client.events.list(from_parameter=T0, to=T0 - timedelta(days=1))) == 400
    assert status(lambda: client.meters.query_json(slug, window_size="WEEK")) == 400
    assert status(lambda: client.meters.query_json("no_such_meter")) == 404
    assert status(lambda: client.meters.list_group_by_values(slug, "colour")) == 400
    wrong = openmeter.Client(endpoint=client._config.endpoint, token="wrong")
    assert status(lambda: wrong.meters.list()) == 401
