"""SplitPlan: where each block of a DNNService runs. Written by the operator, or by a user
who pins it with the annotation ``splitdnn.io/pinned: "true"``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from splitdnn.api.common import (
    ApiModel,
    DnsLabel,
    LabelMap,
    Resource,
    ResourceStatus,
    Sha256,
    Toleration,
    cel,
    validated_by,
)

PINNED_ANNOTATION = "splitdnn.io/pinned"
LayerRange = list[int]


class StageExit(ApiModel):
    """An early exit taken after this stage's last layer."""

    index: int = Field(ge=0, description="Index into the service's spec.exits.")
    threshold: float = Field(gt=0, le=1, description="Confidence at which the exit is taken.")


class StageSpec(ApiModel):
    """One stage: a contiguous range of layers running on one tier."""

    model_config = validated_by(
        cel("self.layers[0] <= self.layers[1]",
            "layers must be [first, last] with first <= last", ".layers"),
    )

    name: DnsLabel = Field(description="Stage name; its Deployment is <plan>-<name>.")
    tier: DnsLabel = Field(description="Tier (hardware class) the stage runs on.")
    layers: LayerRange = Field(
        min_length=2, max_length=2,
        description="Inclusive layer range [first, last], as `splitdnn inspect` numbers layers.",
    )
    node_selector: LabelMap = Field(
        default_factory=dict, description="Labels the stage's nodes must have."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=8, description="Taints the stage tolerates."
    )
    replicas: int = Field(default=1, ge=0, le=64, description="Worker replicas of this stage.")
    exit: StageExit | None = Field(default=None, description="Early exit after this stage.")
    block_sha256: Sha256 | None = Field(
        default=None,
        description="Digest of the stage's ONNX block; the init container checks it.",
    )


class Prediction(ApiModel):
    """What the planner predicts for a plan."""

    latency_ms: float | None = Field(default=None, ge=0, description="End-to-end latency (ms).")
    energy_mj: float | None = Field(default=None, ge=0, description="Energy per request (mJ).")
    throughput_rps: float | None = Field(
        default=None, ge=0, description="Sustainable requests per second."
    )
    accuracy: float | None = Field(
        default=None, ge=0, le=1, description="Expected accuracy (with early exits)."
    )


class AlternativeStage(ApiModel):
    """A stage of an alternative plan, in brief."""

    tier: DnsLabel = Field(description="Tier of the stage.")
    layers: LayerRange = Field(min_length=2, max_length=2, description="Inclusive layer range.")


class Alternative(Prediction):
    """A Pareto-optimal plan that was not chosen."""

    stages: list[AlternativeStage] = Field(
        max_length=16, description="Stages of the alternative plan."
    )


class ServiceRef(ApiModel):
    """The DNNService a plan belongs to (same namespace)."""

    name: DnsLabel = Field(description="Name of the DNNService.")


class SplitPlanSpec(ApiModel):
    """Desired placement of a DNNService's blocks."""

    model_config = validated_by(
        cel("self.stages[0].layers[0] == 0", "the first stage must start at layer 0",
            ".stages"),
        cel("self.stages.map(s, s.layers[0]).isSorted()",
            "stages must be listed in layer order", ".stages"),
        cel("self.stages.all(s, s.layers[0] == 0 || "
            "self.stages.exists_one(p, p.layers[1] + 1 == s.layers[0]))",
            "each stage must start right after the previous stage's last layer "
            "(no gaps, no overlaps)", ".stages"),
        cel("self.stages.all(a, self.stages.exists_one(b, b.name == a.name))",
            "stage names must be unique", ".stages"),
    )

    service_ref: ServiceRef = Field(description="The DNNService this plan serves.")
    stages: list[StageSpec] = Field(
        min_length=1, max_length=16, description="Stages in layer order, first to last."
    )
    predicted: Prediction | None = Field(
        default=None, description="The planner's prediction for this plan."
    )
    alternatives: list[Alternative] | None = Field(
        default=None, max_length=32, description="Pareto-optimal plans that were not chosen."
    )
    algorithm: str | None = Field(
        default=None, max_length=63, description="Planner algorithm that produced the plan."
    )


class StageStatus(ApiModel):
    """Observed state of one stage."""

    name: str = Field(max_length=63, description="Stage name.")
    replicas: int | None = Field(default=None, ge=0, description="Replicas wanted.")
    ready_replicas: int | None = Field(default=None, ge=0, description="Replicas ready.")
    nodes: list[str] | None = Field(
        default=None, max_length=64, description="Nodes running the stage."
    )
    latency_ms: float | None = Field(
        default=None, ge=0, description="Measured compute latency per request (ms)."
    )
    bytes_per_second: float | None = Field(
        default=None, ge=0, description="Measured bytes/s sent to the next stage."
    )


class SplitPlanStatus(ResourceStatus):
    """Observed state of a SplitPlan."""

    phase: Literal["Pending", "RollingOut", "Serving", "Failed"] | None = Field(
        default=None, description="Summary of the rollout."
    )
    stages: list[StageStatus] | None = Field(
        default=None, max_length=16, description="Per-stage readiness and measurements."
    )
    measured: Prediction | None = Field(
        default=None, description="End-to-end measurements, comparable with spec.predicted."
    )


class SplitPlan(Resource):
    """Where each block of a DNNService runs, and how fast it is predicted to be."""

    kind: Literal["SplitPlan"] = Field(default="SplitPlan", description="SplitPlan")
    spec: SplitPlanSpec
    status: SplitPlanStatus | None = None
