"""The real LiteLLM proxy (``litellm --config``) with our callback, billed into the local
server, driven by the official ``openai`` client."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from litellm_openmeter.server import BackgroundServer, open_store
from slow_provider import CHUNKS, PROMPT_TOKENS

from conftest import free_port, wait_for

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

# Each starts the real proxy (some 15 s of CPU); none reads a date, so CI's second pass,
# with the clock a year ahead, leaves them out.
pytestmark = pytest.mark.proxy

HERE = Path(__file__).resolve().parent
MASTER_KEY = "sk-proxy-test-master-0123456789"
CONFIG = """
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      mock_response: "hello from the mock"
      api_key: sk-not-used
  - model_name: embedder
    litellm_params:
      model: openai/text-embedding-3-small
      mock_response: [0.1, 0.2]
      api_key: sk-not-used
  - model_name: slow-usage
    litellm_params:
      model: slow/usage
  - model_name: slow-silent
    litellm_params:
      model: slow/silent
litellm_settings:
  callbacks: {callbacks}
  custom_provider_map:
    - provider: slow
      custom_handler: slow_provider.slow_provider
"""

KILLER = """
import os
import signal

from litellm.integrations.custom_logger import CustomLogger


class Killer(CustomLogger):
    \"\"\"Kills its process in LiteLLM's success hooks of a request from user kill-me:
    after the proxy answered, before the success hooks that come after it ran.\"\"\"

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        if (kwargs.get("standard_logging_object") or {}).get("end_user") == "kill-me":
            os.kill(os.getpid(), signal.SIGKILL)


killer = Killer()
"""


def start_proxy(
    tmp_path: Path,
    server: BackgroundServer,
    workers: int = 1,
    callbacks: str = "litellm_openmeter.proxy_handler_instance",
    extra_env: dict[str, str] | None = None,
    extra_args: tuple[str, ...] = (),
) -> tuple[str, subprocess.Popen[str]]:
    """Start ``litellm --config`` on a free port, billing into ``server``; returns its
    URL and process at once (see ``wait_until_up``)."""
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(callbacks=callbacks))
    (tmp_path / "killer.py").write_text(KILLER)
    (tmp_path / "slow_provider.py").write_text((HERE / "slow_provider.py").read_text())
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("OPENMETER_")}
    env.update(
        LITELLM_MASTER_KEY=MASTER_KEY,
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        OPENMETER_API_KEY="meter-token",
        OPENMETER_API_ENDPOINT=server.url,
        OPENMETER_OUTBOX_PATH=str(tmp_path / "outbox.sqlite3"),
        OPENMETER_FLUSH_INTERVAL="0.1",
        PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    )
    env.update(extra_env or {})
    litellm_cli = Path(sys.executable).with_name("litellm")
    process = subprocess.Popen(
        [
            str(litellm_cli),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            str(workers),
            *extra_args,
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return f"http://127.0.0.1:{port}", process


def wait_until_up(url: str, process: subprocess.Popen[str]) -> None:
    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the proxy exited: {process.stderr.read()[-2000:]}")  # type: ignore[union-attr]
        try:
            return httpx.get(f"{url}/health/liveliness", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(up, timeout=180, what="the LiteLLM proxy to start")


def end_proxy(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()


@contextmanager
def running_proxy(
    tmp_path: Path, server: BackgroundServer, **options: Any
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``start_proxy`` (same options), waiting until it answers; yields URL and process,
    and stops it after."""
    url, process = start_proxy(tmp_path, server, **options)
    try:
        wait_until_up(url, process)
        yield url, process
    finally:
        end_proxy(process)


@pytest.fixture
def meter(tmp_path: Path) -> Iterator[BackgroundServer]:
    with BackgroundServer(open_store(tmp_path / "meter.sqlite3"), token="meter-token") as server:
        yield server


@pytest.fixture
def proxy(tmp_path: Path, meter: BackgroundServer) -> Iterator[tuple[str, BackgroundServer]]:
    with running_proxy(tmp_path, meter) as (url, _):
        yield url, meter


