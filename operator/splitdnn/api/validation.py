"""Validate (and default) a manifest against its CRD the way a Kubernetes API server does.

The steps follow the apiextensions-apiserver: unknown fields are dropped and reported (as
``kubectl apply`` strict field validation reports them), ``null`` values of non-nullable
fields are pruned, ``default`` values are filled in, then the OpenAPI v3.0 schema is checked
(types, bounds, patterns, enums, required fields, int-or-string, nullable, date-time), then
``x-kubernetes-list-type`` map/set uniqueness, then the CEL rules of
``x-kubernetes-validations`` with ``self`` bound to the node each rule sits on — unless a
type or enum error makes them unsafe to run, as in the API server. Every error names the
offending field (``spec.stages[1].layers``) and carries the Kubernetes cause type.

:class:`CrdValidator` compiles one CRD version once and is reusable (an emulated API server
keeps one per CRD); :func:`validate_manifest` and :func:`default_manifest` look the right
one up by apiVersion and kind. :func:`validate_model` runs the same object through the
pydantic models, which enforce the same rules.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from typing import Any

import jsonschema
from pydantic import ValidationError

from splitdnn.api.cel import check_rules
from splitdnn.api.crdgen import render_crds
from splitdnn.api.errors import (
    DUPLICATE,
    INVALID,
    NOT_SUPPORTED,
    REQUIRED,
    TOO_LONG,
    TOO_MANY,
    TYPE_INVALID,
    UNKNOWN_FIELD,
    FieldError,
    from_pydantic,
)
from splitdnn.api.kinds import KINDS_BY_NAME

Schema = Mapping[str, Any]
Key = tuple[str, str, str]  # (group, version, kind)

RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
CEL_SKIPPED = (
    "some validation rules were not checked because the object was invalid; "
    "correct the existing errors to complete validation"
)
BLOCKING = {TYPE_INVALID, NOT_SUPPORTED}
FORMATS = jsonschema.FormatChecker(formats=())


@FORMATS.checks("date-time")
def _is_date_time(instance: object) -> bool:
    return not isinstance(instance, str) or bool(RFC3339.match(instance))


def _type(validator: Any, types: Any, instance: Any, schema: Schema) -> Iterator[Any]:
    """draft 4 ``type``, but OpenAPI's ``nullable: true`` admits null."""
    if instance is None and schema.get("nullable"):
        return
    yield from jsonschema.Draft4Validator.VALIDATORS["type"](validator, types, instance, schema)


def _int_or_string(validator: Any, enabled: bool, instance: Any, schema: Schema) -> Iterator[Any]:
    if enabled and (isinstance(instance, bool) or not isinstance(instance, int | str)):
        yield jsonschema.ValidationError("must be an integer or a string")


def _required(validator: Any, required: Any, instance: Any, schema: Schema) -> Iterator[Any]:
    """draft 4 ``required``, but each error sits at the missing field, as Kubernetes says."""
    if isinstance(instance, Mapping):
        for name in required:
            if name not in instance:
                yield jsonschema.ValidationError(f"{name!r} is a required property", path=[name])


OpenApiValidator = jsonschema.validators.extend(
    jsonschema.Draft4Validator,  # OpenAPI v3.0 keeps draft 4's boolean exclusiveMinimum
    {"type": _type, "required": _required, "x-kubernetes-int-or-string": _int_or_string},
)


