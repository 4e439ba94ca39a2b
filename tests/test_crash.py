"""Real processes: SIGKILL during an outage loses nothing (the next process sends it);
two processes sharing one outbox deliver every event exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import cloud_event, free_port, wait_for
from ingest_server import Answer, Recorded, RecordingServer

# Processes of their own, started and killed; they read no dates, so CI's second
# pass (the clock a year ahead) leaves them out.
pytestmark = pytest.mark.heavy

WORKER = Path(__file__).with_name("worker_process.py")


def start(outbox: Path, endpoint: str, calls: int, prefix: str, mode: str) -> subprocess.Popen[str]:
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True")
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(outbox), endpoint, str(calls), prefix, mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def read_line(process: subprocess.Popen[str], expected: str, timeout: float = 120) -> str:
    assert process.stdout is not None
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(process.stdout.readline()))  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    assert result, f"no line from the worker within {timeout}s"
    assert result[0].startswith(expected), result[0]
    return result[0].strip()


def test_sigkill_during_outage_loses_nothing(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox.sqlite3"
    port = free_port()
    calls = 40
    crashed = start(outbox, f"http://127.0.0.1:{port}", calls, "crash", "hang")
    read_line(crashed, "STORED")
    crashed.send_signal(signal.SIGKILL)
    crashed.wait(30)
    assert crashed.returncode == -signal.SIGKILL

    server = RecordingServer(port_wanted=port)
    try:
        survivor = start(outbox, f"http://127.0.0.1:{port}", 0, "none", "deliver")
        assert read_line(survivor, "DELIVERED") == "DELIVERED True"
        survivor.wait(60)
        posted = server.accepted_events()
        assert len(posted) >= calls  # every id at least once...
        assert len({(e["source"], e["id"]) for e in posted}) == calls  # ...exactly N after dedup
        assert {e["subject"] for e in posted} == {f"crash-{i}" for i in range(5)}
    finally:
        server.stop()


def test_two_processes_share_one_outbox_exactly_once(tmp_path: Path) -> None:
    def slow(request: Recorded) -> Answer:
        time.sleep(0.02)  # widen the window in which both senders claim batches
        return 204, {}, b""

    server = RecordingServer(respond=slow)
    outbox = tmp_path / "shared.sqlite3"
    try:
        workers = [start(outbox, server.url, 150, name, "flush") for name in ("a", "b")]
        for worker in workers:
            read_line(worker, "STORED")
        for worker in workers:
            assert read_line(worker, "FLUSHED") == "FLUSHED True"
            worker.wait(60)
        posted = server.accepted_events()
        ids = [e["id"] for e in posted]
        assert len(ids) == 300 and len(set(ids)) == 300, "an event was sent twice"
        assert {e["subject"][0] for e in posted} == {"a", "b"}
    finally:
        server.stop()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_leases_of_a_killed_unreaped_process_are_void(tmp_path: Path) -> None:
    from litellm_openmeter.delivery.outbox import Outbox

    outbox = Outbox(tmp_path / "zombie.sqlite3")
    outbox.enqueue([cloud_event(f"z{n}", "u", {}) for n in range(3)])
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        assert len(outbox.claim(f"{child.pid}-dead", 10, lease_seconds=3600)) == 3
        assert outbox.claim("me-alive", 10, lease_seconds=60) == []  # its leases hold
        child.send_signal(signal.SIGKILL)
        # Not reaped: the child is a zombie, which still answers kill(pid, 0).
        wait_for(
            lambda: Path(f"/proc/{child.pid}/stat").read_text().split(")")[-1].split()[0] == "Z",
            what="a zombie",
        )
        assert [item.id for item in outbox.claim(f"{os.getpid()}-me", 10, 60)] == ["z0", "z1", "z2"]
    finally:
        child.kill()
        child.wait()
