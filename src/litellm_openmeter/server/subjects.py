"""OpenMeter's subjects API: a subject's display name, metadata and Stripe customer id,
which is how a billing team names the subjects its events carry. Pure functions: the
upsert body checked, and a stored subject as OpenMeter's ``Subject`` schema."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .ingest import format_rfc3339, parse_rfc3339

_TEXT_FIELDS = ("displayName", "stripeCustomerId")
_TIME_FIELDS = ("currentPeriodStart", "currentPeriodEnd")


@dataclass(frozen=True)
class SubjectUpsert:
    """One ``SubjectUpsert``: the key and the fields it sets (the others are kept)."""

    key: str
    fields: dict[str, Any]


def subject_upserts(body: Any) -> list[SubjectUpsert]:
    """The upserts of a ``POST /api/v1/subjects`` body; ValueError says what is wrong."""
    if not isinstance(body, list):
        raise ValueError('the body must be a JSON array of subjects, e.g. [{"key": "acme"}]')
    upserts = []
    for index, item in enumerate(body):
        where = f"subject {index}"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: must be a JSON object with a key")
        key = item.get("key")
        if not isinstance(key, str) or not key:
            raise ValueError(f"{where}: key is required, a non-empty string")
        fields: dict[str, Any] = {}
        for name in _TEXT_FIELDS:
            if name in item:
                if item[name] is not None and not isinstance(item[name], str):
                    raise ValueError(f"{where}: {name} must be a string or null")
                fields[name] = item[name]
        if "metadata" in item:
            if item["metadata"] is not None and not isinstance(item["metadata"], dict):
                raise ValueError(f"{where}: metadata must be a JSON object or null")
            fields["metadata"] = item["metadata"]
        for name in _TIME_FIELDS:
            if name in item:
                try:
                    fields[name] = format_rfc3339(parse_rfc3339(item[name]))
                except (ValueError, TypeError):
                    raise ValueError(f"{where}: {name} must be an RFC 3339 date-time") from None
        upserts.append(SubjectUpsert(key, fields))
    return upserts


def subject_json(
    key: str, subject_id: str, body: str, created_at: float, updated_at: float
) -> dict[str, Any]:
    """A stored subject as OpenMeter's ``Subject`` schema."""
    fields = json.loads(body)
    return {
        "id": subject_id,
        "key": key,
        "createdAt": format_rfc3339(created_at),
        "updatedAt": format_rfc3339(updated_at),
        **{name: value for name, value in fields.items() if value is not None},
    }
