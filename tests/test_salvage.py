"""Damaged outboxes: the logger moves them aside and keeps metering; ``outbox salvage``
recovers every event on an intact page; the page reader against SQLite's own files."""

from __future__ import annotations

import json
import logging
import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from litellm_openmeter import OpenMeterLogger
from litellm_openmeter.delivery import pages
from litellm_openmeter.delivery.outbox import Outbox, OutboxDamaged
from litellm_openmeter.delivery.salvage import DAMAGED, SALVAGED, damaged_files

from conftest import fill_outbox, free_port, hook_kwargs

PAGE = 4096
Key = tuple[str, str]


def fill(path: Path, calls: int, delivered: int = 0, no_subject: int = 0) -> None:
    """``fill_outbox``, then the first ``delivered`` events delivered (so that pages
    were freed), and the WAL copied back into the file."""
    fill_outbox(path, calls, f"http://127.0.0.1:{free_port()}", no_subject)
    if delivered:
        outbox = Outbox(path)
        outbox.ack("1-test", outbox.claim("1-test", delivered, 60))
        outbox.close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def live_keys(path: Path) -> tuple[dict[Key, str], set[Key], set[Key]]:
    """Queued events (key -> body), dead letters and delivered ids, read by SQLite."""
    with sqlite3.connect(path) as conn:
        queued = {(s, i): b for s, i, b in conn.execute("SELECT source, id, body FROM events")}
        dead = {(s, i) for s, i in conn.execute("SELECT source, id FROM dead_letters")}
        sent = {(s, i) for s, i in conn.execute("SELECT source, id FROM delivered")}
    return queued, dead, sent


def damage(path: Path, first_page: int, count: int, seed: int = 7) -> set[int]:
    """Write random bytes over ``count`` pages from ``first_page`` (1-based)."""
    noise = random.Random(seed)
    with path.open("r+b") as file:
        file.seek((first_page - 1) * PAGE)
        file.write(bytes(noise.randrange(256) for _ in range(count * PAGE)))
    return set(range(first_page, first_page + count))


def root_page(path: Path, table: str) -> int:
    with sqlite3.connect(path) as conn:
        return int(
            conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[
                0
            ]
        )


