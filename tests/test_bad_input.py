"""Careless input, command by command: a bad setting, path or file is one line that
names it, says what is wrong and how to fix it, with exit code 2 for a bad argument or
setting and 1 for a failure; never a traceback; nothing lost from a good outbox next
to it."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from litellm_openmeter import OpenMeterLogger, SettingsError
from litellm_openmeter.cli import main
from litellm_openmeter.delivery.outbox import Outbox

from conftest import cloud_event, free_port

BAD_SETTINGS: dict[str, list[str]] = {
    "OPENMETER_API_ENDPOINT": [
        "openmeter.cloud",
        "http://meter.example.com",
        "https://:8888",
        "https://meter.example.com:99999",
        "ftp://meter.example.com",
    ],
    "OPENMETER_EVENT_TYPE": [" "],
    "OPENMETER_EVENT_SHAPE": ["rows"],
    "OPENMETER_SOURCE": [" "],
    "OPENMETER_TRUST_REQUEST_USER": ["maybe"],
    "OPENMETER_SUBJECT_FROM": ["email", ","],
    "OPENMETER_METER_FAILURES": ["2"],
    "OPENMETER_BATCH_SIZE": ["abc", "0", "1.5", "nan"],
    "OPENMETER_FLUSH_INTERVAL": ["soon", "nan", "inf", "-1"],
    "OPENMETER_RETRY_MAX_DELAY": ["0", "-inf"],
    "OPENMETER_OUTBOX_MAX_BYTES": ["1e9", "big"],
    "OPENMETER_SHUTDOWN_TIMEOUT": ["-1", "inf"],
    "OPENMETER_HTTP_TIMEOUT": ["0", "NaN"],
}
CASES = [(name, value) for name, values in BAD_SETTINGS.items() for value in values]
DEMO_OVERRIDES = {
    "OPENMETER_API_ENDPOINT",
    "OPENMETER_EVENT_SHAPE",
    "OPENMETER_FLUSH_INTERVAL",
    "OPENMETER_METER_FAILURES",
}
"""Settings the demo sets itself (it runs its own server): the environment's are unused."""

Run = Callable[[list[str], dict[str, str]], tuple[int, str, str]]

COMMANDS = [
    ["meters"],
    ["meters", "--apply"],
    ["outbox", "status"],
    ["outbox", "dead-letters"],
    ["outbox", "drain", "--timeout", "1"],
    ["usage"],
    ["demo"],
]


@pytest.fixture
def good_outbox(tmp_path: Path) -> Iterator[Path]:
    """An outbox with queued events and a dead letter, which no failed command may
    touch; its bytes are compared after each test."""
    folder = tmp_path / "good"
    path = folder / "outbox.sqlite3"
    outbox = Outbox(path)
    outbox.enqueue([cloud_event(f"e{i}", "ann", {"cost": 1}) for i in range(5)])
    outbox.dead_letter([cloud_event("d1", "", {"cost": 1})], "no_subject", "no subject")
    outbox.checkpoint()
    outbox.close()
    (folder / "outbox.sqlite3-wal").unlink(missing_ok=True)
    (folder / "outbox.sqlite3-shm").unlink(missing_ok=True)
    before = digest(folder)
    yield path
    assert digest(folder) == before, "the good outbox was changed"


def digest(folder: Path) -> tuple[str, int]:
    """The outbox file's hash and its WAL's size (a command that reads the outbox leaves
    an empty WAL behind)."""
    wal = folder / "outbox.sqlite3-wal"
    return (
        hashlib.sha256((folder / "outbox.sqlite3").read_bytes()).hexdigest(),
        wal.stat().st_size if wal.exists() else 0,
    )


