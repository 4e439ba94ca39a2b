"""The pure builder (usage extraction + event building) on recorded LiteLLM hook arguments."""

from __future__ import annotations

import copy
import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
import yaml
from cloudevents.http import from_json
from hypothesis import HealthCheck, given
from hypothesis import settings as examples
from hypothesis import strategies as st

from litellm_openmeter.events import (
    MissingSubjectError,
    build_events,
    format_time,
    resolve_subject,
    token_counts,
)
from litellm_openmeter.record import UsageError, UsageRecord, record_from_kwargs
from litellm_openmeter.settings import Settings

from conftest import OPENAPI

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return loaded


def settings(**overrides: Any) -> Settings:
    return Settings.from_env({}, api_key="k", **overrides)


def _nullable(schema: Any) -> Any:
    """OpenAPI 3.0 ``nullable`` into JSON Schema."""
    if isinstance(schema, dict):
        out = {key: _nullable(value) for key, value in schema.items() if key != "nullable"}
        if schema.get("nullable") and "type" in out:
            out["type"] = [out["type"], "null"]
            if "enum" in out:
                out["enum"] = [*out["enum"], None]
        return out
    if isinstance(schema, list):
        return [_nullable(item) for item in schema]
    return schema


@pytest.fixture(scope="module")
def event_schema() -> dict[str, Any]:
    if not OPENAPI.exists():
        pytest.skip("../shared/reference/openmeter/openapi.yaml is not present")
    spec = yaml.safe_load(OPENAPI.read_text())
    schema: dict[str, Any] = _nullable(spec["components"]["schemas"]["Event"])
    return schema


def assert_valid(event: dict[str, Any], schema: dict[str, Any]) -> None:
    jsonschema.validate(event, schema)
    datetime.fromisoformat(event["time"].replace("Z", "+00:00"))
    assert json.loads(json.dumps(event, allow_nan=False)) == event
    parsed = from_json(json.dumps(event).encode())
    assert parsed["id"] == event["id"] and parsed["subject"] == event["subject"]
    assert parsed.data == event["data"]


ALL_FIXTURES = sorted(path.stem for path in FIXTURES.glob("*.json"))


@pytest.mark.parametrize("name", ALL_FIXTURES)
@pytest.mark.parametrize("shape", ["litellm", "tokens"])
def test_every_event_validates(name: str, shape: str, event_schema: dict[str, Any]) -> None:
    kwargs = fixture(name)
    success = kwargs["standard_logging_object"]["status"] == "success"
    record = record_from_kwargs(kwargs, success=success)
    conf = settings(event_shape=shape, meter_failures=True, subject_from="user,key_user_id")
    events = build_events(record, conf)
    assert events or not success or shape == "tokens"
    for event in events:
        assert_valid(event, event_schema)
        for key in ("prompt_tokens", "cache_read_tokens", "reasoning_tokens", "tokens", "cost"):
            if key in event["data"]:
                assert isinstance(event["data"][key], (int, float))
                assert event["data"][key] is not None


def test_openai_cached_tokens() -> None:
    record = record_from_kwargs(fixture("openai_cached"))
    [event] = build_events(record, settings())
    assert event["id"] == fixture("openai_cached")["litellm_call_id"]
    assert event["subject"] == "user-1"
    data = event["data"]
    assert data["prompt_tokens"] == 100 and data["cache_read_tokens"] == 40
    assert data["cache_creation_tokens"] == 0 and data["completion_tokens"] == 50
    assert data["total_tokens"] == 150 and data["cost"] == pytest.approx(0.0007)
    assert data["provider"] == "openai" and data["call_type"] == "completion"
    assert token_counts(record) == {
        "input": 60,
        "output": 50,
        "cache_read": 40,
        "cache_creation": 0,
        "reasoning": 0,
    }


