"""Meter definitions: OpenMeter's validation rules, value extraction, and the meters that
fit this package's events.

Pure: no I/O except :func:`load_meters_file`. Shared by the local server and the CLI.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

AGGREGATIONS = ("SUM", "COUNT", "UNIQUE_COUNT", "AVG", "MIN", "MAX", "LATEST")
NUMERIC_AGGREGATIONS = ("SUM", "AVG", "MIN", "MAX", "LATEST")
SLUG_RE = re.compile(r"^[a-z0-9]+(?:_[a-z0-9]+)*$")
GROUP_KEY_RE = re.compile(r"^[a-zA-Z0-9_]+$")
_PATH_TOKEN = re.compile(r"""\.([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]|\[(?:'([^']*)'|"([^"]*)")\]""")

PathStep = str | int


class MeterError(ValueError):
    """A meter definition breaks one of OpenMeter's rules."""


def compile_path(expression: str, what: str = "valueProperty") -> tuple[PathStep, ...]:
    """Compile a JSONPath of the form ``$.a.b``, ``$['a']`` or ``$.a[0]`` to steps.

    Only paths that name one value are accepted (no wildcards or filters): a meter
    reads one value per event.
    """
    if not isinstance(expression, str) or not expression.startswith("$"):
        raise MeterError(f"{what} {expression!r} must be a JSONPath starting with '$'")
    steps: list[PathStep] = []
    position = 1
    while position < len(expression):
        match = _PATH_TOKEN.match(expression, position)
        if match is None:
            raise MeterError(
                f"{what} {expression!r} is not a supported JSONPath: use $.field, "
                "$.field.sub, $['field'] or $.list[0]"
            )
        name, index, single, double = match.groups()
        if index is not None:
            steps.append(int(index))
        else:
            steps.append(name if name is not None else (single if single is not None else double))
        position = match.end()
    if not steps:
        raise MeterError(f"{what} {expression!r} must name a property, like $.tokens")
    return tuple(steps)


MISSING: Any = object()
"""What :func:`read_path` returns for an absent property."""


def read_path(data: object, steps: tuple[PathStep, ...]) -> object:
    """Follow compiled steps into ``data``; returns ``MISSING`` when absent."""
    current = data
    for step in steps:
        if type(current) is dict:  # the common case, without the ABC check
            if step not in current:
                return MISSING
            current = current[step]
        elif isinstance(step, int):
            if not isinstance(current, list) or step >= len(current):
                return MISSING
            current = current[step]
        elif isinstance(current, Mapping) and step in current:
            current = current[step]
        else:
            return MISSING
    return current


@dataclass(frozen=True)
class Meter:
    """A validated meter, in OpenMeter's terms."""

    slug: str
    aggregation: str
    event_type: str
    value_property: str | None = None
    group_by: dict[str, str] = field(default_factory=dict)
    name: str | None = None
    description: str | None = None
    event_from: str | None = None

    @cached_property
    def value_steps(self) -> tuple[PathStep, ...] | None:
        """Compiled ``valueProperty``."""
        return None if self.value_property is None else compile_path(self.value_property)

    @cached_property
    def group_steps(self) -> tuple[tuple[PathStep, ...], ...]:
        """Compiled ``groupBy`` paths, in key order."""
        return tuple(compile_path(path) for path in self.group_by.values())

    def to_create(self) -> dict[str, Any]:
        """The ``MeterCreate`` JSON body of this meter."""
        body: dict[str, Any] = {
            "slug": self.slug,
            "aggregation": self.aggregation,
            "eventType": self.event_type,
        }
        if self.name:
            body["name"] = self.name
        if self.description:
            body["description"] = self.description
        if self.value_property is not None:
            body["valueProperty"] = self.value_property
        if self.group_by:
            body["groupBy"] = dict(self.group_by)
        if self.event_from:
            body["eventFrom"] = self.event_from
        return body

    def to_yaml_entry(self) -> dict[str, Any]:
        """The entry of this meter in a self-hosted OpenMeter ``config.yaml``."""
        return self.to_create()


def meter_from_json(body: object) -> Meter:
    """Validate a ``MeterCreate`` body (or a config.yaml entry) by OpenMeter's rules."""
    if not isinstance(body, Mapping):
        raise MeterError("a meter must be a JSON object")
    slug = body.get("slug")
    if not isinstance(slug, str) or not SLUG_RE.match(slug) or len(slug) > 64:
        raise MeterError(
            f"slug {slug!r} is invalid: 1-64 lowercase letters, digits and single "
            "underscores (pattern ^[a-z0-9]+(?:_[a-z0-9]+)*$)"
        )
    aggregation = body.get("aggregation")
    if aggregation not in AGGREGATIONS:
        raise MeterError(
            f"aggregation {aggregation!r} is invalid: use one of {', '.join(AGGREGATIONS)}"
        )
    event_type = body.get("eventType")
    if not isinstance(event_type, str) or not event_type.strip():
        raise MeterError("eventType is required and must be a non-empty string")
    value_property = body.get("valueProperty")
    if aggregation == "COUNT":
        if value_property is not None:
            raise MeterError("valueProperty is not allowed for a COUNT meter")
    else:
        if value_property is None:
            raise MeterError(f"valueProperty is required for a {aggregation} meter")
        compile_path(value_property)
    group_by = body.get("groupBy") or {}
    if not isinstance(group_by, Mapping):
        raise MeterError("groupBy must be an object of name -> JSONPath")
    for key, path in group_by.items():
        if not isinstance(key, str) or not GROUP_KEY_RE.match(key):
            raise MeterError(
                f"groupBy key {key!r} must consist only of letters, digits and underscores"
            )
        if key == "subject":
            raise MeterError("groupBy key 'subject' is reserved")
        compile_path(path, f"groupBy.{key}")
        if value_property is not None and path == value_property:
            raise MeterError(f"groupBy.{key} must not be the valueProperty {path!r}")
    for text_field, limit in (("name", 256), ("description", 1024)):
        value = body.get(text_field)
        if value is not None and (not isinstance(value, str) or len(value) > limit):
            raise MeterError(f"{text_field} must be a string of at most {limit} characters")
    event_from = body.get("eventFrom")
    if event_from is not None and not isinstance(event_from, str):
        raise MeterError("eventFrom must be an RFC 3339 date-time string")
    return Meter(
        slug=slug,
        aggregation=str(aggregation),
        event_type=event_type,
        value_property=value_property,
        group_by={str(k): str(v) for k, v in group_by.items()},
        name=body.get("name") or None,
        description=body.get("description") or None,
        event_from=event_from,
    )


def value_error(meter: Meter, raw: object) -> str | None:
    """Why a meter cannot count an event whose value property is ``raw``, or None.

    ``MISSING`` stands for an absent property. As in OpenMeter, numeric strings are
    numbers, ``null`` is not counted, and UNIQUE_COUNT wants a string.
    """
    if meter.aggregation == "COUNT":
        return None
    where = f"meter {meter.slug}: {meter.value_property}"
    if raw is MISSING:
        return f"{where} is missing"
    if raw is None:
        return f"{where} is null"
    if meter.aggregation == "UNIQUE_COUNT":
        return None if unique_text(raw) is not None else f"{where} must be a string"
    return None if as_number(raw) is not None else f"{where} is not a number: {raw!r}"


def number_text(value: float) -> str:
    """A number as OpenMeter's group and unique values show it (no trailing .0)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def as_number(raw: object) -> float | None:
    """A finite number from a JSON number or numeric string; None otherwise."""
    if type(raw) is int:  # the common cases first
        return float(raw)
    if type(raw) is float:
        return raw if math.isfinite(raw) else None
    if isinstance(raw, bool):
        return None
    if isinstance(raw, (int, float)):
        number = float(raw)
    elif isinstance(raw, str):
        try:
            number = float(raw.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def unique_text(raw: object) -> str | None:
    """The value a UNIQUE_COUNT meter counts: strings, and numbers as text."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return number_text(raw)
    return None


def group_text(raw: object) -> str | None:
    """A group-by value: strings as they are, numbers and booleans as text."""
    if raw is MISSING or raw is None:
        return None
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, (int, float)):
        return number_text(raw)
    return None


