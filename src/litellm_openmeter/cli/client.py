"""A small client for OpenMeter's meter API (list, create, query), for the CLI.

Delivery of events does not use it: that is the sender's job.
"""

from __future__ import annotations

from typing import Any

import httpx

from .._version import __version__
from ..delivery.transport import problem_detail
from ..settings import Settings


class ClientError(RuntimeError):
    """A request to OpenMeter failed; the message says why (``problem``) and what to
    check (``fix``, when there is one to say)."""

    def __init__(self, problem: str, status: int | None = None, fix: str = "") -> None:
        super().__init__(f"{problem}: {fix}" if fix else problem)
        self.problem = problem
        self.status = status
        self.fix = fix


class OpenMeterClient:
    """Meters API of the configured endpoint, with the configured key."""

    def __init__(self, settings: Settings, timeout: float | None = None) -> None:
        self.endpoint = settings.endpoint
        self._http = httpx.Client(
            base_url=settings.endpoint,
            timeout=timeout or settings.http_timeout,
            headers={
                "Authorization": f"Bearer {settings.api_key}",
                "User-Agent": f"litellm-openmeter/{__version__}",
            },
        )

    def __repr__(self) -> str:
        return f"OpenMeterClient(endpoint={self.endpoint!r})"

    def __enter__(self) -> OpenMeterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP client."""
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise ClientError(f"{self.endpoint} did not answer in time") from None
        except httpx.TransportError as exc:
            raise ClientError(f"cannot reach {self.endpoint}: {exc}") from None
        if response.status_code in (401, 403):
            raise ClientError(
                f"{self.endpoint} rejected the API key (HTTP {response.status_code})",
                response.status_code,
                "check OPENMETER_API_KEY",
            )
        if response.status_code >= 400:
            raise ClientError(
                f"{method} {path} failed: HTTP {response.status_code}: {problem_detail(response)}",
                response.status_code,
            )
        return response

    def list_meters(self) -> list[dict[str, Any]]:
        """Every meter of the endpoint."""
        meters: list[dict[str, Any]] = self._request("GET", "/api/v1/meters").json()
        return meters

    def create_meter(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create a meter from a ``MeterCreate`` body."""
        created: dict[str, Any] = self._request("POST", "/api/v1/meters", json=body).json()
        return created

    def update_meter(self, id_or_slug: str, body: dict[str, Any]) -> dict[str, Any]:
        """Update a meter from a ``MeterUpdate`` body (what it leaves out is cleared)."""
        updated: dict[str, Any] = self._request(
            "PUT", f"/api/v1/meters/{id_or_slug}", json=body
        ).json()
        return updated

    def query(self, slug: str, params: dict[str, Any]) -> dict[str, Any]:
        """Query a meter (GET form)."""
        result: dict[str, Any] = self._request(
            "GET", f"/api/v1/meters/{slug}/query", params=params
        ).json()
        return result
