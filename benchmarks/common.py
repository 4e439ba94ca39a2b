"""Helpers shared by the benchmark scripts (no LiteLLM import here)."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def sink(delay: float = 0.0, port: int | None = None, idle: bool = False) -> Iterator[str]:
    """``sink.py`` (a 204 endpoint) in its own process; yields its base URL. ``idle``:
    under ``SCHED_IDLE``, taking only CPU time nothing else wants."""
    port = free_port() if port is None else port
    process = subprocess.Popen(
        [sys.executable, str(HERE / "sink.py"), str(port), str(delay), *(["idle"] if idle else [])],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "READY"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(30)
