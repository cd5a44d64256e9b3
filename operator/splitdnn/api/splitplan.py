"""SplitPlan: where each block of a DNNService runs, and how fast it is predicted to be.

The operator writes one per DNNService (owned by it). A user may write one instead and pin
it with the annotation ``splitdnn.io/pinned: "true"``: the operator then rolls it out as
written and never replaces it with a plan of its own.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from splitdnn.api.common import (
    ApiModel,
    DnsLabel,
    LabelMap,
    ListMap,
    NonNegative,
    Resource,
    ResourceStatus,
    Sha256,
    Toleration,
    cel,
    validated_by,
)

PINNED_ANNOTATION = "splitdnn.io/pinned"
LayerRange = Annotated[list[NonNegative], Field(min_length=2, max_length=2)]

LAYERS_ORDERED = cel(
    "self.layers[0] <= self.layers[1]",
    "layers must be [first, last] with first <= last", ".layers",
)
STAGES_FROM_LAYER_ZERO = cel(
    "size(self.stages) == 0 || self.stages[0].layers[0] == 0",
    "the first stage must start at layer 0", ".stages",
)
STAGES_ORDERED = cel(
    "self.stages.map(s, s.layers[0]).isSorted() && "
    "self.stages.all(a, self.stages.exists_one(b, b.layers[0] == a.layers[0]))",
    "stages must be listed in layer order, each starting at a different layer", ".stages",
)
# With the two rules above, "some stage ends right before" can only be the previous stage.
STAGES_CONTIGUOUS = cel(
    "self.stages.all(s, s.layers[0] == self.stages[0].layers[0] || "
    "self.stages.exists(p, p.layers[1] + 1 == s.layers[0]))",
    "each stage must start right after the previous stage's last layer "
    "(no gaps, no overlaps)", ".stages",
)
STAGE_RULES = (STAGES_FROM_LAYER_ZERO, STAGES_ORDERED, STAGES_CONTIGUOUS)


class StageExit(ApiModel):
    """An early exit taken after this stage's last layer."""

    index: int = Field(ge=0, le=7, description="Index into the service's spec.exits.")
    threshold: float = Field(
        gt=0, le=1, description="Confidence at which the exit is taken when later stages "
                                "follow; the plan's last stage always answers from the head.")
    head_sha256: Sha256 | None = Field(
        default=None, description="Digest of the exit head's ONNX file; the init container "
                                  "checks it.")


class StageSpec(ApiModel):
    """One stage: a contiguous range of layers running on one tier."""

    model_config = validated_by(LAYERS_ORDERED)

    name: DnsLabel = Field(description="Stage name; its Deployment is <plan>-<name>.")
    tier: DnsLabel = Field(description="Tier (hardware class) the stage runs on.")
    layers: LayerRange = Field(
        description="Inclusive layer range [first, last], as `splitdnn inspect` numbers layers; "
                    "last must end a segment (a cut point) unless it is the model's last layer.",
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
    """End-to-end figures of a plan (predicted by the planner, or measured)."""

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

    model_config = validated_by(LAYERS_ORDERED)

    tier: DnsLabel = Field(description="Tier of the stage.")
    layers: LayerRange = Field(description="Inclusive layer range [first, last].")


class Alternative(Prediction):
    """A Pareto-optimal plan that was not chosen."""

    model_config = validated_by(*STAGE_RULES)

    stages: list[AlternativeStage] = Field(
        min_length=1, max_length=16, description="Stages of the alternative plan, in order."
    )


class ServiceRef(ApiModel):
    """The DNNService a plan belongs to (same namespace)."""

    name: DnsLabel = Field(description="Name of the DNNService.")


class SplitPlanSpec(ApiModel):
    """Desired placement of a DNNService's blocks."""

    model_config = validated_by(*STAGE_RULES)

    service_ref: ServiceRef = Field(description="The DNNService this plan serves.")
    stages: Annotated[list[StageSpec], ListMap("name")] = Field(
        min_length=1, max_length=16,
        description="Stages in layer order, first to last; together they cover every layer "
                    "once, from layer 0.",
    )
    predicted: Prediction | None = Field(
        default=None, description="The planner's prediction for this plan."
    )
    alternatives: list[Alternative] | None = Field(
        default=None, max_length=32,
        description="Pareto-optimal plans (latency vs energy) that were not chosen.",
    )
    algorithm: str | None = Field(
        default=None, max_length=63,
        description="Planner algorithm that produced the plan (e.g. chain, roadrunner).",
    )


class StageStatus(ApiModel):
    """Observed state of one stage."""

    name: str = Field(max_length=63, description="Stage name.")
    replicas: int | None = Field(default=None, ge=0, description="Replicas wanted.")
    ready_replicas: int | None = Field(default=None, ge=0, description="Replicas ready.")
    nodes: list[Annotated[str, Field(max_length=253)]] | None = Field(
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
    placement: str | None = Field(
        default=None, max_length=1024,
        description="The stages in brief, e.g. jetson-nano[0-38] v100[39-121] (for kubectl get).",
    )
    stages: Annotated[list[StageStatus], ListMap("name")] | None = Field(
        default=None, max_length=16, description="Per-stage readiness and measurements."
    )
    measured: Prediction | None = Field(
        default=None, description="End-to-end measurements, comparable with spec.predicted."
    )


class SplitPlan(Resource):
    """Where each block of a DNNService runs, and how fast it is predicted to be. Written by
    the operator, or by a user who pins it with the annotation splitdnn.io/pinned: "true" (the
    operator then rolls it out as written and never replaces it)."""

    kind: Literal["SplitPlan"] = Field(default="SplitPlan", description="SplitPlan")
    spec: SplitPlanSpec = Field(description="Stages, predictions and Pareto alternatives.")
    status: SplitPlanStatus | None = Field(
        default=None, description="Observed state, written by the operator."
    )