def test_proxy_bills_each_request_once(proxy: tuple[str, BackgroundServer]) -> None:
    url, server = proxy
    client = openai.OpenAI(base_url=url, api_key=MASTER_KEY)
    messages = [{"role": "user", "content": "hello"}]
    client.chat.completions.create(model="gpt-4o", messages=messages, user="cust-plain")
    client.chat.completions.create(model="gpt-4o", messages=messages)  # no user
    stream = client.chat.completions.create(
        model="gpt-4o",
        messages=messages,
        user="cust-stream",
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [chunk.usage for chunk in stream if chunk.usage is not None]
    client.embeddings.create(model="embedder", input=["hello"], user="cust-embed")

    wait_for(lambda: server.store.count_events() >= 4, timeout=60, what="four billed events")
    events: dict[str, dict[str, Any]] = {
        item["event"]["subject"]: item["event"]
        for item in server.store.list_events(limit=100, start=0)
    }
    assert server.store.count_events() == 4 and server.store.duplicates == 0
    assert set(events) == {"cust-plain", "default_user_id", "cust-stream", "cust-embed"}
    plain = events["cust-plain"]["data"]
    assert (plain["model"], plain["model_group"], plain["provider"]) == (
        "openai/gpt-4o",
        "gpt-4o",
        "openai",
    )
    assert (plain["prompt_tokens"], plain["completion_tokens"], plain["total_tokens"]) == (
        10,
        20,
        30,
    )
    assert plain["cost"] == pytest.approx(0.000225) and plain["end_user"] == "cust-plain"
    streamed = events["cust-stream"]["data"]
    assert usage and streamed["completion_tokens"] == usage[0].completion_tokens
    assert streamed["prompt_tokens"] == usage[0].prompt_tokens and streamed["cost"] > 0
    embedded = events["cust-embed"]["data"]
    assert (embedded["model_group"], embedded["call_type"]) == ("embedder", "aembedding")
    assert embedded["prompt_tokens"] > 0 and embedded["cost"] > 0
    assert events["default_user_id"]["data"]["model_group"] == "gpt-4o"
    costs = httpx.get(
        f"{server.url}/api/v1/meters/litellm_tokens_cost/query",
        params={"groupBy": "subject"},
        headers={"authorization": "Bearer meter-token"},
    ).json()["data"]
    assert {row["subject"] for row in costs} == set(events)


def test_a_stream_the_client_left_is_billed_as_an_estimate(
    proxy: tuple[str, BackgroundServer],
) -> None:
    """A client that leaves a slow stream after three chunks: LiteLLM bills what it
    streamed, flagged as a client disconnect, and the event says it is an estimate.
    Streams read to the end are exact when the provider reports usage, estimates when
    it does not."""
    url, server = proxy
    with (
        httpx.Client(timeout=60) as http,
        http.stream(
            "POST",
            f"{url}/v1/chat/completions",
            headers={"authorization": f"Bearer {MASTER_KEY}"},
            json={
                "model": "slow-usage",
                "messages": [{"role": "user", "content": "a long story, please"}],
                "user": "leaver",
                "stream": True,
            },
        ) as response,
    ):
        assert response.status_code == 200
        chunks = 0
        for line in response.iter_lines():
            chunks += line.startswith("data: {")
            if chunks == 3:
                break  # leaving the block drops the connection
    client = openai.OpenAI(base_url=url, api_key=MASTER_KEY)
    for model, user in (("slow-usage", "reader"), ("slow-silent", "silent-reader")):
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "a long story, please"}],
            user=user,
            stream=True,
        )
        assert sum(1 for _ in stream) >= CHUNKS

    wait_for(lambda: server.store.count_events() >= 3, timeout=60, what="three billed events")
    events = {
        item["event"]["subject"]: item["event"]["data"]
        for item in server.store.list_events(limit=100, start=0)
    }
    assert server.store.count_events() == 3
    left = events["leaver"]
    assert (left["usage_accuracy"], left["estimate_reason"]) == ("estimated", "client_disconnected")
    assert 0 < left["completion_tokens"] < CHUNKS
    read = events["reader"]
    assert (read["usage_accuracy"], read["prompt_tokens"]) == ("exact", PROMPT_TOKENS)
    assert "estimate_reason" not in read
    silent = events["silent-reader"]
    assert (silent["usage_accuracy"], silent["estimate_reason"]) == (
        "estimated",
        "no_provider_usage",
    )
    estimated = httpx.get(
        f"{server.url}/api/v1/meters/litellm_tokens_calls/query",
        params={"groupBy": "usage_accuracy", "from": "2000-01-01T00:00:00Z"},
        headers={"authorization": "Bearer meter-token"},
    ).json()["data"]
    assert {row["groupBy"]["usage_accuracy"]: row["value"] for row in estimated} == {
        "estimated": 2,
        "exact": 1,
    }


