"""The command line's arguments: one sub-parser per command."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._version import __version__
from .common import DEBUG_ENV, SERVER_TOKEN_ENV, default_server_db


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
    usage.add_argument(
        "--compare",
        metavar="URL",
        default=None,
        help="instead, compare every meter's totals per subject and UTC day with this "
        "endpoint's (default period: the last 30 days); exit 1 on a difference",
    )
    usage.add_argument(
        "--compare-key", default=None, help="the --compare endpoint's key (default: the same)"
    )
    usage.add_argument("--json", action="store_true", help="print as JSON")

    export = command(
        "export",
        help="copy the local server's events into OpenMeter, resumable, verified",
        description="Deliver the events stored by serve (its --db) to another "
        "OpenMeter-compatible endpoint through an outbox of their own: batches, retries, "
        "dead letters. A second run goes on where the last one stopped; events keep their "
        "source and id, so OpenMeter's deduplication drops anything sent twice.",
    )
    export.add_argument(
        "--db",
        type=Path,
        default=None,
        help=f"the server's database (default {default_server_db()})",
    )
    export.add_argument("--to", required=True, metavar="URL", help="the target endpoint")
    export.add_argument(
        "--key", default=None, help="the target's API key (default OPENMETER_API_KEY)"
    )
    export.add_argument(
        "--from", dest="start", default=None, help="events from, RFC 3339 (inclusive)"
    )
    export.add_argument("--until", default=None, help="events until, RFC 3339 (exclusive)")
    export.add_argument(
        "--subject", action="append", default=[], help="only this subject (repeatable)"
    )
    export.add_argument("--dry-run", action="store_true", help="count and check; send nothing")
    export.add_argument(
        "--apply-meters", action="store_true", help="create the meters the target lacks"
    )
    export.add_argument(
        "--verify",
        action="store_true",
        help="then compare every meter's totals per subject and day; exit 1 on a difference",
    )
    export.add_argument("--json", action="store_true", help="print the outcome as JSON")

    dashboard = command(
        "dashboard",
        help="serve the usage dashboard for OPENMETER_API_ENDPOINT",
        description="Serve the usage dashboard (the page serve shows at /) for the "
        "configured OpenMeter: the page's read-only queries go through this server, which "
        "adds OPENMETER_API_KEY itself, so the key never reaches the browser. Beside the "
        "outbox (OPENMETER_OUTBOX_PATH) it also shows delivery health.",
    )
    dashboard.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)"
    )
    dashboard.add_argument("--port", type=_port, default=8890, help="port (default 8890)")
    dashboard.add_argument(
        "--token",
        default=None,
        help=f"require this Bearer token for the page's data (or set {SERVER_TOKEN_ENV})",
    )
    return parser
