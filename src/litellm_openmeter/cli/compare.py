"""Reconciliation: two OpenMeter-compatible endpoints' meter totals per subject and UTC
day, side by side, and every difference (``export --verify``, ``usage --compare``)."""

from __future__ import annotations

from typing import Any

from ..server.ingest import format_rfc3339


def daily_period(start: int, end: int, subjects: list[str]) -> dict[str, Any]:
    """Query parameters for whole UTC days from ``start`` to ``end`` (epoch seconds)."""
    params: dict[str, Any] = {
        "from": format_rfc3339(start - start % 86400),
        "to": format_rfc3339(end - end % 86400 + (86400 if end % 86400 else 0)),
        "windowSize": "DAY",
        "windowTimeZone": "UTC",
        "groupBy": ["subject"],
    }
    if subjects:
        params["subject"] = subjects
    return params


def differences(
    source: Any, target: Any, slugs: list[str], params: dict[str, Any]
) -> list[dict[str, Any]]:
    """Every (meter, day, subject) whose totals differ between the two clients'
    endpoints (``OpenMeterClient``), with both values."""
    found = []
    for slug in slugs:
        ours, theirs = _totals(source.query(slug, params)), _totals(target.query(slug, params))
        for day, subject in sorted(set(ours) | set(theirs)):
            a, b = ours.get((day, subject), 0.0), theirs.get((day, subject), 0.0)
            if abs(a - b) > 1e-9 * max(1.0, abs(a), abs(b)):
                found.append(
                    {"meter": slug, "day": day, "subject": subject, "source": a, "target": b}
                )
    return found


def difference_lines(found: list[dict[str, Any]]) -> list[str]:
    """One line per difference, or the line that says there is none."""
    if not found:
        return ["verified: every meter's totals per subject and day are equal"]
    return [
        f"differs: {d['meter']} {d['day']} {d['subject'] or '-'}: "
        f"source {d['source']:g}, target {d['target']:g}"
        for d in found
    ]


def _totals(result: dict[str, Any]) -> dict[tuple[str, str], float]:
    return {
        (row["windowStart"][:10], row.get("subject") or ""): float(row["value"] or 0)
        for row in result.get("data", [])
    }