class CrdValidator:
    """Validation and defaulting for one version of one CRD, compiled once."""

    def __init__(self, schema: Schema) -> None:
        self.schema = _with_root_fields(schema)
        self._validator = OpenApiValidator(self.schema, format_checker=FORMATS)

    @classmethod
    def for_crd(cls, crd: Schema, version: str) -> CrdValidator:
        """The validator of ``version`` in a CustomResourceDefinition document."""
        for entry in crd["spec"]["versions"]:
            if entry["name"] == version:
                return cls(entry["schema"]["openAPIV3Schema"])
        raise KeyError(f"{crd['metadata']['name']} has no version {version}")

    def default(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """``obj`` as the API server would store it: unknown fields and nulls pruned,
        defaults filled in (a copy; ``obj`` is not changed)."""
        prepared: dict[str, Any] = _prepare(obj, self.schema, "", [])
        return prepared

    def validate(self, obj: Mapping[str, Any]) -> list[FieldError]:
        """Every error in ``obj``; an empty list means the API server would accept it."""
        errors: list[FieldError] = []
        prepared = _prepare(obj, self.schema, "", errors)
        errors += _metadata_errors(prepared.get("metadata"))
        errors += [item for error in self._validator.iter_errors(prepared)
                   for item in _translate(error)]
        errors += _list_type_errors(prepared, self.schema, "")
        if any(error.reason in BLOCKING for error in errors):
            return [*errors, FieldError("", CEL_SKIPPED)]
        return errors + _cel_errors(prepared, self.schema, "")


def _with_root_fields(schema: Schema) -> Schema:
    """The schema with apiVersion, kind and metadata, which every object has implicitly."""
    implicit = {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                "metadata": {"type": "object"}}
    properties = {**implicit, **(schema.get("properties") or {})}
    return {**schema, "properties": properties}


def validators_for(crds: Mapping[str, Schema] | Iterable[Schema]) -> dict[Key, CrdValidator]:
    """A validator per served (group, version, kind) of some CRD documents."""
    documents = crds.values() if isinstance(crds, Mapping) else crds
    return {
        (crd["spec"]["group"], version["name"], crd["spec"]["names"]["kind"]):
            CrdValidator(version["schema"]["openAPIV3Schema"])
        for crd in documents
        for version in crd["spec"]["versions"]
        if version.get("served", True)
    }


@lru_cache(maxsize=1)
def _splitdnn_validators() -> dict[Key, CrdValidator]:
    return validators_for(render_crds())


def _lookup(obj: Mapping[str, Any], crds: Mapping[str, Schema] | Iterable[Schema] | None
            ) -> CrdValidator | FieldError:
    registry = _splitdnn_validators() if crds is None else validators_for(crds)
    group, _, version = str(obj.get("apiVersion", "")).rpartition("/")
    found = registry.get((group, version, str(obj.get("kind"))))
    if found is not None:
        return found
    known = ", ".join(sorted(f"{g}/{v} {k}" for g, v, k in registry))
    return FieldError("kind", f"no CRD serves apiVersion {obj.get('apiVersion')!r} kind "
                              f"{obj.get('kind')!r} (known: {known})", NOT_SUPPORTED)


def validate_manifest(
    obj: Mapping[str, Any], crds: Mapping[str, Schema] | Iterable[Schema] | None = None
) -> list[FieldError]:
    """Validate ``obj`` against its CRD (from ``crds``: CRD documents, e.g. the values of
    :func:`~splitdnn.api.crdgen.render_crds`; default: splitdnn's own)."""
    found = _lookup(obj, crds)
    return [found] if isinstance(found, FieldError) else found.validate(obj)


def default_manifest(
    obj: Mapping[str, Any], crds: Mapping[str, Schema] | Iterable[Schema] | None = None
) -> dict[str, Any]:
    """``obj`` with the API server's pruning and defaulting applied (see :class:`CrdValidator`)."""
    found = _lookup(obj, crds)
    if isinstance(found, FieldError):
        raise KeyError(found.message)
    return found.default(obj)


def validate_model(obj: Mapping[str, Any]) -> list[FieldError]:
    """Validate ``obj`` with the pydantic model of its kind (same rules, same paths)."""
    kind = KINDS_BY_NAME.get(str(obj.get("kind")))
    if kind is None:
        return [FieldError("kind", f"unknown kind {obj.get('kind')!r}", NOT_SUPPORTED)]
    try:
        kind.resource.model_validate(obj)
    except ValidationError as error:
        return from_pydantic(error)
    return []


def _child_path(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _prepare(value: Any, schema: Schema, path: str, errors: list[FieldError]) -> Any:
    """Copy of ``value`` pruned of unknown fields (reported) and nulls, with defaults."""
    if isinstance(value, Mapping):
        return _prepare_object(value, schema, path, errors)
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [_prepare(item, schema["items"], _child_path(path, index), errors)
                for index, item in enumerate(value)]
    return copy.deepcopy(value)


def _prepare_object(value: Mapping[str, Any], schema: Schema, path: str,
                    errors: list[FieldError]) -> dict[str, Any]:
    properties = schema.get("properties")
    additional = schema.get("additionalProperties")
    keep_unknown = (
        schema.get("x-kubernetes-preserve-unknown-fields") or additional is True
        or (properties is None and additional is None)
    )
    result: dict[str, Any] = {}
    for key, item in value.items():
        child = (properties or {}).get(key, additional if isinstance(additional, Mapping)
                                       else None)
        if child is None:
            if keep_unknown:
                result[key] = copy.deepcopy(item)
            else:
                errors.append(FieldError(_child_path(path, key),
                                         f'unknown field "{_child_path(path, key)}"',
                                         UNKNOWN_FIELD))
        elif item is not None or child.get("nullable"):
            result[key] = _prepare(item, child, _child_path(path, key), errors)
    for key, child in (properties or {}).items():
        if key not in result and "default" in child:
            result[key] = _prepare(child["default"], child, _child_path(path, key), errors)
    return result


def _metadata_errors(metadata: Any) -> list[FieldError]:
    """The ObjectMeta checks the API server makes on every object it creates."""
    if not isinstance(metadata, Mapping):
        return [FieldError("metadata", "Required value: an object with a name", REQUIRED)]
    name = metadata.get("name")
    if name is None:
        return [] if metadata.get("generateName") else [
            FieldError("metadata.name", "Required value: name or generateName is required",
                       REQUIRED)]
    if not isinstance(name, str) or len(name) > 253 or not DNS_SUBDOMAIN.match(name):
        return [FieldError("metadata.name", f"Invalid value: {name!r}: a lowercase RFC 1123 "
                                            "subdomain is required")]
    namespace = metadata.get("namespace")
    if namespace is not None and (not isinstance(namespace, str) or len(namespace) > 63
                                  or not DNS_LABEL.match(namespace)):
        return [FieldError("metadata.namespace", f"Invalid value: {namespace!r}: a lowercase "
                                                 "RFC 1123 label is required")]
    return _string_maps(metadata)


def _string_maps(metadata: Mapping[str, Any]) -> list[FieldError]:
    errors = []
    for field in ("labels", "annotations"):
        entries = metadata.get(field)
        if entries is None:
            continue
        if not isinstance(entries, Mapping) or not all(
                isinstance(value, str) for value in entries.values()):
            errors.append(FieldError(f"metadata.{field}", "must map strings to strings"))
    return errors


def _translate(error: jsonschema.ValidationError) -> list[FieldError]:
    """A jsonschema error in the API server's words, at the offending field."""
    path = _join(error.absolute_path)
    keyword, value = str(error.validator), error.instance
    expected: Any = error.validator_value
    if keyword == "required":
        return [FieldError(path, "Required value", REQUIRED)]
    if keyword in ("type", "x-kubernetes-int-or-string"):
        wanted = "integer or string" if keyword != "type" else expected
        return [FieldError(path, f'Invalid value: "{_json_type(value)}": must be of type '
                                 f"{wanted}", TYPE_INVALID)]
    if keyword == "enum":
        allowed = ", ".join(json.dumps(option) for option in expected)
        return [FieldError(path, f"Unsupported value: {json.dumps(value)}: supported values: "
                                 f"{allowed}", NOT_SUPPORTED)]
    return [_bound_error(path, keyword, expected, value, error.schema)]


def _bound_error(path: str, keyword: str, expected: Any, value: Any, schema: Any) -> FieldError:
    shown = json.dumps(value) if not isinstance(value, Mapping | list) else _json_type(value)
    messages = {
        "pattern": (f"should match '{expected}'", INVALID),
        "minimum": (_comparison("greater", expected, schema, "exclusiveMinimum"), INVALID),
        "maximum": (_comparison("less", expected, schema, "exclusiveMaximum"), INVALID),
        "minLength": (f"should be at least {expected} chars long", INVALID),
        "maxLength": (f"may not be more than {expected} bytes", TOO_LONG),
        "minItems": (f"should have at least {expected} items", INVALID),
        "maxItems": (f"must have at most {expected} items", TOO_MANY),
        "minProperties": (f"should have at least {expected} properties", INVALID),
        "maxProperties": (f"must have at most {expected} properties", TOO_MANY),
        "format": (f"must be a valid {expected}", INVALID),
    }
    message, reason = messages.get(keyword, (f"failed {keyword}: {expected}", INVALID))
    return FieldError(path, f"Invalid value: {shown}: {message}", reason)


def _comparison(word: str, bound: Any, schema: Any, exclusive_key: str) -> str:
    exclusive = isinstance(schema, Mapping) and schema.get(exclusive_key) is True
    return f"should be {word} than {'' if exclusive else 'or equal to '}{bound}"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "integer" if isinstance(value, int) else "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _join(parts: Iterable[Any]) -> str:
    path = ""
    for part in parts:
        path = _child_path(path, part)
    return path


def _children(value: Any, schema: Schema, path: str) -> Iterator[tuple[Any, Schema, str]]:
    """(child value, child schema, child path) for the parts of ``value`` the schema types."""
    if isinstance(value, Mapping):
        properties = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        for key, child in value.items():
            child_schema = properties.get(key, additional)
            if isinstance(child_schema, Mapping):
                yield child, child_schema, _child_path(path, key)
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for index, child in enumerate(value):
            yield child, schema["items"], _child_path(path, index)


def _list_type_errors(value: Any, schema: Schema, path: str) -> list[FieldError]:
    """Duplicates in ``x-kubernetes-list-type: map`` (by key) and ``set`` lists."""
    errors = []
    list_type = schema.get("x-kubernetes-list-type")
    if isinstance(value, list) and list_type in ("map", "set"):
        keys = schema.get("x-kubernetes-list-map-keys", [])
        seen: set[str] = set()
        for index, item in enumerate(value):
            identity = {key: item.get(key) for key in keys} if list_type == "map" and \
                isinstance(item, Mapping) else item
            marker = json.dumps(identity, sort_keys=True)
            if marker in seen:
                errors.append(FieldError(_child_path(path, index),
                                         f"Duplicate value: {marker}", DUPLICATE))
            seen.add(marker)
    for child, child_schema, child_path in _children(value, schema, path):
        errors += _list_type_errors(child, child_schema, child_path)
    return errors


def _cel_errors(value: Any, schema: Schema, path: str) -> list[FieldError]:
    """Failures of the CEL rules on this node and every node below it."""
    errors = []
    rules = schema.get("x-kubernetes-validations")
    if rules and value is not None:
        errors += [FieldError((path + failure.field_path).lstrip("."), failure.message,
                              failure.reason)
                   for failure in check_rules(rules, value, schema)]
    for child, child_schema, child_path in _children(value, schema, path):
        errors += _cel_errors(child, child_schema, child_path)
    return errors