def billed_subjects(folder: Path) -> list[str]:
    """Subjects of every event the meter server stored (one per billed request)."""
    with sqlite3.connect(folder / "meter.sqlite3") as conn:
        return [row[0] for row in conn.execute("SELECT subject FROM events")]


def _workers(process: subprocess.Popen[str]) -> list[int]:
    """Pids of the proxy's worker processes: uvicorn's spawned children, or gunicorn's
    forked ones (the master's command line)."""
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    master = Path(f"/proc/{process.pid}/cmdline").read_bytes()
    workers = []
    for pid in children:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"spawn_main" in cmdline or cmdline == master:
            workers.append(int(pid))
    return workers


def test_a_proxy_killed_after_answering_still_bills_the_request(
    tmp_path: Path, meter: BackgroundServer
) -> None:
    """The proxy answers before LiteLLM runs success hooks: a SIGKILL in between must not
    lose the request. The killer callback runs before ours and kills the proxy there.
    The held event stays in the outbox, and the restarted proxy sends it as it is, its
    process being dead."""
    messages = [{"role": "user", "content": "hello"}]
    callbacks = "[killer.killer, litellm_openmeter.proxy_handler_instance]"
    with running_proxy(tmp_path, meter, callbacks=callbacks) as (url, process):
        client = openai.OpenAI(base_url=url, api_key=MASTER_KEY, max_retries=0)
        client.chat.completions.create(model="gpt-4o", messages=messages, user="cust-first")
        answer = client.chat.completions.create(model="gpt-4o", messages=messages, user="kill-me")
        assert answer.choices[0].message.content == "hello from the mock"
        process.wait(60)
        assert process.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL)
    assert "kill-me" not in billed_subjects(tmp_path)  # no process of the proxy is left

    with running_proxy(tmp_path, meter) as (url, _):
        wait_for(
            lambda: sorted(billed_subjects(tmp_path)) == ["cust-first", "kill-me"],
            timeout=60,
            what="the killed request billed once the proxy runs again",
        )
        client = openai.OpenAI(base_url=url, api_key=MASTER_KEY, max_retries=0)
        client.chat.completions.create(model="gpt-4o", messages=messages, user="cust-last")
        wait_for(
            lambda: len(billed_subjects(tmp_path)) == 3,
            timeout=60,
            what="the next request billed",
        )
    assert sorted(billed_subjects(tmp_path)) == ["cust-first", "cust-last", "kill-me"]
    assert meter.store.duplicates == 0
    killed = next(
        item["event"]["data"]
        for item in meter.store.list_events(limit=10, start=0)
        if item["event"]["subject"] == "kill-me"
    )
    assert (killed["prompt_tokens"], killed["completion_tokens"], killed["total_tokens"]) == (
        10,
        20,
        30,
    )
    assert killed["cost"] == pytest.approx(0.000225)
    assert (killed["model"], killed["model_group"]) == ("openai/gpt-4o", "gpt-4o")


