"""What every command shares: settings, errors, the console and JSON output."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from ..settings import Settings

if TYPE_CHECKING:  # imported where used: every command starts fast
    from rich.console import Console

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


def rich_console() -> Console:
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


def settings_from_env(require_key: bool = True) -> Settings:
    """The settings; a bad one raises SettingsError (one line, exit code 2)."""
    overrides: dict[str, object] = {}
    if not require_key and not os.environ.get("OPENMETER_API_KEY"):
        overrides["api_key"] = "not-needed"
    return Settings.from_env(**overrides)


def listen(host: str, port: int) -> socket.socket:
    """The listening socket of ``serve`` or ``dashboard``; a port in use (or an address
    not this host's) is one line with the fix."""
    from ..server import bind

    try:
        return bind(host, port)
    except OSError as exc:
        raise CommandError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc} "
            "(choose another --port, or stop what uses it)"
        ) from None


def print_json(value: object) -> None:
    """Print ``value`` as indented JSON (what ``--json`` prints)."""
    print(json.dumps(value, indent=2, default=str))
