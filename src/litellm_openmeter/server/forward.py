"""The dashboard's own server (``litellm-openmeter dashboard``): the page, and the
read-only part of OpenMeter's API forwarded to the configured endpoint with the API key
added here, so that the key never reaches the browser."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .._version import __version__
from ..dashboard import page_routes
from .app import ASGIApp, GuardMiddleware, problem

# The read-only meter, subject and event queries the page makes; nothing else passes.
FORWARDED = (
    "/api/v1/meters",
    "/api/v1/meters/{meter}",
    "/api/v1/meters/{meter}/query",
    "/api/v1/meters/{meter}/subjects",
    "/api/v1/meters/{meter}/group-by/{key}/values",
    "/api/v1/subjects",
    "/api/v1/subjects/{subject}",
    "/api/v1/events",
)
_PASSED_HEADERS = ("content-type", "retry-after")
REDACTED = b"[redacted]"


def create_forwarding_app(
    endpoint: str,
    api_key: str,
    *,
    token: str | None = None,
    timeout: float = 30.0,
    delivery: Callable[[], dict[str, Any]] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> ASGIApp:
    """The dashboard in front of ``endpoint``: GET requests on :data:`FORWARDED` paths go
    there with ``api_key``; the rest is refused. ``token`` guards this server itself."""
    base = endpoint.rstrip("/")
    secret = api_key.encode()
    client = httpx.AsyncClient(
        base_url=base,
        timeout=timeout,
        transport=transport,
        headers={
            "Authorization": f"Bearer {api_key}",
            "User-Agent": f"litellm-openmeter-dashboard/{__version__}",
        },
    )

    async def forward(request: Request) -> Response:
        headers = {"Accept": request.headers.get("accept", "application/json")}
        try:
            upstream = await client.get(request.url.path, params=request.url.query, headers=headers)
        except httpx.TimeoutException:
            return problem(504, "Gateway Timeout", f"{base} did not answer in {timeout:g}s")
        except httpx.TransportError as exc:
            return problem(502, "Bad Gateway", f"cannot reach {base}: {type(exc).__name__}: {exc}")
        body = upstream.content
        if secret and secret in body:  # an upstream that echoes the key: never pass it on
            body = body.replace(secret, REDACTED)
        if upstream.status_code in (401, 403):
            return problem(
                502,
                "Bad Gateway",
                f"{base} rejected the API key (HTTP {upstream.status_code}): "
                "check OPENMETER_API_KEY where the dashboard runs",
            )
        passed = {k: v for k, v in upstream.headers.items() if k.lower() in _PASSED_HEADERS}
        return Response(body, status_code=upstream.status_code, headers=passed)

    async def refused(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        if status == 405:
            return problem(
                405,
                "Method Not Allowed",
                f"the dashboard forwards only read-only queries; {request.method} "
                f"{request.url.path} is not one",
            )
        if status == 404:
            return problem(404, "Not Found", f"the dashboard does not forward {request.url.path}")
        return problem(status, "Error", "internal error")

    config = {"source": base}
    app = Starlette(
        exception_handlers={HTTPException: refused},
        routes=[
            *(Route(path, forward, methods=["GET"]) for path in FORWARDED),
            *page_routes(config, delivery),
        ],
    )
    return GuardMiddleware(app, token)
