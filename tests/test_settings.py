from __future__ import annotations

from pathlib import Path

import pytest

from litellm_openmeter import Settings, SettingsError


def test_defaults_match_litellms_logger() -> None:
    conf = Settings.from_env({"OPENMETER_API_KEY": "secret"})
    assert conf.endpoint == "https://openmeter.cloud"
    assert conf.events_url == "https://openmeter.cloud/api/v1/events"
    assert conf.event_type == "litellm_tokens"
    assert conf.source == "litellm-proxy"
    assert conf.trust_request_user is True
    assert conf.subject_from == ("user", "key_user_id")
    assert conf.event_shape == "litellm"
    assert conf.batch_size == 100 and conf.flush_interval == 1.0
    assert conf.retry_max_delay == 60.0 and conf.outbox_max_bytes == 1024**3
    assert conf.shutdown_timeout == 5.0


def test_missing_key_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="OPENMETER_API_KEY"):
        Settings.from_env({})


@pytest.mark.parametrize("endpoint", ["https://om.example.com/", "https://om.example.com"])
def test_trailing_slash_tolerated(endpoint: str) -> None:
    conf = Settings.from_env({"OPENMETER_API_KEY": "k", "OPENMETER_API_ENDPOINT": endpoint})
    assert conf.events_url == "https://om.example.com/api/v1/events"


def test_key_never_in_repr() -> None:
    conf = Settings.from_env({"OPENMETER_API_KEY": "sk-very-secret"})
    assert "sk-very-secret" not in repr(conf) and "sk-very-secret" not in str(conf)


@pytest.mark.parametrize(
    ("name", "value", "accepted"),
    [
        ("OPENMETER_EVENT_SHAPE", "rows", "litellm, tokens"),
        ("OPENMETER_TRUST_REQUEST_USER", "maybe", "true or false"),
        ("OPENMETER_METER_FAILURES", "2", "true or false"),
        ("OPENMETER_API_ENDPOINT", "openmeter.cloud", "https://"),
        ("OPENMETER_API_ENDPOINT", "http://openmeter.example.com", "plain http"),
        ("OPENMETER_SUBJECT_FROM", "user,email", "user, key_user_id"),
        ("OPENMETER_BATCH_SIZE", "0", "at least"),
        ("OPENMETER_BATCH_SIZE", "ten", "whole number"),
        ("OPENMETER_FLUSH_INTERVAL", "soon", "number"),
        ("OPENMETER_EVENT_TYPE", " ", "must not be empty"),
        ("OPENMETER_EVENT_SHAPE", "rows", "litellm, tokens"),
    ],
)
def test_invalid_values_name_variable_and_accepted(name: str, value: str, accepted: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"OPENMETER_API_KEY": "k", name: value})
    assert name in str(caught.value) and accepted in str(caught.value)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "127.0.0.2"])
def test_plain_http_allowed_on_loopback(host: str) -> None:
    conf = Settings.from_env(
        {"OPENMETER_API_KEY": "k", "OPENMETER_API_ENDPOINT": f"http://{host}:8888"}
    )
    assert conf.events_url == f"http://{host}:8888/api/v1/events"


def test_booleans_and_tokens_default_type() -> None:
    conf = Settings.from_env(
        {
            "OPENMETER_API_KEY": "k",
            "OPENMETER_TRUST_REQUEST_USER": "false",
            "OPENMETER_METER_FAILURES": "yes",
            "OPENMETER_EVENT_SHAPE": "tokens",
        }
    )
    assert conf.trust_request_user is False and conf.meter_failures is True
    shouted = Settings.from_env({"OPENMETER_API_KEY": "k", "OPENMETER_EVENT_SHAPE": "Tokens"})
    assert shouted.event_shape == "tokens"
    assert conf.event_type == "prompt"
    assert conf.failure_event_type == "prompt_failure"
    assert "user" not in conf.subject_from


def test_overrides_win_and_unknown_override_rejected(tmp_path: Path) -> None:
    conf = Settings.from_env(
        {"OPENMETER_API_KEY": "env"},
        api_key="kw",
        endpoint="http://127.0.0.1:1",
        outbox_path=tmp_path / "o.db",
        batch_size=5,
    )
    assert conf.api_key == "kw" and conf.endpoint == "http://127.0.0.1:1"
    assert conf.outbox_path == tmp_path / "o.db" and conf.batch_size == 5
    with pytest.raises(SettingsError, match="bach_size"):
        Settings.from_env({"OPENMETER_API_KEY": "k"}, bach_size=5)


def test_default_outbox_under_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    conf = Settings.from_env({"OPENMETER_API_KEY": "k"})
    assert conf.outbox_path == tmp_path / "litellm-openmeter" / "outbox.sqlite3"
