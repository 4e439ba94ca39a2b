"""An OpenMeter-compatible server on SQLite, for development, CI and small deployments;
and the dashboard's server in front of any OpenMeter."""

from .app import create_app
from .forward import create_forwarding_app
from .runner import BackgroundApp, BackgroundServer, bind, open_store, serve, serve_app
from .store import Store

__all__ = [
    "BackgroundApp",
    "BackgroundServer",
    "Store",
    "bind",
    "create_app",
    "create_forwarding_app",
    "open_store",
    "serve",
    "serve_app",
]
