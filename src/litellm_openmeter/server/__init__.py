"""An OpenMeter-compatible server on SQLite, for development, CI and small deployments."""

from .app import create_app
from .runner import BackgroundServer, bind, open_store, serve
from .store import Store

__all__ = ["BackgroundServer", "Store", "bind", "create_app", "open_store", "serve"]
