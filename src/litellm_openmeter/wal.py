"""Switching a SQLite file to write-ahead logging when many open it at once."""

from __future__ import annotations

import sqlite3
import time


def enter_wal(conn: sqlite3.Connection, seconds: float = 30.0) -> None:
    """Put the connection's database in WAL mode, retrying for up to ``seconds``."""
    # Two connections switching a new file to WAL at once can deadlock on the lock
    # upgrade; SQLite then answers "locked" at once, without its busy handler.
    deadline = time.monotonic() + seconds
    pause = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