def test_anthropic_cache_read_and_creation() -> None:
    record = record_from_kwargs(fixture("anthropic_cache"))
    [event] = build_events(record, settings())
    data = event["data"]
    assert (data["prompt_tokens"], data["cache_read_tokens"], data["cache_creation_tokens"]) == (
        150,
        30,
        20,
    )
    assert data["provider"] == "anthropic"
    assert token_counts(record)["input"] == 100


def test_anthropic_additive_convention_is_normalised() -> None:
    kwargs = fixture("anthropic_cache")
    usage = kwargs["standard_logging_object"]["metadata"]["usage_object"]
    for key in ("prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details"):
        usage.pop(key, None)
    usage.update(input_tokens=100, output_tokens=50)
    record = record_from_kwargs(kwargs)
    assert (record.prompt_tokens, record.cache_read_tokens, record.cache_creation_tokens) == (
        150,
        30,
        20,
    )
    assert record.completion_tokens == 50 and record.total_tokens == 200


def test_prompt_smaller_than_its_cache_tokens_gets_them_added() -> None:
    kwargs = fixture("anthropic_cache")
    kwargs["standard_logging_object"]["metadata"]["usage_object"]["prompt_tokens"] = 10
    record = record_from_kwargs(kwargs)
    assert record.prompt_tokens == 60 and record.uncached_input_tokens == 10


def test_reasoning_tokens() -> None:
    record = record_from_kwargs(fixture("reasoning"))
    [event] = build_events(record, settings())
    assert event["data"]["reasoning_tokens"] == 100
    assert event["data"]["completion_tokens"] == 120
    tokens = build_events(record, settings(event_shape="tokens"))
    assert {e["data"]["type"]: e["data"]["tokens"] for e in tokens} == {
        "input": 20,
        "output": 20,
        "reasoning": 100,
    }


def test_embedding() -> None:
    [event] = build_events(record_from_kwargs(fixture("embedding")), settings())
    data = event["data"]
    assert data["call_type"] == "embedding" and data["prompt_tokens"] == 10
    assert data["completion_tokens"] == 0 and data["total_tokens"] == 10
    assert data["cost"] == pytest.approx(2e-07)


def test_image_generation_without_usage() -> None:
    record = record_from_kwargs(fixture("image_generation"))
    assert not record.priced
    [event] = build_events(record, settings())
    assert event["data"]["call_type"] == "image_generation"
    assert event["data"]["prompt_tokens"] == 0 and event["data"]["cost"] == 0
    assert build_events(record, settings(event_shape="tokens")) == []


def test_missing_cost_is_zero_and_flagged() -> None:
    record = record_from_kwargs(fixture("unpriced"))
    assert not record.priced and record.cost == 0.0
    [event] = build_events(record, settings())
    assert event["data"]["cost"] == 0


def test_priced_call_is_not_flagged() -> None:
    assert record_from_kwargs(fixture("openai_cached")).priced


def test_proxy_metadata_dimensions_and_subject_order() -> None:
    kwargs = fixture("proxy_metadata")
    record = record_from_kwargs(kwargs)
    [event] = build_events(record, settings())
    assert event["subject"] == "key-user-9"
    data = event["data"]
    assert data["team_id"] == "team-a" and data["key_alias"] == "prod-key"
    assert data["end_user"] == "customer-77" and data["model_group"] == "fast"
    for order, expected in [
        ("end_user,user", "customer-77"),
        ("team_id", "team-a"),
        ("key_alias", "prod-key"),
        ("org_id", "org-1"),
        ("user,key_user_id", "key-user-9"),
    ]:
        [event] = build_events(record, settings(subject_from=order))
        assert event["subject"] == expected


def test_request_user_not_trusted_when_disabled() -> None:
    kwargs = fixture("proxy_metadata")
    kwargs["user"] = "someone-else"
    record = record_from_kwargs(kwargs)
    assert build_events(record, settings())[0]["subject"] == "someone-else"
    distrust = settings(trust_request_user=False)
    assert build_events(record, distrust)[0]["subject"] == "key-user-9"
    only_user = settings(trust_request_user=False, subject_from="user")
    with pytest.raises(MissingSubjectError):
        build_events(record, only_user)