@pytest.fixture
def run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], good_outbox: Path
) -> Iterator[Run]:
    """Run the CLI in this process (a real subprocess each would take a minute for the
    table) with the given environment; returns (exit code, stdout, stderr)."""
    quiet = logging.getLogger("litellm_openmeter")
    handlers, propagate = list(quiet.handlers), quiet.propagate
    monkeypatch.setenv("OPENMETER_API_KEY", "bad-input-key")
    monkeypatch.setenv("OPENMETER_API_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("OPENMETER_OUTBOX_PATH", str(good_outbox))

    def run(argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        code = main(argv)
        out, err = capsys.readouterr()
        assert "bad-input-key" not in out + err
        assert "Traceback" not in out + err
        return code, out, err

    yield run
    quiet.handlers[:] = handlers
    quiet.propagate = propagate


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(("name", "value"), CASES)
def test_every_command_names_a_bad_setting(run: Run, name: str, value: str) -> None:

    for argv in COMMANDS:
        if argv == ["demo"] and name in DEMO_OVERRIDES:
            continue
        code, out, err = run(argv, {name: value})
        assert code == 2, (argv, out, err)
        line = one_line(err)
        assert line.startswith(f"litellm-openmeter {argv[0]}: error: {name}"), line
        assert ";" in line, f"no fix in: {line}"
    code, out, err = run(["doctor"], {name: value})
    assert code == 1 and err == ""
    assert out.startswith(f"FAIL configuration: {name}") and "-> fix: " in out, out
    assert len(out.strip().splitlines()) == 1
    with pytest.raises(SettingsError) as raised:
        OpenMeterLogger()
    assert name in raised.value.problem and raised.value.fix
    assert "\n" not in str(raised.value)


def bad_paths(tmp_path: Path, good: Path) -> dict[str, tuple[Path, str]]:
    """Paths where no outbox can be, with what the error must say."""
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    return {
        "the good outbox's folder": (good.parent, "is a folder, not a file"),
        "a file as a folder": (a_file / "outbox.sqlite3", f"{a_file} is a file"),
        "inside /proc": (Path("/proc/nonexistent/outbox.sqlite3"), "cannot be made"),
        "a file under /etc/passwd": (Path("/etc/passwd/outbox.sqlite3"), "is a file"),
    }


@pytest.mark.parametrize(
    "kind",
    ["the good outbox's folder", "a file as a folder", "inside /proc", "a file under /etc/passwd"],
)
def test_every_command_names_an_outbox_path_that_cannot_be(
    run: Run, tmp_path: Path, good_outbox: Path, kind: str
) -> None:

    path, says = bad_paths(tmp_path, good_outbox)[kind]
    env = {"OPENMETER_OUTBOX_PATH": str(path)}
    for argv in (["outbox", "status"], ["outbox", "dead-letters"], ["outbox", "drain"]):
        code, _, err = run(argv, env)
        line = one_line(err)
        assert code == 2 and "OPENMETER_OUTBOX_PATH" in line and says in line, line
        assert "set OPENMETER_OUTBOX_PATH" in line or "name a file in it" in line
    code, out, _ = run(["doctor"], env)
    assert code == 1
    [outbox_line] = [line for line in out.splitlines() if line.startswith("FAIL outbox")]
    assert says in outbox_line and "-> fix:" in outbox_line and "chmod" not in outbox_line
    with pytest.raises(SettingsError) as raised:
        OpenMeterLogger(outbox_path=path)
    assert "OPENMETER_OUTBOX_PATH" in str(raised.value) and says in str(raised.value)


@pytest.mark.parametrize("kind", ["random bytes", "zeros", "empty meta table"])
def test_outbox_commands_on_a_damaged_file(run: Run, tmp_path: Path, kind: str) -> None:
    """One line naming the file and the salvage command; exit 1."""

    path = tmp_path / "damaged.sqlite3"
    if kind == "random bytes":
        path.write_bytes(os.urandom(20_000))
    elif kind == "zeros":
        path.write_bytes(b"SQLite format 3\0" + b"\0" * 8000)
    else:
        import sqlite3

        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value)")
        conn.close()
        with path.open("r+b") as file:
            file.seek(4096)
            file.write(b"\xff" * 4096)
    env = {"OPENMETER_OUTBOX_PATH": str(path)}
    for argv in (["outbox", "status"], ["outbox", "dead-letters"], ["outbox", "drain"]):
        code, _, err = run(argv, env)
        line = one_line(err)
        assert code == 1, line
        assert str(path) in line and f"litellm-openmeter outbox salvage {path}" in line


def meters_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    def write(name: str, data: bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        return path

    good_meter = b"  - slug: m\n    eventType: e\n    aggregation: COUNT\n"
    return {
        "not UTF-8": (write("latin.yaml", b"meters:\n  # caf\xe9\n" + good_meter), "not UTF-8"),
        "bad YAML": (write("bad.yaml", b"meters:\n\t- slug: m\n"), "line 2, column 1"),
        "no list": (write("empty.yaml", b"other: 1\n"), "needs a top-level 'meters:' list"),
        "a bad meter": (
            write("wrong.yaml", b"meters:\n  - slug: Bad Slug\n    eventType: e\n"),
            "entry 1",
        ),
        "missing": (tmp_path / "missing.yaml", "cannot read meters file"),
        "a folder": (tmp_path, "cannot read meters file"),
    }


@pytest.mark.parametrize(
    "kind", ["not UTF-8", "bad YAML", "no list", "a bad meter", "missing", "a folder"]
)
def test_serve_names_a_bad_meters_file(run: Run, tmp_path: Path, kind: str) -> None:

    path, says = meters_files(tmp_path)[kind]
    db = tmp_path / "db" / "server.sqlite3"
    code, _, err = run(["serve", "--meters", str(path), "--db", str(db)], {})
    line = one_line(err)
    assert code == 1 and str(path) in line and says in line, line
    assert not db.exists()


def test_serve_on_a_port_in_use_changes_nothing(
    run: Run, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        db = tmp_path / "db" / "server.sqlite3"
        with caplog.at_level(logging.INFO):
            code, _, err = run(["serve", "--port", str(port), "--db", str(db)], {})
    line = one_line(err)
    assert code == 1 and f"cannot listen on 127.0.0.1:{port}" in line and "--port" in line
    assert not db.exists() and not db.parent.exists()
    assert not [r for r in caplog.records if "serving" in r.getMessage()]


def test_serve_on_a_database_that_cannot_be(run: Run, tmp_path: Path) -> None:

    code, _, err = run(["serve", "--port", "0", "--db", str(tmp_path)], {})
    line = one_line(err)
    assert code == 1 and f"cannot open the database {tmp_path}" in line


def test_debug_shows_the_traceback(run: Run) -> None:

    assert run(["outbox", "status"], {"OPENMETER_BATCH_SIZE": "abc"})[0] == 2
    env = {key: value for key, value in os.environ.items() if not key.startswith("OPENMETER_")}
    env.update(OPENMETER_BATCH_SIZE="abc", LITELLM_OPENMETER_DEBUG="1")
    for argv, extra in ((["outbox", "status", "--debug"], {}), (["outbox", "status"], env)):
        done = subprocess.run(
            [sys.executable, "-m", "litellm_openmeter.cli", *argv],
            capture_output=True,
            text=True,
            env={**env, **extra} if extra else env,
            timeout=60,
        )
        assert done.returncode == 2
        assert "Traceback" in done.stderr and done.stderr.strip().endswith(
            "or unset it for the default 100"
        )


def test_demo_rejects_a_bad_setting_at_once() -> None:
    """As a real subprocess: one line and exit 2, before LiteLLM is started (the
    output has none of the demo's)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("OPENMETER_")}
    for name, value in (("OPENMETER_BATCH_SIZE", "abc"), ("OPENMETER_SUBJECT_FROM", "email")):
        done = subprocess.run(
            [sys.executable, "-m", "litellm_openmeter.cli", "demo"],
            capture_output=True,
            text=True,
            env={**env, name: value},
            timeout=60,
        )
        assert done.returncode == 2 and done.stdout == ""
        assert one_line(done.stderr).startswith(f"litellm-openmeter demo: error: {name}=")


def test_a_missing_key_is_named_where_one_is_needed(run: Run) -> None:
    """The commands that talk to the endpoint need the key; the others run without."""
    missing = {"OPENMETER_API_KEY": ""}
    for argv in (["meters", "--apply"], ["outbox", "drain"], ["usage"]):
        code, _, err = run(argv, missing)
        line = one_line(err)
        assert code == 2 and "OPENMETER_API_KEY" in line and "set OPENMETER_API_KEY" in line
    for argv in (["meters"], ["outbox", "status"], ["outbox", "dead-letters"]):
        assert run(argv, missing)[0] == 0
    code, out, _ = run(["doctor"], missing)
    assert code == 1 and out.startswith("FAIL configuration: Missing keys=['OPENMETER_API_KEY']")
    with pytest.raises(SettingsError, match="OPENMETER_API_KEY"):
        OpenMeterLogger()
