"""The ``litellm-openmeter`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ._version import __version__

SERVER_TOKEN_ENV = "OPENMETER_SERVER_TOKEN"


class CommandError(Exception):
    """A failure to report as one line and exit code 1."""


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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="litellm-openmeter",
        description="Bill LiteLLM usage through OpenMeter.",
    )
    parser.add_argument("--version", action="version", version=f"litellm-openmeter {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser(
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
        type=int,
        default=4 * 1024 * 1024,
        help="largest accepted request body in bytes (default 4 MiB)",
    )

    demo = commands.add_parser(
        "demo",
        help="run a LiteLLM workload into the local server and show the metered usage",
        description="Start the local server, point an OpenMeterLogger at it, make real "
        "LiteLLM mock calls (offline), then query the usage back and check that no event "
        "was lost or duplicated.",
    )
    demo.add_argument("--calls", type=_calls, default=24, help="how many calls (default 24)")
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
    return parser


def _calls(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 2 <= value <= 100_000:
        raise argparse.ArgumentTypeError(f"{value} is out of range (2-100000)")
    return value


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    outcome = run_demo(calls=args.calls, shape=args.shape, keep=args.keep, as_json=args.json)
    if not outcome.verified:
        raise CommandError(f"{outcome.lost} event(s) lost, {outcome.duplicates} duplicated")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .meters import MeterError, load_meters_file
    from .server import open_store, serve

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
    try:
        store = open_store(db, meters)
    except Exception as exc:
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
    try:
        serve(args.host, args.port, store, token=token, max_body=args.max_body)
    except OSError as exc:
        raise CommandError(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}"
        ) from None
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    handlers = {"serve": _serve, "demo": _demo}
    try:
        return handlers[args.command](args)
    except CommandError as exc:
        print(f"litellm-openmeter {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
