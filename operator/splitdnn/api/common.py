"""Types shared by every splitdnn custom resource: naming, conditions, scheduling, resources.

All models serialise with camelCase names (the Kubernetes convention) while Python code uses
snake_case. Unknown fields are rejected, as ``kubectl apply --validate=strict`` would. A
model's CEL rules (:func:`validated_by`) are written into the CRD *and* checked when the
model validates, failing with the same message at the same field path; lists keyed like
``x-kubernetes-list-type: map`` (:class:`ListMap`) reject duplicate keys in both places too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import InitErrorDetails, PydanticCustomError, core_schema
from typing_extensions import Self

from splitdnn.api.cel import RuleFailure, check_rules
from splitdnn.api.errors import DUPLICATE, REQUIRED, split_field_path

GROUP = "splitdnn.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
CONDITION_TYPE = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
CONDITION_REASON = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
SHA256_HEX = r"^[a-f0-9]{64}$"
PVC_URI = r"pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/.+"
QUANTITY = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)

ConditionType = Literal[
    "Ready", "Reconciling", "Stalled", "ModelAnalyzed", "Profiled", "Planned", "RolledOut"
]
CONDITION_TYPES: tuple[str, ...] = ConditionType.__args__  # type: ignore[attr-defined]

Sha256 = Annotated[str, Field(min_length=64, max_length=64, pattern=SHA256_HEX)]
DnsLabel = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL)]
LabelMap = Annotated[
    dict[str, Annotated[str, Field(max_length=63)]],
    Field(max_length=16, description="Node labels that must all match (a nodeSelector)."),
]
NonNegative = Annotated[int, Field(ge=0)]


def _quantity(value: object) -> int | str:
    """A Kubernetes resource quantity: an integer or a string such as 500m or 1Gi."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        if re.match(QUANTITY, value):
            return value
        raise PydanticCustomError("quantity", "{value} is not a quantity such as 500m or 1Gi",
                                  {"value": repr(value)})
    raise PydanticCustomError("int_or_string_type", "must be an integer or a string")


Quantity = Annotated[
    int | str,
    PlainValidator(_quantity),
    WithJsonSchema({"x-kubernetes-int-or-string": True, "pattern": QUANTITY}),
]


def cel(rule: str, message: str, field_path: str = "", reason: str = "") -> dict[str, Any]:
    """One ``x-kubernetes-validations`` entry (reason: a FieldValue* cause type)."""
    entry: dict[str, Any] = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    if reason:
        entry["reason"] = reason
    return entry


def validated_by(*rules: dict[str, Any]) -> ConfigDict:
    """Model config carrying CEL rules: written into the CRD and enforced by the model."""
    return ConfigDict(json_schema_extra={"x-kubernetes-validations": list(rules)})


Detail = tuple[tuple[str | int, ...], dict[str, Any]]


def _error(title: str, details: Sequence[Detail], values: Any) -> ValidationError:
    """A ValidationError whose entries sit at the given paths below the model validating."""
    return ValidationError.from_exception_data(title, [
        InitErrorDetails(
            type=PydanticCustomError("cel_rule", "{message}", context),
            loc=loc,
            input=_lookup(values, loc),
        )
        for loc, context in details
    ])


def _lookup(value: Any, loc: tuple[str | int, ...]) -> Any:
    for part in loc:
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            return None
    return value


class ApiModel(BaseModel):
    """Base for every API type: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def to_wire(self) -> dict[str, Any]:
        """The JSON form a Kubernetes API server stores: camelCase, no unset optionals."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")

    @classmethod
    def cel_rules(cls) -> list[dict[str, Any]]:
        """This type's own ``x-kubernetes-validations`` (also written into the CRD)."""
        extra = cls.model_config.get("json_schema_extra")
        rules = extra.get("x-kubernetes-validations") if isinstance(extra, dict) else None
        return [rule for rule in rules if isinstance(rule, dict)] if isinstance(rules, list) else []

    @model_validator(mode="after")
    def _enforce_cel_rules(self) -> Self:
        """Hold the model to the same CEL rules the API server applies, at the same paths."""
        rules = self.cel_rules()
        if not rules:
            return self
        wire = self.to_wire()
        failures = check_rules(rules, wire)
        if failures:
            raise _error(type(self).__name__, [_detail(failure) for failure in failures], wire)
        return self


def _detail(failure: RuleFailure) -> Detail:
    context = {"message": failure.message, "rule": failure.rule, "reason": failure.reason}
    return split_field_path(failure.field_path), context


