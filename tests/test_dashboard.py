"""The usage dashboard in a real headless Chromium (Debian's, driven by Playwright): its
numbers against the meter API's for the same period, in both event shapes; a subject's
view; the CSV download; the no-data state; the token; ``litellm-openmeter dashboard`` in
front of a second server with a key; a failing or malformed upstream.

The events carry times in March 2025 (Europe's summer time starts inside the month) and
every view names its period, so nothing depends on today's date."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from litellm_openmeter.events import build_events
from litellm_openmeter.record import UsageRecord
from litellm_openmeter.server import BackgroundApp, BackgroundServer, open_store
from litellm_openmeter.settings import Settings

from conftest import free_port, wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
try:
    from playwright.sync_api import Browser, Page, sync_playwright
except ImportError:  # pragma: no cover - the test extra installs it
    sync_playwright = None  # type: ignore[assignment]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(sync_playwright is None, reason="playwright is not installed"),
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM),
        reason="no Chromium: install Debian's chromium package (apt-get install chromium)",
    ),
]

SUBJECTS = ["acme", "globex", "initech", "umbrella", "hooli"]
MODELS = ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4-5"]
MARCH = "#period=custom&from=2025-03-01&to=2025-03-31"
PERIOD = {"from": "2025-02-28T23:00:00Z", "to": "2025-03-31T22:00:00Z"}  # March in Berlin
ZONE = "Europe/Berlin"
KEY = "om-secret-key-7f3a9c"
CLI = [sys.executable, "-m", "litellm_openmeter.cli"]


def usage_events(shape: str, calls: int = 240, seed: int = 1) -> list[dict[str, Any]]:
    """Events built by the package's own builder from calls spread over March 2025 (and
    a few on either side), with cached tokens, some failures and one event no cost meter
    can read."""
    settings = Settings.from_env({}, api_key="x", event_shape=shape, meter_failures=True)
    rng = random.Random(seed)
    first = datetime(2025, 2, 27, tzinfo=timezone.utc)
    events: list[dict[str, Any]] = []
    for index in range(calls):
        prompt = rng.randint(20, 3000)
        record = UsageRecord(
            call_id=f"{shape}-{index}",
            end_time=first + timedelta(seconds=rng.randint(0, 36 * 86400)),
            model=rng.choice(MODELS),
            success=index % 17 != 0,
            prompt_tokens=prompt,
            completion_tokens=rng.randint(1, 600),
            cache_read_tokens=rng.randint(0, prompt // 2),
            cost=round(rng.random() / 50, 6),
            error_class="RateLimitError" if index % 17 == 0 else None,
            identities={"user": rng.choice(SUBJECTS)},
        )
        record.total_tokens = record.prompt_tokens + record.completion_tokens
        events.extend(build_events(record, settings))
    unreadable = dict(events[1], id="unreadable-cost")
    unreadable["data"] = {**events[1]["data"], "cost": "n/a"}
    unreadable["time"] = "2025-03-31T20:00:00.000000Z"  # the newest of the period
    events.append(unreadable)
    return events


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield launched
        launched.close()


@pytest.fixture
def open_page(browser: Browser) -> Iterator[Callable[..., Page]]:
    """A new page in ``ZONE`` (or another zone); every request it makes is recorded in
    ``page.requested`` and must go to the server it opened."""
    contexts = []

    def open_at(url: str, zone: str = ZONE, **options: Any) -> Page:
        context = browser.new_context(timezone_id=zone, accept_downloads=True, **options)
        contexts.append(context)
        page = context.new_page()
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        page.requested = requested  # type: ignore[attr-defined]
        page.goto(url)
        page.wait_for_selector("body[data-state]:not([data-state=loading])", timeout=60_000)
        origin = url.split("/#")[0].rstrip("/")
        strays = [u for u in requested if not u.startswith((origin, "data:", "blob:"))]
        assert not strays, f"the page loaded from elsewhere: {strays}"
        return page

    yield open_at
    for context in contexts:
        context.close()


@pytest.fixture
def local_server(tmp_path: Path) -> Iterator[Callable[..., BackgroundServer]]:
    servers: list[BackgroundServer] = []

    def start(events: list[dict[str, Any]], token: str | None = None) -> BackgroundServer:
        store = open_store(tmp_path / f"server-{len(servers)}.sqlite3")
        if events:
            store.ingest(events)
        server = BackgroundServer(store, token=token).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def api_query(
    base: str, slug: str, token: str | None = None, **params: Any
) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = httpx.get(
        f"{base}/api/v1/meters/{slug}/query", params={**PERIOD, **params}, headers=headers
    )
    answer.raise_for_status()
    rows: list[dict[str, Any]] = answer.json()["data"]
    return rows


def by_key(rows: list[dict[str, Any]], key: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for row in rows:
        name = row["subject"] if key == "subject" else row["groupBy"].get(key)
        out[name or "(none)"] = out.get(name or "(none)", 0.0) + row["value"]
    return out


def shown_totals(page: Page) -> dict[str, float]:
    cells = page.query_selector_all("#totals [data-metric]")
    return {
        str(cell.get_attribute("data-metric")): float(cell.get_attribute("data-value") or "nan")
        for cell in cells
    }


def shown_table(page: Page, table: str, column: str) -> dict[str, float]:
    rows = page.query_selector_all(f"#{table} tbody tr[data-key]")
    out = {}
    for row in rows:
        cell = row.query_selector(f"td[data-key={column}]")
        assert cell is not None
        out[str(row.get_attribute("data-key"))] = float(cell.get_attribute("data-value") or "nan")
    return out


def expected_metrics(base: str, shape: str, key: str, **extra: Any) -> dict[str, dict[str, float]]:
    """Each metric per ``key`` (subject or model) as the meter API gives it."""
    if shape == "litellm":
        slugs = {
            "cost": "litellm_tokens_cost",
            "calls": "litellm_tokens_calls",
            "input": "litellm_tokens_prompt_tokens",
            "output": "litellm_tokens_completion_tokens",
            "cached": "litellm_tokens_cache_read_tokens",
        }
        found = {m: by_key(api_query(base, s, groupBy=key, **extra), key) for m, s in slugs.items()}
    else:
        found = {
            "cost": by_key(api_query(base, "prompt_cost", groupBy=key, **extra), key),
            "calls": by_key(api_query(base, "prompt_calls", groupBy=key, **extra), key),
        }
        rows = api_query(base, "tokens_total", groupBy=[key, "type"], **extra)
        for metric, types in (
            ("input", {"input", "cache_read", "cache_creation"}),
            ("output", {"output", "reasoning"}),
            ("cached", {"cache_read"}),
        ):
            found[metric] = by_key([r for r in rows if r["groupBy"]["type"] in types], key)
    return found


def assert_close(shown: dict[str, float], expected: dict[str, float], what: str) -> None:
    assert set(shown) == set(expected), what
    for name, value in expected.items():
        assert shown[name] == pytest.approx(value, rel=1e-9, abs=1e-9), f"{what}: {name}"


@pytest.mark.parametrize("shape", ["litellm", "tokens"])
def test_the_page_shows_the_meter_apis_numbers(
    shape: str, local_server: Callable[..., BackgroundServer], open_page: Callable[..., Page]
) -> None:
    events = usage_events(shape)
    server = local_server(events)
    event_type = "litellm_tokens" if shape == "litellm" else "prompt"
    page = open_page(f"{server.url}/{MARCH}&events={event_type}")
    assert page.get_attribute("body", "data-state") == "ready"
    period = page.query_selector("#period-text")
    assert period is not None
    assert (period.get_attribute("data-from"), period.get_attribute("data-to")) == (
        PERIOD["from"],
        PERIOD["to"],
    )
    assert period.get_attribute("data-zone") == ZONE

    per_subject = expected_metrics(server.url, shape, "subject")
    per_model = expected_metrics(server.url, shape, "model")
    failures = by_key(api_query(server.url, f"{event_type}_failures", groupBy="model"), "model")
    totals = shown_totals(page)
    for metric, values in per_model.items():
        assert totals[metric] == pytest.approx(sum(values.values()), rel=1e-9), metric
        assert_close(shown_table(page, "models", metric), values, f"models {metric}")
        assert_close(shown_table(page, "subjects", metric), per_subject[metric], metric)
    assert totals["failures"] == sum(failures.values()) > 0
    assert_close(shown_table(page, "models", "failures"), failures, "models failures")
    assert totals["subjects"] == len(SUBJECTS)
    assert totals["cached"] > 0 and totals["cost"] > 0

    # The charts draw every window's stack; the legend names the models.
    assert len(page.query_selector_all("#chart-cost rect")) > 0
    assert set(page.inner_text("#legend").split()) == set(MODELS)
    # The shown text is the value, formatted.
    calls = page.query_selector("#totals [data-metric=calls] .value")
    assert calls is not None and calls.inner_text() == f"{int(totals['calls']):,}"

    # Recent events: the one no cost meter can read is marked, with the server's reason.
    invalid = page.query_selector_all("#events tr.invalid")
    if shape == "litellm":
        assert len(invalid) == 1
        assert "not metered" in invalid[0].inner_text()
        assert "cost" in invalid[0].inner_text()
    assert len(page.query_selector_all("#events tbody tr")) == 50


def test_a_subjects_view_and_sorting(
    local_server: Callable[..., BackgroundServer], open_page: Callable[..., Page]
) -> None:
    server = local_server(usage_events("litellm"))
    page = open_page(f"{server.url}/{MARCH}&events=litellm_tokens")
    costs = list(shown_table(page, "subjects", "cost").values())
    assert costs == sorted(costs, reverse=True)  # the costliest first
    page.click("#subjects th[data-key=cost]")
    assert page.get_attribute("#subjects th[data-key=cost]", "aria-sort") == "ascending"
    costs = list(shown_table(page, "subjects", "cost").values())
    assert costs == sorted(costs)
    page.click("#subjects th[data-key=key]")
    assert list(shown_table(page, "subjects", "cost")) == sorted(SUBJECTS)

    page.click("#subjects tr[data-key=globex]")
    page.wait_for_selector("#subject-title:not([hidden])")
    page.wait_for_selector("body[data-state=ready]")
    assert "subject=globex" in page.url
    assert page.inner_text("#subject-title") == "globex"
    assert page.is_hidden("#subjects-section")
    per_model = expected_metrics(server.url, "litellm", "model", subject="globex")
    totals = shown_totals(page)
    for metric, values in per_model.items():
        assert totals[metric] == pytest.approx(sum(values.values()), rel=1e-9), metric
        assert_close(shown_table(page, "models", metric), values, f"globex {metric}")
    subjects = {
        row.inner_text().split("\t")[1] for row in page.query_selector_all("#events tbody tr")
    }
    assert subjects == {"globex"}
    assert len(page.query_selector_all("#chart-tokens rect")) > 0

    page.click("#home")
    page.wait_for_selector("#subjects-section:not([hidden])")


def test_the_csv_download_is_the_apis_csv(
    local_server: Callable[..., BackgroundServer], open_page: Callable[..., Page], tmp_path: Path
) -> None:
    server = local_server(usage_events("tokens"))
    page = open_page(f"{server.url}/{MARCH}&events=prompt")
    page.select_option("#subjects-section select", "tokens_total")
    with page.expect_download() as waiting:
        page.click("#subjects-section button")
    download = waiting.value
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    assert download.suggested_filename == "tokens_total-by-subject-2025-03-01-2025-03-31.csv"
    expected = httpx.get(
        f"{server.url}/api/v1/meters/tokens_total/query",
        params={**PERIOD, "groupBy": ["subject", "type"], "windowTimeZone": ZONE},
        headers={"Accept": "text/csv"},
    ).text
    assert saved.read_bytes() == expected.encode()
    assert expected.startswith("window_start,window_end,subject,type,value")
    assert expected.count("\n") > len(SUBJECTS)


def test_no_data_says_how_to_get_some(
    local_server: Callable[..., BackgroundServer], open_page: Callable[..., Page]
) -> None:
    server = local_server([])
    page = open_page(f"{server.url}/{MARCH}")
    assert page.get_attribute("body", "data-state") == "empty"
    hint = page.inner_text("#empty")
    assert "No usage in this period yet" in hint
    assert "litellm-openmeter demo --keep" in hint
    assert f"OPENMETER_API_ENDPOINT={server.url}" in hint


def test_the_last_30_days_follow_the_browsers_clock_and_zone(
    local_server: Callable[..., BackgroundServer], browser: Browser
) -> None:
    """With no range given, the period ends at the next local midnight after "now" (the
    page's clock, set here) and starts 30 local days before it."""
    server = local_server(usage_events("litellm"))
    context = browser.new_context(timezone_id="America/New_York")
    try:
        page = context.new_page()
        context.clock.set_fixed_time(datetime(2025, 3, 20, 15, 0, tzinfo=timezone.utc))
        page.goto(f"{server.url}/")
        page.wait_for_selector("body[data-state=ready]", timeout=60_000)
        period = page.query_selector("#period-text")
        assert period is not None
        # New York: 2025-03-21 00:00 EDT is 04:00Z; 30 days before, 02-19 00:00 EST is 05:00Z.
        assert period.get_attribute("data-from") == "2025-02-19T05:00:00Z"
        assert period.get_attribute("data-to") == "2025-03-21T04:00:00Z"
        cost = shown_totals(page)["cost"]
        expected = api_query(
            server.url,
            "litellm_tokens_cost",
            **{"from": "2025-02-19T05:00:00Z", "to": "2025-03-21T04:00:00Z"},
        )
        assert cost == pytest.approx(sum(row["value"] for row in expected), rel=1e-9)
        # HOUR windows: the last 24 hours, up to the next full hour.
        page.select_option("#period", "24h")
        page.wait_for_selector("#period-text[data-to='2025-03-20T16:00:00Z']")
        assert page.get_attribute("#period-text", "data-from") == "2025-03-19T16:00:00Z"
    finally:
        context.close()


def test_a_token_guards_the_data_and_never_enters_a_url(
    local_server: Callable[..., BackgroundServer], open_page: Callable[..., Page]
) -> None:
    token = "dash-token-51e2"
    server = local_server(usage_events("litellm"), token=token)
    for path in ("/api/v1/meters", "/dashboard/config.json"):
        assert httpx.get(f"{server.url}{path}").status_code == 401
    page = open_page(f"{server.url}/{MARCH}")
    assert page.get_attribute("body", "data-state") == "login"
    assert page.is_hidden("#content")
    page.fill("#token", token)
    page.click("#login button")
    page.wait_for_selector("body[data-state=ready]")
    assert shown_totals(page)["cost"] > 0
    requested: list[str] = page.requested  # type: ignore[attr-defined]
    assert requested and not any(token in url for url in requested)
    assert token not in page.url


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[Callable[..., tuple[str, subprocess.Popen[str]]]]:
    """``litellm-openmeter dashboard`` in its own process, pointed at ``endpoint``."""
    started: list[subprocess.Popen[str]] = []

    def start(endpoint: str, **env: str) -> tuple[str, subprocess.Popen[str]]:
        port = free_port()
        process = subprocess.Popen(
            [*CLI, "dashboard", "--port", str(port)],
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("OPENMETER_")},
                "OPENMETER_API_ENDPOINT": endpoint,
                "OPENMETER_API_KEY": KEY,
                "OPENMETER_OUTBOX_PATH": str(tmp_path / "none.sqlite3"),
                **env,
            },
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(f"{url}/", timeout=1).status_code == 200
            except httpx.TransportError:
                assert process.poll() is None, process.communicate()[1]
                return False

        wait_for(up, 30, "the dashboard to serve")
        return url, process

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
            process.communicate(timeout=30)


