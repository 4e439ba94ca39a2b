"""The ``litellm-openmeter`` command line: ``demo``, ``serve``, ``meters``, ``outbox``,
``doctor`` and ``usage``. Built on the package's public parts, never the other way."""

from .main import main

__all__ = ["main"]
