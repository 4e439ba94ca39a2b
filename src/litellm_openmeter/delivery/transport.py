"""The transport: one POST of a batch to OpenMeter's ingest API, and what the answer means.

It knows HTTP and OpenMeter's status codes, nothing of queues or retries (those are
the sender's), like the OpenTelemetry SDK's exporters.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import httpx

from .._version import __version__
from ..settings import Settings

SINGLE_CONTENT_TYPE = "application/cloudevents+json"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"


class Outcome(Enum):
    """What the sender should do with a batch after one POST."""

    DELIVERED = "delivered"
    RETRY = "retry"
    """429, 5xx, timeout, connection error: keep the batch, back off, resend."""
    REJECTED = "rejected"
    """400-class: at least one event is bad; split to find it."""
    PAUSE = "pause"
    """401/403/404/405: key rejected or wrong endpoint; keep everything, stop sending."""


@dataclass(frozen=True)
class SendResult:
    """The outcome of one POST, with the server's explanation."""

    outcome: Outcome
    status: int | None = None
    detail: str = ""
    retry_after: float | None = None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


def problem_detail(response: httpx.Response) -> str:
    """A one-line explanation from a problem+json (or any) error body."""
    text = response.text[:2000]
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip() or response.reason_phrase
    if isinstance(body, dict):
        parts = [str(body[key]) for key in ("title", "detail") if body.get(key)]
        extensions = body.get("extensions")
        if isinstance(extensions, dict) and extensions.get("validationErrors"):
            parts.append(json.dumps(extensions["validationErrors"]))
        if parts:
            return ": ".join(parts)
    return text.strip()


def classify(response: httpx.Response) -> SendResult:
    """Map an HTTP response to what the sender does next."""
    status = response.status_code
    if 200 <= status < 300:
        return SendResult(Outcome.DELIVERED, status)
    detail = f"HTTP {status}: {problem_detail(response)}"
    if status in (401, 403):
        return SendResult(
            Outcome.PAUSE,
            status,
            f"{detail} (the endpoint rejected OPENMETER_API_KEY; fix the key and restart)",
        )
    if status in (404, 405):
        return SendResult(
            Outcome.PAUSE,
            status,
            f"{detail} (wrong OPENMETER_API_ENDPOINT? it must be the base URL, "
            "without /api/v1/events)",
        )
    if status in (400, 413, 415, 422):
        return SendResult(Outcome.REJECTED, status, detail)
    return SendResult(
        Outcome.RETRY, status, detail, parse_retry_after(response.headers.get("retry-after"))
    )


class HttpTransport:
    """Posts CloudEvents to ``{endpoint}/api/v1/events`` over one kept-alive client."""

    def __init__(self, settings: Settings, client: httpx.Client | None = None) -> None:
        self.url = settings.events_url
        timeout = httpx.Timeout(settings.http_timeout, connect=min(5.0, settings.http_timeout))
        self._client = client or httpx.Client(
            timeout=timeout,
            headers={
                "Authorization": f"Bearer {settings.api_key}",
                "User-Agent": f"litellm-openmeter/{__version__}",
            },
        )

    def __repr__(self) -> str:
        return f"HttpTransport(url={self.url!r})"

    def send(self, bodies: Sequence[str]) -> SendResult:
        """POST pre-encoded events: one as a single CloudEvent, several as a batch."""
        if len(bodies) == 1:
            content, content_type = bodies[0], SINGLE_CONTENT_TYPE
        else:
            content, content_type = "[" + ",".join(bodies) + "]", BATCH_CONTENT_TYPE
        try:
            response = self._client.post(
                self.url, content=content.encode(), headers={"Content-Type": content_type}
            )
        except httpx.TimeoutException as exc:
            return SendResult(
                Outcome.RETRY, None, f"timeout posting to {self.url}: {type(exc).__name__}"
            )
        except httpx.TransportError as exc:
            return SendResult(Outcome.RETRY, None, f"cannot reach {self.url}: {exc}")
        return classify(response)

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()
