"""Construction from the environment, the proxy's ready instance, fork and exit handling."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import litellm_openmeter
from litellm_openmeter import OpenMeterLogger, SettingsError

from conftest import hook_kwargs, wait_for
from ingest_server import RecordingServer


def test_no_arguments_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ingest: RecordingServer
) -> None:
    monkeypatch.setenv("OPENMETER_API_KEY", "env-key")
    monkeypatch.setenv("OPENMETER_API_ENDPOINT", ingest.url + "/")
    monkeypatch.setenv("OPENMETER_EVENT_TYPE", "my_tokens")
    monkeypatch.setenv("OPENMETER_FLUSH_INTERVAL", "0.05")
    logger = OpenMeterLogger()
    try:
        assert logger.settings.events_url == f"{ingest.url}/api/v1/events"
        assert (
            logger.settings.outbox_path
            == tmp_path / "cache" / "litellm-openmeter" / "outbox.sqlite3"
        )
        assert "env-key" not in repr(logger) and "env-key" not in repr(logger.settings)
        assert repr(logger).startswith(f"OpenMeterLogger(endpoint={logger.settings.endpoint!r}")
        logger.record_call(hook_kwargs("env-call"), success=True)
        assert logger.flush(10)
        [event] = ingest.accepted_events()
        assert event["type"] == "my_tokens"
        assert ingest.requests[0].headers["authorization"] == "Bearer env-key"
    finally:
        logger.close()


def test_missing_key_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="OPENMETER_API_KEY"):
        OpenMeterLogger()


def test_proxy_handler_instance(monkeypatch: pytest.MonkeyPatch, ingest: RecordingServer) -> None:
    monkeypatch.setenv("OPENMETER_API_KEY", "proxy-key")
    monkeypatch.setenv("OPENMETER_API_ENDPOINT", ingest.url)
    monkeypatch.setattr(litellm_openmeter, "_proxy_instance", None)
    instance = litellm_openmeter.proxy_handler_instance
    try:
        assert isinstance(instance, OpenMeterLogger)
        assert litellm_openmeter.proxy_handler_instance is instance
        from litellm.proxy.types_utils.utils import get_instance_fn

        assert get_instance_fn("litellm_openmeter.proxy_handler_instance") is instance
    finally:
        instance.close()


def test_sender_restarts_in_a_forked_child(make_logger: Any, ingest: RecordingServer) -> None:
    logger = make_logger()
    logger.record_call(hook_kwargs("before-fork"), success=True)
    assert logger.flush(10)
    pid = os.fork()
    if pid == 0:  # the child: the parent's sender thread does not exist here
        code = 1
        try:
            logger.record_call(hook_kwargs("in-child"), success=True)
            code = 0 if logger.flush(10) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert {e["id"] for e in ingest.accepted_events()} == {"before-fork", "in-child"}


def test_events_are_flushed_at_interpreter_exit(tmp_path: Path, ingest: RecordingServer) -> None:
    script = f"""
import os, sys
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
sys.path.insert(0, {str(Path(__file__).parent)!r})
from conftest import hook_kwargs
from litellm_openmeter import OpenMeterLogger
logger = OpenMeterLogger(api_key="k", endpoint={ingest.url!r},
                         outbox_path={str(tmp_path / "exit.sqlite3")!r}, flush_interval=30)
for n in range(5):
    logger.record_call(hook_kwargs(f"exit-{{n}}"), success=True)
"""  # no flush, no close: the exit handler must deliver within the flush interval
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    wait_for(lambda: len(ingest.accepted_events()) == 5, what="the exit flush")


@pytest.mark.skipif(
    importlib.util.find_spec("litellm_enterprise") is None,
    reason="LiteLLM imports these lazily only with litellm-enterprise installed",
)
def test_building_a_logger_imports_what_litellm_would_import_at_the_first_call(
    tmp_path: Path,
) -> None:
    """Not at ``import litellm_openmeter``: when the logger is built, so that the first
    call's event loop does not wait for some 450 modules."""
    script = (
        "import sys, litellm_openmeter\n"
        "from litellm_openmeter.logger import LAZY_LITELLM_MODULES\n"
        "print(all(name not in sys.modules for name in LAZY_LITELLM_MODULES))\n"
        f"litellm_openmeter.OpenMeterLogger(api_key='k', outbox_path={str(tmp_path / 'o')!r})\n"
        "print(all(name in sys.modules for name in LAZY_LITELLM_MODULES))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True"),
    )
    assert done.stdout.split() == ["True", "True"], done.stderr