def test_the_dashboard_command_keeps_the_key_to_itself(
    local_server: Callable[..., BackgroundServer],
    dashboard: Callable[..., tuple[str, subprocess.Popen[str]]],
    browser: Browser,
    tmp_path: Path,
) -> None:
    """A second local server stands in for OpenMeter, with the key as its token. The
    page's numbers are that server's; the key is in no response, URL or log line; the
    outbox beside the dashboard shows its queue and dead letters."""
    from conftest import fill_outbox

    outbox = tmp_path / "outbox.sqlite3"
    fill_outbox(outbox, calls=3, endpoint="http://127.0.0.1:9", no_subject=2)
    upstream = local_server(usage_events("litellm"), token=KEY)
    url, process = dashboard(upstream.url, OPENMETER_OUTBOX_PATH=str(outbox))
    context = browser.new_context(timezone_id=ZONE)
    seen: list[tuple[str, bytes]] = []

    def keep(response: Any) -> None:
        try:
            seen.append((response.url, response.body()))
        except Exception:  # a download or redirect has no body to read
            seen.append((response.url, b""))

    try:
        page = context.new_page()
        page.on("response", keep)
        page.goto(f"{url}/{MARCH}&events=litellm_tokens")
        page.wait_for_selector("body[data-state=ready]", timeout=60_000)
        per_model = expected_metrics(upstream.url.rstrip("/"), "litellm", "model", token=KEY)
        totals = shown_totals(page)
        assert totals["cost"] == pytest.approx(sum(per_model["cost"].values()), rel=1e-9)
        assert totals["subjects"] == len(SUBJECTS)
        # Delivery health from the outbox beside it.
        assert page.get_attribute("#delivery [data-metric=queued]", "data-metric") == "queued"
        assert page.inner_text("#delivery [data-metric=queued] .value") == "3"
        assert page.inner_text("#delivery [data-metric=dead] .value") == "2"
        assert "no_subject" in page.inner_text("#dead-letters")
        page.select_option("#models-section select", "litellm_tokens_calls")
        with page.expect_download() as waiting:
            page.click("#models-section button")
        assert waiting.value.path().read_text().startswith("window_start,window_end,model,value")
    finally:
        context.close()
    assert len(seen) > 10
    for address, body in seen:
        assert KEY not in address and KEY.encode() not in body, address
    # Only read-only queries pass; the key is refused to no one else.
    assert httpx.post(f"{url}/api/v1/events", json=[]).status_code == 405
    assert httpx.get(f"{url}/api/v1/other").status_code == 404
    assert httpx.delete(f"{url}/api/v1/meters/litellm_tokens_cost").status_code == 405
    process.terminate()
    _, log = process.communicate(timeout=30)
    assert "GET /api/v1/meters" in log and "dashboard for" in log
    assert KEY not in log