def cli(*args: str, outbox: Path, ok: int = 0) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OPENMETER_")}
    env.update(OPENMETER_OUTBOX_PATH=str(outbox), OPENMETER_API_KEY="k", COLUMNS="200")
    env["OPENMETER_API_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"
    done = subprocess.run(
        [sys.executable, "-m", "litellm_openmeter.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == ok, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    if ok and args[0] != "doctor":  # the doctor reports on stdout, a line per check
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    return done


# -- the logger keeps metering ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["random bytes", "garbage in the middle"])
def test_logger_moves_a_damaged_outbox_aside_and_keeps_metering(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """prometheus_client is installed (the test extra), so the metrics collector is
    registered too: nothing reads the damaged file on the way."""
    path = tmp_path / "outbox.sqlite3"
    if kind == "random bytes":
        path.write_bytes(random.Random(1).randbytes(50_000))
    else:
        fill(path, 400)
        damage(path, 20, 3)
    original = path.read_bytes()
    with caplog.at_level(logging.ERROR, logger="litellm_openmeter"):
        logger = OpenMeterLogger(
            api_key="k", endpoint=f"http://127.0.0.1:{free_port()}", outbox_path=path
        )
    try:
        [moved] = damaged_files(path)
        assert moved.read_bytes() == original, "the damaged file is kept as it was"
        [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert str(moved) in record.getMessage()
        assert f"litellm-openmeter outbox salvage {moved}" in record.getMessage()
        logger.record_call(hook_kwargs("after-damage"), success=True)
        assert logger.writer.drain(10)
        assert logger.stats()["queued"] == 1
        from prometheus_client import REGISTRY, generate_latest

        assert b"litellm_openmeter_queued" in generate_latest(REGISTRY)
    finally:
        logger.close(timeout=1)


def test_metrics_collector_never_raises(tmp_path: Path) -> None:
    """A scrape while one logger's outbox cannot be read still answers, for the others."""
    from prometheus_client import REGISTRY, generate_latest

    broken = OpenMeterLogger(api_key="k", outbox_path=tmp_path / "a.sqlite3")
    healthy = OpenMeterLogger(api_key="k", outbox_path=tmp_path / "b.sqlite3")
    try:
        broken.outbox.close()
        (tmp_path / "a.sqlite3").write_bytes(b"\0" * 10_000)
        (tmp_path / "a.sqlite3-wal").unlink(missing_ok=True)
        scraped = generate_latest(REGISTRY).decode()
        assert str(tmp_path / "b.sqlite3") in scraped
    finally:
        healthy.close(timeout=1)
        broken._closed = True  # its outbox is gone: nothing to flush


# -- outbox salvage ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "where", ["pages in the middle", "the events table's root page", "the first page"]
)
def test_salvage_recovers_every_event_on_an_intact_page(tmp_path: Path, where: str) -> None:
    """A real outbox (1,500 calls, 300 of them delivered, 3 dead letters), garbage over
    some of its pages: every queued event whose row lies on an intact page comes back,
    nothing delivered comes back, nothing is made up."""
    path = tmp_path / "outbox.sqlite3"
    fill(path, 1500, delivered=300, no_subject=3)
    queued, dead, sent = live_keys(path)
    assert (len(queued), len(dead), len(sent)) == (1200, 3, 300)
    intact = path.read_bytes()
    page_of = {key: intact.find(body.encode()) // PAGE + 1 for key, body in queued.items()}
    assert min(page_of.values()) > 0, "every body is stored in one piece"
    if where == "pages in the middle":
        hit = damage(path, path.stat().st_size // PAGE // 2, 4)
    elif where == "the events table's root page":
        hit = damage(path, root_page(path, "events"), 1)
    else:
        hit = damage(path, 1, 1)
    data = path.read_bytes()
    on_intact_pages = {key for key, page in page_of.items() if page not in hit}
    assert len(on_intact_pages) >= 1000
    with pytest.raises(OutboxDamaged):
        Outbox(path)

    done = cli("outbox", "salvage", str(path), "--json", outbox=path)
    report = json.loads(done.stdout)
    assert report["moved_from"] == str(path)  # the outbox itself: moved aside first
    with sqlite3.connect(path) as conn:
        recovered = {(s, i) for s, i in conn.execute("SELECT source, id FROM events")}
        recovered_dead = {(s, i) for s, i in conn.execute("SELECT source, id FROM dead_letters")}
    assert on_intact_pages <= recovered <= set(queued)
    assert not recovered & sent
    assert recovered_dead <= dead and (recovered_dead == dead or where != "the first page")
    assert report["events_added"] == len(recovered)
    assert report["damaged_pages"] >= 1
    assert report["free_pages_known"] == (where != "the first page")
    [kept] = [
        item
        for item in tmp_path.glob(f"outbox.sqlite3{SALVAGED}*")
        if not item.name.endswith(("-wal", "-shm"))
    ]
    assert kept.read_bytes() == data and not damaged_files(path)


def test_salvage_reports_and_repeats_safely(tmp_path: Path) -> None:
    """The operator's path: doctor names the damaged file and the command; salvage
    prints the counts; a second salvage of the same file adds nothing; a healthy
    outbox is not salvaged."""
    path = tmp_path / "outbox.sqlite3"
    fill(path, 200, no_subject=1)
    damage(path, 10, 2)
    for action in ("status", "dead-letters", "drain"):
        failed = cli("outbox", action, outbox=path, ok=1)
        assert f"the outbox {path} is damaged" in failed.stderr
        assert f"litellm-openmeter outbox salvage {path}" in failed.stderr
    doctor = cli("doctor", outbox=path, ok=1).stdout
    assert f"FAIL outbox: the outbox {path} is damaged" in doctor
    OpenMeterLogger(api_key="k", outbox_path=path).close(timeout=1)
    [moved] = damaged_files(path)
    assert f"litellm-openmeter outbox salvage {moved}" in cli("doctor", outbox=path, ok=1).stdout
    copy = tmp_path / "copy-of-damaged.sqlite3"
    copy.write_bytes(moved.read_bytes())
    printed = cli("outbox", "salvage", str(moved), outbox=path).stdout
    assert f"salvaged {moved} into {path}" in printed and "1 dead letter(s) read (1 new)" in printed
    assert f"kept as {tmp_path}" in printed and "outbox drain" in printed
    after = cli("doctor", outbox=path, ok=1).stdout  # the dead letter recovered is one to see
    assert "damaged" not in after and "1 dead letter(s)" in after
    again = json.loads(cli("outbox", "salvage", str(copy), "--json", outbox=path).stdout)
    assert again["events_read"] > 150 and again["events_added"] == 0
    assert again["renamed_to"] is None and copy.exists()
    healthy = cli("outbox", "salvage", str(path), outbox=path, ok=1)
    assert "is not damaged: nothing to salvage" in healthy.stderr
    assert (
        "no file at" in cli("outbox", "salvage", str(tmp_path / "nope"), outbox=path, ok=1).stderr
    )


# -- the page reader --------------------------------------------------------------------

bodies = st.lists(
    st.text(min_size=0, max_size=1500).map(lambda text: json.dumps({"t": text})),
    min_size=1,
    max_size=60,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(values=bodies, big=st.integers(min_value=0, max_value=2))
def test_page_reader_finds_every_row_sqlite_stores(
    tmp_path_factory: pytest.TempPathFactory, values: list[str], big: int
) -> None:
    """Against SQLite's own files: every row of a table comes back with its values,
    rows too large for a page are skipped (and counted), deleted rows do not return."""
    path = tmp_path_factory.mktemp("pages") / "t.sqlite3"
    values = values + ["x" * 9000] * big
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, body TEXT, n INTEGER, f REAL)")
        conn.executemany(
            "INSERT INTO t (body, n, f) VALUES (?, ?, ?)",
            [(value, index * 1_000_003 - 5, index / 3) for index, value in enumerate(values)],
        )
        conn.execute("CREATE TABLE gone (body TEXT)")
        conn.executemany("INSERT INTO gone VALUES (?)", [("deleted " * 200,)] * 40)
        conn.execute("DELETE FROM gone")
    conn.close()
    found = pages.scan(path.read_bytes())
    assert found.free_pages_known and found.damaged_pages == 0
    rows = [row for row in found.rows if len(row) == 4]
    expected = [
        [None, value, index * 1_000_003 - 5, index / 3]
        for index, value in enumerate(values)
        if len(value) < 4000
    ]
    assert sorted(rows, key=repr) == sorted(expected, key=repr)
    assert found.skipped_cells == big
    assert not [row for row in found.rows if row and str(row[0]).startswith("deleted")]


@settings(max_examples=200, deadline=None)
@given(data=st.binary(min_size=0, max_size=3 * PAGE))
def test_page_reader_never_fails_on_garbage(data: bytes) -> None:
    found = pages.scan(bytes([0x0D]) + data)
    assert found.skipped_cells >= 0 and isinstance(found.rows, list)


@given(payload=st.binary(max_size=200))
def test_record_rejects_what_is_not_a_record(payload: bytes) -> None:
    try:
        values: Any = pages.record(payload)
    except (ValueError, IndexError, UnicodeDecodeError):
        return
    assert isinstance(values, list)


def test_damaged_file_names(tmp_path: Path) -> None:
    path = tmp_path / "out[1].sqlite3"
    for name in (f"{path.name}{DAMAGED}1", f"{path.name}{DAMAGED}1-wal", f"{path.name}{SALVAGED}0"):
        (tmp_path / name).write_text("x")
    assert [item.name for item in damaged_files(path)] == [f"{path.name}{DAMAGED}1"]
