"""Field errors as the Kubernetes API server reports them, from either validator.

A :class:`FieldError` names the offending field as a path (``spec.stages[1].layers``) and
carries the Kubernetes cause type (``FieldValueRequired``, ``FieldValueInvalid``, …), so an
emulated API server can answer with a ``Status`` whose ``details.causes`` read like a real
one, and the operator can put the path into a ``Stalled`` condition's message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pydantic import ValidationError

REQUIRED = "FieldValueRequired"
INVALID = "FieldValueInvalid"
TYPE_INVALID = "FieldValueTypeInvalid"
NOT_SUPPORTED = "FieldValueNotSupported"
DUPLICATE = "FieldValueDuplicate"
FORBIDDEN = "FieldValueForbidden"
TOO_LONG = "FieldValueTooLong"
TOO_MANY = "FieldValueTooMany"
# Not a 422 cause in Kubernetes: strict field validation rejects unknown fields while decoding.
UNKNOWN_FIELD = "FieldValueUnknown"

_PYDANTIC_REASONS = {
    "missing": REQUIRED,
    "extra_forbidden": UNKNOWN_FIELD,
    "literal_error": NOT_SUPPORTED,
    "enum": NOT_SUPPORTED,
    "too_long": TOO_MANY,
    "string_too_long": TOO_LONG,
}
_PYDANTIC_TYPE_ERRORS = re.compile(r"^(int|float|string|bool|list|dict|model)_(type|parsing)$")
_CEL_ERROR = "cel_rule"


@dataclass(frozen=True)
class FieldError:
    """One rejected field: its path, what is wrong, and the Kubernetes cause type."""

    path: str
    message: str
    reason: str = INVALID

    def __str__(self) -> str:
        return f"{self.path or '<root>'}: {self.message}"


def join_path(parts: Iterable[str | int]) -> str:
    """``("spec", "stages", 1, "layers")`` → ``spec.stages[1].layers``."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def split_field_path(field_path: str) -> tuple[str | int, ...]:
    """A CEL ``fieldPath`` (``.source.tier``, ``.stages[1]``, ``['a.b']``) as path parts."""
    parts: list[str | int] = []
    for name, index, quoted in re.findall(r"\.([A-Za-z0-9_]+)|\[(\d+)\]|\['([^']*)'\]",
                                          field_path):
        parts.append(int(index) if index else name or quoted)
    return tuple(parts)


def from_pydantic(error: ValidationError, prefix: Sequence[str | int] = ()) -> list[FieldError]:
    """The errors of a pydantic ValidationError, with paths in the wire (camelCase) names."""
    return [
        FieldError(
            join_path([*prefix, *item["loc"]]),
            item["msg"],
            _pydantic_reason(item["type"], item.get("ctx") or {}),
        )
        for item in error.errors(include_url=False)
    ]


def _pydantic_reason(kind: str, context: dict[str, object]) -> str:
    if kind == _CEL_ERROR:
        return str(context.get("reason") or INVALID)
    if _PYDANTIC_TYPE_ERRORS.match(kind):
        return TYPE_INVALID
    return _PYDANTIC_REASONS.get(kind, INVALID)
