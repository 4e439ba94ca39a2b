"""Conformance of the local server with OpenMeter's ingest and meter API, over real HTTP."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from litellm_openmeter.meters import Meter
from litellm_openmeter.server import BackgroundServer, open_store
from litellm_openmeter.server.store import Query, Store

from conftest import cloud_event, wait_for

CE = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"


def event(event_id: str, subject: str = "alice", **data: Any) -> dict[str, Any]:
    values = {
        "model": "gpt-4o",
        "cost": 0.25,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "cache_read_tokens": 2,
        "cache_creation_tokens": 0,
        "reasoning_tokens": 1,
    }
    return cloud_event(event_id, subject, {**values, **data}, time="2026-11-20T10:15:30.750Z")


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., BackgroundServer]]:
    started: list[BackgroundServer] = []

    def start(meters: list[Meter] | None = None, **options: Any) -> BackgroundServer:
        server = BackgroundServer(open_store(tmp_path / "server.sqlite3", meters), **options)
        started.append(server.start())
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def client(start_server: Callable[..., BackgroundServer]) -> Iterator[httpx.Client]:
    server = start_server()
    with httpx.Client(base_url=server.url) as http:
        yield http


def post(http: httpx.Client, body: Any, content_type: str = CE) -> httpx.Response:
    return http.post(
        "/api/v1/events", content=json.dumps(body), headers={"content-type": content_type}
    )


def assert_problem(response: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail", "instance"} <= set(body)
    assert body["status"] == status
    for word in words:
        assert word in body["detail"], body["detail"]
    return body


def stored(http: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    params.setdefault("from", "2026-01-01T00:00:00Z")
    response = http.get("/api/v1/events", params=params)
    assert response.status_code == 200
    items: list[dict[str, Any]] = response.json()
    return items


def query(http: httpx.Client, slug: str, **params: Any) -> list[dict[str, Any]]:
    response = http.get(f"/api/v1/meters/{slug}/query", params=params)
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()["data"]
    return rows


# -- ingest -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (CE, event("e1")),
        (BATCH, [event("e1"), event("e2")]),
        ("application/json", event("e1")),
        ("application/json", [event("e1"), event("e2")]),
    ],
)
def test_accepted_content_types(client: httpx.Client, content_type: str, body: Any) -> None:
    response = post(client, body, content_type)
    assert response.status_code == 204 and response.content == b""
    assert {item["event"]["id"] for item in stored(client)} == (
        {"e1", "e2"} if isinstance(body, list) else {"e1"}
    )


@pytest.mark.parametrize(
    "content_type",
    [
        "application/cloudevents+json; charset=utf-8",
        "application/json; charset=utf-8",
        "text/plain",
        "application/cloudevents-batch+json;charset=UTF-8",
    ],
)
def test_other_content_types_are_400(client: httpx.Client, content_type: str) -> None:
    assert_problem(post(client, event("e1"), content_type), 400, "invalid content type")
    assert stored(client) == []


def test_wrong_body_shape_for_the_content_type(client: httpx.Client) -> None:
    assert_problem(post(client, [event("e1")], CE), 400, "one event")
    assert_problem(post(client, event("e1"), BATCH), 400, "array")
    assert_problem(post(client, "text", "application/json"), 400)


def test_malformed_json_is_400(client: httpx.Client) -> None:
    response = client.post("/api/v1/events", content=b'{"id": ', headers={"content-type": CE})
    assert_problem(response, 400, "malformed JSON")


@pytest.mark.parametrize("field", ["id", "source", "specversion", "type", "subject"])
@pytest.mark.parametrize("value", [None, "", 7])
def test_required_fields(client: httpx.Client, field: str, value: Any) -> None:
    body = event("e1")
    if value is None:
        del body[field]
    else:
        body[field] = value
    assert_problem(post(client, body), 400, field)


@pytest.mark.parametrize(
    ("change", "word"),
    [
        ({"specversion": "0.3"}, "specversion"),
        ({"time": "yesterday"}, "time"),
        ({"time": "2026-11-20T10:15:30"}, "time"),
        ({"time": "0001-01-01T00:00:00+01:00"}, "time"),  # year 0 in UTC
        ({"time": "9999-12-31T23:59:59-01:00"}, "time"),  # year 10000 in UTC
        ({"data": [1, 2]}, "data"),
        ({"data": "text"}, "data"),
        ({"datacontenttype": "text/plain"}, "datacontenttype"),
    ],
)
def test_invalid_fields(client: httpx.Client, change: dict[str, Any], word: str) -> None:
    assert_problem(post(client, {**event("e1"), **change}), 400, word)


def test_optional_fields(client: httpx.Client) -> None:
    no_time = event("e-now")
    del no_time["time"]
    before = time.time()
    assert post(client, no_time).status_code == 204
    assert post(client, {**event("e-null"), "data": None}).status_code == 204
    assert post(client, {**event("e-ct"), "datacontenttype": "application/json"}).status_code == 204
    assert (
        post(client, {**event("e-nano"), "time": "2026-11-20T10:15:30.123456789+02:00"}).status_code
        == 204
    )
    items = {
        item["event"]["id"]: item for item in stored(client, **{"from": "2020-01-01T00:00:00Z"})
    }
    now_time = items["e-now"]["event"]["time"]
    assert (
        abs(time.mktime(time.strptime(now_time, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone - before) < 5
    )
    assert items["e-nano"]["event"]["time"] == "2026-11-20T08:15:30Z"  # whole seconds, UTC


def test_dedup_by_source_and_id(client: httpx.Client) -> None:
    assert post(client, event("same")).status_code == 204
    assert post(client, event("same", subject="someone-else")).status_code == 204
    assert post(client, {**event("same"), "source": "other"}).status_code == 204
    items = stored(client)
    assert len(items) == 2
    assert {(i["event"]["source"], i["event"]["subject"]) for i in items} == {
        ("test", "alice"),
        ("other", "alice"),
    }
    assert query(client, "litellm_tokens_calls")[0]["value"] == 2


def test_batch_is_not_a_transaction(client: httpx.Client) -> None:
    bad = {**event("e3"), "subject": ""}
    body = assert_problem(
        post(client, [event("e1"), event("e2"), bad, event("e4")], BATCH),
        400,
        "event 2",
        "'e3'",
        "subject",
    )
    assert body["title"] == "Bad Request"
    assert {item["event"]["id"] for item in stored(client)} == {"e1", "e2"}


def test_body_size_limit(start_server: Callable[..., BackgroundServer]) -> None:
    server = start_server(max_body=2000)
    with httpx.Client(base_url=server.url) as http:
        big = [event(f"e{i}") for i in range(20)]
        assert_problem(post(http, big, BATCH), 413, "2000")
        assert post(http, event("small")).status_code == 204


def test_default_limit_is_4_mib(client: httpx.Client) -> None:
    padding = "x" * (4 * 1024 * 1024)
    assert_problem(post(client, event("huge", padding=padding)), 413)


def test_token_required_and_never_logged(
    start_server: Callable[..., BackgroundServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server(token="s3cret-token")
    with (
        caplog.at_level(logging.INFO, logger="litellm_openmeter.server"),
        httpx.Client(base_url=server.url) as http,
    ):
        assert_problem(post(http, event("e1")), 401, "token")
        wrong = http.get("/api/v1/meters", headers={"authorization": "Bearer nope"})
        assert_problem(wrong, 401)
        good = http.post(
            "/api/v1/events",
            content=json.dumps(event("e1")),
            headers={"content-type": CE, "authorization": "Bearer s3cret-token"},
        )
        assert good.status_code == 204

        def lines() -> list[str]:
            return [
                r.getMessage()
                for r in caplog.records
                if r.name == "litellm_openmeter.server" and "/api/v1/" in r.getMessage()
            ]

        wait_for(lambda: len(lines()) >= 3, what="three request log lines")
    assert len(lines()) == 3
    assert any('"POST /api/v1/events" 204' in line for line in lines())
    assert "s3cret-token" not in caplog.text


# -- events listing -----------------------------------------------------------------------


def test_list_events_filters_and_validation_errors(client: httpx.Client) -> None:
    post(
        client,
        [
            event("a1", "alice"),
            event("b1", "bob"),
            {**event("c1", "carol"), "data": {"model": "gpt-4o", "cost": "n/a"}},
        ],
        BATCH,
    )
    items = stored(client)
    assert len(items) == 3
    for item in items:
        assert item["ingestedAt"].endswith("Z") and "storedAt" in item
    by_id = {item["event"]["id"]: item for item in items}
    assert "validationError" not in by_id["a1"]
    error = by_id["c1"]["validationError"]
    assert "$.cost is not a number" in error and "$.prompt_tokens is missing" in error
    assert [i["event"]["id"] for i in stored(client, subject="bo")] == ["b1"]
    assert len(stored(client, limit=2)) == 2
    assert stored(client, **{"from": "2026-11-21T00:00:00Z"}) == []
    assert_problem(client.get("/api/v1/events", params={"limit": 0}), 400, "limit")
    assert_problem(client.get("/api/v1/events", params={"from": "soon"}), 400, "from")


# -- meters -------------------------------------------------------------------------------


def test_default_meters_cover_both_shapes(client: httpx.Client) -> None:
    meters = {m["slug"]: m for m in client.get("/api/v1/meters").json()}
    assert meters["tokens_total"]["eventType"] == "prompt"
    assert meters["tokens_total"]["valueProperty"] == "$.tokens"
    assert {"model", "type"} <= set(meters["tokens_total"]["groupBy"])
    for slug in (
        "litellm_tokens_prompt_tokens",
        "litellm_tokens_cost",
        "litellm_tokens_calls",
        "litellm_tokens_cache_read_tokens",
        "litellm_tokens_reasoning_tokens",
        "prompt_cost",
        "prompt_calls",
    ):
        assert slug in meters
    meter = meters["litellm_tokens_cost"]
    assert {"id", "slug", "name", "aggregation", "eventType", "createdAt", "updatedAt"} <= set(
        meter
    )
    assert client.get(f"/api/v1/meters/{meter['id']}").json()["slug"] == "litellm_tokens_cost"
    assert client.get("/api/v1/meters/litellm_tokens_cost").json()["id"] == meter["id"]
    assert_problem(client.get("/api/v1/meters/nope"), 404, "nope")


def test_create_meter_backfills(client: httpx.Client) -> None:
    post(client, [event("e1", reasoning_tokens=4), event("e2", "bob", reasoning_tokens=6)], BATCH)
    response = client.post(
        "/api/v1/meters",
        json={
            "slug": "max_reasoning",
            "aggregation": "MAX",
            "eventType": "litellm_tokens",
            "valueProperty": "$.reasoning_tokens",
            "groupBy": {"model": "$.model"},
        },
    )
    assert response.status_code == 201, response.text
    assert response.json()["slug"] == "max_reasoning"
    assert query(client, "max_reasoning")[0]["value"] == 6
    post(client, event("e3", reasoning_tokens=9))
    assert query(client, "max_reasoning")[0]["value"] == 9
    assert_problem(
        client.post(
            "/api/v1/meters",
            json={"slug": "max_reasoning", "aggregation": "COUNT", "eventType": "x"},
        ),
        409,
    )


def test_update_and_delete_meter(tmp_path: Path) -> None:
    """PUT replaces a meter's name, description and groupBy as OpenMeter does (a new
    key groups the events already stored) and DELETE removes it, keeping its events;
    both are 404 for a meter that is not there and keep their effect over a restart."""
    db = tmp_path / "meters.sqlite3"
    with BackgroundServer(open_store(db)) as server, httpx.Client(base_url=server.url) as http:
        post(http, [event("u1"), event("u2", "bob", model="gpt-4o-mini")], BATCH)
        created = http.post(
            "/api/v1/meters",
            json={
                "slug": "calls",
                "aggregation": "COUNT",
                "eventType": "litellm_tokens",
                "name": "Calls",
                "description": "every call",
            },
        ).json()
        response = http.put(
            f"/api/v1/meters/{created['id']}",
            json={"name": "Calls by model", "groupBy": {"model": "$.model"}},
        )
        assert response.status_code == 200, response.text
        updated = response.json()
        assert (updated["id"], updated["slug"], updated["createdAt"]) == (
            created["id"],
            "calls",
            created["createdAt"],
        )
        assert updated["name"] == "Calls by model"
        assert updated["groupBy"] == {"model": "$.model"}
        assert "description" not in updated  # left out of the update: cleared
        assert http.get("/api/v1/meters/calls").json() == updated
        rows = query(http, "calls", groupBy="model")
        assert {row["groupBy"]["model"]: row["value"] for row in rows} == {
            "gpt-4o": 1,
            "gpt-4o-mini": 1,
        }
        cleared = http.put("/api/v1/meters/calls", json={}).json()
        assert cleared["name"] == "calls" and cleared["groupBy"] == {}
        assert_problem(
            http.put("/api/v1/meters/calls", json={"groupBy": {"subject": "$.model"}}),
            400,
            "reserved",
        )
        assert_problem(
            http.put("/api/v1/meters/calls", json={"groupBy": {"m": "model"}}), 400, "groupBy.m"
        )
        assert_problem(http.put("/api/v1/meters/calls", json=["x"]), 400, "JSON object")
        assert_problem(http.put("/api/v1/meters/calls", content=b"{"), 400, "malformed JSON")
        assert_problem(http.put("/api/v1/meters/nope", json={}), 404, "nope")
        assert http.put("/api/v1/meters/calls", json={"name": "Kept"}).status_code == 200

        gone = http.delete(f"/api/v1/meters/{created['id']}")
        assert gone.status_code == 204 and gone.content == b""
        assert_problem(http.get("/api/v1/meters/calls"), 404)
        assert "calls" not in {m["slug"] for m in http.get("/api/v1/meters").json()}
        assert_problem(http.delete("/api/v1/meters/calls"), 404, "calls")
        assert len(stored(http)) == 2  # the events stay, for the other meters
        assert query(http, "litellm_tokens_calls")[0]["value"] == 2
        renamed = http.put("/api/v1/meters/litellm_tokens_cost", json={"name": "Cost (renamed)"})
        assert renamed.json()["name"] == "Cost (renamed)"
    with BackgroundServer(open_store(db)) as server, httpx.Client(base_url=server.url) as http:
        assert_problem(http.get("/api/v1/meters/calls"), 404)
        # the configured meters (here the defaults) are installed again as configured
        assert http.get("/api/v1/meters/litellm_tokens_cost").json()["name"] != "Cost (renamed)"


@pytest.mark.parametrize(
    ("body", "word"),
    [
        (
            {"slug": "Bad-Slug", "aggregation": "SUM", "eventType": "t", "valueProperty": "$.v"},
            "slug",
        ),
        ({"slug": "a__b", "aggregation": "SUM", "eventType": "t", "valueProperty": "$.v"}, "slug"),
        (
            {"slug": "x" * 65, "aggregation": "SUM", "eventType": "t", "valueProperty": "$.v"},
            "slug",
        ),
        (
            {"slug": "ok", "aggregation": "MEDIAN", "eventType": "t", "valueProperty": "$.v"},
            "aggregation",
        ),
        (
            {"slug": "ok", "aggregation": "SUM", "eventType": "", "valueProperty": "$.v"},
            "eventType",
        ),
        ({"slug": "ok", "aggregation": "SUM", "eventType": "t"}, "valueProperty is required"),
        (
            {"slug": "ok", "aggregation": "COUNT", "eventType": "t", "valueProperty": "$.v"},
            "not allowed",
        ),
        ({"slug": "ok", "aggregation": "SUM", "eventType": "t", "valueProperty": "v"}, "'$'"),
        (
            {
                "slug": "ok",
                "aggregation": "SUM",
                "eventType": "t",
                "valueProperty": "$.v",
                "groupBy": {"bad-key": "$.m"},
            },
            "groupBy key",
        ),
        (
            {
                "slug": "ok",
                "aggregation": "SUM",
                "eventType": "t",
                "valueProperty": "$.v",
                "groupBy": {"m": "model"},
            },
            "groupBy.m",
        ),
        (
            {
                "slug": "ok",
                "aggregation": "SUM",
                "eventType": "t",
                "valueProperty": "$.v",
                "groupBy": {"subject": "$.s"},
            },
            "reserved",
        ),
        ({"slug": "ok", "aggregation": "COUNT", "eventType": "t", "eventFrom": "May"}, "eventFrom"),
        (
            {
                "slug": "ok",
                "aggregation": "COUNT",
                "eventType": "t",
                "eventFrom": "0001-01-01T00:00:00+01:00",
            },
            "eventFrom",
        ),
    ],
)
def test_meter_validation(client: httpx.Client, body: dict[str, Any], word: str) -> None:
    assert_problem(client.post("/api/v1/meters", json=body), 400, word)


# -- queries ------------------------------------------------------------------------------


def at(event_id: str, when: str, subject: str = "alice", **data: Any) -> dict[str, Any]:
    return {**event(event_id, subject, **data), "time": when}


def test_query_windows_groups_and_filters(client: httpx.Client) -> None:
    post(
        client,
        [
            at("1", "2026-11-20T10:00:00Z", prompt_tokens=10, model="gpt-4o"),
            at("2", "2026-11-20T10:00:59Z", prompt_tokens=20, model="gpt-4o-mini"),
            at("3", "2026-11-20T11:30:00Z", "bob", prompt_tokens=5, model="gpt-4o"),
            at("4", "2026-11-21T23:30:00Z", prompt_tokens=7, model="gpt-4o"),
            at("5", "2026-12-02T00:00:00Z", "bob", prompt_tokens=1, model="gpt-4o"),
        ],
        BATCH,
    )
    slug = "litellm_tokens_prompt_tokens"
    [total] = query(client, slug)
    assert total["value"] == 43 and total["subject"] is None and total["groupBy"] == {}
    assert total["windowStart"] == "2026-11-20T10:00:00Z"
    minute = query(client, slug, windowSize="MINUTE")
    assert [(r["windowStart"], r["windowEnd"], r["value"]) for r in minute][:2] == [
        ("2026-11-20T10:00:00Z", "2026-11-20T10:01:00Z", 30.0),
        ("2026-11-20T11:30:00Z", "2026-11-20T11:31:00Z", 5.0),
    ]
    hours = query(
        client,
        slug,
        windowSize="HOUR",
        **{"from": "2026-11-20T00:00:00Z", "to": "2026-11-21T00:00:00Z"},
    )
    assert [(r["windowStart"], r["value"]) for r in hours] == [
        ("2026-11-20T10:00:00Z", 30.0),
        ("2026-11-20T11:00:00Z", 5.0),
    ]
    days = query(client, slug, windowSize="DAY", groupBy=["subject", "model"])
    assert {
        (r["windowStart"][:10], r["subject"], r["groupBy"]["model"], r["value"]) for r in days
    } == {
        ("2026-11-20", "alice", "gpt-4o", 10.0),
        ("2026-11-20", "alice", "gpt-4o-mini", 20.0),
        ("2026-11-20", "bob", "gpt-4o", 5.0),
        ("2026-11-21", "alice", "gpt-4o", 7.0),
        ("2026-12-02", "bob", "gpt-4o", 1.0),
    }
    months = query(client, slug, windowSize="MONTH")
    assert [(r["windowStart"], r["windowEnd"], r["value"]) for r in months] == [
        ("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z", 42.0),
        ("2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z", 1.0),
    ]
    # 23:30 UTC on the 21st is the 22nd in Berlin, whose day starts at 23:00 UTC.
    berlin = query(client, slug, windowSize="DAY", windowTimeZone="Europe/Berlin")
    assert ("2026-11-21T23:00:00Z", "2026-11-22T23:00:00Z", 7.0) in [
        (r["windowStart"], r["windowEnd"], r["value"]) for r in berlin
    ]
    only_bob = query(client, slug, subject="bob")
    assert [(r["subject"], r["value"]) for r in only_bob] == [("bob", 6.0)]
    two = query(client, slug, subject=["bob", "alice"], groupBy="model")
    assert {(r["subject"], r["groupBy"]["model"]) for r in two} == {
        ("alice", "gpt-4o"),
        ("alice", "gpt-4o-mini"),
        ("bob", "gpt-4o"),
    }
    mini = query(client, slug, **{"filterGroupBy[model]": "gpt-4o-mini"})
    assert [r["value"] for r in mini] == [20.0]
    posted = client.post(
        f"/api/v1/meters/{slug}/query",
        json={
            "windowSize": "DAY",
            "groupBy": ["subject"],
            "filterGroupBy": {"model": ["gpt-4o"]},
            "from": "2026-11-20T00:00:00Z",
            "to": "2026-11-21T00:00:00Z",
        },
    )
    assert posted.status_code == 200
    result = posted.json()
    assert result["windowSize"] == "DAY" and result["from"] == "2026-11-20T00:00:00Z"
    assert {(r["subject"], r["value"]) for r in result["data"]} == {("alice", 10.0), ("bob", 5.0)}
    assert [r["value"] for r in query(client, slug, **{"to": "2026-11-20T10:00:59Z"})] == [10.0]


def test_advanced_group_by_filters(client: httpx.Client) -> None:
    """OpenMeter's advancedMeterGroupByFilters, by query string (JSON) and in a POSTed
    query: one operator per filter, $and/$or to combine, an event without the key
    compares as "" (as in OpenMeter), LIKE case-sensitive and ILIKE not."""
    models = {"1": "gpt-4o", "2": "gpt-4o-mini", "3": "GPT-5", "4": "claude_3%", "5": None}
    post(
        client,
        [
            at(number, "2026-11-20T10:00:00Z", prompt_tokens=int(number), model=model)
            for number, model in models.items()
        ],
        BATCH,
    )
    slug = "litellm_tokens_prompt_tokens"

    def total(filters: dict[str, Any], key: str = "model") -> float:
        to = "2026-11-21T00:00:00Z"  # not now: the same windows both ways
        by_get = query(client, slug, to=to, advancedMeterGroupByFilters=json.dumps({key: filters}))
        posted = client.post(
            f"/api/v1/meters/{slug}/query",
            json={"to": to, "advancedMeterGroupByFilters": {key: filters}},
        )
        assert posted.status_code == 200, posted.text
        assert posted.json()["data"] == by_get
        return float(sum(row["value"] for row in by_get))

    assert total({}) == 15
    assert total({"$eq": "gpt-4o"}) == 1
    assert total({"$ne": "gpt-4o"}) == 14
    assert total({"$eq": ""}) == 5  # the event without a model
    assert total({"$in": ["gpt-4o", "GPT-5"]}) == 4
    assert total({"$nin": ["gpt-4o", "GPT-5"]}) == 11
    assert total({"$in": []}) == 0 and total({"$nin": []}) == 15
    assert total({"$like": "gpt-%"}) == 3
    assert total({"$ilike": "gpt-%"}) == 6
    assert total({"$nlike": "gpt-%"}) == 12
    assert total({"$nilike": "gpt-%"}) == 9
    assert total({"$like": "gpt-4o_mini"}) == 2
    assert total({"$like": "claude\\_3\\%"}) == 4  # escaped: literal _ and %
    assert total({"$like": "claude\\_3\\%x"}) == 0
    assert total({"$gt": "gpt-4o"}) == 2 and total({"$gte": "gpt-4o"}) == 3
    assert total({"$lt": "GPT-5"}) == 5 and total({"$lte": "GPT-5"}) == 8
    assert total({"$and": [{"$like": "gpt%"}, {"$ne": "gpt-4o"}]}) == 2
    assert total({"$or": [{"$eq": "GPT-5"}, {"$and": [{"$ilike": "CLAUDE%"}]}]}) == 7
    assert total({"$eq": "nobody"}, key="provider") == 0
    minutes = query(  # from the facts, not the rollups: the same filter, the same rows
        client,
        slug,
        windowSize="MINUTE",
        advancedMeterGroupByFilters=json.dumps(
            {"model": {"$or": [{"$eq": ""}, {"$ilike": "g%5"}]}}
        ),
    )
    assert [row["value"] for row in minutes] == [8.0]
    assert total({"$eq": ""}, key="provider") == 15

    url = f"/api/v1/meters/{slug}/query"
    for filters, word in (
        ({"colour": {"$eq": "red"}}, "colour"),
        ({"model": {"$eq": "gpt-4o", "$ne": "x"}}, "exactly one operator"),
        ({"model": {"$regex": "gpt"}}, "$regex"),
        ({"model": {"$in": "gpt-4o"}}, "array of strings"),
        ({"model": {"$eq": 4}}, "must be a string"),
        ({"model": {"$and": []}}, "non-empty array"),
        ({"model": {"$or": [{"$eq": "a"}, "b"]}}, "$or[1]"),
        ({"model": "gpt-4o"}, "one of"),
        (["model"], "object"),
    ):
        assert_problem(
            client.get(url, params={"advancedMeterGroupByFilters": json.dumps(filters)}), 400, word
        )
        assert_problem(client.post(url, json={"advancedMeterGroupByFilters": filters}), 400, word)
    assert_problem(client.get(url, params={"advancedMeterGroupByFilters": "{model"}), 400, "JSON")


def test_aggregations(client: httpx.Client) -> None:
    client.post(
        "/api/v1/meters",
        json={"slug": "m_sum", "aggregation": "SUM", "eventType": "v", "valueProperty": "$.v"},
    )
    for aggregation in ("AVG", "MIN", "MAX", "LATEST", "UNIQUE_COUNT"):
        response = client.post(
            "/api/v1/meters",
            json={
                "slug": f"m_{aggregation.lower()}",
                "aggregation": aggregation,
                "eventType": "v",
                "valueProperty": "$.u" if aggregation == "UNIQUE_COUNT" else "$.v",
            },
        )
        assert response.status_code == 201
    client.post(
        "/api/v1/meters", json={"slug": "m_count", "aggregation": "COUNT", "eventType": "v"}
    )
    rows = [
        ("1", "2026-11-20T10:00:00.900Z", {"v": 4, "u": "a"}),
        ("2", "2026-11-20T10:00:03Z", {"v": "6.5", "u": "b"}),  # numeric string counts
        ("3", "2026-11-20T10:00:01Z", {"v": None, "u": "a"}),  # null is not counted
        ("4", "2026-11-20T10:00:02Z", {"v": 1, "u": 5}),
        ("5", "2026-11-20T10:00:03Z", {"u": "c"}),  # missing value
    ]
    post(client, [{**event(i, "s"), "type": "v", "time": t, "data": d} for i, t, d in rows], BATCH)
    value = {
        slug: query(client, f"m_{slug}")[0]["value"]
        for slug in ("sum", "avg", "min", "max", "latest", "unique_count", "count")
    }
    assert value == {
        "sum": 11.5,
        "avg": pytest.approx(11.5 / 3),
        "min": 1.0,
        "max": 6.5,
        "latest": 6.5,
        "unique_count": 4.0,
        "count": 5.0,
    }
    errors = {i["event"]["id"]: i.get("validationError", "") for i in stored(client)}
    assert "$.v is null" in errors["3"] and "$.v is missing" in errors["5"]


def test_query_validation(client: httpx.Client) -> None:
    slug = "litellm_tokens_cost"
    assert_problem(
        client.get(f"/api/v1/meters/{slug}/query", params={"windowSize": "WEEK"}), 400, "windowSize"
    )
    assert_problem(
        client.get(f"/api/v1/meters/{slug}/query", params={"windowTimeZone": "Mars/Base"}),
        400,
        "windowTimeZone",
    )
    assert_problem(
        client.get(f"/api/v1/meters/{slug}/query", params={"groupBy": "colour"}), 400, "colour"
    )
    assert_problem(client.get(f"/api/v1/meters/{slug}/query", params={"from": "nope"}), 400, "from")
    for name, text in (("from", "0001-01-01T00:00:00+01:00"), ("to", "9999-12-31T23:59:59-01:00")):
        assert_problem(client.get(f"/api/v1/meters/{slug}/query", params={name: text}), 400, name)
        assert_problem(client.get("/api/v1/events", params={name: text}), 400, name)
    assert_problem(
        client.get(
            f"/api/v1/meters/{slug}/query",
            params={"from": "2026-11-21T00:00:00Z", "to": "2026-11-20T00:00:00Z"},
        ),
        400,
        "after",
    )
    assert_problem(client.get("/api/v1/meters/nope/query"), 404)
    assert_problem(
        client.post(f"/api/v1/meters/{slug}/query", json={"groupBy": "model"}), 400, "groupBy"
    )


def test_csv_and_subjects(client: httpx.Client) -> None:
    post(client, [event("1", "alice"), event("2", "bob", model="gpt-4o-mini")], BATCH)
    response = client.get(
        "/api/v1/meters/litellm_tokens_cost/query",
        params={"groupBy": ["subject", "model"]},
        headers={"accept": "text/csv"},
    )
    assert response.headers["content-type"].startswith("text/csv")
    lines = response.text.strip().splitlines()
    assert lines[0] == "window_start,window_end,subject,model,value"
    assert sorted(line.split(",")[2:] for line in lines[1:]) == [
        ["alice", "gpt-4o", "0.250000"],
        ["bob", "gpt-4o-mini", "0.250000"],
    ]
    # As OpenMeter: the subject column only when grouped by subject.
    response = client.get(
        "/api/v1/meters/litellm_tokens_cost/query",
        params={"groupBy": ["model"], "subject": "alice"},
        headers={"accept": "text/csv"},
    )
    assert response.text.strip().splitlines()[0] == "window_start,window_end,model,value"
    assert client.get("/api/v1/meters/litellm_tokens_cost/subjects").json() == ["alice", "bob"]


def test_what_openmeter_refuses_is_refused(client: httpx.Client) -> None:
    url = "/api/v1/meters/litellm_tokens_cost/query"
    assert_problem(client.get(url, params={"filterCustomerId": "c1"}), 400, "filterCustomerId")
    assert_problem(client.post(url, json={"filterCustomerId": ["c1"]}), 400, "filterCustomerId")
    both = {
        "filterGroupBy[model]": "gpt-4o",
        "advancedMeterGroupByFilters": json.dumps({"model": {"$eq": "gpt-4o"}}),
    }
    assert_problem(client.get(url, params=both), 400, "cannot be used together")
    assert_problem(
        client.post(
            url,
            json={
                "filterGroupBy": {"model": ["gpt-4o"]},
                "advancedMeterGroupByFilters": {"model": {"$eq": "gpt-4o"}},
            },
        ),
        400,
        "cannot be used together",
    )
    period = {"from": "2026-11-21T00:00:00Z", "to": "2026-11-20T00:00:00Z"}
    assert_problem(client.get("/api/v1/events", params=period), 400, "to must not be before")
    assert_problem(
        client.get(url, params={"from": "9999-12-01T00:00:00Z"}), 400, "0001-02-01T00:00:00Z"
    )


def test_event_times_the_server_cannot_window_are_refused(client: httpx.Client) -> None:
    for moment in ("9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z"):
        response = post(client, cloud_event(moment, "alice", {"total_tokens": 1}, time=moment))
        assert_problem(response, 400, "9999-11-29T00:00:00Z")
    # Nothing was stored that would break a later query.
    answer = client.get(
        "/api/v1/meters/litellm_tokens_total_tokens/query", params={"windowSize": "MONTH"}
    )
    assert answer.status_code == 200 and answer.json()["data"] == []


def test_a_missing_group_value_is_an_empty_string(client: httpx.Client) -> None:
    post(client, cloud_event("1", "alice", {"total_tokens": 3}, time="2026-11-20T10:00:00Z"))
    [row] = query(client, "litellm_tokens_total_tokens", groupBy="model", to="2026-11-21T00:00:00Z")
    assert row["groupBy"] == {"model": ""}


def test_data_survives_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "keep.sqlite3"
    with BackgroundServer(open_store(db)) as first, httpx.Client(base_url=first.url) as http:
        assert post(http, event("kept")).status_code == 204
        http.post(
            "/api/v1/meters",
            json={"slug": "extra", "aggregation": "COUNT", "eventType": "litellm_tokens"},
        )
    with BackgroundServer(open_store(db)) as second, httpx.Client(base_url=second.url) as http:
        assert [i["event"]["id"] for i in stored(http)] == ["kept"]
        assert query(http, "litellm_tokens_prompt_tokens")[0]["value"] == 10
        assert query(http, "extra")[0]["value"] == 1
        assert post(http, event("kept")).status_code == 204  # still deduplicated
        assert len(stored(http)) == 1


ROLLUP_CRASH = """
import os, signal, sys
from litellm_openmeter.server import open_store
store = open_store(sys.argv[1])
store.ingest([
    {"specversion": "1.0", "type": "litellm_tokens", "id": f"crash-{n}", "source": "t",
     "subject": f"cust-{n % 3}", "time": "2026-11-01T10:00:00Z",
     "data": {"model": "gpt-4o", "cost": 0.5, "total_tokens": 10}}
    for n in range(30)
])
os.kill(os.getpid(), signal.SIGKILL)  # before the rollup deltas were written
"""


def _cost_by_subject(store: Any) -> dict[str, float]:
    from litellm_openmeter.server.store import Query

    result = store.query("litellm_tokens_cost", Query(window_size="DAY", group_by=["subject"]))
    return {row["subject"]: row["value"] for row in result["data"]}


def test_rollups_lost_in_a_crash_are_rebuilt_from_the_facts(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    db = tmp_path / "crash.sqlite3"
    crashed = subprocess.run([sys.executable, "-c", ROLLUP_CRASH, str(db)], timeout=120)
    assert crashed.returncode == -signal.SIGKILL
    store = open_store(db)
    assert store.count_events() == 30
    assert _cost_by_subject(store) == {"cust-0": 5.0, "cust-1": 5.0, "cust-2": 5.0}
    store.close()
    reopened = open_store(db)  # rolled up once: opening again adds nothing
    assert _cost_by_subject(reopened) == {"cust-0": 5.0, "cust-1": 5.0, "cust-2": 5.0}


def test_windows_before_1970_start_on_the_hour_and_day(tmp_path: Path) -> None:
    from litellm_openmeter.server.store import Query

    store = open_store(tmp_path / "old.sqlite3")
    store.ingest(
        [
            cloud_event("old-1", "alice", {"model": "m", "cost": 1.0}, time="1969-12-31T23:30:00Z"),
            cloud_event("old-2", "alice", {"model": "m", "cost": 2.0}, time="1969-12-31T22:59:59Z"),
        ]
    )
    hours = store.query("litellm_tokens_cost", Query(window_size="HOUR"))["data"]
    assert sorted((row["windowStart"], row["value"]) for row in hours) == [
        ("1969-12-31T22:00:00Z", 2.0),
        ("1969-12-31T23:00:00Z", 1.0),
    ]
    days = store.query("litellm_tokens_cost", Query(window_size="DAY"))["data"]
    assert [(row["windowStart"], row["value"]) for row in days] == [("1969-12-31T00:00:00Z", 3.0)]
    store.close()


def test_meters_are_listed_in_order_by_page_and_deleted_ones_kept(
    client: httpx.Client,
) -> None:
    for slug, aggregation in (("b_meter", "SUM"), ("a_meter", "COUNT"), ("c_meter", "MAX")):
        body = {"slug": slug, "aggregation": aggregation, "eventType": "x"}
        if aggregation != "COUNT":
            body["valueProperty"] = "$.v"
        assert client.post("/api/v1/meters", json=body).status_code == 201

    def slugs(**params: Any) -> list[str]:
        response = client.get("/api/v1/meters", params=params)
        assert response.status_code == 200, response.text
        return [m["slug"] for m in response.json() if m["slug"].endswith("_meter")]

    assert slugs() == ["a_meter", "b_meter", "c_meter"]
    assert slugs(order="DESC") == ["c_meter", "b_meter", "a_meter"]
    assert slugs(orderBy="aggregation") == ["a_meter", "c_meter", "b_meter"]
    assert slugs(orderBy="createdAt", order="DESC")[0] == "c_meter"
    everything = client.get("/api/v1/meters").json()
    assert [m["slug"] for m in client.get("/api/v1/meters", params={"pageSize": 2}).json()] == [
        m["slug"] for m in everything[:2]
    ]
    page_two = client.get("/api/v1/meters", params={"pageSize": 2, "page": 2}).json()
    assert [m["slug"] for m in page_two] == [m["slug"] for m in everything[2:4]]
    for params, word in (
        ({"orderBy": "colour"}, "orderBy"),
        ({"order": "up"}, "ASC or DESC"),
        ({"pageSize": "0"}, "pageSize"),
        ({"includeDeleted": "maybe"}, "includeDeleted"),
    ):
        assert_problem(client.get("/api/v1/meters", params=params), 400, word)

    meter_id = client.get("/api/v1/meters/b_meter").json()["id"]
    assert client.delete("/api/v1/meters/b_meter").status_code == 204
    assert slugs() == ["a_meter", "c_meter"]
    assert slugs(includeDeleted="true") == ["a_meter", "b_meter", "c_meter"]
    deleted = client.get(f"/api/v1/meters/{meter_id}")
    assert deleted.status_code == 200 and "deletedAt" in deleted.json()
    assert_problem(client.get("/api/v1/meters/b_meter"), 404)


def test_group_by_values(client: httpx.Client) -> None:
    post(
        client,
        [
            cloud_event(str(i), "alice", {"model": model, "total_tokens": 1}, time=moment)
            for i, (model, moment) in enumerate(
                [
                    ("gpt-4o", "2026-11-20T10:00:00Z"),
                    ("claude", "2026-11-20T11:00:00Z"),
                    ("gpt-4o", "2026-11-21T10:00:00Z"),
                    (None, "2026-11-20T12:00:00Z"),
                    ("old", "2026-10-01T00:00:00Z"),
                ]
            )
        ],
        BATCH,
    )
    url = "/api/v1/meters/litellm_tokens_total_tokens/group-by/model/values"
    period = {"from": "2026-11-20T00:00:00Z", "to": "2026-11-21T10:00:00Z"}  # to: inclusive
    assert client.get(url, params=period).json() == ["claude", "gpt-4o"]
    assert client.get(url, params={"from": "2026-01-01T00:00:00Z"}).json() == [
        "claude",
        "gpt-4o",
        "old",
    ]
    assert_problem(
        client.get(url.replace("/model/", "/colour/"), params=period), 400, "not a groupBy key"
    )


def test_subjects_are_named_kept_and_deleted(client: httpx.Client) -> None:
    created = client.post(
        "/api/v1/subjects",
        json=[
            {"key": "acme", "displayName": "Acme Inc.", "metadata": {"plan": "pro"}},
            {"key": "globex", "stripeCustomerId": "cus_123"},
        ],
    )
    assert created.status_code == 200, created.text
    acme, globex = created.json()
    assert (acme["key"], acme["displayName"], acme["metadata"]) == (
        "acme",
        "Acme Inc.",
        {"plan": "pro"},
    )
    assert globex["stripeCustomerId"] == "cus_123"
    # An upsert changes only the fields it gives.
    [updated] = client.post(
        "/api/v1/subjects", json=[{"key": "acme", "displayName": "Acme"}]
    ).json()
    assert (updated["id"], updated["displayName"], updated["metadata"]) == (
        acme["id"],
        "Acme",
        {"plan": "pro"},
    )
    assert [s["key"] for s in client.get("/api/v1/subjects").json()] == ["acme", "globex"]
    assert client.get(f"/api/v1/subjects/{acme['id']}").json()["key"] == "acme"
    assert client.get("/api/v1/subjects/globex").json()["id"] == globex["id"]
    assert client.delete("/api/v1/subjects/globex").status_code == 204
    assert_problem(client.get("/api/v1/subjects/globex"), 404, "globex")
    assert_problem(client.delete("/api/v1/subjects/globex"), 404)
    for body, word in (
        ({"key": "x"}, "array"),
        ([{"displayName": "no key"}], "key is required"),
        ([{"key": "x", "metadata": "m"}], "metadata"),
        ([{"key": "x", "currentPeriodStart": "soon"}], "RFC 3339"),
    ):
        assert_problem(client.post("/api/v1/subjects", json=body), 400, word)


class _QueryThatWaits(Store):
    """A store whose queries wait until their client has gone away, the way a long
    query would still be running then."""

    def __init__(self, db: Path) -> None:
        super().__init__(db)
        self.entered = threading.Event()
        self.told_to_stop = threading.Event()

    def query(
        self, slug: str, query: Query, cancelled: threading.Event | None = None
    ) -> dict[str, Any]:
        self.entered.set()
        if cancelled is not None and cancelled.wait(timeout=60):
            self.told_to_stop.set()
        return super().query(slug, query, cancelled)


def test_a_query_stops_when_its_client_goes_away(tmp_path: Path) -> None:
    store = _QueryThatWaits(tmp_path / "server.sqlite3")
    store.create_meter(Meter(slug="calls", aggregation="COUNT", event_type="litellm_tokens"))
    with (
        BackgroundServer(store) as server,
        socket.create_connection((server.host, server.port)) as sock,
    ):
        sock.sendall(
            b"GET /api/v1/meters/calls/query?windowSize=MINUTE HTTP/1.1\r\nHost: localhost\r\n\r\n"
        )
        wait_for(store.entered.is_set, what="the query to start")
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        wait_for(store.told_to_stop.is_set, what="the query to be told its client left")


def test_a_file_from_before_the_summary_rollups_gets_them(tmp_path: Path) -> None:
    """A database written before the summary rollups (every subject together, every
    group together) existed is given them when opened, from its full rollups: the
    queries that read them answer as before."""
    import sqlite3

    db = tmp_path / "old.sqlite3"
    store = open_store(db)
    store.ingest(
        [
            cloud_event(
                f"e{n}",
                f"customer-{n % 3}",
                {"model": f"m{n % 2}", "cost": n / 10, "prompt_tokens": n},
                time=f"2025-03-{1 + n % 20:02d}T{n % 24:02d}:30:00Z",
            )
            for n in range(120)
        ]
    )
    queries = [
        Query(group_by=["model"]),
        Query(window_size="DAY", time_zone="America/New_York", group_by=["model"]),
        Query(window_size="MONTH", time_zone="Asia/Tokyo"),
        Query(window_size="DAY", time_zone="Europe/Berlin", group_by=["subject"]),
        Query(group_by=["subject", "model"], subjects=["customer-1"]),
    ]
    before = [store.query("litellm_tokens_cost", query) for query in queries]
    layout = store.layouts["litellm_tokens"]
    together = list(layout.summaries)
    store.close()
    with sqlite3.connect(db) as conn:
        for table in together:
            conn.execute(f"DROP TABLE {table}")
    reopened = Store(db)
    try:
        assert [reopened.query("litellm_tokens_cost", query) for query in queries] == before
        names = {
            row[0]
            for row in reopened._reader().execute(
                "SELECT name FROM sqlite_master WHERE type='table'"
            )
        }
        assert set(together) <= names
    finally:
        reopened.close()
