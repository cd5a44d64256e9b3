"""Validate a manifest against its CRD the way a Kubernetes API server would.

Three passes over the object, each reporting errors with the offending field's path
(``spec.stages[1].layers``): the OpenAPI v3.0 schema (types, bounds, patterns, enums,
required fields), unknown fields (as ``kubectl apply`` strict field validation rejects
them), and the CEL rules in ``x-kubernetes-validations``, with ``self`` bound to the node
each rule sits on. Used by tests, and usable by an emulated API server.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jsonschema

from splitdnn.api.cel import check_rules
from splitdnn.api.common import API_VERSION
from splitdnn.api.crdgen import render_crds


@dataclass(frozen=True)
class FieldError:
    """One validation error: where (a field path) and what was expected."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def _int_or_string(
    validator: Any, enabled: bool, instance: Any, schema: dict[str, Any]
) -> Iterator[jsonschema.ValidationError]:
    if enabled and (isinstance(instance, bool) or not isinstance(instance, int | str)):
        yield jsonschema.ValidationError(f"{instance!r} is not an integer or a string")


OpenApiValidator = jsonschema.validators.extend(
    jsonschema.Draft4Validator,  # OpenAPI v3.0 keeps draft 4's boolean exclusiveMinimum
    {"x-kubernetes-int-or-string": _int_or_string},
)


@lru_cache(maxsize=1)
def crd_schemas() -> dict[str, dict[str, Any]]:
    """openAPIV3Schema of every splitdnn kind, keyed by kind name."""
    schemas = {}
    for crd in render_crds().values():
        version = crd["spec"]["versions"][0]
        schemas[crd["spec"]["names"]["kind"]] = version["schema"]["openAPIV3Schema"]
    return schemas


def validate_manifest(
    obj: dict[str, Any], schemas: dict[str, Any] | None = None
) -> list[FieldError]:
    """Every error in ``obj``; an empty list means the API server would accept it."""
    schemas = schemas if schemas is not None else crd_schemas()
    kind = str(obj.get("kind"))
    if obj.get("apiVersion") != API_VERSION or kind not in schemas:
        return [FieldError("apiVersion", f"expected {API_VERSION} and one of {sorted(schemas)}, "
                                         f"got {obj.get('apiVersion')}/{kind}")]
    schema = schemas[kind]
    errors = _schema_errors(obj, schema)
    errors += _unknown_fields(obj, schema, "")
    if not errors:  # like the API server, CEL runs only on objects that pass the schema
        errors += _cel_errors(obj, schema, "")
    return errors


def _schema_errors(obj: dict[str, Any], schema: dict[str, Any]) -> list[FieldError]:
    validator = OpenApiValidator(schema)
    return [
        FieldError(_path(error.absolute_path) or "(root)", error.message)
        for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.path)))
    ]


def _path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def _children(value: Any, schema: dict[str, Any], path: str) -> Iterator[tuple[Any, dict, str]]:
    """(child value, child schema, child path) for the parts of ``value`` the schema describes."""
    if isinstance(value, dict):
        for key, child in value.items():
            if key in schema.get("properties", {}):
                yield child, schema["properties"][key], f"{path}.{key}" if path else key
            elif isinstance(schema.get("additionalProperties"), dict):
                yield child, schema["additionalProperties"], f"{path}.{key}" if path else key
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, child in enumerate(value):
            yield child, schema["items"], f"{path}[{index}]"


def _unknown_fields(value: Any, schema: dict[str, Any], path: str) -> list[FieldError]:
    errors = []
    if isinstance(value, dict) and "properties" in schema and path != "metadata":
        known = schema["properties"]
        errors += [FieldError(f"{path}.{key}" if path else key,
                              f"unknown field (expected one of: {', '.join(known)})")
                   for key in value if key not in known]
    for child, child_schema, child_path in _children(value, schema, path):
        errors += _unknown_fields(child, child_schema, child_path)
    return errors


def _cel_errors(value: Any, schema: dict[str, Any], path: str) -> list[FieldError]:
    errors = []
    rules = schema.get("x-kubernetes-validations")
    if rules:
        errors += [FieldError(path + failure.field_path if failure.field_path else path,
                              failure.message)
                   for failure in check_rules(rules, value)]
    for child, child_schema, child_path in _children(value, schema, path):
        errors += _cel_errors(child, child_schema, child_path)
    return errors
