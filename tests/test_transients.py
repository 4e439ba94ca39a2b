"""A process's first and last seconds, in real short-lived processes: a script that
closes the logger right after its last call bills that call; a process killed soon
after its last hook loses nothing."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from litellm_openmeter.delivery.outbox import Outbox

from conftest import free_port
from ingest_server import RecordingServer

# Processes of their own, started and killed; they read no dates, so CI's second
# pass (the clock a year ahead) leaves them out.
pytestmark = pytest.mark.heavy

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


def test_sigterm_under_load_delivers_what_was_answered_then_ends_by_sigterm(
    tmp_path: Path, ingest: RecordingServer
) -> None:
    """A process nobody else handles SIGTERM for: the logger delivers, then the
    process ends by SIGTERM as it would have. Calls answered before the signal are
    billed before it ends; those answered while it stops are billed or kept in the
    outbox for the next process; none twice."""
    outbox = tmp_path / "outbox.sqlite3"
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(outbox), ingest.url, "load", "4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Nothing is sent before the signal: what the stop delivers shows.
        env=dict(
            os.environ,
            LITELLM_LOCAL_MODEL_COST_MAP="True",
            OPENMETER_FLUSH_INTERVAL="3600",
            OPENMETER_BATCH_SIZE="100000",
        ),
    )
    assert process.stdout is not None
    before: set[str] = set()
    try:
        for line in process.stdout:
            if line.startswith("ANSWERED "):
                before.add(line.split()[1])
            if len(before) == 200:
                break
        process.send_signal(signal.SIGTERM)
        after = {line.split()[1] for line in process.stdout if line.startswith("ANSWERED ")}
        assert process.wait(60) == -signal.SIGTERM, process.stderr.read()  # type: ignore[union-attr]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    billed = [event["subject"] for event in ingest.accepted_events()]
    assert len(billed) == len(set(billed)), "billed twice"
    assert before <= set(billed), "a call answered before SIGTERM was not delivered"
    with sqlite3.connect(outbox) as conn:
        kept = [json.loads(body)["subject"] for (body,) in conn.execute("SELECT body FROM events")]
    assert not set(kept) & set(billed)
    assert set(billed) | set(kept) <= before | after


HANDLERS = """
import signal, sys
from litellm_openmeter import OpenMeterLogger
if sys.argv[2] == "ignored":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
OpenMeterLogger(api_key="k", outbox_path=sys.argv[1], handle_sigterm=sys.argv[2] != "off")
handler = signal.getsignal(signal.SIGTERM)
print("ours" if getattr(handler, "litellm_openmeter", False) else signal.Handlers(handler).name)
"""


@pytest.mark.parametrize(
    ("setting", "expected"),
    [("on", "ours"), ("off", "SIG_DFL"), ("ignored", "SIG_IGN")],
)
def test_sigterm_is_handled_unless_turned_off_or_ignored(
    tmp_path: Path, setting: str, expected: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", HANDLERS, str(tmp_path / "outbox.sqlite3"), setting],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True"),
    )
    assert done.stdout.split() == [expected], done.stderr
