"""A graceful stop on SIGTERM: what a process answered is delivered before it ends.

Python's default action for SIGTERM ends the process at once, exit handlers and all:
the events of the last commit interval stay in memory, and the outbox waits for the
next process that opens it (a container's disk may not be there for it). So, from the
first logger on (``OPENMETER_HANDLE_SIGTERM``, on by default), SIGTERM is handled in
one of two ways, chosen by what handled it before:

- **Nobody** (a script, a batch job, a worker pool): a thread closes every logger
  (waiting for the hooks of calls that started, storing, delivering, within
  ``OPENMETER_SHUTDOWN_TIMEOUT``) while the program goes on, then the process ends by
  SIGTERM, as it would have at once.
- **A server** (uvicorn under the LiteLLM proxy, gunicorn, an application's own
  handler): its handler runs as before, and the server stops gracefully; LiteLLM's
  proxy drains its callbacks. uvicorn then raises SIGTERM again with the default
  action, which would end the process before the exit handlers. From the first
  SIGTERM on, the main thread holds that signal back (blocks it), so the process
  leaves normally; the exit handler closes the loggers and then lets the held signal
  end the process.

Only the main thread can set signal handlers; a logger built elsewhere installs none.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger("litellm_openmeter")

_installed_in = 0
"""The process whose SIGTERM handler is ours (a forked child may have reset it)."""
_stopping = False
_ending = False
_held_back = False


def install(close_all: Callable[[], None]) -> bool:
    """Handle SIGTERM as the module says, once per process; ``close_all`` closes every
    logger. False where it cannot be (not the main thread, no SIGTERM, SIGTERM
    ignored or handled outside Python)."""
    global _installed_in
    if _installed_in == os.getpid():
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    if not hasattr(signal, "SIGTERM") or not hasattr(signal, "pthread_sigmask"):
        return False
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_IGN or previous is None:
        return False
    if getattr(previous, "litellm_openmeter", False):  # a forked child keeps the parent's
        _installed_in = os.getpid()
        return True

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if previous is signal.SIG_DFL:
            _stop_alone(close_all)
        elif callable(previous):
            _stop_with(previous, signum, frame)

    on_sigterm.litellm_openmeter = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGTERM, on_sigterm)
    _installed_in = os.getpid()
    return True


def _stop_alone(close_all: Callable[[], None]) -> None:
    """SIGTERM where nothing else handles it: close in a thread, then end by SIGTERM."""
    global _stopping
    if _ending:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)
        return
    if _stopping:
        return
    _stopping = True
    log.warning("litellm-openmeter: SIGTERM: delivering what is stored, then ending")
    # Not a daemon: a main thread that ends meanwhile waits for it at exit.
    threading.Thread(
        target=_close_then_end, args=(close_all,), name="litellm-openmeter-stop"
    ).start()


def _close_then_end(close_all: Callable[[], None]) -> None:
    global _ending
    try:
        close_all()
    finally:
        _ending = True
        # Back in the main thread, the handler restores the default action and ends.
        os.kill(os.getpid(), signal.SIGTERM)


def _stop_with(
    previous: Callable[[int, FrameType | None], Any], signum: int, frame: FrameType | None
) -> None:
    """SIGTERM where a server handles it: hold the signal back in the main thread
    until the exit handler has closed the loggers, then let the server stop."""
    global _held_back
    if not _held_back:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        _held_back = True
    previous(signum, frame)


def release() -> None:
    """At exit, after the loggers closed: a SIGTERM held back now takes its course
    (the default action ends the process here, as it would have earlier)."""
    global _held_back
    if _held_back and threading.current_thread() is threading.main_thread():
        _held_back = False
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
