"""The logger delivering real LiteLLM calls into the local server, queried back; and the
``serve`` command as a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import litellm
import pytest

from litellm_openmeter import OpenMeterLogger
from litellm_openmeter.server import BackgroundServer, open_store

from conftest import free_port, usage_response, wait_for

MESSAGES = [{"role": "user", "content": "hello"}]


def rows(http: httpx.Client, slug: str, **params: Any) -> dict[tuple[Any, ...], float]:
    response = http.get(f"/api/v1/meters/{slug}/query", params=params)
    assert response.status_code == 200, response.text
    return {(r["subject"], *r["groupBy"].values()): r["value"] for r in response.json()["data"]}


@pytest.mark.parametrize("shape", ["litellm", "tokens"])
def test_logger_into_local_server(tmp_path: Path, callbacks: list[Any], shape: str) -> None:
    with BackgroundServer(open_store(tmp_path / "s.sqlite3"), token="local-token") as server:
        logger = OpenMeterLogger(
            api_key="local-token",
            endpoint=server.url,
            event_shape=shape,
            outbox_path=tmp_path / "o.sqlite3",
            flush_interval=0.05,
        )
        callbacks.append(logger)
        cached = usage_response()
        litellm.completion(model="gpt-4o", messages=MESSAGES, mock_response="hi", user="ann")
        litellm.completion(model="gpt-4o", messages=MESSAGES, mock_response=cached, user="ann")
        litellm.completion(model="gpt-4o-mini", messages=MESSAGES, mock_response="hi", user="ben")
        wait_for(lambda: logger.stats()["enqueued"] >= (3 if shape == "litellm" else 6))
        assert logger.flush(10)
        logger.close()
        with httpx.Client(
            base_url=server.url, headers={"authorization": "Bearer local-token"}
        ) as http:
            if shape == "litellm":
                prompt = rows(http, "litellm_tokens_prompt_tokens", groupBy=["subject", "model"])
                assert prompt == {("ann", "gpt-4o"): 110, ("ben", "gpt-4o-mini"): 10}
                cache = rows(http, "litellm_tokens_cache_read_tokens", groupBy="subject")
                assert cache == {("ann",): 40, ("ben",): 0}
                calls = rows(http, "litellm_tokens_calls", groupBy="subject")
                assert calls == {("ann",): 2, ("ben",): 1}
                cost = rows(http, "litellm_tokens_cost", groupBy="subject")
            else:
                tokens = rows(http, "tokens_total", groupBy=["subject", "type"])
                assert tokens == {
                    ("ann", "input"): 70,
                    ("ann", "output"): 70,
                    ("ann", "cache_read"): 40,
                    ("ben", "input"): 10,
                    ("ben", "output"): 20,
                }
                calls = rows(http, "prompt_calls", groupBy="subject")
                assert calls == {("ann",): 2, ("ben",): 1}
                cost = rows(http, "prompt_cost", groupBy="subject")
            assert cost[("ann",)] == pytest.approx(0.000225 + 0.0007)
            assert cost[("ben",)] == pytest.approx(1.35e-05)
            events = http.get("/api/v1/events").json()
            assert all("validationError" not in item for item in events)


def test_serve_command(tmp_path: Path) -> None:
    port = free_port()
    env = dict(os.environ, OPENMETER_SERVER_TOKEN="cli-token")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "litellm_openmeter.cli",
            "serve",
            "--port",
            str(port),
            "--db",
            str(tmp_path / "cli.sqlite3"),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(f"{url}/api/v1/meters", timeout=1).status_code == 401
            except httpx.TransportError:
                return False

        wait_for(up, timeout=30, what="the server to listen")
        response = httpx.post(
            f"{url}/api/v1/events",
            headers={
                "authorization": "Bearer cli-token",
                "content-type": "application/cloudevents+json",
            },
            content=b'{"specversion":"1.0","type":"t","id":"1","source":"s","subject":"x"}',
        )
        assert response.status_code == 204
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    assert f"serving OpenMeter API on http://127.0.0.1:{port}" in err
    assert '"POST /api/v1/events" 204' in err
    assert "cli-token" not in err
    assert (tmp_path / "cli.sqlite3").exists()
    assert os.stat(tmp_path / "cli.sqlite3").st_mode & 0o077 == 0


def test_serve_bad_meters_file(tmp_path: Path) -> None:
    bad = tmp_path / "meters.yaml"
    bad.write_text("meters:\n  - slug: Bad Slug\n    aggregation: SUM\n    eventType: x\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "litellm_openmeter.cli",
            "serve",
            "--meters",
            str(bad),
            "--db",
            str(tmp_path / "x.sqlite3"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "entry 1" in result.stderr and "slug" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
