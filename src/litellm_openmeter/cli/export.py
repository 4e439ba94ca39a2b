"""``litellm-openmeter export``: the local server's events, copied into OpenMeter.

The events stored by ``serve`` are read from its database (read-only) in the order
they were stored and queued in an outbox of the export's own, from which the logger's
sender delivers them: batches, retries with backoff, dead letters with the target's
problem detail. A checkpoint (the last source row queued, written after each queued
chunk) lets a second run, or a run after a crash or Ctrl-C, go on where the last one
stopped; events keep their ``source`` and ``id``, so whatever is sent twice (a batch in
flight when the process died) is dropped by OpenMeter's deduplication.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..delivery.outbox import Entry, Outbox
from ..meters import Meter, meters_for
from ..server.ingest import parse_rfc3339
from ..settings import Settings
from .common import CommandError, UsageError, default_server_db, print_json, rich_console
from .compare import daily_period, difference_lines, differences

CHUNK = 2_000
"""Source rows queued per transaction (and per checkpoint)."""
BATCH_SIZE = 500
"""Events per POST unless ``OPENMETER_BATCH_SIZE`` says otherwise: a history moves in
larger batches than live calls (see BENCHMARKS.md, "Export")."""
MAX_BACKLOG = 50_000
"""Queued events the export lets wait in its outbox before it reads more."""


@dataclass
class Selection:
    """Which of the source's events to export."""

    start: int | None = None
    end: int | None = None
    subjects: list[str] = field(default_factory=list)

    def where(self, after: int) -> tuple[str, list[Any]]:
        clauses: list[str] = ["rowid > ?"]
        params: list[Any] = [after]
        if self.start is not None:
            clauses.append("time >= ?")
            params.append(self.start)
        if self.end is not None:
            clauses.append("time < ?")
            params.append(self.end)
        if self.subjects:
            clauses.append(f"subject IN ({', '.join('?' * len(self.subjects))})")
            params.extend(self.subjects)
        return " AND ".join(clauses), params

    def key(self, target: str) -> str:
        """Names the export of this selection to ``target`` (its outbox, its checkpoint)."""
        text = json.dumps([target, self.start, self.end, sorted(self.subjects)])
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@contextmanager
def read_only(db: Path) -> Iterator[sqlite3.Connection]:
    """The server's database, opened so that nothing can change it."""
    if not db.is_file():
        raise CommandError(f"no local server database at {db} (give --db, as serve was given it)")
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        conn.execute("SELECT 1 FROM events LIMIT 1")
    except sqlite3.Error as exc:
        raise CommandError(f"cannot read {db} as a local server database: {exc}") from None
    with closing(conn):
        yield conn


