"""Parity with LiteLLM's built-in OpenMeterLogger: the same calls through both, bodies compared.

Every difference must be one that README's "Differences from LiteLLM's built-in
logger" section lists.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

import litellm
import pytest
from litellm.integrations.openmeter import OpenMeterLogger as BuiltinLogger

from conftest import usage_response, wait_for
from ingest_server import RecordingServer

README = Path(__file__).resolve().parents[1] / "README.md"
ADDED_FIELDS = {
    "cache_read_tokens",
    "cache_creation_tokens",
    "reasoning_tokens",
    "model_group",
    "provider",
    "call_type",
    "team_id",
    "key_alias",
    "end_user",
    "usage_accuracy",
}
CHANGED = {"id", "time", "total_tokens", "cost"}


def ours(request_headers: dict[str, str]) -> bool:
    return request_headers.get("user-agent", "").startswith("litellm-openmeter/")


def test_same_calls_same_bodies_but_documented_differences(
    make_logger: Any,
    callbacks: list[Any],
    ingest: RecordingServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENMETER_API_KEY", "test-key")
    monkeypatch.setenv("OPENMETER_API_ENDPOINT", ingest.url + "/")
    callbacks.extend([BuiltinLogger(), make_logger()])
    messages = [{"role": "user", "content": "hello"}]
    cached = usage_response()
    litellm.completion(model="gpt-4o", messages=messages, mock_response="hi", user="p-plain")
    litellm.completion(model="gpt-4o", messages=messages, mock_response=cached, user="p-cached")
    litellm.completion(
        model="gpt-4o-mini",
        messages=messages,
        mock_response="hi",
        metadata={"user_api_key_user_id": "p-key"},
    )
    litellm.embedding(
        model="text-embedding-3-small", input=["x"], mock_response=[0.1], user="p-embed"
    )

    def both_sides() -> bool:
        mine = [r for r in ingest.requests if ours(r.headers)]
        theirs = [r for r in ingest.requests if not ours(r.headers)]
        return sum(len(r.events()) for r in mine) >= 4 and len(theirs) >= 4

    wait_for(both_sides, what="events from both loggers")
    theirs = {e["subject"]: e for r in ingest.requests if not ours(r.headers) for e in r.events()}
    mine = {e["subject"]: e for r in ingest.requests if ours(r.headers) for e in r.events()}
    assert set(theirs) == set(mine) == {"p-plain", "p-cached", "p-key", "p-embed"}
    for request in ingest.requests:
        if not ours(request.headers):
            assert request.headers["content-type"] == "application/cloudevents+json"
            assert request.path == "/api/v1/events"

    for subject, builtin in theirs.items():
        event = mine[subject]
        assert set(builtin) == set(event)
        for key in set(builtin) - {"id", "time", "data"}:
            assert event[key] == builtin[key], key
        assert set(builtin["data"]) <= set(event["data"])
        assert set(event["data"]) - set(builtin["data"]) <= ADDED_FIELDS
        for key, value in builtin["data"].items():
            if key == "cost":
                assert event["data"][key] == pytest.approx(value or 0)
            elif key == "total_tokens":
                # Ours is never below prompt + completion (LiteLLM's mock embedding says 0).
                data = builtin["data"]
                assert event["data"][key] == max(
                    value, data["prompt_tokens"] + data["completion_tokens"]
                )
            else:
                assert event["data"][key] == value, (subject, key)
        # id: the built-in sends the provider response id, ours the LiteLLM call id.
        assert event["id"] != builtin["id"] or subject == "p-embed"
        # time: the built-in sends when logging ran, ours when the call ended.
        theirs_time = datetime.fromisoformat(builtin["time"])
        mine_time = datetime.fromisoformat(event["time"].replace("Z", "+00:00"))
        assert abs((theirs_time - mine_time).total_seconds()) < 5
        assert mine_time <= theirs_time

    assert mine["p-cached"]["data"]["cache_read_tokens"] == 40
    assert "cache_read_tokens" not in theirs["p-cached"]["data"]


def test_readme_documents_every_difference() -> None:
    text = README.read_text()
    section = re.search(r"## Differences from LiteLLM's built-in logger\n(.*?)\n## ", text, re.S)
    assert section, "README needs a 'Differences from LiteLLM's built-in logger' section"
    for name in sorted(ADDED_FIELDS | CHANGED):
        assert f"`{name}`" in section.group(1), name
