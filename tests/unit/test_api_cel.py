"""The CEL evaluator: Kubernetes list functions, schema-typed values, and the stage rules."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from splitdnn.api.cel import check_rules, evaluate, to_cel
from splitdnn.api.splitplan import LAYERS_ORDERED, STAGE_RULES, SplitPlanSpec


@pytest.mark.parametrize(("rule", "value", "expected"), [
    ("self.isSorted()", [1, 2, 2, 5], True),
    ("self.isSorted()", [3, 1], False),
    ("self.isSorted()", [], True),
    ("self.sum() == 6", [1, 2, 3], True),
    ("self.min() == 1 && self.max() == 3", [2, 1, 3], True),
    ("self.indexOf(2) == 1 && self.indexOf(9) == -1", [1, 2, 2], True),
    ("self.lastIndexOf(2) == 2", [1, 2, 2], True),
    ("self.map(x, x * 2).exists_one(x, x == 4)", [1, 2, 3], True),
])
def test_kubernetes_list_functions(rule: str, value: list[int], expected: bool) -> None:
    assert bool(evaluate(rule, to_cel(value))) is expected


def test_string_index_functions() -> None:
    assert bool(evaluate("self.indexOf('b') == 1 && self.lastIndexOf('a') == 2", to_cel("aba")))


def test_numbers_follow_the_schema() -> None:
    schema = {"type": "object", "properties": {"ratio": {"type": "number"},
                                               "count": {"type": "integer"}}}
    value = to_cel({"ratio": 1, "count": 2}, schema)
    assert bool(evaluate("self.ratio > 0.5 && self.count > 1", value))
    failures = check_rules([{"rule": "self.ratio > 0.5", "message": "m"}], {"ratio": 1})
    assert "could not be evaluated" in failures[0].message  # untyped: 1 is an int


def test_failures_carry_field_path_and_reason() -> None:
    rules = [{"rule": "self.a < self.b", "message": "a before b", "fieldPath": ".a",
              "reason": "FieldValueForbidden"},
             {"rule": "self.c == 1", "message": "c is one"}]
    (first, second) = check_rules(rules, {"a": 2, "b": 1})
    assert (first.field_path, first.reason, first.message) == (".a", "FieldValueForbidden",
                                                              "a before b")
    assert second.reason == "FieldValueInvalid" and "could not be evaluated" in second.message


def test_transition_rules_are_skipped_without_an_old_object() -> None:
    assert check_rules([{"rule": "self == oldSelf", "message": "immutable"}], 1) == []


def is_partition(ranges: list[list[int]]) -> bool:
    """The reference: stages cover layers 0..last in order, without gaps or overlaps."""
    expected_first = 0
    for first, last in ranges:
        if first != expected_first or first > last:
            return False
        expected_first = last + 1
    return True


def passes_cel(ranges: list[list[int]]) -> bool:
    spec = {"stages": [{"name": f"s{i}", "layers": layers} for i, layers in enumerate(ranges)]}
    stage_failures = [f for stage in spec["stages"] for f in check_rules([LAYERS_ORDERED], stage)]
    return not stage_failures and not check_rules(STAGE_RULES, spec)


partitions = st.lists(st.integers(0, 4), min_size=1, max_size=5).map(
    lambda sizes: [[sum(sizes[:i]) + i, sum(sizes[: i + 1]) + i] for i in range(len(sizes))])
arbitrary = st.lists(st.lists(st.integers(0, 8), min_size=2, max_size=2), min_size=1, max_size=5)


@settings(max_examples=300, deadline=None)
@given(st.one_of(partitions, arbitrary, partitions.flatmap(st.permutations)))
def test_stage_rules_accept_exactly_the_ordered_partitions(ranges: list[list[int]]) -> None:
    assert passes_cel(ranges) == is_partition(ranges), ranges


@settings(max_examples=60, deadline=None)
@given(st.one_of(partitions, arbitrary))
def test_the_model_agrees_with_the_rules(ranges: list[list[int]]) -> None:
    spec = {"serviceRef": {"name": "svc"},
            "stages": [{"name": f"s{i}", "tier": "cpu", "layers": layers}
                       for i, layers in enumerate(ranges)]}
    try:
        SplitPlanSpec.model_validate(spec)
        accepted = True
    except ValidationError:
        accepted = False
    assert accepted == is_partition(ranges), ranges
