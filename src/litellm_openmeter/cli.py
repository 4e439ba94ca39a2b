"""The ``litellm-openmeter`` command line.

Every command reads the same ``OPENMETER_*`` settings as the logger, never prints the
API key, fails with one line and a non-zero exit code, and offers ``--json`` where a
script would read its output.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .settings import Settings, SettingsError

if TYPE_CHECKING:  # imported where used: every command starts fast
    from rich.console import Console

    from .client import OpenMeterClient

SERVER_TOKEN_ENV = "OPENMETER_SERVER_TOKEN"
DEBUG_ENV = "LITELLM_OPENMETER_DEBUG"
EXIT_FAILURE = 1
"""Called right, but something failed (unreachable endpoint, damaged file, port in use)."""
EXIT_USAGE = 2
"""Called wrong: a bad argument or ``OPENMETER_*`` setting; nothing was done."""


class CommandError(Exception):
    """A failure to report as one line and exit code 1."""


class UsageError(CommandError):
    """A wrong argument, to report as one line and exit code 2."""


def _console() -> Console:
    """Rich's console; piped, one wide enough that a table never folds a name."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=1000)
    return console


def default_server_db() -> Path:
    """Where ``serve`` keeps its data unless ``--db`` says otherwise."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "litellm-openmeter" / "server.sqlite3"


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (0-65535)")
    return value


def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range ({low}-{high})")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be more than 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="litellm-openmeter",
        description="Bill LiteLLM usage through OpenMeter. Settings come from the "
        "OPENMETER_* environment variables (see the README).",
    )
    parser.add_argument("--version", action="version", version=f"litellm-openmeter {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"show the traceback of an error (or set {DEBUG_ENV}=1)",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="same")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_command = commands.add_parser

    def command(name: str, **options: Any) -> argparse.ArgumentParser:
        return add_command(name, parents=[common], **options)

    demo = command(
        "demo",
        help="run a LiteLLM workload into the local server and show the metered usage",
        description="Start the local server, point an OpenMeterLogger at it, make real "
        "LiteLLM mock calls (offline), then query the usage back and check that no event "
        "was lost or duplicated.",
    )
    demo.add_argument(
        "--calls", type=_bounded_int(2, 100_000), default=24, help="how many calls (default 24)"
    )
    demo.add_argument(
        "--shape",
        choices=("litellm", "tokens"),
        default="litellm",
        help="event shape (default litellm)",
    )
    demo.add_argument(
        "--keep", action="store_true", help="leave the server running afterwards and print its URL"
    )
    demo.add_argument("--json", action="store_true", help="print the results as JSON")

    serve = command(
        "serve",
        help="run an OpenMeter-compatible server on SQLite",
        description="Run an OpenMeter-compatible ingest and meter-query server on SQLite "
        "(for development, CI and small single-machine deployments).",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8888, help="port (default 8888)")
    serve.add_argument(
        "--db", type=Path, default=None, help=f"SQLite file (default {default_server_db()})"
    )
    serve.add_argument(
        "--meters",
        type=Path,
        default=None,
        help="YAML file with a 'meters:' list in OpenMeter's config format "
        "(default: meters for this package's events)",
    )
    serve.add_argument(
        "--token",
        default=None,
        help=f"require this Bearer token on every request (or set {SERVER_TOKEN_ENV})",
    )
    serve.add_argument(
        "--max-body",
        type=_bounded_int(1024, 1024**3),
        default=4 * 1024 * 1024,
        help="largest accepted request body in bytes (default 4 MiB)",
    )

    meters = command(
        "meters",
        help="print (or create) the meters that read the configured events",
        description="Print the OpenMeter meters that match OPENMETER_EVENT_TYPE and "
        "OPENMETER_EVENT_SHAPE: YAML for a self-hosted config.yaml, or JSON for the API.",
    )
    meters.add_argument("--json", action="store_true", help="print MeterCreate JSON bodies")
    meters.add_argument(
        "--apply",
        action="store_true",
        help="create the missing meters on OPENMETER_API_ENDPOINT and report "
        "existing ones that differ",
    )
    meters.add_argument(
        "--update",
        action="store_true",
        help="with --apply: add the missing groupBy keys to existing meters (keeping "
        "their name, description and keys of their own)",
    )

    outbox = command(
        "outbox",
        help="inspect and operate the delivery outbox",
        description="Inspect and operate the outbox at OPENMETER_OUTBOX_PATH.",
    )
    actions = outbox.add_subparsers(dest="action", metavar="ACTION", required=True)
    add_action = actions.add_parser

    def action(name: str, **options: Any) -> argparse.ArgumentParser:
        return add_action(name, parents=[common], **options)

    status = action("status", help="depth, bytes, oldest age, last error")
    status.add_argument("--json", action="store_true", help="print as JSON")
    dead = action("dead-letters", help="events that could not be sent, with why")
    dead.add_argument("--json", action="store_true", help="print as JSON")
    dead.add_argument(
        "--limit",
        type=_bounded_int(1, 1_000_000),
        default=100,
        help="at most this many (default 100)",
    )
    requeue = action("requeue", help="move dead letters back to the queue")
    requeue.add_argument("ids", nargs="*", metavar="ID", help="event ids to requeue")
    requeue.add_argument("--all", action="store_true", help="requeue every dead letter")
    requeue.add_argument(
        "--subject",
        default=None,
        help="set this subject on the requeued events (for no_subject ones)",
    )
    drain = action("drain", help="send everything now, until empty or a deadline")
    drain.add_argument(
        "--timeout",
        type=_positive_float,
        default=60.0,
        help="give up after this many seconds (default 60)",
    )
    purge = action("purge-dead", help="delete every dead letter")
    purge.add_argument("--yes", action="store_true", help="confirm: dead letters are billing data")
    salvage = action(
        "salvage",
        help="recover the events of a damaged outbox file into the outbox",
        description="Copy every event that can still be read from a damaged outbox file "
        "(one a logger moved aside as <name>.damaged-<time>, or the outbox itself, which is "
        "moved aside first) into the outbox at OPENMETER_OUTBOX_PATH. The damaged file is "
        "kept (renamed <name>.salvaged-<time>).",
    )
    salvage.add_argument("file", type=Path, metavar="FILE", help="the damaged outbox file")
    salvage.add_argument("--json", action="store_true", help="print the counts as JSON")

    doctor = command(
        "doctor",
        help="check configuration, endpoint, key, meters, outbox",
        description="Run every check; exit code 1 when any fails.",
    )
    doctor.add_argument("--json", action="store_true", help="print as JSON")

    usage = command(
        "usage",
        help="query the meters: usage per subject and window",
        description="Query the configured endpoint's meters for the "
        "configured event type and print usage per subject and window.",
    )
    usage.add_argument(
        "--subject", action="append", default=[], help="only this subject (repeatable)"
    )
    usage.add_argument("--from", dest="start", default=None, help="start, RFC 3339 (inclusive)")
    usage.add_argument("--to", dest="end", default=None, help="end, RFC 3339 (exclusive)")
    usage.add_argument(
        "--window",
        choices=("MINUTE", "HOUR", "DAY", "MONTH"),
        default=None,
        type=str.upper,
        help="window size (default: one row for the period)",
    )
    usage.add_argument(
        "--group-by",
        action="append",
        default=[],
        metavar="KEY",
        help="also group by this meter key, e.g. model (repeatable)",
    )
    usage.add_argument("--time-zone", default="UTC", help="IANA time zone of the windows")
    usage.add_argument("--json", action="store_true", help="print as JSON")
    return parser


def _settings(require_key: bool = True) -> Settings:
    """The settings; a bad one raises SettingsError (one line, exit code 2)."""
    overrides: dict[str, object] = {}
    if not require_key and not os.environ.get("OPENMETER_API_KEY"):
        overrides["api_key"] = "not-needed"
    return Settings.from_env(**overrides)


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, default=str))


# -- demo and serve -----------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from .demo import check_environment, run_demo

    check_environment(args.shape)  # before the seconds of start-up
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    outcome = run_demo(
        calls=args.calls, shape=args.shape, keep=args.keep, console=_console(), as_json=args.json
    )
    if not outcome.verified:
        raise CommandError(f"{outcome.lost} event(s) lost, {outcome.duplicates} duplicated")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .meters import MeterError, load_meters_file
    from .server import bind, open_store, serve

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    meters = None
    if args.meters is not None:
        try:
            meters = load_meters_file(args.meters)
        except MeterError as exc:
            raise CommandError(str(exc)) from None
    db = args.db or default_server_db()
    token = args.token or os.environ.get(SERVER_TOKEN_ENV) or None
    try:  # first, so that a port in use changes nothing and logs no "serving"
        sock = bind(args.host, args.port)
    except OSError as exc:
        raise CommandError(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc} "
            "(choose another --port, or stop what uses it)"
        ) from None
    try:
        store = open_store(db, meters)
    except Exception as exc:
        sock.close()
        raise CommandError(f"cannot open the database {db}: {exc}") from None
    auth = "a bearer token" if token else "no auth"
    logging.getLogger("litellm_openmeter.server").info(
        "serving OpenMeter API on http://%s:%d (db %s, %d meters, %s)",
        args.host,
        args.port,
        db,
        len(store.meters),
        auth,
    )
    serve(sock, store, token=token, max_body=args.max_body)
    return 0


# -- meters -------------------------------------------------------------------------------


def _comparable(meter: dict[str, Any]) -> dict[str, Any]:
    keys = ("aggregation", "eventType", "valueProperty", "groupBy")
    return {key: meter.get(key) or ({} if key == "groupBy" else None) for key in keys}


def _fixed(meter: dict[str, Any]) -> dict[str, Any]:
    """What a meter update cannot change."""
    return {key: value for key, value in _comparable(meter).items() if key != "groupBy"}


def _update_group_by(
    client: OpenMeterClient, found: dict[str, Any], wanted: dict[str, Any]
) -> dict[str, str]:
    """Give an existing meter the groupBy keys it lacks (ours win where a key's path
    differs; keys of its own stay). A MeterUpdate clears what it leaves out, so the
    name and description go along as they are."""
    slug = str(found.get("slug"))
    current: dict[str, str] = dict(found.get("groupBy") or {})
    merged = {**current, **(wanted.get("groupBy") or {})}
    if merged == current:
        own = ", ".join(sorted(set(current) - set(wanted.get("groupBy") or {})))
        return {"slug": slug, "state": "exists", "detail": f"keeps groupBy keys of its own: {own}"}
    update: dict[str, Any] = {"groupBy": merged}
    for key in ("name", "description"):
        if found.get(key):
            update[key] = found[key]
    client.update_meter(str(found.get("id") or slug), update)
    changed = sorted(key for key in merged if current.get(key) != merged[key])
    return {"slug": slug, "state": "updated", "detail": f"groupBy keys set: {', '.join(changed)}"}


def _meters(args: argparse.Namespace) -> int:
    import yaml

    from .client import ClientError, OpenMeterClient
    from .meters import meters_for

    if args.update and not args.apply:
        raise UsageError("--update works with --apply: meters --apply --update")
    settings = _settings(require_key=args.apply)
    wanted = meters_for(settings.event_type, settings.event_shape)
    if not args.apply:
        if args.json:
            _print_json([meter.to_create() for meter in wanted])
        else:
            print(
                f"# Meters for event type {settings.event_type!r} ({settings.event_shape} shape)."
            )
            print("# Paste under the meters: key of a self-hosted OpenMeter config.yaml.")
            print(
                yaml.safe_dump({"meters": [m.to_yaml_entry() for m in wanted]}, sort_keys=False),
                end="",
            )
        return 0
    report: list[dict[str, str]] = []
    try:
        with OpenMeterClient(settings) as client:
            existing = {meter.get("slug"): meter for meter in client.list_meters()}
            for meter in wanted:
                body = meter.to_create()
                found = existing.get(meter.slug)
                if found is None:
                    client.create_meter(body)
                    report.append({"slug": meter.slug, "state": "created"})
                elif _comparable(found) == _comparable(body):
                    report.append({"slug": meter.slug, "state": "exists"})
                elif args.update and _fixed(found) == _fixed(body):
                    report.append(_update_group_by(client, found, body))
                else:
                    detail: dict[str, Any] = {
                        "endpoint": _comparable(found),
                        "wanted": _comparable(body),
                    }
                    if args.update:
                        detail["note"] = (
                            "aggregation, eventType and valueProperty cannot change in "
                            "place: delete the meter and run this again"
                        )
                    report.append(
                        {"slug": meter.slug, "state": "differs", "detail": json.dumps(detail)}
                    )
    except ClientError as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        _print_json(report)
    else:
        for line in report:
            suffix = ""
            if line["state"] == "differs":
                suffix = f" (left unchanged; {line['detail']})"
            elif "detail" in line:
                suffix = f" ({line['detail']})"
            print(f"{line['state']:8} {line['slug']}{suffix}")
    return 0


# -- outbox -------------------------------------------------------------------------------


def _open_outbox(settings: Settings) -> Any:
    """The outbox; a damaged file raises OutboxDamaged (reported with the fix), a path
    where none can be SettingsError."""
    from .outbox import Outbox

    return Outbox(settings.outbox_path, settings.outbox_max_bytes)


def _no_outbox(settings: Settings) -> str:
    return (
        f"no outbox at {settings.outbox_path} yet: nothing was queued there (the logger "
        "uses OPENMETER_OUTBOX_PATH)"
    )


def _outbox(args: argparse.Namespace) -> int:
    from rich.table import Table

    from .outbox import probe_path

    settings = _settings(require_key=args.action == "drain")
    console = _console()
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
            _print_json(stats)
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
            _print_json([asdict(letter) for letter in letters])
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
    from .outbox import Outbox, OutboxDamaged
    from .salvage import move_aside, salvage

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
        _print_json({**asdict(report), "into": str(current), "moved_from": moved_from})
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

    from .sender import Sender

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


# -- doctor and usage ---------------------------------------------------------------------


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import run_checks

    checks = run_checks()
    if args.json:
        _print_json([asdict(check) for check in checks])
    else:
        for check in checks:
            mark = "ok  " if check.ok else "FAIL"
            fix = f"  -> fix: {check.fix}" if not check.ok and check.fix else ""
            print(f"{mark} {check.name}: {check.message}{fix}")
    return 0 if all(check.ok for check in checks) else 1


def _usage(args: argparse.Namespace) -> int:
    from rich.table import Table

    from .client import ClientError, OpenMeterClient
    from .meters import slug_prefix

    settings = _settings()
    prefix = slug_prefix(settings.event_type)
    if settings.event_shape == "tokens":
        columns = {"tokens": "tokens_total", "cost": f"{prefix}_cost"}
    else:
        # The same keys as the demo's --json.
        columns = {
            "input": f"{prefix}_prompt_tokens",
            "output": f"{prefix}_completion_tokens",
            "cached": f"{prefix}_cache_read_tokens",
            "cost": f"{prefix}_cost",
        }
    params: dict[str, Any] = {
        "groupBy": ["subject", *args.group_by],
        "windowTimeZone": args.time_zone,
    }
    for key, value in (("from", args.start), ("to", args.end), ("windowSize", args.window)):
        if value:
            params[key] = value
    if not args.end and not args.window:
        # One query per column: without a fixed end, each one's period would end at its own
        # "now" and a second ticking over between them would split a subject's row in two.
        # (With a window size the windows fix the ends, and OpenMeter wants them aligned.)
        until = datetime.fromtimestamp(int(time.time()) + 1, timezone.utc)  # takes this second in
        params["to"] = until.strftime("%Y-%m-%dT%H:%M:%SZ")
    if args.subject:
        params["subject"] = args.subject
    rows: dict[tuple[str, str, str, tuple[str, ...]], dict[str, float]] = {}
    try:
        with OpenMeterClient(settings) as client:
            for column, slug in columns.items():
                for row in client.query(slug, params)["data"]:
                    groups = tuple(str(row["groupBy"].get(key) or "-") for key in args.group_by)
                    row_key = (row["windowStart"], row["windowEnd"], row["subject"] or "-", groups)
                    rows.setdefault(row_key, dict.fromkeys(columns, 0.0))[column] += row["value"]
    except ClientError as exc:
        if exc.status == 404:
            raise CommandError(
                f"{exc} (create the meters: litellm-openmeter meters --apply)"
            ) from None
        raise CommandError(str(exc)) from None
    ordered = sorted(rows.items())
    if args.json:
        _print_json(
            [
                {
                    "windowStart": k[0],
                    "windowEnd": k[1],
                    "subject": k[2],
                    "groupBy": dict(zip(args.group_by, k[3], strict=True)),
                    **values,
                }
                for k, values in ordered
            ]
        )
        return 0
    table = Table(title=f"Usage from {settings.endpoint} ({prefix}, {settings.event_shape} shape)")
    for name in ("window start", "window end", "subject", *args.group_by):
        table.add_column(name, overflow="fold")
    for name in columns:
        table.add_column(name if name in ("tokens", "cost") else f"{name} tokens", justify="right")
    for (start, end, subject, groups), values in ordered:
        cells = [f"{values[c]:.6f}" if c == "cost" else f"{values[c]:,.0f}" for c in columns]
        table.add_row(start, end, subject, *groups, *cells)
    _console().print(table if ordered else "no usage in that period")
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "demo": _demo,
    "serve": _serve,
    "meters": _meters,
    "outbox": _outbox,
    "doctor": _doctor,
    "usage": _usage,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command != "serve":
        # Commands report through their own output and one error line; the library's
        # delivery log lines would only repeat that.
        quiet = logging.getLogger("litellm_openmeter")
        quiet.addHandler(logging.NullHandler())
        quiet.propagate = False
    flag = os.environ.get(DEBUG_ENV, "").strip().lower()
    debug = bool(getattr(args, "debug", False)) or flag in ("1", "true", "yes", "on")
    try:
        return HANDLERS[args.command](args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if debug:
            traceback.print_exc()
        code, line = error_line(exc)
        print(f"litellm-openmeter {args.command}: error: {line}", file=sys.stderr)
        return code


def error_line(exc: BaseException) -> tuple[int, str]:
    """The exit code and the one line that report an error: what is wrong and the fix.
    Never the API key, even where an error's text would hold it."""
    from .outbox import OutboxDamaged
    from .salvage import salvage_command

    if isinstance(exc, (SettingsError, UsageError)):
        code, text = EXIT_USAGE, str(exc)
    elif isinstance(exc, CommandError):
        code, text = EXIT_FAILURE, str(exc)
    elif isinstance(exc, OutboxDamaged):
        code = EXIT_FAILURE
        text = (
            f"{exc}; a logger moves it aside and starts a fresh outbox when it starts; to "
            f"do it now and recover its events: {salvage_command(exc.path)}"
        )
    else:
        code = EXIT_FAILURE
        text = (
            f"unexpected {type(exc).__name__}: {exc} (run again with --debug for the "
            "traceback, and report it)"
        )
    line = " ".join(text.split())
    key = os.environ.get("OPENMETER_API_KEY", "").strip()
    if len(key) >= 4:
        line = line.replace(key, "***")
    return code, line


if __name__ == "__main__":
    sys.exit(main())
