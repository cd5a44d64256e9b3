"""Evaluate Kubernetes CEL validation rules (``x-kubernetes-validations``) in Python.

The same rules the API server enforces from the CRD are enforced by the pydantic models and
by :mod:`splitdnn.api.validation`, so a spec is judged alike everywhere. Besides standard
CEL this provides the parts of the Kubernetes list library the rules use.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import celpy
from celpy import celtypes


@dataclass(frozen=True)
class RuleFailure:
    """A rule that did not hold (or could not be evaluated) for a value."""

    rule: str
    message: str
    field_path: str


def _is_sorted(values: Any) -> celtypes.BoolType:
    items = list(values)
    return celtypes.BoolType(all(left <= right for left, right in itertools.pairwise(items)))


def _sum(values: Any) -> Any:
    items = list(values)
    total = items[0] if items else celtypes.IntType(0)
    for item in items[1:]:
        total = total + item
    return total


KUBERNETES_LIST_FUNCTIONS = {
    "isSorted": _is_sorted,
    "sum": _sum,
    "min": lambda values: min(values),
    "max": lambda values: max(values),
}


@lru_cache(maxsize=256)
def _program(rule: str) -> Any:
    environment = celpy.Environment()
    return environment.program(environment.compile(rule), functions=KUBERNETES_LIST_FUNCTIONS)


def check_rules(rules: list[dict[str, Any]], value: Any) -> list[RuleFailure]:
    """The rules that fail for ``value`` (bound to ``self``), in order."""
    failures = []
    activation = {"self": celpy.json_to_cel(value)}
    for rule in rules:
        try:
            result = _program(rule["rule"]).evaluate(activation)
            held = isinstance(result, celtypes.BoolType) and bool(result)
            message = rule["message"]
        except Exception as error:  # celpy raises CELEvalError and friends on missing keys
            held, message = False, f"{rule['message']} (rule could not be evaluated: {error})"
        if not held:
            failures.append(RuleFailure(rule["rule"], message, rule.get("fieldPath", "")))
    return failures
