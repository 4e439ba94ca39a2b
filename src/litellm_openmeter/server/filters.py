"""OpenMeter's ``advancedMeterGroupByFilters``: a ``FilterString`` per groupBy key,
checked and turned into SQL for the store.

A filter has one operator: ``$eq``, ``$ne``, ``$gt``, ``$gte``, ``$lt``, ``$lte`` (a
string; strings compare byte by byte), ``$in``, ``$nin`` (an array of strings), ``$like``,
``$nlike``, ``$ilike``, ``$nilike`` (a SQL LIKE pattern: ``%`` any run of characters, ``_``
one character, a backslash makes the next one literal; the ``i`` forms ignore case), or
``$and``, ``$or`` (an array of filters). As in OpenMeter, an event without the key has
the value ``""``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

LIKE_FUNCTION = "openmeter_like"
"""The SQLite function the LIKE operators call (see :func:`like`): SQLite's own LIKE
ignores the case of ASCII letters only, and always."""

MAX_DEPTH = 8
"""How deeply ``$and`` and ``$or`` may nest."""

_COMPARE = {"$eq": "=", "$ne": "!=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_LISTS = {"$in": "IN", "$nin": "NOT IN"}
# operator -> (negated, case folded)
_LIKES = {
    "$like": (False, False),
    "$nlike": (True, False),
    "$ilike": (False, True),
    "$nilike": (True, True),
}
_LOGIC = {"$and": "AND", "$or": "OR"}
OPERATORS = (*_COMPARE, *_LISTS, *_LIKES, *_LOGIC)

Filter = tuple[str, Any]
"""A checked filter: its one operator and operand (for ``$and`` and ``$or``, a list of
filters)."""


def check_filters(raw: object, keys: set[str], meter: str) -> dict[str, Filter]:
    """``advancedMeterGroupByFilters`` as given (an object of groupBy key -> filter),
    checked; raises ValueError saying what is wrong. Empty filters are left out."""
    name = "advancedMeterGroupByFilters"
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"{name}: must be an object of groupBy key -> filter")
    checked: dict[str, Filter] = {}
    for key, value in raw.items():
        if key not in keys:
            known = ", ".join(sorted(keys)) or "none"
            raise ValueError(
                f"{name}: {key!r} is not a groupBy key of meter {meter} (known: {known})"
            )
        if value is None or value == {}:
            continue
        checked[str(key)] = _check(value, f"{name}.{key}", 1)
    return checked


def _check(value: object, where: str, depth: int) -> Filter:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: must be an object with one of {', '.join(OPERATORS)}")
    present = [(operator, operand) for operator, operand in value.items() if operand is not None]
    unknown = [operator for operator, _ in present if operator not in OPERATORS]
    if unknown:
        raise ValueError(
            f"{where}: unknown operator {unknown[0]!r}; use one of {', '.join(OPERATORS)}"
        )
    if len(present) != 1:
        raise ValueError(
            f"{where}: a filter takes exactly one operator, got "
            f"{', '.join(operator for operator, _ in present) or 'none'}; combine several "
            "with $and or $or"
        )
    operator, operand = present[0]
    if operator in _LISTS:
        if not isinstance(operand, list) or not all(isinstance(item, str) for item in operand):
            raise ValueError(f"{where}.{operator}: must be an array of strings")
    elif operator in _LOGIC:
        if not isinstance(operand, list) or not operand:
            raise ValueError(f"{where}.{operator}: must be a non-empty array of filters")
        if depth >= MAX_DEPTH:
            raise ValueError(f"{where}: $and and $or nest at most {MAX_DEPTH} deep")
        return operator, [
            _check(child, f"{where}.{operator}[{index}]", depth + 1)
            for index, child in enumerate(operand)
        ]
    elif not isinstance(operand, str):
        raise ValueError(f"{where}.{operator}: must be a string")
    return operator, operand


def filter_sql(value: str, checked: Filter) -> tuple[str, list[Any]]:
    """A checked filter as a SQL condition and its parameters; ``value`` is the SQL
    expression of the key's value (``""`` where the event has none)."""
    operator, operand = checked
    if operator in _COMPARE:
        return f"{value} {_COMPARE[operator]} ?", [operand]
    if operator in _LISTS:
        if not operand:  # IN () is no SQL: nothing is in an empty list
            return ("0" if operator == "$in" else "1"), []
        return f"{value} {_LISTS[operator]} ({','.join('?' * len(operand))})", list(operand)
    if operator in _LIKES:
        negated, fold = _LIKES[operator]
        test = f"{LIKE_FUNCTION}({value}, ?, {int(fold)})"
        return (f"NOT {test}" if negated else test), [operand]
    parts = [filter_sql(value, child) for child in operand]
    sql = f" {_LOGIC[operator]} ".join(f"({part})" for part, _ in parts)
    return f"({sql})", [param for _, params in parts for param in params]


def like(value: str | None, pattern: str | None, fold: int) -> int:
    """SQL LIKE as OpenMeter's database has it (case-sensitive, unless ``fold``), for
    SQLite: ``connection.create_function(LIKE_FUNCTION, 3, like, deterministic=True)``."""
    if value is None or pattern is None:
        return 0
    return int(_like_regex(pattern, bool(fold)).fullmatch(value) is not None)


@functools.lru_cache(maxsize=256)
def _like_regex(pattern: str, fold: bool) -> re.Pattern[str]:
    parts: list[str] = []
    escaped = False
    for char in pattern:
        if escaped:
            parts.append(re.escape(char))
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "%":
            parts.append(".*")
        elif char == "_":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    if escaped:  # a trailing backslash stands for itself
        parts.append(re.escape("\\"))
    return re.compile("".join(parts), re.DOTALL | (re.IGNORECASE if fold else 0))
