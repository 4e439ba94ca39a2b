"""The ``litellm-openmeter`` command line.

Every command reads the same ``OPENMETER_*`` settings as the logger, never prints the
API key, fails with one line and a non-zero exit code, and offers ``--json`` where a
script would read its output.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from ..settings import SettingsError
from .common import DEBUG_ENV, EXIT_FAILURE, EXIT_USAGE, CommandError, UsageError
from .parser import build_parser

# Each command's module is imported when it runs: every command starts fast.
COMMANDS = {
    "demo": "demo",
    "serve": "serve",
    "meters": "meters",
    "outbox": "outbox",
    "doctor": "doctor",
    "usage": "usage",
    "export": "export",
    "dashboard": "dashboard",
}


def _handler(command: str) -> Callable[[argparse.Namespace], int]:
    module = importlib.import_module(f".{COMMANDS[command]}", __package__)
    handler: Callable[[argparse.Namespace], int] = getattr(module, f"{command}_command")
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command not in ("serve", "dashboard"):
        # Commands report through their own output and one error line; the library's
        # delivery log lines would only repeat that.
        quiet = logging.getLogger("litellm_openmeter")
        quiet.addHandler(logging.NullHandler())
        quiet.propagate = False
    flag = os.environ.get(DEBUG_ENV, "").strip().lower()
    debug = bool(getattr(args, "debug", False)) or flag in ("1", "true", "yes", "on")
    try:
        return _handler(args.command)(args)
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
    from ..delivery.outbox import OutboxDamaged
    from ..delivery.salvage import salvage_command

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