def test_custom_resolver() -> None:
    record = record_from_kwargs(fixture("proxy_metadata"))
    events = build_events(record, settings(), lambda ids: f"{ids['org_id']}/{ids['team_id']}")
    assert events[0]["subject"] == "org-1/team-a"
    with pytest.raises(MissingSubjectError):
        build_events(record, settings(), lambda ids: "")


def test_missing_subject_keeps_the_events() -> None:
    kwargs = fixture("openai_cached")
    kwargs["user"] = ""
    kwargs["standard_logging_object"]["model_parameters"] = {}
    record = record_from_kwargs(kwargs)
    with pytest.raises(MissingSubjectError) as caught:
        build_events(record, settings())
    assert caught.value.call_id == kwargs["litellm_call_id"]
    assert kwargs["litellm_call_id"] in str(caught.value)
    assert caught.value.events[0]["data"]["prompt_tokens"] == 100


def test_integer_user_becomes_string() -> None:
    kwargs = fixture("openai_cached")
    kwargs["user"] = 42
    assert build_events(record_from_kwargs(kwargs), settings())[0]["subject"] == "42"


def test_failure_event() -> None:
    record = record_from_kwargs(fixture("failure"), success=False)
    assert build_events(record, settings()) == []
    [event] = build_events(record, settings(meter_failures=True))
    assert event["type"] == "litellm_tokens_failure"
    assert event["id"] == f"{record.call_id}:failure"
    assert event["data"]["error_class"] == "RateLimitError"
    assert event["data"]["error_code"] == "429"


def test_time_is_the_call_end_in_utc() -> None:
    kwargs = fixture("openai_cached")
    end = kwargs["standard_logging_object"]["endTime"]
    [event] = build_events(record_from_kwargs(kwargs), settings())
    parsed = datetime.fromisoformat(event["time"].replace("Z", "+00:00"))
    assert parsed.timestamp() == pytest.approx(end, abs=1e-6)
    assert event["time"].endswith("Z")


def test_event_type_source_and_shape_settings() -> None:
    record = record_from_kwargs(fixture("openai_cached"))
    [event] = build_events(record, settings(event_type="llm_usage", source="my-gateway"))
    assert (event["type"], event["source"]) == ("llm_usage", "my-gateway")
    tokens = build_events(record, settings(event_shape="tokens"))
    assert {e["type"] for e in tokens} == {"prompt"}


def test_same_input_same_ids() -> None:
    kwargs = fixture("openai_cached")
    first = build_events(record_from_kwargs(copy.deepcopy(kwargs)), settings(event_shape="tokens"))
    again = build_events(record_from_kwargs(copy.deepcopy(kwargs)), settings(event_shape="tokens"))
    assert [e["id"] for e in first] == [e["id"] for e in again]


@given(
    prompt=st.integers(0, 10**7),
    completion=st.integers(0, 10**7),
    cached=st.integers(0, 10**7),
    created=st.integers(0, 10**7),
    reasoning=st.integers(0, 10**7),
    cost=st.one_of(st.none(), st.floats(0, 1000, allow_nan=False)),
)
def test_token_kinds_add_up(
    prompt: int, completion: int, cached: int, created: int, reasoning: int, cost: float | None
) -> None:
    kwargs = fixture("openai_cached")
    kwargs["response_cost"] = cost
    kwargs["standard_logging_object"]["metadata"]["usage_object"] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "prompt_tokens_details": {"cached_tokens": cached, "cache_creation_tokens": created},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }
    record = record_from_kwargs(kwargs)
    counts = token_counts(record)
    assert all(n >= 0 for n in counts.values())
    assert sum(counts.values()) == record.prompt_tokens + record.completion_tokens
    assert record.total_tokens >= record.prompt_tokens + record.completion_tokens
    events = build_events(record, settings(event_shape="tokens"))
    assert sum(e["data"]["tokens"] for e in events) == sum(counts.values())
    assert sum(e["data"]["cost"] for e in events) == pytest.approx(record.cost)
    assert all(e["data"]["tokens"] > 0 for e in events if sum(counts.values()))