def _garbage_upstream() -> Starlette:
    async def meters(request: Request) -> Response:
        return PlainTextResponse("<html>gateway says hello</html>")

    return Starlette(routes=[Route("/api/v1/meters", meters)])


@pytest.mark.parametrize("upstream", ["closed", "malformed", "bad key"])
def test_a_failing_upstream_is_an_error_on_the_page(
    upstream: str,
    local_server: Callable[..., BackgroundServer],
    dashboard: Callable[..., tuple[str, subprocess.Popen[str]]],
    open_page: Callable[..., Page],
) -> None:
    garbage = None
    if upstream == "closed":
        endpoint, expected = f"http://127.0.0.1:{free_port()}", "cannot reach"
    elif upstream == "malformed":
        garbage = BackgroundApp(_garbage_upstream()).start()
        endpoint, expected = garbage.url, "not JSON"
    else:
        endpoint, expected = local_server([], token="another-key").url, "rejected the API key"
    try:
        url, _ = dashboard(endpoint)
        page = open_page(f"{url}/{MARCH}")
        assert page.get_attribute("body", "data-state") == "error"
        message = page.inner_text("#error")
        assert expected in message and "/api/v1/meters" in message
        assert KEY not in message
    finally:
        if garbage is not None:
            garbage.stop()


def test_a_phone_sized_screen_needs_no_sideways_scrolling(
    local_server: Callable[..., BackgroundServer], open_page: Callable[..., Page]
) -> None:
    server = local_server(usage_events("litellm"))
    page = open_page(
        f"{server.url}/{MARCH}&events=litellm_tokens",
        viewport={"width": 390, "height": 844},
        is_mobile=True,
    )
    widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1]
    box = page.query_selector("#chart-cost svg")
    assert box is not None
    bounds = box.bounding_box()
    assert bounds is not None and bounds["width"] <= 390
