"""Every command as a real subprocess against the local server, good input and bad."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from litellm_openmeter.meters import meters_for
from litellm_openmeter.server import BackgroundServer, open_store

from conftest import ALL_TIME, fill_outbox, free_port

KEY = "cli-secret-key"
USAGE = 2
"""The exit code of a bad argument or setting."""
Run = Callable[..., subprocess.CompletedProcess[str]]
TOKENS_SHAPE = {"OPENMETER_EVENT_SHAPE": "tokens", "OPENMETER_EVENT_TYPE": "litellm_tokens"}
"""The other event shape under the default type: some of its meters' slugs are taken."""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[BackgroundServer]:
    with BackgroundServer(open_store(tmp_path / "srv.sqlite3", meters=[]), token=KEY) as running:
        yield running


@pytest.fixture
def run(tmp_path: Path, server: BackgroundServer) -> Run:
    def run_cli(
        *args: str,
        env: dict[str, str] | None = None,
        ok: bool | int | None = True,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run the CLI; ``ok``: True for exit code 0, False for 1 (a failure), USAGE for 2
        (a bad argument or setting), each error one line; None checks nothing."""
        environment = {
            key: value for key, value in os.environ.items() if not key.startswith("OPENMETER_")
        }
        environment.update(
            OPENMETER_API_KEY=KEY,
            OPENMETER_API_ENDPOINT=server.url,
            OPENMETER_OUTBOX_PATH=str(tmp_path / "outbox.sqlite3"),
            COLUMNS="200",
        )
        environment.update(env or {})
        for name, value in list(environment.items()):
            if value == "":
                del environment[name]
        result = subprocess.run(
            [sys.executable, "-m", "litellm_openmeter.cli", *args],
            capture_output=True,
            text=True,
            env=environment,
            timeout=timeout,
        )
        assert KEY not in result.stdout + result.stderr, "the API key was printed"
        if ok is True:
            assert result.returncode == 0, result.stderr
        elif ok is not None:
            expected = 1 if ok is False else ok
            assert result.returncode == expected, (result.returncode, result.stdout, result.stderr)
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        return result

    return run_cli


def test_help_and_version(run: Run) -> None:
    assert "litellm-openmeter" in run("--version").stdout
    for command in ("demo", "serve", "meters", "outbox", "doctor", "usage"):
        assert "usage:" in run(command, "--help").stdout
    for action in ("status", "dead-letters", "requeue", "drain", "purge-dead"):
        assert "usage:" in run("outbox", action, "--help").stdout


def test_meters_prints_yaml_and_json(run: Run) -> None:
    printed = yaml.safe_load(run("meters", env={"OPENMETER_API_KEY": ""}).stdout)
    assert [m["slug"] for m in printed["meters"]] == [
        m.slug for m in meters_for("litellm_tokens", "litellm")
    ]
    tokens = json.loads(run("meters", "--json", env={"OPENMETER_EVENT_SHAPE": "tokens"}).stdout)
    assert tokens[0]["slug"] == "tokens_total" and tokens[0]["eventType"] == "prompt"
    custom = json.loads(run("meters", "--json", env={"OPENMETER_EVENT_TYPE": "llm_usage"}).stdout)
    assert {m["eventType"] for m in custom} == {"llm_usage", "llm_usage_failure"}


def test_meters_apply(run: Run, server: BackgroundServer) -> None:
    first = run("meters", "--apply").stdout.splitlines()
    assert len(first) == len(meters_for("litellm_tokens", "litellm"))
    assert all(line.startswith("created") for line in first)
    second = json.loads(run("meters", "--apply", "--json").stdout)
    assert {line["state"] for line in second} == {"exists"}
    with httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {KEY}"}) as http:
        assert http.get("/api/v1/meters/litellm_tokens_cost").status_code == 200
    changed = run(
        "meters",
        "--apply",
        env=TOKENS_SHAPE,
    ).stdout
    assert "differs  litellm_tokens_calls" in changed
    assert "created  tokens_total" in changed


def test_meters_apply_update(run: Run, server: BackgroundServer) -> None:
    """--update gives existing meters the groupBy keys they lack, keeping their name,
    description and keys of their own; what cannot change in place stays reported."""
    run("meters", "--apply")
    with httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {KEY}"}) as http:
        wanted = http.get("/api/v1/meters/litellm_tokens_cost").json()["groupBy"]
        own = {key: path for key, path in wanted.items() if key != "team_id"}
        own["region"] = "$.region"
        edited = {"name": "Cost", "description": "edited by hand", "groupBy": own}
        assert http.put("/api/v1/meters/litellm_tokens_cost", json=edited).status_code == 200
        assert "differs  litellm_tokens_cost" in run("meters", "--apply").stdout
        updated = run("meters", "--apply", "--update").stdout
        assert "updated  litellm_tokens_cost (groupBy keys set: team_id)" in updated
        assert "exists   litellm_tokens_calls" in updated
        meter = http.get("/api/v1/meters/litellm_tokens_cost").json()
        assert meter["groupBy"] == {**wanted, "region": "$.region"}
        assert (meter["name"], meter["description"]) == ("Cost", "edited by hand")
    again = run("meters", "--apply", "--update").stdout
    assert "exists   litellm_tokens_cost (keeps groupBy keys of its own: region)" in again
    other_shape = run(
        "meters",
        "--apply",
        "--update",
        env=TOKENS_SHAPE,
    ).stdout
    assert "differs  litellm_tokens_calls" in other_shape
    assert "cannot change in place" in other_shape
    assert "--apply" in run("meters", "--update", ok=USAGE).stderr


@pytest.mark.parametrize(
    ("env", "message", "code"),
    [
        ({"OPENMETER_API_KEY": ""}, "OPENMETER_API_KEY", USAGE),
        ({"OPENMETER_API_KEY": "wrong"}, "rejected the API key", 1),
        ({"OPENMETER_API_ENDPOINT": "http://127.0.0.1:1"}, "cannot reach", 1),
        ({"OPENMETER_EVENT_SHAPE": "rows"}, "OPENMETER_EVENT_SHAPE", USAGE),
    ],
)
def test_meters_apply_failures(run: Run, env: dict[str, str], message: str, code: int) -> None:
    result = run("meters", "--apply", env=env, ok=code)
    assert message in result.stderr


def test_outbox_status_when_empty(run: Run) -> None:
    """Before anything was queued, the read-only commands say so and succeed; those
    that act on the outbox fail, naming the path and the variable."""
    status = json.loads(run("outbox", "status", "--json").stdout)
    assert status["exists"] is False and status["queued"] == 0
    assert "queued" in run("outbox", "status").stdout
    assert "no dead letters: no outbox at" in run("outbox", "dead-letters").stdout
    assert json.loads(run("outbox", "dead-letters", "--json").stdout) == []
    drain = run("outbox", "drain", ok=False)
    assert "no outbox at" in drain.stderr and "OPENMETER_OUTBOX_PATH" in drain.stderr


def test_outbox_inspect_requeue_drain(run: Run, tmp_path: Path, server: BackgroundServer) -> None:
    fill_outbox(tmp_path / "outbox.sqlite3", 30, f"http://127.0.0.1:{free_port()}", no_subject=2)
    status = json.loads(run("outbox", "status", "--json").stdout)
    assert status["queued"] == 30 and status["dead_lettered"] == 2 and status["outbox_bytes"] > 0
    table = run("outbox", "status").stdout
    assert "30" in table and "dead lettered" in table
    dead = json.loads(run("outbox", "dead-letters", "--json").stdout)
    assert {d["reason"] for d in dead} == {"no_subject"}
    assert "no_subject" in run("outbox", "dead-letters").stdout
    assert "give event IDs or --all" in run("outbox", "requeue", ok=USAGE).stderr
    assert "no dead letter with id" in run("outbox", "requeue", "nope", ok=False).stderr
    assert "has no subject" in run("outbox", "requeue", "--all", ok=False).stderr
    moved = run("outbox", "requeue", dead[0]["id"], "--subject", "team-x").stdout
    assert "requeued 1" in moved
    assert "refusing to delete 1" in run("outbox", "purge-dead", ok=USAGE).stderr
    assert "deleted 1" in run("outbox", "purge-dead", "--yes").stdout
    assert "drained 31 event(s)" in run("outbox", "drain").stdout
    assert json.loads(run("outbox", "status", "--json").stdout)["queued"] == 0
    with httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {KEY}"}) as http:
        events = http.get("/api/v1/events", params={"limit": 100, **ALL_TIME}).json()
    assert len(events) == 31
    assert "team-x" in {item["event"]["subject"] for item in events}
    assert "outbox is empty" in run("outbox", "drain").stdout


def test_outbox_drain_that_cannot_finish(run: Run, tmp_path: Path) -> None:
    fill_outbox(tmp_path / "outbox.sqlite3", 3, "http://127.0.0.1:1")
    result = run(
        "outbox",
        "drain",
        "--timeout",
        "1",
        env={"OPENMETER_API_ENDPOINT": f"http://127.0.0.1:{free_port()}"},
        ok=False,
    )
    assert "3 event(s) still queued after 1s" in result.stderr
    assert "cannot reach" in result.stderr
    assert "is not a number" in run("outbox", "drain", "--timeout", "soon", ok=None).stderr


def test_doctor(run: Run, tmp_path: Path) -> None:
    failing = run("doctor", ok=None)
    assert failing.returncode == 1
    assert "FAIL meters: no meter reads event type litellm_tokens" in failing.stdout
    assert "litellm-openmeter meters --apply" in failing.stdout
    run("meters", "--apply")
    healthy = run("doctor")
    assert healthy.stdout.count("ok  ") == 6, healthy.stdout
    checks = {c["name"]: c for c in json.loads(run("doctor", "--json").stdout)}
    assert all(c["ok"] for c in checks.values())
    wrong = run("doctor", env={"OPENMETER_API_KEY": "bad-key"}, ok=None)
    assert wrong.returncode == 1 and "FAIL authentication" in wrong.stdout
    [auth] = [line for line in wrong.stdout.splitlines() if "authentication" in line]
    assert auth.count("OPENMETER_API_KEY") == 1, auth  # the fix, said once
    down = run("doctor", env={"OPENMETER_API_ENDPOINT": f"http://127.0.0.1:{free_port()}"}, ok=None)
    assert down.returncode == 1 and "FAIL reachable" in down.stdout
    missing = run("doctor", env={"OPENMETER_API_KEY": ""}, ok=None)
    assert missing.returncode == 1 and "OPENMETER_API_KEY" in missing.stdout
    assert "-> fix: set OPENMETER_API_KEY to your OpenMeter API token" in missing.stdout
    insecure = run("doctor", env={"OPENMETER_API_ENDPOINT": "http://meter.example.com"}, ok=None)
    assert insecure.returncode == 1 and "plain http" in insecure.stdout
    fill_outbox(tmp_path / "outbox.sqlite3", 0, "http://127.0.0.1:1", no_subject=1)
    dead = run("doctor", ok=None)
    assert dead.returncode == 1 and "FAIL outbox" in dead.stdout and "dead-letters" in dead.stdout


def test_usage(run: Run, server: BackgroundServer) -> None:
    assert "meters --apply" in run("usage", ok=False).stderr
    run("meters", "--apply")
    events = [
        {
            "specversion": "1.0",
            "type": "litellm_tokens",
            "id": f"u{i}",
            "source": "t",
            "subject": subject,
            "time": f"2026-11-{20 + i}T12:00:00Z",
            "data": {
                "model": "gpt-4o",
                "cost": 0.5,
                "prompt_tokens": 100,
                "completion_tokens": 10,
                "total_tokens": 110,
                "cache_read_tokens": 30,
                "cache_creation_tokens": 0,
                "reasoning_tokens": 0,
            },
        }
        for i, subject in enumerate(["ann", "ann", "ben"])
    ]
    httpx.post(
        f"{server.url}/api/v1/events", json=events, headers={"authorization": f"Bearer {KEY}"}
    ).raise_for_status()
    rows = json.loads(run("usage", "--json", "--window", "day", "--group-by", "model").stdout)
    assert [(r["subject"], r["windowStart"][:10], r["input"], r["cost"]) for r in rows] == [
        ("ann", "2026-11-20", 100, 0.5),
        ("ann", "2026-11-21", 100, 0.5),
        ("ben", "2026-11-22", 100, 0.5),
    ]
    assert rows[0]["groupBy"] == {"model": "gpt-4o"} and rows[0]["cached"] == 30
    only = json.loads(run("usage", "--json", "--subject", "ben").stdout)
    assert [(r["subject"], r["output"]) for r in only] == [("ben", 10)]
    table = run("usage", "--from", "2026-11-21T00:00:00Z").stdout
    assert "ann" in table and "ben" in table and "2026-11-20" not in table
    assert "invalid choice" in run("usage", "--window", "week", ok=None).stderr
    bad = run("usage", "--from", "yesterday", ok=False)
    assert "from" in bad.stderr
    assert "rejected the API key" in run("usage", env={"OPENMETER_API_KEY": "no"}, ok=False).stderr