def test_format_time() -> None:
    moment = datetime.fromisoformat("2026-01-02T03:04:05.123456+02:00")
    assert format_time(moment) == "2026-01-02T01:04:05.123456Z"


def test_resolve_subject_skips_blank() -> None:
    record = UsageRecord(
        call_id="c", end_time=datetime.now(), model="m", identities={"user": " ", "team_id": "t"}
    )
    assert resolve_subject(record, ("user", "team_id")) == "t"


plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(max_size=8)
    | st.floats(allow_nan=True, allow_infinity=True),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=6,
)


@examples(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.dictionaries(
        st.sampled_from(
            ["litellm_call_id", "response_cost", "user", "model", "call_type", "end_time"]
        ),
        plain,
    ),
    payload=st.dictionaries(
        st.sampled_from(
            [
                "id",
                "endTime",
                "response_cost",
                "model",
                "model_group",
                "end_user",
                "prompt_tokens",
                "completion_tokens",
                "total_tokens",
                "cache_hit",
            ]
        ),
        plain,
    ),
    usage=st.dictionaries(
        st.sampled_from(
            [
                "prompt_tokens",
                "completion_tokens",
                "total_tokens",
                "input_tokens",
                "cache_read_input_tokens",
                "prompt_tokens_details",
                "reasoning_tokens",
            ]
        ),
        plain,
    ),
    success=st.booleans(),
)
def test_whatever_values_a_call_holds_its_events_are_plain_json_or_it_is_refused(
    values: dict[str, Any], payload: dict[str, Any], usage: dict[str, Any], success: bool
) -> None:
    """Any values in a hook's arguments give events whose JSON is standard (no NaN or
    infinity, which JSON cannot carry), or an exception, which the builder keeps as a
    dead letter."""
    kwargs = {
        **values,
        "litellm_call_id": values.get("litellm_call_id") or "call-1",
        "standard_logging_object": {**payload, "metadata": {"usage_object": usage}},
    }
    settings = Settings.from_env({"OPENMETER_API_KEY": "k"})
    try:
        record = record_from_kwargs(kwargs, success=success)
        events = build_events(record, settings)
    except Exception:
        return  # CallBuilder keeps the call as a dead letter
    assert _finite(events), events
    assert orjson.loads(orjson.dumps(events)) == events


def _finite(value: Any) -> bool:
    """No NaN nor infinity anywhere in ``value`` (JSON has none: they would be lost)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(item) for item in value.values())
    if isinstance(value, list):
        return all(_finite(item) for item in value)
    return True


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_number_names_nothing(value: float) -> None:
    """A NaN or an infinity where a name belongs is no name."""
    kwargs = fixture("openai_cached")
    payload = kwargs["standard_logging_object"]
    kwargs = {
        **kwargs,
        "user": value,
        "model": value,
        "standard_logging_object": {**payload, "model": value, "model_group": value},
    }
    here = record_from_kwargs(kwargs)
    assert (here.model, here.model_group) == ("unknown", None)
    assert here.identities["user"] == "user-1"  # the request's user, as if none were given


def test_a_token_count_json_cannot_carry_is_refused() -> None:
    """Kept as a dead letter by the builder, never stored as a number OpenMeter cannot
    read (hypothesis found 2**64 in a usage mapping)."""
    kwargs = {
        "litellm_call_id": "call-1",
        "standard_logging_object": {"metadata": {"usage_object": {"prompt_tokens": 2**64}}},
    }
    with pytest.raises(UsageError, match="not a count"):
        record_from_kwargs(kwargs)
    kwargs["standard_logging_object"] = {"metadata": {"usage_object": {"prompt_tokens": 2**53}}}
    with pytest.raises(UsageError):
        record_from_kwargs(kwargs)
