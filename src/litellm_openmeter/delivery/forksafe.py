"""One fork handler for every object holding locks, threads or connections.

A child of ``fork`` inherits the parent's locks (possibly held by a thread that does
not exist in the child), its SQLite connections and its HTTP clients; none may be used
there. Objects registered here get ``after_fork_in_child()`` called in the child.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol


class ForkAware(Protocol):
    """Something that drops its parent's locks, threads and connections after fork."""

    def after_fork_in_child(self) -> None: ...


_tracked: weakref.WeakSet[ForkAware] = weakref.WeakSet()


def track(obj: ForkAware) -> None:
    """Call ``obj.after_fork_in_child()`` in every forked child while ``obj`` lives."""
    _tracked.add(obj)


def _after_fork_in_child() -> None:
    for obj in list(_tracked):
        obj.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