class Checkpoint:
    """The last source row queued for one export, in a small JSON file beside its outbox."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rowid = 0
        if path.exists():
            self.rowid = int(json.loads(path.read_text())["rowid"])

    def save(self, rowid: int) -> None:
        fresh = self.path.with_suffix(".tmp")
        fresh.write_text(json.dumps({"rowid": rowid}))
        os.chmod(fresh, 0o600)
        fresh.replace(self.path)
        self.rowid = rowid


def wanted_meters(conn: sqlite3.Connection, selection: Selection) -> list[Meter]:
    """The meters that read the selected events, as ``meters --apply`` makes them: per
    event type, for the shape its events have (a failure type is its base's)."""
    where, params = selection.where(0)
    types = [
        row[0] for row in conn.execute(f"SELECT DISTINCT type FROM events WHERE {where}", params)
    ]
    meters: dict[str, Meter] = {}
    for event_type in sorted(types):
        if event_type.endswith("_failure") and event_type != "_failure":
            continue
        row = conn.execute(
            "SELECT body FROM events WHERE type = ? LIMIT 1", [event_type]
        ).fetchone()
        data = json.loads(row[0]).get("data") or {}
        shape = "tokens" if "tokens" in data and "type" in data else "litellm"
        for meter in meters_for(event_type, shape):
            meters[meter.slug] = meter
    return list(meters.values())


def export_command(args: argparse.Namespace) -> int:
    """Copy the selected events to ``--to``; with ``--verify``, compare the totals."""
    from .client import ClientError, OpenMeterClient

    db = (args.db or default_server_db()).expanduser()
    selection = Selection(
        start=_moment(args.start, "--from"),
        end=_moment(args.until, "--until"),
        subjects=list(args.subject),
    )
    key = selection.key(args.to)
    outbox_path = db.with_name(f"{db.name}.export-{key}.sqlite3")
    overrides: dict[str, object] = {"endpoint": args.to, "outbox_path": outbox_path}
    if "OPENMETER_BATCH_SIZE" not in os.environ:
        overrides["batch_size"] = BATCH_SIZE
    if args.key:
        overrides["api_key"] = args.key
    settings = Settings.from_env(**overrides)
    checkpoint = Checkpoint(outbox_path.with_name(outbox_path.name + ".checkpoint"))
    with read_only(db) as conn:
        where, params = selection.where(checkpoint.rowid)
        remaining = conn.execute(f"SELECT COUNT(*) FROM events WHERE {where}", params).fetchone()[0]
        meters = wanted_meters(conn, selection)
        try:
            with OpenMeterClient(settings) as client:
                missing = _missing_meters(
                    client, meters, apply=args.apply_meters and not args.dry_run
                )
        except ClientError as exc:
            raise CommandError(str(exc)) from None
        if args.dry_run:
            plan = {
                "to": settings.endpoint,
                "events": remaining,
                "already_queued": checkpoint.rowid > 0,
                "missing_meters": missing,
            }
            _report(args.json, plan, f"would export {remaining} event(s) to {settings.endpoint}")
            return 0
        if missing:
            raise CommandError(
                f"{settings.endpoint} lacks the meter(s) {', '.join(missing)} that read these "
                "events (add --apply-meters to create them, as meters --apply does)"
            )
        outbox = Outbox(settings.outbox_path, settings.outbox_max_bytes)
        try:
            sent = _copy(conn, selection, checkpoint, outbox, settings, remaining, args.json)
        finally:
            outbox.close()
    dead = Outbox(settings.outbox_path).dead_letters()
    report: dict[str, Any] = {"to": settings.endpoint, "events": sent, "dead_letters": len(dead)}
    code = 0
    if dead:
        code = 1
        report["rejected"] = [
            {"id": d.id, "reason": d.reason, "detail": d.detail} for d in dead[:20]
        ]
    if args.verify:
        differences = verify(db, settings, meters, selection)
        report["differences"] = differences
        code = 1 if differences else code
    _print_outcome(args.json, report)
    return code


def _copy(
    conn: sqlite3.Connection,
    selection: Selection,
    checkpoint: Checkpoint,
    outbox: Outbox,
    settings: Settings,
    remaining: int,
    quiet: bool,
) -> int:
    """Queue the selection chunk by chunk while the sender delivers; until every queued
    event is delivered or kept as a dead letter. Returns the events queued."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from ..delivery.sender import Sender

    sender = Sender(settings, outbox)
    backlog = outbox.pending()
    total = remaining + backlog
    queued = 0
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} {task.fields[rate]} events/s"),
        TimeRemainingColumn(),
    )
    began = time.monotonic()
    with Progress(*columns, console=rich_console(), disable=quiet) as progress:
        task = progress.add_task(f"exporting to {settings.endpoint}", total=total, rate="-")

        def show() -> None:
            done = total - outbox.pending() - (remaining - queued)
            rate = done / max(time.monotonic() - began, 1e-6)
            progress.update(task, completed=done, rate=f"{rate:,.0f}")

        sender.ensure_started()
        try:
            while True:
                while outbox.pending() > MAX_BACKLOG:
                    sender.flush(0.2)
                    show()
                where, params = selection.where(checkpoint.rowid)
                rows = conn.execute(
                    f"SELECT rowid, body FROM events WHERE {where} ORDER BY rowid LIMIT {CHUNK}",
                    params,
                ).fetchall()
                if not rows:
                    break
                entry = Entry([orjson.loads(body) for _, body in rows])
                outbox.write_or_refuse([entry])
                if entry.refused:
                    raise CommandError(f"cannot queue events in {outbox.path}: {entry.refused}")
                checkpoint.save(rows[-1][0])
                queued += len(rows)
                sender.wake()
                show()
            while not sender.flush(0.5):
                show()
                if sender.paused_reason:  # a key or endpoint the target rejects
                    raise CommandError(
                        f"{sender.paused_reason}; the events stay queued: run export again "
                        "once fixed, and it goes on where it stopped"
                    )
            show()
        finally:
            sender.stop(timeout=2.0)
    return queued


def _missing_meters(client: Any, meters: list[Meter], apply: bool) -> list[str]:
    """Slugs of ``meters`` the target lacks; created there first with ``apply``."""
    have = {meter.get("slug") for meter in client.list_meters()}
    missing = [meter for meter in meters if meter.slug not in have]
    if apply:
        for meter in missing:
            client.create_meter(meter.to_create())
        return []
    return [meter.slug for meter in missing]


def verify(
    db: Path, settings: Settings, meters: list[Meter], selection: Selection
) -> list[dict[str, Any]]:
    """Each meter's totals per subject and UTC day on the source (served from its
    database in this process) and on the target, and every difference."""
    from ..server import BackgroundServer
    from ..server.store import Store
    from .client import OpenMeterClient

    with read_only(db) as conn:
        where, params = selection.where(0)
        first, last = conn.execute(
            f"SELECT MIN(time), MAX(time) FROM events WHERE {where}", params
        ).fetchone()
    if first is None:
        return []
    period = daily_period(first, last + 1, selection.subjects)
    with BackgroundServer(Store(db)) as served:
        local = Settings.from_env(
            api_key="local", endpoint=served.url, outbox_path=settings.outbox_path
        )
        with OpenMeterClient(local) as source, OpenMeterClient(settings) as target:
            return differences(source, target, [meter.slug for meter in meters], period)


def _moment(text: str | None, flag: str) -> int | None:
    if text is None:
        return None
    try:
        return int(parse_rfc3339(text).timestamp())
    except ValueError:
        raise UsageError(
            f"{flag} {text!r} is not an RFC 3339 time (e.g. 2026-11-01T00:00:00Z)"
        ) from None


def _report(as_json: bool, report: dict[str, Any], line: str) -> None:
    if as_json:
        print_json(report)
    else:
        print(line)
        for slug in report.get("missing_meters") or []:
            print(f"missing meter on the target: {slug} (--apply-meters creates it)")


def _print_outcome(as_json: bool, report: dict[str, Any]) -> None:
    if as_json:
        print_json(report)
        return
    print(f"exported {report['events']} event(s) to {report['to']}")
    if report["dead_letters"]:
        print(f"{report['dead_letters']} event(s) rejected by the target, kept as dead letters:")
        for dead in report["rejected"]:
            print(f"  {dead['id']}: {dead['reason']}: {dead['detail']}")
    if "differences" in report:
        for line in difference_lines(report["differences"]):
            print(line)
