"""The LIKE operators of advancedMeterGroupByFilters, as OpenMeter's database has them."""

from __future__ import annotations

import pytest

from litellm_openmeter.server.filters import check_filters, filter_sql, like


@pytest.mark.parametrize(
    ("value", "pattern", "fold", "expected"),
    [
        ("gpt-4o", "gpt%", 0, 1),
        ("GPT-4o", "gpt%", 0, 0),
        ("GPT-4o", "gpt%", 1, 1),
        ("École", "école", 1, 1),  # case folding beyond ASCII
        ("axb", "a.b", 0, 0),  # a regular expression's dot is a plain dot here
        ("a.b", "a.b", 0, 1),
        ("a%b", "a\\%b", 0, 1),
        ("axb", "a\\%b", 0, 0),
        ("a_b", "a\\_b", 0, 1),
        ("a\\", "a\\", 0, 1),  # a trailing backslash stands for itself
        ("line\nbreak", "line%", 0, 1),
        ("", "%", 0, 1),
        ("x", "", 0, 0),
        (None, "%", 0, 0),
    ],
)
def test_like(value: str | None, pattern: str, fold: int, expected: int) -> None:
    assert like(value, pattern, fold) == expected


def test_nested_filters_become_one_condition_with_their_parameters() -> None:
    checked = check_filters(
        {"model": {"$or": [{"$in": ["a", "b"]}, {"$and": [{"$gt": "c"}, {"$nlike": "d%"}]}]}},
        {"model"},
        "tokens",
    )
    sql, params = filter_sql("v", checked["model"])
    assert sql == "((v IN (?,?)) OR (((v > ?) AND (NOT openmeter_like(v, ?, 0)))))"
    assert params == ["a", "b", "c", "d%"]


def test_too_deep_a_nesting_is_refused() -> None:
    nested: dict[str, object] = {"$eq": "x"}
    for _ in range(8):
        nested = {"$and": [nested]}
    with pytest.raises(ValueError, match="nest at most 8 deep"):
        check_filters({"model": nested}, {"model"}, "tokens")