@dataclass(frozen=True)
class ListMap:
    """``x-kubernetes-list-type: map``: list items are unique by these (wire-name) keys.

    Use as ``Annotated[list[Item], ListMap("name")]``; duplicates fail at ``list[i]``.
    """

    keys: tuple[str, ...]

    def __init__(self, *keys: str) -> None:
        object.__setattr__(self, "keys", keys)

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self._unique, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema.update({
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": list(self.keys),
        })
        return json_schema

    def _unique(self, items: list[Any]) -> list[Any]:
        seen: set[str] = set()
        duplicates = []
        for index, item in enumerate(items):
            wire = item.to_wire() if isinstance(item, ApiModel) else item
            key = json.dumps({name: wire.get(name) for name in self.keys}, sort_keys=True)
            if key in seen:
                message = f"Duplicate value: {key}"
                duplicates.append(((index,), {"message": message, "reason": DUPLICATE}))
            seen.add(key)
        if duplicates:
            raise _error("ListMap", duplicates, items)
        return items


class Resource(ApiModel):
    """Fields every custom resource object has besides ``kind``, ``spec`` and ``status``."""

    api_version: Literal["splitdnn.io/v1alpha1"] = Field(
        default="splitdnn.io/v1alpha1",
        description="Versioned schema of this object: splitdnn.io/v1alpha1.",
    )
    metadata: dict[str, object] = Field(
        default_factory=dict,
        description="Standard object metadata (name, namespace, labels, annotations, …).",
    )


class Condition(ApiModel):
    """The standard Kubernetes condition (metav1.Condition)."""

    type: str = Field(
        max_length=316, pattern=CONDITION_TYPE,
        description="Condition type: Ready, Reconciling, Stalled, ModelAnalyzed, Profiled, "
                    "Planned or RolledOut.",
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(
        min_length=1, max_length=1024, pattern=CONDITION_REASON,
        description="A CamelCase word saying why the condition has this status.",
    )
    message: str = Field(
        default="", max_length=32768, description="Human-readable details, e.g. what to fix."
    )
    last_transition_time: datetime = Field(description="When the status last changed.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation the condition was set for."
    )


class ResourceStatus(ApiModel):
    """Status fields every splitdnn resource has, so that kstatus, Flux and Argo CD read it."""

    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation the status describes."
    )
    conditions: Annotated[list[Condition], ListMap("type")] = Field(
        default_factory=list,
        max_length=16,
        description=(
            "Ready, Reconciling and Stalled (kstatus: `kubectl wait --for=condition=Ready`), "
            "plus per-step conditions ModelAnalyzed, Profiled, Planned and RolledOut."
        ),
    )


class Toleration(ApiModel):
    """A Kubernetes toleration, for tainted nodes such as dedicated GPU servers."""

    key: str | None = Field(default=None, max_length=317, description="Taint key.")
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Exists or Equal.")
    value: str | None = Field(default=None, max_length=63, description="Taint value (Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate; empty means all."
    )
    toleration_seconds: int | None = Field(
        default=None, ge=0, description="How long a NoExecute taint is tolerated (seconds)."
    )


class ResourceRequirements(ApiModel):
    """CPU, memory and device requests and limits of a container."""

    requests: dict[str, Quantity] | None = Field(
        default=None, max_length=8, description="Minimum resources, e.g. {cpu: 500m}."
    )
    limits: dict[str, Quantity] | None = Field(
        default=None, max_length=8, description="Maximum resources, e.g. {nvidia.com/gpu: 1}."
    )


SHA256_FOR_HTTPS = cel(
    "!self.source.startsWith('https://') || has(self.sha256)",
    "sha256 is required for https:// sources", ".sha256", REQUIRED,
)


class ArtifactRef(ApiModel):
    """A file the runtime fetches: pvc://CLAIM/PATH or https://URL (sha256 required)."""

    model_config = validated_by(SHA256_FOR_HTTPS)

    source: str = Field(
        max_length=2048,
        pattern=rf"^({PVC_URI}|https://.+)$",
        description="pvc://CLAIM/PATH (a file on a PersistentVolumeClaim) or https://URL.",
    )
    sha256: Sha256 | None = Field(
        default=None,
        description="Hex SHA-256 of the file, checked after download; required for https://.",
    )


class DatasetRef(ApiModel):
    """A labelled dataset: ``sklearn:NAME`` or a NumPy ``.npz`` file (``x``, ``y`` and
    optionally ``x_test``, ``y_test``) on a claim or at an https URL."""

    model_config = validated_by(SHA256_FOR_HTTPS)

    source: str = Field(
        max_length=2048,
        pattern=rf"^(sklearn:[a-z_]+|{PVC_URI}|https://.+)$",
        description="sklearn:NAME (a dataset shipped with scikit-learn, e.g. sklearn:digits), "
                    "pvc://CLAIM/PATH or https://URL.",
    )
    sha256: Sha256 | None = Field(
        default=None, description="Hex SHA-256 of the file; required for https:// sources."
    )


def nested(model: type[ApiModel], description: str) -> Any:
    """A field holding a sub-object whose own fields all have defaults.

    The CRD gets ``default: {}`` so the API server fills in the inner defaults, and the
    stored object matches what the model produces.
    """
    return Field(default_factory=model, description=description,
                 json_schema_extra={"default": {}})
