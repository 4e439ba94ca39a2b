"""The OpenMeter-compatible HTTP API of the local server (Starlette)."""

from __future__ import annotations

import asyncio
import csv
import hmac
import io
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..dashboard import PUBLIC_PREFIXES, page_routes
from ..meters import MeterError, meter_from_json
from .filters import Filter, check_filters
from .ingest import IngestError, parse_body
from .store import MeterExists, Query, QueryCancelled, Store, StoredMeter, seconds, unique
from .subjects import subject_upserts
from .windows import ACCEPTED_RANGE, EARLIEST, LATEST, WINDOW_SIZES, TooManyWindows, zone

log = logging.getLogger("litellm_openmeter.server")

DEFAULT_MAX_BODY = 4 * 1024 * 1024
_FILTER_PARAM = re.compile(r"^filterGroupBy\[(.+)\]$")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def problem(status: int, title: str, detail: str) -> JSONResponse:
    """An RFC 7807 problem+json response, as OpenMeter sends."""
    # Like OpenMeter's, ``instance`` is a URI naming this occurrence (a request id).
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": f"urn:request:litellm-openmeter/{secrets.token_hex(8)}",
    }
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


def is_public(method: str, path: str) -> bool:
    """Whether a request needs no token: the dashboard's page and its code, no data."""
    return method in ("GET", "HEAD") and (path == "/" or path.startswith(PUBLIC_PREFIXES))


