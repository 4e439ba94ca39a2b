"""The routes that serve the dashboard: the page, its script and style, and two small
JSON documents (what the page reads from, and delivery health where there is one).

The page draws everything from the same meter, subject and event endpoints a client
calls; nothing here reads usage.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from importlib.resources import files
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

ASSET_TYPES = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
PUBLIC_PREFIXES = ("/dashboard/assets/",)
"""Paths served without the bearer token besides ``/`` itself: code and style only,
no data. The page asks for the token, then sends it in a header, never a URL."""

# Nothing is loaded from another host, and nothing inline runs.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@cache
def asset(name: str) -> bytes:
    """One of the page's files, from the installed package."""
    return (files(__package__) / "assets" / name).read_bytes()


def page_routes(
    config: dict[str, Any], delivery: Callable[[], dict[str, Any]] | None = None
) -> list[Route]:
    """``GET /`` (the page), its assets, ``/dashboard/config.json`` (``config``: where
    the data comes from) and, with ``delivery``, ``/dashboard/delivery.json``."""

    async def index(request: Request) -> Response:
        return Response(asset("index.html"), media_type="text/html", headers=SECURITY_HEADERS)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSET_TYPES:
            return JSONResponse({"detail": f"no asset {name!r}"}, status_code=404)
        return Response(asset(name), media_type=ASSET_TYPES[name], headers=SECURITY_HEADERS)

    async def page_config(request: Request) -> Response:
        return JSONResponse({**config, "delivery": delivery is not None})

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/dashboard/assets/{name}", static, methods=["GET"]),
        Route("/dashboard/config.json", page_config, methods=["GET"]),
    ]
    if delivery is not None:
        health = delivery

        async def delivery_health(request: Request) -> Response:
            return JSONResponse(await run_in_threadpool(health))

        routes.append(Route("/dashboard/delivery.json", delivery_health, methods=["GET"]))
    return routes
