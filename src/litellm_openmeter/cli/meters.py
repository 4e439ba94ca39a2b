"""``litellm-openmeter meters``: the meters this package's events need, printed or applied."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from .common import CommandError, UsageError, print_json, settings_from_env

if TYPE_CHECKING:
    from .client import OpenMeterClient


def _comparable(meter: dict[str, Any]) -> dict[str, Any]:
    keys = ("aggregation", "eventType", "valueProperty", "groupBy")
    return {key: meter.get(key) or ({} if key == "groupBy" else None) for key in keys}


def _fixed(meter: dict[str, Any]) -> dict[str, Any]:
    """What a meter update cannot change."""
    return {key: value for key, value in _comparable(meter).items() if key != "groupBy"}


def _update_group_by(
    client: OpenMeterClient, found: dict[str, Any], wanted: dict[str, Any]
) -> dict[str, str]:
    """Give an existing meter the groupBy keys it lacks (ours win where a key's path
    differs; keys of its own stay). A MeterUpdate clears what it leaves out, so the
    name and description go along as they are."""
    slug = str(found.get("slug"))
    current: dict[str, str] = dict(found.get("groupBy") or {})
    merged = {**current, **(wanted.get("groupBy") or {})}
    if merged == current:
        own = ", ".join(sorted(set(current) - set(wanted.get("groupBy") or {})))
        return {"slug": slug, "state": "exists", "detail": f"keeps groupBy keys of its own: {own}"}
    update: dict[str, Any] = {"groupBy": merged}
    for key in ("name", "description"):
        if found.get(key):
            update[key] = found[key]
    client.update_meter(str(found.get("id") or slug), update)
    changed = sorted(key for key in merged if current.get(key) != merged[key])
    return {"slug": slug, "state": "updated", "detail": f"groupBy keys set: {', '.join(changed)}"}


def meters_command(args: argparse.Namespace) -> int:
    """Print the meters (YAML or JSON), or create and update them with ``--apply``."""
    import yaml

    from ..meters import meters_for
    from .client import ClientError, OpenMeterClient

    if args.update and not args.apply:
        raise UsageError("--update works with --apply: meters --apply --update")
    settings = settings_from_env(require_key=args.apply)
    wanted = meters_for(settings.event_type, settings.event_shape)
    if not args.apply:
        if args.json:
            print_json([meter.to_create() for meter in wanted])
        else:
            print(
                f"# Meters for event type {settings.event_type!r} ({settings.event_shape} shape)."
            )
            print("# Paste under the meters: key of a self-hosted OpenMeter config.yaml.")
            print(
                yaml.safe_dump({"meters": [m.to_yaml_entry() for m in wanted]}, sort_keys=False),
                end="",
            )
        return 0
    report: list[dict[str, str]] = []
    try:
        with OpenMeterClient(settings) as client:
            existing = {meter.get("slug"): meter for meter in client.list_meters()}
            for meter in wanted:
                body = meter.to_create()
                found = existing.get(meter.slug)
                if found is None:
                    client.create_meter(body)
                    report.append({"slug": meter.slug, "state": "created"})
                elif _comparable(found) == _comparable(body):
                    report.append({"slug": meter.slug, "state": "exists"})
                elif args.update and _fixed(found) == _fixed(body):
                    report.append(_update_group_by(client, found, body))
                else:
                    detail: dict[str, Any] = {
                        "endpoint": _comparable(found),
                        "wanted": _comparable(body),
                    }
                    if args.update:
                        detail["note"] = (
                            "aggregation, eventType and valueProperty cannot change in "
                            "place: delete the meter and run this again"
                        )
                    report.append(
                        {"slug": meter.slug, "state": "differs", "detail": json.dumps(detail)}
                    )
    except ClientError as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        print_json(report)
    else:
        for line in report:
            suffix = ""
            if line["state"] == "differs":
                suffix = f" (left unchanged; {line['detail']})"
            elif "detail" in line:
                suffix = f" ({line['detail']})"
            print(f"{line['state']:8} {line['slug']}{suffix}")
    return 0