def _load(
    target: list[str], requests: int, on_answer: Any = None, threads: int = 8
) -> tuple[set[str], set[str]]:
    """``requests`` chat calls from 8 threads, one subject each, to the proxy at
    ``target[0]`` (which may change meanwhile); returns the subjects answered and those
    that failed. ``on_answer(count)`` runs after each answer."""
    answered: set[str] = set()
    failed: set[str] = set()
    lock = threading.Lock()
    clients = {
        url: openai.OpenAI(base_url=url, api_key=MASTER_KEY, max_retries=0, timeout=30)
        for url in target
    }

    def call(index: int) -> None:
        subject = f"cust-{index}"
        url = target[0]
        client = clients.get(url) or openai.OpenAI(
            base_url=url, api_key=MASTER_KEY, max_retries=0, timeout=30
        )
        try:
            client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}], user=subject
            )
        except openai.APIError:
            with lock:
                failed.add(subject)
            return
        with lock:
            answered.add(subject)
            count = len(answered)
        if on_answer is not None:
            on_answer(count)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(call, range(requests)))
    return answered, failed


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("server", ["uvicorn", "gunicorn"])
def test_sigterm_under_load_bills_every_answered_request_before_exit(
    tmp_path: Path, meter: BackgroundServer, server: str
) -> None:
    """uvicorn stops its workers gracefully, LiteLLM drains its callbacks, and the
    logger delivers at exit, though uvicorn ends each worker by raising SIGTERM again.
    The two workers share one outbox: each request billed once, nothing sent twice."""
    requests = 400
    extra_args = ("--run_gunicorn",) if server == "gunicorn" else ()
    with running_proxy(tmp_path, meter, workers=2, extra_args=extra_args) as (url, process):
        wait_for(lambda: len(_workers(process)) == 2, what="two workers")

        def stop(count: int) -> None:
            if count == requests // 4:
                process.send_signal(signal.SIGTERM)

        answered, _ = _load([url], requests, stop)
        assert process.wait(120) == 0
    assert len(answered) >= requests // 4
    subjects = billed_subjects(tmp_path)  # at once: nothing runs to send more
    assert sorted(subjects) == sorted(answered)
    assert meter.store.duplicates == 0


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
@pytest.mark.timeout(600)
def test_a_rolling_restart_bills_each_answered_request_once(
    tmp_path: Path, meter: BackgroundServer
) -> None:
    """Two proxies of 2 workers on one outbox. Under load the old one gets SIGTERM and,
    a grace period later, SIGKILL (its workers in the middle of stopping); the load
    moves to the new one, and one of its workers is SIGKILLed later."""
    requests = 900
    grace = 0.5
    (old_url, old), (new_url, new) = (start_proxy(tmp_path, meter, workers=2) for _ in "ab")
    try:
        wait_until_up(old_url, old)
        wait_until_up(new_url, new)
        wait_for(lambda: len(_workers(old)) == 2 and len(_workers(new)) == 2, what="workers")
        target = [old_url]

        def kill_old() -> None:
            for pid in [*_workers(old), old.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

        def roll(count: int) -> None:
            if count == requests // 3:
                target[0] = new_url
                old.send_signal(signal.SIGTERM)
                threading.Timer(grace, kill_old).start()
            elif count == 2 * requests // 3:
                os.kill(_workers(new)[0], signal.SIGKILL)

        answered, failed = _load(target, requests, roll)
        assert len(answered) > requests // 2
        wait_for(
            lambda: answered <= set(billed_subjects(tmp_path)),
            timeout=120,
            what="every answered request billed",
        )
    finally:
        end_proxy(old)
        end_proxy(new)
    subjects = billed_subjects(tmp_path)
    assert len(subjects) == len(set(subjects)), "a request was billed twice"
    assert set(subjects) - answered <= failed
    # Batches a killed worker had posted and not yet acknowledged are sent again by
    # another (one sender per worker: one batch each at most); the server drops the
    # repeats by (source, id), as OpenMeter does.
    assert meter.store.duplicates <= 3 * 100
