"""``litellm-openmeter doctor``: configuration, reachability, key, meters and outbox
checks, each with the fix when it fails."""

from __future__ import annotations

import argparse
import os
import stat
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from ..delivery.outbox import Outbox, OutboxDamaged, probe_path
from ..delivery.salvage import damaged_files, salvage_command
from ..settings import Settings, SettingsError
from .client import ClientError, OpenMeterClient
from .common import print_json

STUCK_AFTER_SECONDS = 600.0


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report."""

    name: str
    ok: bool
    message: str
    fix: str = ""


def run_checks(env: Mapping[str, str] | None = None) -> list[Check]:
    """Every check, in order; later checks are skipped when configuration fails."""
    try:
        settings = Settings.from_env(env)
    except SettingsError as exc:
        return [Check("configuration", False, exc.problem, exc.fix)]
    from urllib.parse import urlsplit

    host = urlsplit(settings.endpoint).hostname or ""
    checks = [
        Check(
            "configuration",
            True,
            f"key set, endpoint {settings.endpoint}, event type {settings.event_type} "
            f"({settings.event_shape} shape)",
        ),
        Check(
            "transport",
            True,
            "https"
            if settings.endpoint.startswith("https://")
            else f"plain http, allowed because {host} is a loopback host",
        ),
    ]
    with OpenMeterClient(settings, timeout=min(settings.http_timeout, 10.0)) as client:
        try:
            meters = client.list_meters()
        except ClientError as exc:
            if exc.status in (401, 403):
                checks.append(Check("reachable", True, f"{settings.endpoint} answered"))
                checks.append(
                    Check(
                        "authentication",
                        False,
                        exc.problem,
                        "set OPENMETER_API_KEY to a valid token for this endpoint",
                    )
                )
            elif exc.status is None:
                checks.append(
                    Check(
                        "reachable",
                        False,
                        str(exc),
                        "check OPENMETER_API_ENDPOINT and that the server runs",
                    )
                )
            else:
                checks.append(
                    Check(
                        "reachable",
                        False,
                        str(exc),
                        "OPENMETER_API_ENDPOINT must be the base URL of OpenMeter",
                    )
                )
            meters = None
        if meters is not None:
            checks.append(Check("reachable", True, f"{settings.endpoint} answered"))
            checks.append(Check("authentication", True, "the API key was accepted"))
            mine = sorted(
                m.get("slug", "?") for m in meters if m.get("eventType") == settings.event_type
            )
            if mine:
                checks.append(
                    Check(
                        "meters",
                        True,
                        f"{len(mine)} meter(s) read event type "
                        f"{settings.event_type}: {', '.join(mine)}",
                    )
                )
            else:
                checks.append(
                    Check(
                        "meters",
                        False,
                        f"no meter reads event type {settings.event_type}: "
                        "events are stored but nothing is billed",
                        "run: litellm-openmeter meters --apply",
                    )
                )
    checks.append(_outbox_check(settings))
    return checks


def _outbox_check(settings: Settings) -> Check:
    path = settings.outbox_path
    damaged = damaged_files(path)
    if damaged:
        return Check(
            "outbox",
            False,
            f"{len(damaged)} damaged outbox file(s) moved aside, their events not recovered "
            f"yet: {', '.join(str(item) for item in damaged)}",
            f"run: {salvage_command(damaged[0])}",
        )
    try:
        probe_path(path)
    except SettingsError as exc:
        return Check("outbox", False, exc.problem, exc.fix)
    if not path.exists():
        return Check("outbox", True, f"{path} not created yet (nothing queued)")
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        return Check(
            "outbox", False, f"{path} is readable by others (mode {mode:o})", f"chmod 600 {path}"
        )
    try:
        outbox = Outbox(path, settings.outbox_max_bytes)
    except OutboxDamaged as exc:
        return Check(
            "outbox",
            False,
            f"{exc}: the next logger moves it aside and starts a fresh outbox",
            f"move it aside now and recover its events: {salvage_command(path)}",
        )
    except SettingsError as exc:
        return Check("outbox", False, exc.problem, exc.fix)
    try:
        stats = outbox.stats()
    finally:
        outbox.close()
    summary = (
        f"{path}: {stats.queued} queued, {stats.dead_lettered} dead letter(s), "
        f"{stats.outbox_bytes} bytes of {settings.outbox_max_bytes}"
    )
    if stats.refused:
        return Check(
            "outbox",
            False,
            f"{summary}; {stats.refused} event(s) refused when full",
            "restore delivery, then raise OPENMETER_OUTBOX_MAX_BYTES if needed",
        )
    age = stats.oldest_age_seconds
    if age is not None and age > STUCK_AFTER_SECONDS:
        return Check(
            "outbox",
            False,
            f"{summary}; oldest waiting {age:.0f}s (last error: {stats.last_error or '-'})",
            "fix the error above, then run: litellm-openmeter outbox drain",
        )
    if stats.dead_lettered:
        return Check(
            "outbox",
            False,
            f"{summary}",
            "inspect: litellm-openmeter outbox dead-letters; then requeue or purge-dead",
        )
    return Check("outbox", True, summary)


def doctor_command(args: argparse.Namespace) -> int:
    """Print every check; exit 1 if one failed."""
    checks = run_checks()
    if args.json:
        print_json([asdict(check) for check in checks])
    else:
        for check in checks:
            mark = "ok  " if check.ok else "FAIL"
            fix = f"  -> fix: {check.fix}" if not check.ok and check.fix else ""
            print(f"{mark} {check.name}: {check.message}{fix}")
    return 0 if all(check.ok for check in checks) else 1
