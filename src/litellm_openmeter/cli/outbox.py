"""``litellm-openmeter outbox``: status, dead letters, requeue, drain and salvage of the outbox."""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..settings import Settings
from .common import CommandError, UsageError, print_json, rich_console, settings_from_env


def _open_outbox(settings: Settings) -> Any:
    """The outbox; a damaged file raises OutboxDamaged (reported with the fix), a path
    where none can be SettingsError."""
    from ..delivery.outbox import Outbox

    return Outbox(settings.outbox_path, settings.outbox_max_bytes)


def _no_outbox(settings: Settings) -> str:
    return (
        f"no outbox at {settings.outbox_path} yet: nothing was queued there (the logger "
        "uses OPENMETER_OUTBOX_PATH)"
    )


def outbox_command(args: argparse.Namespace) -> int:
    """Run one ``outbox`` sub-command."""
    from rich.table import Table

    from ..delivery.outbox import probe_path

    settings = settings_from_env(require_key=args.action == "drain")
    console = rich_console()
    if args.action == "salvage":
        return _salvage(settings, args.file, args.json)
    exists = settings.outbox_path.exists()
    if not exists:
        probe_path(settings.outbox_path)  # a path where no outbox can ever be is an error
    if args.action == "status":
        stats: dict[str, Any] = {"path": str(settings.outbox_path), "exists": exists}
        if exists:
            outbox = _open_outbox(settings)
            stats.update(asdict(outbox.stats()), max_bytes=settings.outbox_max_bytes)
        else:
            stats.update(queued=0, dead_lettered=0)
        if args.json:
            print_json(stats)
            return 0
        table = Table(title=f"Outbox {settings.outbox_path}", show_header=False)
        for key, value in stats.items():
            if key == "oldest_age_seconds" and value is not None:
                value = f"{value:.1f}s"
            table.add_row(key.replace("_", " "), "-" if value in (None, "") else str(value))
        console.print(table)
        return 0
    if args.action == "dead-letters":
        letters = _open_outbox(settings).dead_letters(limit=args.limit) if exists else []
        if args.json:
            print_json([asdict(letter) for letter in letters])
            return 0
        if not letters:
            console.print("no dead letters" + ("" if exists else f": {_no_outbox(settings)}"))
            return 0
        table = Table(title=f"{len(letters)} dead letter(s)")
        for column in ("id", "reason", "failed at", "subject", "detail"):
            table.add_column(column, overflow="fold")
        for letter in letters:
            failed = datetime.fromtimestamp(letter.failed_at, tz=timezone.utc)
            table.add_row(
                letter.id,
                letter.reason,
                failed.strftime("%Y-%m-%d %H:%M:%SZ"),
                str(letter.event.get("subject") or "-"),
                letter.detail,
            )
        console.print(table)
        return 0
    if args.action == "requeue" and bool(args.ids) == bool(args.all):
        raise UsageError("give event IDs or --all (not both)")
    if not exists:
        raise CommandError(_no_outbox(settings))
    outbox = _open_outbox(settings)
    if args.action == "requeue":
        try:
            moved = outbox.requeue(None if args.all else args.ids, args.subject)
        except (KeyError, ValueError) as exc:
            raise CommandError(str(exc).strip("\"'")) from None
        print(
            f"requeued {moved} event(s); they are sent by the next running logger or "
            "'litellm-openmeter outbox drain'"
        )
        return 0
    if args.action == "purge-dead":
        count = outbox.stats().dead_lettered
        if not args.yes:
            raise UsageError(
                f"refusing to delete {count} dead letter(s) without --yes "
                "(they are billing data; requeue them if the cause is fixed)"
            )
        print(f"deleted {outbox.purge_dead()} dead letter(s)")
        return 0
    return _drain(settings, outbox, args.timeout, console)


def _salvage(settings: Settings, file: Path, as_json: bool) -> int:
    from ..delivery.outbox import Outbox, OutboxDamaged
    from ..delivery.salvage import move_aside, salvage

    file = file.expanduser()
    if not file.is_file():
        raise CommandError(f"no file at {file}: give the damaged outbox file to recover")
    current = settings.outbox_path
    moved_from = None
    if current.exists() and os.path.samefile(file, current):
        try:
            Outbox(current, settings.outbox_max_bytes).close()
        except OutboxDamaged:
            moved = move_aside(current)
            if moved is None:
                raise CommandError(f"{current} was moved away meanwhile: run again") from None
            moved_from, file = current, moved
        else:
            raise CommandError(
                f"the outbox {current} is not damaged: nothing to salvage (give a damaged "
                "file, such as one a logger moved aside as <name>.damaged-<time>)"
            )
    outbox = _open_outbox(settings)
    try:
        report = salvage(file, outbox)
    finally:
        outbox.close()
    if as_json:
        print_json({**asdict(report), "into": str(current), "moved_from": moved_from})
        return 0
    if moved_from is not None:
        print(f"moved the damaged outbox aside to {file}; a fresh outbox is at {current}")
    print(
        f"salvaged {report.file} into {current}: {report.events_read} queued event(s) read "
        f"({report.events_added} new), {report.dead_letters_read} dead letter(s) read "
        f"({report.dead_letters_added} new); {report.damaged_pages} damaged page(s) and "
        f"{report.unreadable} unreadable row(s) skipped"
    )
    if report.found_on_pages_only and not report.free_pages_known:
        print(
            f"note: {report.found_on_pages_only} of them were read from pages whose state "
            "the damaged file no longer tells; some may have been delivered before, and "
            "OpenMeter drops those again by (source, id) where deduplication is on"
        )
    if report.renamed_to is not None:
        print(f"the damaged file is kept as {report.renamed_to} (delete it when you wish)")
    if report.events_added:
        print("the events are sent by the next running logger or 'litellm-openmeter outbox drain'")
    return 0


def _drain(settings: Settings, outbox: Any, timeout: float, console: Any) -> int:
    from rich.progress import Progress

    from ..delivery.sender import Sender

    total = outbox.pending()
    if total == 0:
        print("outbox is empty")
        return 0
    sender = Sender(settings, outbox)
    deadline = time.monotonic() + timeout
    with Progress(console=console) as progress:
        task = progress.add_task(f"sending to {settings.endpoint}", total=total)
        sender.ensure_started()
        while True:
            done = sender.flush(min(0.2, max(0.0, deadline - time.monotonic())))
            left = outbox.pending()
            progress.update(task, completed=total - left)
            if done or time.monotonic() >= deadline:
                break
    sender.stop(timeout=2.0)
    left = outbox.pending()
    if left:
        stats = outbox.stats()
        raise CommandError(
            f"{left} event(s) still queued after {timeout:g}s "
            f"(last error: {sender.paused_reason or stats.last_error or '-'})"
        )
    print(f"drained {total} event(s) to {settings.endpoint}")
    return 0
