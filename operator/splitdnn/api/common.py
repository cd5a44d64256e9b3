"""Types shared by every splitdnn custom resource: naming, conditions, scheduling, resources.

All models serialise with camelCase names (the Kubernetes convention) while Python code uses
snake_case. Unknown fields are rejected, as ``kubectl apply --validate=strict`` would.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel
from typing_extensions import Self

from splitdnn.api.cel import check_rules

GROUP = "splitdnn.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
CONDITION_REASON = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
SHA256_HEX = r"^[a-f0-9]{64}$"

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
Quantity = Annotated[
    int | str,
    Field(description="A Kubernetes quantity such as 500m, 2 or 1Gi."),
]


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, Any]:
    """One ``x-kubernetes-validations`` entry."""
    entry: dict[str, Any] = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


def validated_by(*rules: dict[str, Any]) -> ConfigDict:
    """Model config carrying CEL rules: written into the CRD and enforced by the model."""
    return ConfigDict(json_schema_extra={"x-kubernetes-validations": list(rules)})


class ApiModel(BaseModel):
    """Base for every API type: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=False
    )

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
        """Hold the model to the same CEL rules the API server applies."""
        failures = check_rules(self.cel_rules(), self.to_wire()) if self.cel_rules() else []
        if failures:
            raise ValueError("; ".join(
                f"{failure.field_path.lstrip('.') or 'value'}: {failure.message}"
                for failure in failures
            ))
        return self


class Resource(ApiModel):
    """Fields every custom resource object has besides ``kind``, ``spec`` and ``status``."""

    api_version: Literal["splitdnn.io/v1alpha1"] = Field(
        default="splitdnn.io/v1alpha1", description="splitdnn.io/v1alpha1"
    )
    metadata: dict[str, object] = Field(default_factory=dict, description="Object metadata.")


class Condition(ApiModel):
    """The standard Kubernetes condition (metav1.Condition)."""

    type: str = Field(max_length=316, description="Condition type, e.g. Ready or Stalled.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(
        max_length=1024, pattern=CONDITION_REASON,
        description="A CamelCase word saying why the condition has this status.",
    )
    message: str = Field(default="", max_length=32768, description="Human-readable details.")
    last_transition_time: datetime = Field(description="When the status last changed.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation the condition was set for."
    )


class ResourceStatus(ApiModel):
    """Status fields every splitdnn resource has, so that kstatus, Flux and Argo CD read it."""

    LIST_EXTENSIONS: ClassVar[dict[str, Any]] = {
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
    }

    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation the status describes."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        description=(
            "Ready, Reconciling and Stalled (kstatus), plus per-step conditions "
            "ModelAnalyzed, Profiled, Planned and RolledOut."
        ),
        json_schema_extra=LIST_EXTENSIONS,
    )


class Toleration(ApiModel):
    """A Kubernetes toleration, for tainted nodes such as dedicated GPU servers."""

    key: str | None = Field(default=None, max_length=253, description="Taint key.")
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Exists or Equal.")
    value: str | None = Field(default=None, max_length=63, description="Taint value (Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate; empty means all."
    )
    toleration_seconds: int | None = Field(
        default=None, ge=0, description="How long a NoExecute taint is tolerated."
    )


class ResourceRequirements(ApiModel):
    """CPU, memory and device requests and limits of a container."""

    requests: dict[str, Quantity] | None = Field(
        default=None, max_length=8, description="Minimum resources, e.g. {cpu: 500m}."
    )
    limits: dict[str, Quantity] | None = Field(
        default=None, max_length=8, description="Maximum resources, e.g. {nvidia.com/gpu: 1}."
    )


class ArtifactRef(ApiModel):
    """A file the runtime fetches: pvc://CLAIM/PATH or https://URL (sha256 required)."""

    model_config = validated_by(
        cel("!self.source.startsWith('https://') || has(self.sha256)",
            "sha256 is required for https:// sources", ".sha256"),
    )

    source: str = Field(
        max_length=2048,
        pattern=r"^(pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/.+|https://.+)$",
        description="pvc://CLAIM/PATH or https://URL.",
    )
    sha256: Sha256 | None = Field(
        default=None,
        description="Hex SHA-256 of the file; required for https:// sources.",
    )