class FastJSONResponse(JSONResponse):
    """JSON by orjson: a meter query's thousands of rows encode several times faster."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class GuardMiddleware:
    """Bearer-token check and one log line per request (never the token)."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status_holder = [500]

        async def send_logged(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = int(message["status"])
            await send(message)

        try:
            if self.expected is not None and not is_public(scope["method"], scope["path"]):
                given = dict(scope.get("headers") or []).get(b"authorization", b"")
                if not hmac.compare_digest(given, self.expected):
                    response = problem(401, "Unauthorized", "missing or wrong bearer token")
                    await response(scope, receive, send_logged)
                    return
            await self.app(scope, receive, send_logged)
        finally:
            client = scope.get("client") or ("-", 0)
            log.info(
                '%s "%s %s" %d %.1fms',
                client[0],
                scope.get("method"),
                scope.get("path"),
                status_holder[0],
                (time.perf_counter() - started) * 1000,
            )


def create_app(
    store: Store, *, token: str | None = None, max_body: int = DEFAULT_MAX_BODY
) -> ASGIApp:
    """The ASGI application serving OpenMeter's events and meters API from ``store``."""

    async def ingest(request: Request) -> Response:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body:
            return problem(
                413, "Payload Too Large", f"request body is larger than {max_body} bytes"
            )
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body:
                return problem(
                    413, "Payload Too Large", f"request body is larger than {max_body} bytes"
                )
            chunks.append(chunk)
        try:
            events = parse_body(request.headers.get("content-type"), b"".join(chunks))
            store.ingest(events)
        except IngestError as exc:
            return problem(exc.status, "Bad Request", exc.detail)
        return Response(status_code=204)

    async def list_events(request: Request) -> Response:
        params = request.query_params
        try:
            raw_limit = params.get("limit", "100")
            if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 100:
                raise ValueError("limit: must be an integer between 1 and 100")
            limit = int(raw_limit)
            start = seconds(params.get("from"), "from")
            end = seconds(params.get("to"), "to")
            ingested_from = seconds(params.get("ingestedAtFrom"), "ingestedAtFrom")
            ingested_to = seconds(params.get("ingestedAtTo"), "ingestedAtTo")
            # As OpenMeter: a period that ends before it starts is an error, not [].
            for low, high, names in (
                (start, end, ("from", "to")),
                (ingested_from, ingested_to, ("ingestedAtFrom", "ingestedAtTo")),
            ):
                if low is not None and high is not None and high < low:
                    raise ValueError(f"{names[1]} must not be before {names[0]}")
            if start is None:
                start = int(time.time()) - 72 * 3600
            items = await run_in_threadpool(
                store.list_events,
                limit=limit,
                subject=params.get("subject"),
                event_id=params.get("id"),
                start=start,
                end=end,
                ingested_from=ingested_from,
                ingested_to=ingested_to,
            )
        except ValueError as exc:
            return problem(400, "Bad Request", str(exc))
        return FastJSONResponse(items)

    def find_meter(request: Request) -> StoredMeter | None:
        key = request.path_params["meter"]
        found = store.meters.get(key)
        if found is None:
            found = next((m for m in store.meters.values() if m.id == key), None)
        return found

    def not_found(request: Request) -> Response:
        return problem(404, "Not Found", f"meter {request.path_params['meter']!r} not found")

    async def list_meters(request: Request) -> Response:
        try:
            listing = _meter_listing(request.query_params)
        except ValueError as exc:
            return problem(400, "Bad Request", str(exc))
        meters = list(store.meters.values())
        if listing.include_deleted:
            meters += store.deleted_meters()
        return JSONResponse([meter.to_json() for meter in listing.page_of(meters)])

    async def create_meter(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
            meter = meter_from_json(body)
            stored = store.create_meter(meter)
        except ValueError as exc:
            return _meter_problem(exc)
        return JSONResponse(stored.to_json(), status_code=201)

    async def get_meter(request: Request) -> Response:
        stored = find_meter(request)
        if stored is None:  # a deleted meter is found by its id, as in OpenMeter
            key = request.path_params["meter"]
            stored = next((m for m in store.deleted_meters() if m.id == key), None)
        return JSONResponse(stored.to_json()) if stored else not_found(request)

    async def update_meter(request: Request) -> Response:
        stored = find_meter(request)
        if stored is None:
            return not_found(request)
        try:
            body = json.loads(await request.body())
            if not isinstance(body, dict):
                raise MeterError("the body must be a JSON object (a MeterUpdate)")
            updated = store.create_meter(meter_from_json(_updated(stored, body)), replace=True)
        except ValueError as exc:
            return _meter_problem(exc)
        return JSONResponse(updated.to_json())

    async def delete_meter(request: Request) -> Response:
        stored = find_meter(request)
        if stored is None or not store.delete_meter(stored.meter.slug):
            return not_found(request)
        return Response(status_code=204)

    async def subjects(request: Request) -> Response:
        stored = find_meter(request)
        if stored is None:
            return not_found(request)
        try:
            start = seconds(request.query_params.get("from"), "from")
            end = seconds(request.query_params.get("to"), "to")
        except ValueError as exc:
            return problem(400, "Bad Request", str(exc))
        found = await run_in_threadpool(store.subjects, stored.meter.slug, start, end)
        return JSONResponse(found)

    async def group_by_values(request: Request) -> Response:
        stored = find_meter(request)
        if stored is None:
            return not_found(request)
        key = request.path_params["key"]
        if key not in stored.meter.group_by:
            known = ", ".join(sorted(stored.meter.group_by)) or "none"
            return problem(
                400,
                "Bad Request",
                f"{key!r} is not a groupBy key of meter {stored.meter.slug} (known: {known})",
            )
        try:
            start = seconds(request.query_params.get("from"), "from")
            end = seconds(request.query_params.get("to"), "to")
        except ValueError as exc:
            return problem(400, "Bad Request", str(exc))
        if start is None:  # as OpenMeter's spec: the last 24 hours by default
            start = int(time.time()) - 24 * 3600
        found = await run_in_threadpool(store.group_by_values, stored.meter.slug, key, start, end)
        return JSONResponse(found)

    async def list_subjects(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(store.list_subjects))

    async def upsert_subjects(request: Request) -> Response:
        try:
            upserts = subject_upserts(json.loads(await request.body()))
        except ValueError as exc:
            return problem(400, "Bad Request", str(exc))
        return JSONResponse(await run_in_threadpool(store.upsert_subjects, upserts))

    async def get_subject(request: Request) -> Response:
        key = request.path_params["subject"]
        found = await run_in_threadpool(store.subject, key)
        if found is None:
            return problem(404, "Not Found", f"subject {key!r} not found")
        return JSONResponse(found)

    async def delete_subject(request: Request) -> Response:
        key = request.path_params["subject"]
        if not await run_in_threadpool(store.delete_subject, key):
            return problem(404, "Not Found", f"subject {key!r} not found")
        return Response(status_code=204)

    async def query(request: Request) -> Response:
        stored = find_meter(request)
        if stored is None:
            return not_found(request)
        try:
            if request.method == "POST":
                body = json.loads(await request.body())
                if not isinstance(body, dict):
                    raise ValueError("the query body must be a JSON object")
                parsed = _query_from_body(body, stored)
            else:
                parsed = _query_from_params(request, stored)
        except ValueError as exc:
            return problem(400, "Bad Request", str(exc))
        cancelled = threading.Event()
        watcher = asyncio.create_task(_watch_disconnect(request, cancelled))
        try:
            result = await run_in_threadpool(store.query, stored.meter.slug, parsed, cancelled)
        except TooManyWindows as exc:
            return problem(400, "Bad Request", str(exc))
        except QueryCancelled:
            return problem(503, "Service Unavailable", "the client went away")
        finally:
            watcher.cancel()
        if "text/csv" in request.headers.get("accept", ""):
            return Response(_csv(result, parsed), media_type="text/csv")
        return FastJSONResponse(result)

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
        if status == 405:
            detail = f"{request.method} {request.url.path} is not supported by the local server"
        return problem(status, HTTPStatus(status).phrase, str(detail))

    app = Starlette(
        exception_handlers={HTTPException: http_error},
        routes=[
            Route("/api/v1/events", ingest, methods=["POST"]),
            Route("/api/v1/events", list_events, methods=["GET"]),
            Route("/api/v1/meters", list_meters, methods=["GET"]),
            Route("/api/v1/meters", create_meter, methods=["POST"]),
            Route("/api/v1/meters/{meter}", get_meter, methods=["GET"]),
            Route("/api/v1/meters/{meter}", update_meter, methods=["PUT"]),
            Route("/api/v1/meters/{meter}", delete_meter, methods=["DELETE"]),
            Route("/api/v1/meters/{meter}/query", query, methods=["GET", "POST"]),
            Route("/api/v1/meters/{meter}/subjects", subjects, methods=["GET"]),
            Route("/api/v1/meters/{meter}/group-by/{key}/values", group_by_values, methods=["GET"]),
            Route("/api/v1/subjects", list_subjects, methods=["GET"]),
            Route("/api/v1/subjects", upsert_subjects, methods=["POST"]),
            Route("/api/v1/subjects/{subject}", get_subject, methods=["GET"]),
            Route("/api/v1/subjects/{subject}", delete_subject, methods=["DELETE"]),
            *page_routes({"source": "local server"}),
        ],
    )
    return GuardMiddleware(app, token)


async def _watch_disconnect(request: Request, cancelled: threading.Event) -> None:
    """Set ``cancelled`` when the client of ``request`` goes away: its query stops
    rather than keep a server thread busy for nobody."""
    while not await request.is_disconnected():
        await asyncio.sleep(0.1)
    cancelled.set()


def _meter_problem(exc: ValueError) -> JSONResponse:
    """The answer to a meter body that failed: 409 for a slug taken, else 400."""
    if isinstance(exc, MeterExists):
        return problem(409, "Conflict", str(exc))
    detail = str(exc) if isinstance(exc, MeterError) else f"malformed JSON body: {exc}"
    return problem(400, "Bad Request", detail)


def _updated(stored: StoredMeter, update: dict[str, Any]) -> dict[str, Any]:
    """The ``MeterCreate`` body of a meter after a ``MeterUpdate``, applied as OpenMeter
    applies one: ``name``, ``description`` and ``groupBy`` are replaced, and one left
    out is cleared (the name falls back to the slug); the rest cannot change."""
    body = stored.meter.to_create()
    for key in ("name", "description", "groupBy"):
        body.pop(key, None)
        if update.get(key) is not None:
            body[key] = update[key]
    return body


def _check_query(query: Query, stored: StoredMeter) -> Query:
    keys = set(stored.meter.group_by)
    if query.window_size is not None and query.window_size not in WINDOW_SIZES:
        raise ValueError(
            f"windowSize {query.window_size!r} is invalid: use one of {', '.join(WINDOW_SIZES)}"
        )
    zone(query.time_zone)
    for key in query.group_by:
        if key != "subject" and key not in keys:
            raise ValueError(
                f"groupBy {key!r} is not a groupBy key of meter {stored.meter.slug} "
                f"(known: subject, {', '.join(sorted(keys))})"
            )
    for key in query.filter_group_by:
        if key not in keys:
            raise ValueError(
                f"filterGroupBy {key!r} is not a groupBy key of meter {stored.meter.slug}"
            )
    if len(query.subjects) > 100:
        raise ValueError("subject: at most 100 subjects")
    if query.start is not None and query.end is not None and query.start > query.end:
        raise ValueError("from must not be after to")
    for name, moment in (("from", query.start), ("to", query.end)):
        if moment is not None and not (EARLIEST <= moment <= LATEST):
            raise ValueError(f"{name}: outside the times the server can window ({ACCEPTED_RANGE})")
    if query.filter_group_by and query.advanced_filters:
        # As OpenMeter: the simple and the advanced form cannot be used together.
        raise ValueError(
            "filterGroupBy and advancedMeterGroupByFilters cannot be used together: "
            "put every condition in advancedMeterGroupByFilters"
        )
    query.group_by = unique(query.group_by)
    return query


def _advanced_filters(raw: object, stored: StoredMeter) -> dict[str, Filter]:
    return check_filters(raw, set(stored.meter.group_by), stored.meter.slug)


def _query_from_params(request: Request, stored: StoredMeter) -> Query:
    params = request.query_params
    if params.get("filterCustomerId"):
        raise ValueError(_NO_CUSTOMERS)
    filters: dict[str, list[str]] = {}
    for name, value in params.multi_items():
        match = _FILTER_PARAM.match(name)
        if match:
            filters.setdefault(match.group(1), []).append(value)
    advanced: object = None
    if params.get("advancedMeterGroupByFilters"):
        try:
            advanced = json.loads(params["advancedMeterGroupByFilters"])
        except ValueError as exc:
            raise ValueError(
                "advancedMeterGroupByFilters: must be JSON, for example "
                '{"model":{"$in":["gpt-4o"]}} (URL-encoded)'
            ) from exc
    return _check_query(
        Query(
            start=seconds(params.get("from"), "from"),
            end=seconds(params.get("to"), "to"),
            window_size=params.get("windowSize") or None,
            time_zone=params.get("windowTimeZone") or "UTC",
            subjects=params.getlist("subject"),
            group_by=params.getlist("groupBy"),
            filter_group_by=filters,
            advanced_filters=_advanced_filters(advanced, stored),
        ),
        stored,
    )


def _strings(value: object, name: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{name}: must be an array of strings")
    return list(value)


def _query_from_body(body: dict[str, Any], stored: StoredMeter) -> Query:
    filters_raw = body.get("filterGroupBy") or {}
    if not isinstance(filters_raw, dict):
        raise ValueError("filterGroupBy: must be an object of key -> array of strings")
    if body.get("filterCustomerId"):
        raise ValueError(_NO_CUSTOMERS)
    window = body.get("windowSize")
    zone_name = body.get("windowTimeZone") or "UTC"
    for name, value in (
        ("windowSize", window),
        ("windowTimeZone", zone_name),
        ("from", body.get("from")),
        ("to", body.get("to")),
    ):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{name}: must be a string")
    return _check_query(
        Query(
            start=seconds(body.get("from"), "from"),
            end=seconds(body.get("to"), "to"),
            window_size=window or None,
            time_zone=zone_name,
            subjects=_strings(body.get("subject"), "subject"),
            group_by=_strings(body.get("groupBy"), "groupBy"),
            filter_group_by={
                str(k): _strings(v, f"filterGroupBy.{k}") for k, v in filters_raw.items()
            },
            advanced_filters=_advanced_filters(body.get("advancedMeterGroupByFilters"), stored),
        ),
        stored,
    )


_ORDER_BY: dict[str, Callable[[StoredMeter], Any]] = {
    "key": lambda m: m.meter.slug,
    "name": lambda m: m.meter.name or m.meter.slug,
    "aggregation": lambda m: m.meter.aggregation,
    "createdAt": lambda m: m.created_at,
    "updatedAt": lambda m: m.updated_at,
}


@dataclass
class _MeterListing:
    """``GET /api/v1/meters``'s parameters: order, orderBy, page, pageSize and
    includeDeleted, as OpenMeter's spec has them."""

    order_by: str = "key"
    descending: bool = False
    page: int = 1
    page_size: int = 100
    include_deleted: bool = False

    def page_of(self, meters: list[StoredMeter]) -> list[StoredMeter]:
        ordered = sorted(
            meters,
            key=lambda m: (_ORDER_BY[self.order_by](m), m.meter.slug, m.id),
            reverse=self.descending,
        )
        first = (self.page - 1) * self.page_size
        return ordered[first : first + self.page_size]


def _meter_listing(params: Any) -> _MeterListing:
    listing = _MeterListing()
    order_by = params.get("orderBy")
    if order_by is not None:
        if order_by not in _ORDER_BY:
            raise ValueError(f"orderBy {order_by!r} is invalid: use one of {', '.join(_ORDER_BY)}")
        listing.order_by = order_by
    order = params.get("order")
    if order is not None:
        if order not in ("ASC", "DESC"):
            raise ValueError(f"order {order!r} is invalid: use ASC or DESC")
        listing.descending = order == "DESC"
    for name, low, high in (("page", 1, None), ("pageSize", 1, 1000)):
        raw = params.get(name)
        if raw is None:
            continue
        if not raw.isdigit() or int(raw) < low or (high is not None and int(raw) > high):
            limit = f"between {low} and {high}" if high else f"of at least {low}"
            raise ValueError(f"{name}: must be a whole number {limit}")
        if name == "page":
            listing.page = int(raw)
        else:
            listing.page_size = int(raw)
    deleted = params.get("includeDeleted")
    if deleted is not None:
        if deleted not in ("true", "false"):
            raise ValueError("includeDeleted: must be true or false")
        listing.include_deleted = deleted == "true"
    return listing


_NO_CUSTOMERS = (
    "filterCustomerId is not supported by the local server (it has no customers): "
    "filter by subject instead"
)


def _csv(result: dict[str, Any], query: Query) -> str:
    """OpenMeter's CSV: the subject column only when grouped by subject, values with six
    decimals."""
    keys = [key for key in query.group_by if key != "subject"]
    by_subject = "subject" in query.group_by
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        ["window_start", "window_end", *(["subject"] if by_subject else []), *keys, "value"]
    )
    for row in result["data"]:
        writer.writerow(
            [
                row["windowStart"],
                row["windowEnd"],
                *([row["subject"] or ""] if by_subject else []),
                *[row["groupBy"].get(key) or "" for key in keys],
                f"{row['value']:.6f}",
            ]
        )
    return out.getvalue()
