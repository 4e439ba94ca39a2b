"""A process's first and last seconds, in real short-lived processes: a script that
closes the logger right after its last call bills that call; a process killed soon
after its last hook loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from litellm_openmeter.outbox import Outbox

from conftest import free_port
from ingest_server import RecordingServer

SCRIPT = Path(__file__).with_name("short_lived.py")


def run(outbox: Path, endpoint: str, mode: str, calls: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(outbox), endpoint, mode, str(calls)],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True"),
    )


@pytest.mark.parametrize("mode", ["sync", "stream", "async", "exit"])
def test_a_script_that_ends_right_after_its_calls_bills_them(
    tmp_path: Path, ingest: RecordingServer, mode: str
) -> None:
    """LiteLLM runs the success hooks after the call returned (a sync call's in its
    thread pool, most of a second later for a process's first call): ``close()``, and
    the exit handler, wait for the hooks of every call that started."""
    done = run(tmp_path / "outbox.sqlite3", ingest.url, mode, 3)
    assert done.returncode == 0, done.stderr
    if mode != "exit":
        assert "CLOSED True" in done.stdout, done.stdout + done.stderr
    assert {event["subject"] for event in ingest.accepted_events()} == {
        f"{mode}-{index}" for index in range(3)
    }
    assert Outbox(tmp_path / "outbox.sqlite3").is_empty()


def test_a_fresh_process_killed_250_ms_after_its_last_hook_loses_nothing(
    tmp_path: Path,
) -> None:
    """From its first call on: the endpoint is down, so every event must be in the
    outbox when the process dies."""
    outbox = tmp_path / "outbox.sqlite3"
    done = run(outbox, f"http://127.0.0.1:{free_port()}", "kill", 300)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert "HOOKED 300" in done.stdout
    assert Outbox(outbox).stats().queued == 300
