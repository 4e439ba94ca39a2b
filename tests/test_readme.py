"""The README as a user reads it: its commands parse, its Python and YAML run as written,
its settings and commands are all there, and its links lead somewhere."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from litellm_openmeter.cli.parser import build_parser
from litellm_openmeter.server import BackgroundServer, open_store

from conftest import ALL_TIME

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCUMENTS = [
    "README.md",
    "BENCHMARKS.md",
    "CONTRIBUTING.md",
    "docs/architecture.md",
    "docs/server.md",
]


def blocks(language: str, text: str = README) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def cli_commands() -> list[list[str]]:
    """Every ``litellm-openmeter ...`` the README shows in a code block or a code span."""
    found = []
    lines = [line for block in blocks("sh") for line in block.splitlines()]
    lines += re.findall(r"`(litellm-openmeter [^`]+)`", README)
    for line in lines:
        match = re.search(r"litellm-openmeter ([^&|]+)", line)
        if match:
            found.append(shlex.split(match.group(1)))
    return found


@pytest.mark.parametrize("argv", cli_commands(), ids=" ".join)
def test_every_command_in_the_readme_parses(argv: list[str]) -> None:
    if argv[0] in ("--help", "-h"):
        return
    build_parser().parse_args(argv)  # exits (SystemExit) on anything it does not take


def test_every_command_and_action_is_documented() -> None:
    parser = build_parser()
    commands = next(
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    )
    for name, sub in commands.choices.items():
        assert f"`{name}" in README, name
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                for inner in action.choices:
                    assert f"`outbox {inner}" in README, inner


def test_every_setting_is_documented() -> None:
    source = (ROOT / "src" / "litellm_openmeter" / "settings.py").read_text()
    names = set(re.findall(r"OPENMETER_[A-Z_]+[A-Z]", source))
    assert len(names) >= 15
    for name in names:
        assert f"`{name}`" in README, name


def test_the_sdk_snippet_bills_its_call(tmp_path: Path) -> None:
    """The snippet as written, with LiteLLM's ``mock_response`` so that it runs offline."""
    [snippet] = [block for block in blocks("python") if "litellm.callbacks" in block]
    offline = snippet.replace('model="gpt-4o",', 'model="gpt-4o", mock_response="hi",')
    assert offline != snippet
    with BackgroundServer(open_store(tmp_path / "server.sqlite3")) as server:
        env = {
            **os.environ,
            "OPENMETER_API_KEY": "any",
            "OPENMETER_API_ENDPOINT": server.url,
            "OPENMETER_OUTBOX_PATH": str(tmp_path / "outbox.sqlite3"),
        }
        subprocess.run([sys.executable, "-c", offline], env=env, check=True, timeout=120)
        answer = httpx.get(
            f"{server.url}/api/v1/meters/litellm_tokens_calls/query",
            params={**ALL_TIME, "groupBy": "subject"},
        )
    rows = answer.json()["data"]
    assert [(row["subject"], row["value"]) for row in rows] == [("customer-42", 1.0)]


def test_the_subject_rule_snippet_builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [code] = re.findall(r"`(OpenMeterLogger\(resolve_subject=[^`]+)`", README)
    from litellm_openmeter import OpenMeterLogger

    monkeypatch.setenv("OPENMETER_API_KEY", "any")
    monkeypatch.setenv("OPENMETER_OUTBOX_PATH", str(tmp_path / "outbox.sqlite3"))
    logger = eval(code, {"OpenMeterLogger": OpenMeterLogger})
    logger.close()


def test_the_proxy_config_names_the_ready_instance() -> None:
    [config] = [yaml.safe_load(block) for block in blocks("yaml") if "callbacks" in block]
    name = config["litellm_settings"]["callbacks"]
    module, attribute = name.rsplit(".", 1)
    assert (module, attribute) == ("litellm_openmeter", "proxy_handler_instance")


def test_the_test_command_is_what_ci_runs() -> None:
    run = (ROOT / ".ci" / "run").read_text()
    [command] = [line for block in blocks("sh") for line in block.splitlines() if "pytest" in line]
    install = re.search(r"pip install (-q -c constraints.txt -e '\.\[test\]')", command)
    assert install and f"pip install {install.group(1)}" in run
    assert ".venv/bin/python -m pytest" in command and ".venv/bin/python -m pytest" in run


def anchors(path: Path) -> set[str]:
    """The anchors GitHub makes of a Markdown file's headings."""
    headings = re.findall(r"^#+ (.+)$", path.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("document", DOCUMENTS, ids=str)
def test_links_lead_somewhere(document: str) -> None:
    path = ROOT / document
    for target, anchor in re.findall(r"\]\(([^)#]*)(?:#([^)]*))?\)", path.read_text()):
        if "://" in target:
            continue
        linked = (path.parent / target) if target else path
        assert linked.exists(), f"{document}: {target}"
        if anchor:
            assert anchor in anchors(linked), f"{document}: {target}#{anchor}"
