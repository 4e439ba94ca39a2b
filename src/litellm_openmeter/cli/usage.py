"""``litellm-openmeter usage``: usage per subject, window and group, read from the meters."""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone
from typing import Any

from .common import CommandError, UsageError, print_json, rich_console, settings_from_env


def usage_command(args: argparse.Namespace) -> int:
    """Print the usage table (or JSON) of a period."""
    from rich.table import Table

    from ..meters import slug_prefix
    from .client import ClientError, OpenMeterClient

    settings = settings_from_env()
    if args.compare:
        return _compare(settings, args)
    prefix = slug_prefix(settings.event_type)
    if settings.event_shape == "tokens":
        columns = {"tokens": "tokens_total", "cost": f"{prefix}_cost"}
    else:
        # The same keys as the demo's --json.
        columns = {
            "input": f"{prefix}_prompt_tokens",
            "output": f"{prefix}_completion_tokens",
            "cached": f"{prefix}_cache_read_tokens",
            "cost": f"{prefix}_cost",
        }
    params: dict[str, Any] = {
        "groupBy": ["subject", *args.group_by],
        "windowTimeZone": args.time_zone,
    }
    for key, value in (("from", args.start), ("to", args.end), ("windowSize", args.window)):
        if value:
            params[key] = value
    if not args.end and not args.window:
        # One query per column: without a fixed end, each one's period would end at its own
        # "now" and a second ticking over between them would split a subject's row in two.
        # (With a window size the windows fix the ends, and OpenMeter wants them aligned.)
        until = datetime.fromtimestamp(int(time.time()) + 1, timezone.utc)  # takes this second in
        params["to"] = until.strftime("%Y-%m-%dT%H:%M:%SZ")
    if args.subject:
        params["subject"] = args.subject
    rows: dict[tuple[str, str, str, tuple[str, ...]], dict[str, float]] = {}
    try:
        with OpenMeterClient(settings) as client:
            for column, slug in columns.items():
                for row in client.query(slug, params)["data"]:
                    groups = tuple(str(row["groupBy"].get(key) or "-") for key in args.group_by)
                    row_key = (row["windowStart"], row["windowEnd"], row["subject"] or "-", groups)
                    rows.setdefault(row_key, dict.fromkeys(columns, 0.0))[column] += row["value"]
    except ClientError as exc:
        if exc.status == 404:
            raise CommandError(
                f"{exc} (create the meters: litellm-openmeter meters --apply)"
            ) from None
        raise CommandError(str(exc)) from None
    ordered = sorted(rows.items())
    if args.json:
        print_json(
            [
                {
                    "windowStart": k[0],
                    "windowEnd": k[1],
                    "subject": k[2],
                    "groupBy": dict(zip(args.group_by, k[3], strict=True)),
                    **values,
                }
                for k, values in ordered
            ]
        )
        return 0
    table = Table(title=f"Usage from {settings.endpoint} ({prefix}, {settings.event_shape} shape)")
    for name in ("window start", "window end", "subject", *args.group_by):
        table.add_column(name, overflow="fold")
    for name in columns:
        table.add_column(name if name in ("tokens", "cost") else f"{name} tokens", justify="right")
    for (start, end, subject, groups), values in ordered:
        cells = [f"{values[c]:.6f}" if c == "cost" else f"{values[c]:,.0f}" for c in columns]
        table.add_row(start, end, subject, *groups, *cells)
    rich_console().print(table if ordered else "no usage in that period")
    return 0


def _compare(settings: Any, args: argparse.Namespace) -> int:
    """Reconcile the configured endpoint with ``--compare``: every meter of the
    configured event type and shape, per subject and UTC day; exit 1 on a difference."""
    from ..meters import meters_for
    from ..server.ingest import parse_rfc3339
    from ..settings import Settings
    from .client import ClientError, OpenMeterClient
    from .compare import daily_period, difference_lines, differences

    now = int(time.time())
    try:
        start = int(parse_rfc3339(args.start).timestamp()) if args.start else now - 30 * 86400
        end = int(parse_rfc3339(args.end).timestamp()) if args.end else now + 1
    except ValueError as exc:
        raise UsageError(f"--from/--to: {exc} (use RFC 3339, e.g. 2026-11-01T00:00:00Z)") from None
    other = Settings.from_env(
        endpoint=args.compare,
        api_key=args.compare_key or settings.api_key,
        outbox_path=settings.outbox_path,
    )
    slugs = [meter.slug for meter in meters_for(settings.event_type, settings.event_shape)]
    try:
        with OpenMeterClient(settings) as source, OpenMeterClient(other) as target:
            found = differences(source, target, slugs, daily_period(start, end, args.subject))
    except ClientError as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        print_json(found)
    else:
        print(f"source {settings.endpoint}, target {other.endpoint}")
        for line in difference_lines(found):
            print(line)
    return 1 if found else 0
