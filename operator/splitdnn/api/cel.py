"""Evaluate Kubernetes CEL validation rules (``x-kubernetes-validations``) in Python.

The rules written into the CRDs are enforced by the API server, by the pydantic models and
by :mod:`splitdnn.api.validation`, so a spec is judged alike everywhere. This module binds
``self`` to a value, converts it to CEL types the way the API server does (guided by the
OpenAPI schema when one is given: ``number`` is a double even when written as ``50``), and
adds the Kubernetes list library (``isSorted``, ``sum``, ``min``, ``max``, ``indexOf``,
``lastIndexOf``) that plain CEL lacks. Transition rules (those reading ``oldSelf``) need the
previous object and are skipped.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import celpy
from celpy import celtypes

from splitdnn.api.errors import INVALID

OLD_SELF = re.compile(r"\boldSelf\b")


@dataclass(frozen=True)
class RuleFailure:
    """A rule that did not hold (or could not be evaluated) for a value."""

    rule: str
    message: str
    field_path: str
    reason: str


def _items(values: Any) -> list[Any]:
    if not isinstance(values, celtypes.ListType):
        raise TypeError(f"expected a list, got {type(values).__name__}")
    return list(values)


def _is_sorted(values: Any) -> celtypes.BoolType:
    return celtypes.BoolType(all(a <= b for a, b in itertools.pairwise(_items(values))))


def _sum(values: Any) -> Any:
    items = _items(values)
    total = items[0] if items else celtypes.IntType(0)
    for item in items[1:]:
        total = total + item
    return total


def _min(values: Any) -> Any:
    items = _items(values)
    if not items:
        raise ValueError("min() of an empty list")
    return min(items)


def _max(values: Any) -> Any:
    items = _items(values)
    if not items:
        raise ValueError("max() of an empty list")
    return max(items)


def _index_of(values: Any, item: Any) -> celtypes.IntType:
    if isinstance(values, celtypes.StringType):  # the strings extension's indexOf
        return celtypes.IntType(str(values).find(str(item)))
    items = _items(values)
    return celtypes.IntType(items.index(item) if item in items else -1)


def _last_index_of(values: Any, item: Any) -> celtypes.IntType:
    if isinstance(values, celtypes.StringType):
        return celtypes.IntType(str(values).rfind(str(item)))
    items = _items(values)
    matches = [index for index, value in enumerate(items) if value == item]
    return celtypes.IntType(matches[-1] if matches else -1)


KUBERNETES_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "isSorted": _is_sorted,
    "sum": _sum,
    "min": _min,
    "max": _max,
    "indexOf": _index_of,
    "lastIndexOf": _last_index_of,
}


@lru_cache(maxsize=512)
def compile_rule(rule: str) -> Any:
    """A runnable program for one rule (cached: parsing dominates the cost)."""
    environment = celpy.Environment()
    return environment.program(environment.compile(rule), functions=KUBERNETES_FUNCTIONS)


def to_cel(value: Any, schema: Mapping[str, Any] | None = None) -> Any:
    """``value`` as CEL types; ``schema`` (OpenAPI v3) decides numbers, maps and lists."""
    if schema is None:
        return celpy.json_to_cel(value)
    if isinstance(value, Mapping):
        return celtypes.MapType({
            celtypes.StringType(key): to_cel(item, _child_schema(schema, key))
            for key, item in value.items()
        })
    if isinstance(value, list):
        items = schema.get("items")
        return celtypes.ListType([to_cel(item, items) for item in value])
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return celtypes.DoubleType(value)
    return celpy.json_to_cel(value)


def _child_schema(schema: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    properties = schema.get("properties") or {}
    if key in properties:
        return properties[key]
    additional = schema.get("additionalProperties")
    return additional if isinstance(additional, Mapping) else None


def evaluate(rule: str, self_value: Any) -> Any:
    """Evaluate ``rule`` with ``self`` bound to an already converted CEL value."""
    return compile_rule(rule).evaluate({"self": self_value})


def check_rules(
    rules: Iterable[Mapping[str, Any]], value: Any, schema: Mapping[str, Any] | None = None
) -> list[RuleFailure]:
    """The rules that fail for ``value`` (bound to ``self``), in order."""
    rules = [rule for rule in rules if not OLD_SELF.search(rule["rule"])]
    if not rules:
        return []
    bound = to_cel(value, schema)
    failures = []
    for rule in rules:
        message = _failure_message(rule, bound)
        if message is not None:
            failures.append(RuleFailure(
                rule["rule"], message, rule.get("fieldPath", ""), rule.get("reason", INVALID)))
    return failures


def _failure_message(rule: Mapping[str, Any], bound: Any) -> str | None:
    """None when the rule holds, else the message to report."""
    try:
        result = evaluate(rule["rule"], bound)
    except Exception as error:  # celpy raises CELEvalError (and friends) for bad access
        return f"{_message(rule, bound)} (rule could not be evaluated: {error})"
    if isinstance(result, celtypes.BoolType) and bool(result):
        return None
    return _message(rule, bound)


def _message(rule: Mapping[str, Any], bound: Any) -> str:
    """The rule's ``messageExpression`` when it evaluates to a string, else its ``message``."""
    expression = rule.get("messageExpression")
    if expression:
        try:
            text = evaluate(expression, bound)
        except Exception:  # the API server falls back to message as well
            text = None
        if isinstance(text, str) and text:  # celpy may return a plain str
            return str(text)
    return str(rule.get("message") or f"failed rule: {rule['rule']}")
