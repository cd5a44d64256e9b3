"""Label and field selectors as the API server parses them from query strings.

Labels: ``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``, ``a notin (x)``, ``a``, ``!a``.
Fields: ``path=value``, ``path==value``, ``path!=value`` on dotted paths such as
``metadata.name``, ``spec.nodeName`` or ``status.phase``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

Matcher = Callable[[dict[str, Any]], bool]

_SET_TERM = re.compile(r"^\s*([\w./-]+)\s+(in|notin)\s*\(([^)]*)\)\s*$")
_EQ_TERM = re.compile(r"^\s*([\w./-]+)\s*(==|!=|=)\s*([\w./-]*)\s*$")
_EXISTS_TERM = re.compile(r"^\s*(!?)\s*([\w./-]+)\s*$")


class SelectorError(ValueError):
    """A selector string that does not parse."""


def _split_terms(text: str) -> list[str]:
    terms, depth, current = [], 0, ""
    for char in text:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    terms.append(current)
    return [term for term in terms if term.strip()]


def _label_term(term: str) -> Callable[[Mapping[str, str]], bool]:
    if match := _SET_TERM.match(term):
        key, op, values = match.group(1), match.group(2), match.group(3)
        wanted = {value.strip() for value in values.split(",") if value.strip()}
        if op == "in":
            return lambda labels: labels.get(key) in wanted
        return lambda labels: labels.get(key) not in wanted
    if match := _EQ_TERM.match(term):
        key, op, value = match.groups()
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if match := _EXISTS_TERM.match(term):
        negate, key = match.group(1) == "!", match.group(2)
        return lambda labels: (key in labels) != negate
    raise SelectorError(f"unable to parse requirement {term!r}")


def label_matcher(text: str | None) -> Matcher:
    """A predicate on objects for a ``labelSelector`` query string (None: everything)."""
    checks = [_label_term(term) for term in _split_terms(text or "")]

    def matches(obj: dict[str, Any]) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(check(labels) for check in checks)

    return matches


def labels_match_selector(labels: Mapping[str, str], selector: Mapping[str, Any] | None) -> bool:
    """A LabelSelector object (``matchLabels`` + ``matchExpressions``) against labels."""
    if not selector:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    return all(expression_matches(labels, expr) for expr in selector.get("matchExpressions") or [])


def expression_matches(values: Mapping[str, str], expr: Mapping[str, Any]) -> bool:
    """One ``{key, operator, values}`` requirement (label selectors and node affinity)."""
    key, operator, wanted = expr.get("key", ""), expr.get("operator", ""), expr.get("values") or []
    present = key in values
    if operator == "In":
        return present and values[key] in wanted
    if operator == "NotIn":
        return not present or values[key] not in wanted
    if operator == "Exists":
        return present
    if operator == "DoesNotExist":
        return not present
    if operator in ("Gt", "Lt") and present and wanted:
        try:
            have, limit = int(values[key]), int(wanted[0])
        except ValueError:
            return False
        return have > limit if operator == "Gt" else have < limit
    return False


def field_value(obj: dict[str, Any], path: str) -> str | None:
    """The string value at a dotted path, or None."""
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    if value is None:
        return None
    return str(value).lower() if isinstance(value, bool) else str(value)


def field_matcher(text: str | None) -> Matcher:
    """A predicate on objects for a ``fieldSelector`` query string (None: everything)."""
    checks: list[tuple[str, bool, str]] = []
    for term in _split_terms(text or ""):
        match = _EQ_TERM.match(term) or re.match(r"^\s*([\w.]+)\s*(==|!=|=)\s*(.*?)\s*$", term)
        if not match:
            raise SelectorError(f"invalid field selector {term!r}")
        path, op, value = match.groups()
        checks.append((path, op != "!=", value))

    def matches(obj: dict[str, Any]) -> bool:
        return all((field_value(obj, path) or "") == value if equal
                   else (field_value(obj, path) or "") != value
                   for path, equal, value in checks)

    return matches
