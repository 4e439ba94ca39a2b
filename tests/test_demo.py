"""The README's main command, run as a real process, checked against the server it fills."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest

CLI = [sys.executable, "-m", "litellm_openmeter.cli"]


def start(
    command: list[str], tmp_path: Path, without: tuple[str, ...] = ()
) -> subprocess.Popen[str]:
    """The command as a process whose temporary folders go to ``tmp_path``, with the
    environment less the variables ``without`` names."""
    env = {key: value for key, value in os.environ.items() if key not in without}
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, "TMPDIR": str(tmp_path)},
    )


@pytest.mark.parametrize("shape", ["litellm", "tokens"])
def test_demo_totals_match_the_stored_events(shape: str) -> None:
    process = subprocess.Popen(
        [*CLI, "demo", "--json", "--keep", "--shape", shape, "--calls", "14"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        report = json.loads(process.stdout.readline())
        events = httpx.get(f"{report['server_url']}/api/v1/events", params={"limit": 100}).json()
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)
    assert report["verified"] and report["lost"] == 0 and report["duplicated"] == 0
    assert report["calls"] == 14 and report["failed"] == 1 and report["without_user"] == 1
    kinds = [item["event"] for item in events]
    assert len(kinds) == report["events_delivered"] == report["events_stored_by_logger"]
    assert report["dead_lettered"] >= 1
    failures = [e for e in kinds if e["type"].endswith("_failure")]
    assert len(failures) == 1 and failures[0]["data"]["error_class"] == "RateLimitError"

    totals: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for event in kinds:
        if event["type"].endswith("_failure"):
            continue
        data: dict[str, Any] = event["data"]
        cell = totals[(event["subject"], data["model"])]
        cell["cost"] += data["cost"]
        if shape == "litellm":
            cell["input"] += data["prompt_tokens"]
            cell["output"] += data["completion_tokens"]
            cell["cached"] += data["cache_read_tokens"]
        else:
            column = "output" if data["type"] in ("output", "reasoning") else "input"
            cell[column] += data["tokens"]
            cell["cached"] += data["tokens"] if data["type"] == "cache_read" else 0
    printed = {(row["subject"], row["model"]): row for row in report["usage"]}
    assert set(printed) == set(totals)
    for key, cell in totals.items():
        for column in ("input", "output", "cached"):
            assert printed[key][column] == cell[column], (key, column)
        assert printed[key]["cost"] == pytest.approx(cell["cost"])
    assert sum(row["cached"] for row in report["usage"]) > 0
    assert {row["subject"] for row in report["usage"]} == {"alice", "bob", "carol"}


def test_demo_prints_a_table_the_check_and_the_environment(tmp_path: Path) -> None:
    """Piped (no terminal, no COLUMNS): the table keeps every model name whole, the check
    says nothing was lost, and ``--keep`` prints the variables that point the CLI at its
    server, with which ``usage`` answers from it. Its folder goes when it stops."""
    process = start([*CLI, "demo", "--keep", "--calls", "8"], tmp_path, without=("COLUMNS",))
    try:
        assert process.stdout is not None
        printed = []
        for line in process.stdout:
            printed.append(line)
            if "litellm-openmeter usage" in line:
                break
        output = "".join(printed)
        assert "Usage per subject and model" in output and "0 lost, 0 duplicated" in output
        assert "text-embedding-3-small" in output and "claude-sonnet-4-5" in output
        assert "calls made: 8 (7 succeeded, 1 failed, 1 without a user)" in output
        [exported] = [line for line in printed if line.strip().startswith("export ")]
        variables = dict(item.split("=", 1) for item in exported.split()[1:])
        [browse] = [line for line in printed if "in a browser" in line]
        page = httpx.get(browse.split()[-1], timeout=30)
        assert page.status_code == 200 and "dashboard.js" in page.text
        assert set(variables) == {"OPENMETER_API_ENDPOINT", "OPENMETER_API_KEY"}
        clean = {k: v for k, v in os.environ.items() if not k.startswith("OPENMETER_")}
        usage = subprocess.run(
            [*CLI, "usage", "--group-by", "model", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**clean, **variables},
        )
        assert usage.returncode == 0, usage.stderr
        assert {row["subject"] for row in json.loads(usage.stdout)} == {"alice", "bob", "carol"}
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)
    assert process.returncode == 130
    assert not list(tmp_path.glob("litellm-openmeter-demo-*")), "the demo left its folder"


def test_demo_rejects_bad_values() -> None:
    result = subprocess.run(
        [*CLI, "demo", "--calls", "zero"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "'zero' is not a whole number" in result.stderr
    result = subprocess.run(
        [*CLI, "demo", "--shape", "rows"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "invalid choice: 'rows'" in result.stderr


def _tgkill() -> Any:
    """glibc's tgkill (a signal to one thread of another process), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).tgkill
    except (OSError, AttributeError):
        return None


@pytest.mark.skipif(_tgkill() is None, reason="needs Linux with glibc's tgkill")
@pytest.mark.parametrize("inherited", ["default", "ignored"])
def test_demo_keep_stops_on_ctrl_c_whichever_thread_gets_it(inherited: str, tmp_path: Path) -> None:
    """The kernel may hand a process's SIGINT to any of its threads; the demo must stop
    even when one of LiteLLM's threads, not the main one, receives it, and also when it
    was started with SIGINT ignored (in the background of a shell script)."""
    command = [*CLI, "demo", "--json", "--keep", "--calls", "8"]
    if inherited == "ignored":
        command = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *command]
    process = start(command, tmp_path)
    try:
        assert process.stdout is not None
        assert json.loads(process.stdout.readline())["verified"]
        others = sorted(int(tid) for tid in os.listdir(f"/proc/{process.pid}/task"))
        others.remove(process.pid)
        assert others, "the demo runs more threads than its main one"
        assert _tgkill()(process.pid, others[-1], signal.SIGINT) == 0, ctypes.get_errno()
        _, errors = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, errors
    assert not list(tmp_path.glob("litellm-openmeter-demo-*")), "the demo left its folder"
