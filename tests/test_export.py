"""``litellm-openmeter export``: a local server's history moved into another
OpenMeter-compatible endpoint (here a second local server), resumable and verified."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from litellm_openmeter.cli import main
from litellm_openmeter.meters import default_server_meters
from litellm_openmeter.server import BackgroundServer, open_store

from conftest import free_port, wait_for
from ingest_server import Recorded, RecordingServer, problem

START = 1_735_689_600  # 2025-01-01T00:00:00Z: recorded times, far from today
DAYS = 30
KEY = "target-secret-key-123"


def history(count: int) -> Iterator[dict[str, Any]]:
    """Events of both shapes, spread over 30 days and 20 subjects."""
    for index in range(count):
        moment = START + (index * 7919) % (DAYS * 86400)
        time = datetime.fromtimestamp(moment, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        subject = f"customer-{index % 20}"
        if index % 2:
            data = {
                "model": "gpt-4o",
                "cost": 0.001,
                "prompt_tokens": index % 97,
                "completion_tokens": 5,
                "total_tokens": index % 97 + 5,
                "cache_read_tokens": 0,
                "cache_creation_tokens": 0,
                "reasoning_tokens": 0,
                "usage_accuracy": "exact",
            }
            event_type = "litellm_tokens"
        else:
            data = {
                "tokens": index % 50 + 1,
                "model": "gpt-4o",
                "type": "input",
                "cost": 0.002,
                "call_id": f"c{index}",
                "usage_accuracy": "exact",
            }
            event_type = "prompt"
        yield {
            "specversion": "1.0",
            "type": event_type,
            "id": f"e{index}",
            "source": "litellm-proxy",
            "subject": subject,
            "time": time,
            "data": data,
        }


def source_db(folder: Path, count: int) -> Path:
    db = folder / "source.sqlite3"
    store = open_store(db)
    batch: list[dict[str, Any]] = []
    for event in history(count):
        batch.append(event)
        if len(batch) == 5000:
            store.ingest(batch)
            batch = []
    if batch:
        store.ingest(batch)
    store.close()
    return db


@pytest.fixture
def target(tmp_path: Path) -> Iterator[BackgroundServer]:
    with BackgroundServer(open_store(tmp_path / "target.sqlite3"), token=KEY) as server:
        yield server


def export(db: Path, url: str, *more: str) -> list[str]:
    return ["export", "--db", str(db), "--to", url, "--key", KEY, *more]


def run_cli(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "litellm_openmeter.cli", *argv],
        env={**os.environ, "OPENMETER_RETRY_MAX_DELAY": "0.2", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.heavy
def test_a_history_of_both_shapes_is_exported_and_verified(
    tmp_path: Path, target: BackgroundServer, capsys: pytest.CaptureFixture[str]
) -> None:
    db = source_db(tmp_path, 100_000)
    assert main(export(db, target.url, "--verify", "--json")) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["events"] == 100_000 and report["dead_letters"] == 0
    assert report["differences"] == []
    assert target.store.count_events() == 100_000
    # Again: the checkpoint says everything was queued; nothing is sent twice.
    assert main(export(db, target.url, "--verify", "--json")) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["events"] == 0 and again["differences"] == []
    assert target.store.duplicates == 0
    out = capsys.readouterr()
    assert KEY not in out.out + out.err


def test_verify_lists_every_difference(
    tmp_path: Path, target: BackgroundServer, capsys: pytest.CaptureFixture[str]
) -> None:
    db = source_db(tmp_path, 200)
    assert main(export(db, target.url)) == 0
    extra = next(history(1))
    extra["id"] = "only-on-the-target"
    target.store.ingest([extra])
    capsys.readouterr()
    assert main(export(db, target.url, "--verify")) == 1
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("differs")]
    assert lines and all("2025-01-01 customer-0" in line for line in lines)


def test_a_target_down_at_the_start_is_one_clear_error(tmp_path: Path) -> None:
    db = source_db(tmp_path, 3_000)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "litellm_openmeter.cli", *export(db, url, "--apply-meters")],
        env={**os.environ, "OPENMETER_RETRY_MAX_DELAY": "0.2"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The meters check needs the target: it fails at once while the target is down.
        assert process.wait(timeout=120) == 1
        assert "cannot reach" in process.stderr.read()  # type: ignore[union-attr]
        with BackgroundServer(open_store(tmp_path / "t.sqlite3"), port=port, token=KEY) as up:
            assert run_cli(export(db, url)).returncode == 0
            assert up.store.count_events() == 3_000
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.heavy
def test_the_target_going_down_mid_export_loses_nothing(tmp_path: Path) -> None:
    db = source_db(tmp_path, 20_000)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first = BackgroundServer(open_store(tmp_path / "t.sqlite3"), port=port, token=KEY).start()
    process = subprocess.Popen(
        [sys.executable, "-m", "litellm_openmeter.cli", *export(db, url, "--json")],
        env={**os.environ, "OPENMETER_RETRY_MAX_DELAY": "0.2"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: first.store.count_events() > 0, timeout=120, what="the first events")
        first.stop()  # down mid-export: the export keeps its events and retries
        with BackgroundServer(open_store(tmp_path / "t.sqlite3"), port=port, token=KEY) as again:
            assert process.wait(timeout=240) == 0
            assert again.store.count_events() == 20_000
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.heavy
def test_an_export_killed_midway_goes_on_when_run_again(
    tmp_path: Path, target: BackgroundServer
) -> None:
    db = source_db(tmp_path, 50_000)
    process = subprocess.Popen(
        [sys.executable, "-m", "litellm_openmeter.cli", *export(db, target.url)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: target.store.count_events() > 0, timeout=120, what="the first events")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert 0 < target.store.count_events() < 50_000
    done = run_cli(export(db, target.url, "--verify"))
    assert done.returncode == 0, done.stderr
    assert target.store.count_events() == 50_000  # stored once each
    assert "verified" in done.stdout


def test_events_the_target_rejects_are_kept_and_listed(tmp_path: Path) -> None:
    db = source_db(tmp_path, 1_000)
    rejected = {"e10", "e501"}

    def answer(request: Recorded) -> tuple[int, dict[str, str], bytes]:
        if rejected & {event["id"] for event in request.events()}:
            return problem(400, "Bad Request", "this target does not take e10 or e501")
        return 204, {}, b""

    meters = [{"slug": meter.slug} for meter in default_server_meters()]
    sink = RecordingServer(respond=answer, meters=meters)
    try:
        result = run_cli(export(db, sink.url))
        assert result.returncode == 1
        assert "2 event(s) rejected" in result.stdout and "does not take" in result.stdout
        assert len(sink.accepted_ids()) == 998 and not rejected & sink.accepted_ids()
        assert KEY not in result.stdout + result.stderr
    finally:
        sink.stop()


def test_a_dry_run_sends_nothing_and_names_missing_meters(tmp_path: Path) -> None:
    db = source_db(tmp_path, 100)
    with BackgroundServer(open_store(tmp_path / "t.sqlite3", meters=[]), token=KEY) as bare:
        dry = run_cli(export(db, bare.url, "--dry-run"))
        assert dry.returncode == 0 and "would export 100 event(s)" in dry.stdout
        assert "missing meter on the target: litellm_tokens_cost" in dry.stdout
        refused = run_cli(export(db, bare.url))
        assert refused.returncode == 1 and "--apply-meters" in refused.stderr
        assert bare.store.count_events() == 0
        applied = run_cli(export(db, bare.url, "--apply-meters", "--verify"))
        assert applied.returncode == 0, applied.stderr
        assert bare.store.count_events() == 100
        wrong_key = run_cli(
            ["export", "--db", str(db), "--to", bare.url, "--key", "nope-wrong-key"]
        )
        assert wrong_key.returncode == 1 and "rejected the API key" in wrong_key.stderr
        assert "nope-wrong-key" not in wrong_key.stdout + wrong_key.stderr


def test_usage_compare_reconciles_two_endpoints(
    tmp_path: Path,
    target: BackgroundServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = source_db(tmp_path, 500)
    assert main(export(db, target.url)) == 0
    period = ["--from", "2025-01-01T00:00:00Z", "--to", "2025-02-01T00:00:00Z"]
    with BackgroundServer(open_store(db), token=KEY) as source:
        monkeypatch.setenv("OPENMETER_API_ENDPOINT", source.url)
        monkeypatch.setenv("OPENMETER_API_KEY", KEY)
        capsys.readouterr()
        assert main(["usage", "--compare", target.url, *period]) == 0
        assert "verified" in capsys.readouterr().out
        extra = list(history(2))[1]  # a litellm_tokens event: the configured type
        extra["id"] = "only-on-the-target"
        target.store.ingest([extra])
        assert main(["usage", "--compare", target.url, *period, "--json"]) == 1
        found = json.loads(capsys.readouterr().out)
        assert {(d["day"], d["subject"]) for d in found} == {("2025-01-01", extra["subject"])}
        assert {d["meter"] for d in found} >= {"litellm_tokens_calls", "litellm_tokens_cost"}
