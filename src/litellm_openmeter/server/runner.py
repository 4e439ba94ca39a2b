"""Running the local server: in the foreground (``serve``) or on a background thread
(the demo and the tests)."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from pathlib import Path
from types import TracebackType

import uvicorn

from ..meters import Meter, default_server_meters
from .app import DEFAULT_MAX_BODY, ASGIApp, create_app
from .store import Store

log = logging.getLogger("litellm_openmeter.server")


def open_store(db: str | Path, meters: list[Meter] | None = None) -> Store:
    """Open (or create) the store and install the meters (the defaults when None).

    A meter whose definition changed is replaced and refilled from stored events.
    """
    store = Store(db)
    for meter in default_server_meters() if meters is None else meters:
        store.create_meter(meter, replace=True)
    return store


def bind(host: str, port: int) -> socket.socket:
    """A listening socket; port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _server(app: ASGIApp, log_level: str) -> uvicorn.Server:
    config = uvicorn.Config(
        app, access_log=False, log_level=log_level, lifespan="off", log_config=None
    )
    return uvicorn.Server(config)


def serve(
    sock: socket.socket,
    store: Store,
    *,
    token: str | None = None,
    max_body: int = DEFAULT_MAX_BODY,
) -> None:
    """Serve on a socket from :func:`bind` in the foreground until interrupted (Ctrl-C
    or SIGTERM). Binding comes first, so that a port in use fails before anything else."""
    try:
        serve_app(sock, create_app(store, token=token, max_body=max_body))
    finally:
        store.close()


def serve_app(sock: socket.socket, app: ASGIApp) -> None:
    """Serve any of the package's apps on ``sock`` in the foreground until interrupted."""
    _server(app, "info").run(sockets=[sock])


class BackgroundApp:
    """One of the package's apps on a daemon thread, bound to a free loopback port by
    default."""

    def __init__(self, app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._sock = bind(host, port)
        self.host, self.port = self._sock.getsockname()[:2]
        self._server = _server(app, "warning")
        self._thread = threading.Thread(
            target=self._run, name="litellm-openmeter-server", daemon=True
        )

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8888``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _run(self) -> None:
        asyncio.run(self._server.serve(sockets=[self._sock]))

    def start(self, timeout: float = 10.0) -> BackgroundApp:
        """Start and wait until it accepts requests."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the local server did not start")
            time.sleep(0.005)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving."""
        self._server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> BackgroundApp:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()


class BackgroundServer(BackgroundApp):
    """The local server on a daemon thread, bound to a free loopback port by default."""

    def __init__(
        self,
        store: Store,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        self.store = store
        super().__init__(create_app(store, token=token, max_body=max_body), host=host, port=port)

    def start(self, timeout: float = 10.0) -> BackgroundServer:
        """Start and wait until it accepts requests."""
        super().start(timeout)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and close the store."""
        super().stop(timeout)
        self.store.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()