def load_meters_file(path: str | Path) -> list[Meter]:
    """Meters from a YAML file in OpenMeter's config format (a top-level ``meters:`` list)."""
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise MeterError(f"cannot read meters file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise MeterError(
            f"meters file {path} is not UTF-8 text (byte {exc.start}): save it as UTF-8 YAML"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise MeterError(f"meters file {path} is not valid YAML{where}: {problem}") from None
    entries = document.get("meters") if isinstance(document, Mapping) else None
    if not isinstance(entries, list):
        raise MeterError(f"meters file {path} needs a top-level 'meters:' list")
    meters = []
    for position, entry in enumerate(entries):
        try:
            meters.append(meter_from_json(entry))
        except MeterError as exc:
            raise MeterError(f"meters file {path}, entry {position + 1}: {exc}") from exc
    slugs = [meter.slug for meter in meters]
    duplicates = sorted({slug for slug in slugs if slugs.count(slug) > 1})
    if duplicates:
        raise MeterError(f"meters file {path} defines {', '.join(duplicates)} more than once")
    return meters


def slug_prefix(event_type: str, fallback: str = "litellm") -> str:
    """The meter slug prefix for an event type (``litellm_tokens`` -> ``litellm_tokens``)."""
    return re.sub(r"[^a-z0-9]+", "_", event_type.lower()).strip("_") or fallback


_DIMENSIONS = {
    "model": "$.model",
    "provider": "$.provider",
    "model_group": "$.model_group",
    "team_id": "$.team_id",
    "key_alias": "$.key_alias",
    "end_user": "$.end_user",
    "usage_accuracy": "$.usage_accuracy",
    "estimate_reason": "$.estimate_reason",
}


def litellm_shape_meters(event_type: str = "litellm_tokens") -> list[Meter]:
    """Meters for the default event shape (one event per call)."""
    prefix = slug_prefix(event_type)
    sums = [
        ("prompt_tokens", "Input tokens, cached ones included"),
        ("completion_tokens", "Output tokens, reasoning ones included"),
        ("total_tokens", "All tokens"),
        ("cache_read_tokens", "Input tokens read from a prompt cache"),
        ("cache_creation_tokens", "Input tokens written to a prompt cache"),
        ("reasoning_tokens", "Reasoning tokens"),
        ("cost", "Model cost in USD as priced by LiteLLM"),
    ]
    meters = [
        Meter(
            slug=f"{prefix}_{name}",
            aggregation="SUM",
            event_type=event_type,
            value_property=f"$.{name}",
            group_by=dict(_DIMENSIONS),
            description=description,
        )
        for name, description in sums
    ]
    meters.append(
        Meter(
            slug=f"{prefix}_calls",
            aggregation="COUNT",
            event_type=event_type,
            group_by=dict(_DIMENSIONS),
            description="LLM calls",
        )
    )
    return meters


def tokens_shape_meters(event_type: str = "prompt") -> list[Meter]:
    """Meters for the ``tokens`` shape: OpenMeter's own ``tokens_total`` plus cost and calls."""
    prefix = slug_prefix(event_type, "prompt")
    extra = {key: path for key, path in _DIMENSIONS.items() if key != "model"}
    return [
        Meter(
            slug="tokens_total",
            aggregation="SUM",
            event_type=event_type,
            value_property="$.tokens",
            group_by={"model": "$.model", "type": "$.type", **extra},
            description="AI Token Usage",
        ),
        Meter(
            slug=f"{prefix}_cost",
            aggregation="SUM",
            event_type=event_type,
            value_property="$.cost",
            group_by=dict(_DIMENSIONS),
            description="Model cost in USD as priced by LiteLLM",
        ),
        Meter(
            slug=f"{prefix}_calls",
            aggregation="UNIQUE_COUNT",
            event_type=event_type,
            value_property="$.call_id",
            group_by=dict(_DIMENSIONS),
            description="LLM calls",
        ),
    ]


def failure_meter(event_type: str) -> Meter:
    """Counts failed calls (events of type ``<type>_failure``)."""
    prefix = slug_prefix(event_type)
    return Meter(
        slug=f"{prefix}_failures",
        aggregation="COUNT",
        event_type=f"{event_type}_failure",
        group_by={"model": "$.model", "error_class": "$.error_class", "provider": "$.provider"},
        description="Failed LLM calls",
    )


def meters_for(event_type: str, shape: str) -> list[Meter]:
    """The meters that read this package's events of one type and shape."""
    base = (
        tokens_shape_meters(event_type) if shape == "tokens" else litellm_shape_meters(event_type)
    )
    return [*base, failure_meter(event_type)]


def default_server_meters() -> list[Meter]:
    """What the local server starts with: both shapes with their default event types."""
    return [*meters_for("litellm_tokens", "litellm"), *meters_for("prompt", "tokens")]
