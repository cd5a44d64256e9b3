"""DNNService: one DNN to run split across the cluster, and what "good" means for it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from splitdnn.api.common import (
    ApiModel,
    ArtifactRef,
    DnsLabel,
    LabelMap,
    Resource,
    ResourceRequirements,
    ResourceStatus,
    Sha256,
    Toleration,
    cel,
    validated_by,
)

MODEL_SOURCE = r"^(torchvision:[a-z0-9_]+|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/.+\.onnx|https://.+)$"


class ModelSpec(ApiModel):
    """Which model to run and the shape of one request."""

    model_config = validated_by(
        cel("!self.source.startsWith('https://') || has(self.sha256)",
            "sha256 is required for https:// model sources", ".sha256"),
        cel("self.source.startsWith('torchvision:') || !has(self.weights)",
            "weights apply only to torchvision: models", ".weights"),
    )

    source: str = Field(
        max_length=2048,
        pattern=MODEL_SOURCE,
        description=(
            "torchvision:NAME (any torchvision classification model), "
            "pvc://CLAIM/PATH.onnx or https://URL of an ONNX file."
        ),
    )
    sha256: Sha256 | None = Field(
        default=None,
        description="Hex SHA-256 of the ONNX file; required for https:// sources.",
    )
    weights: ArtifactRef | None = Field(
        default=None,
        description="A state dict for a torchvision model; random weights when unset.",
    )
    input_shape: list[int] | None = Field(
        default=None, min_length=1, max_length=8,
        description="Shape of one request, e.g. [1, 3, 224, 224]; default: the model's own.",
    )
    dtype: Literal["float32", "float16", "int64", "int32", "uint8"] = Field(
        default="float32", description="Element type of the input tensor."
    )


class TierSpec(ApiModel):
    """A candidate hardware class: the nodes a stage placed on this tier may run on."""

    name: DnsLabel = Field(description="Tier name used in plans, e.g. jetson-nano or v100.")
    node_selector: LabelMap = Field(
        default_factory=dict,
        description="Labels a node needs to belong to this tier.",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=8, description="Taints stages on this tier tolerate."
    )
    max_replicas: int = Field(
        default=1, ge=1, le=64, description="Most replicas of one stage on this tier."
    )


class SourceSpec(ApiModel):
    """Where requests enter (and results leave) the cluster."""

    tier: DnsLabel = Field(description="Tier where requests arrive, e.g. the camera board.")
    sink: DnsLabel | None = Field(
        default=None, description="Tier that receives results; default: the source tier."
    )


class ObjectiveSpec(ApiModel):
    """What the planner optimises."""

    kind: Literal["latency", "energy", "throughput"] = Field(
        default="latency", description="latency, energy or throughput."
    )
    latency_weight: float = Field(
        default=1.0, ge=0, description="Weight of latency in a weighted latency/energy cost."
    )
    energy_weight: float = Field(
        default=0.0, ge=0, description="Weight of energy in a weighted latency/energy cost."
    )
    max_stages: int = Field(default=4, ge=1, le=16, description="Most stages a plan may have.")


class SloSpec(ApiModel):
    """Service-level objectives the plan must meet."""

    latency_ms: float | None = Field(
        default=None, gt=0, description="End-to-end latency budget per request (ms)."
    )
    energy_mj: float | None = Field(
        default=None, gt=0, description="Energy budget per request (mJ)."
    )
    min_accuracy: float | None = Field(
        default=None, ge=0, le=1, description="Lowest acceptable accuracy when exits are used."
    )


class ExitSpec(ApiModel):
    """An early-exit head after a layer: confident results return early."""

    after_layer: int = Field(ge=0, description="Layer index after which the head runs.")
    head: ArtifactRef = Field(description="The exit head as an ONNX file.")
    threshold: float = Field(
        gt=0, le=1, description="Top softmax probability at which the exit is taken."
    )
    accuracy: float | None = Field(
        default=None, ge=0, le=1, description="Measured accuracy of this exit."
    )


class BatchingSpec(ApiModel):
    """Dynamic micro-batching in each stage worker."""

    max_batch: int = Field(default=1, ge=1, le=256, description="Most requests in one batch.")
    max_delay_ms: float = Field(
        default=2.0, ge=0, le=1000, description="Longest wait to fill a batch (ms)."
    )


class RuntimeSpec(ApiModel):
    """How stage workers run."""

    image: str | None = Field(
        default=None, max_length=512,
        description="Runtime image; default: the operator's configured runtime image.",
    )
    provider: Literal["auto", "cpu", "cuda", "tensorrt"] = Field(
        default="auto", description="ONNX Runtime execution provider; auto picks the fastest."
    )
    threads: int | None = Field(
        default=None, ge=1, le=64, description="Intra-op threads per worker."
    )
    resources: ResourceRequirements | None = Field(
        default=None, description="Container resources of each stage worker."
    )
    batching: BatchingSpec = Field(
        default_factory=BatchingSpec, description="Micro-batching settings."
    )


class ReplanSpec(ApiModel):
    """When the operator computes a new plan."""

    mode: Literal["Auto", "Manual"] = Field(
        default="Auto",
        description="Auto: replan on spec, node, profile or latency changes; Manual: never.",
    )
    latency_drift_percent: float = Field(
        default=25, gt=0, description="Replan when measured latency exceeds the prediction by this."
    )
    min_interval_seconds: int = Field(
        default=60, ge=0, description="Least time between two drift-triggered replans."
    )
    min_improvement_percent: float = Field(
        default=10, ge=0, description="A new plan must beat the current one by this much."
    )


class DNNServiceSpec(ApiModel):
    """Desired state of a DNNService."""

    model_config = validated_by(
        cel("!has(self.tiers) || self.tiers.all(a, self.tiers.exists_one(b, "
            "b.name == a.name))", "tier names must be unique", ".tiers"),
        cel("!has(self.tiers) || size(self.tiers) == 0 || "
            "self.tiers.exists(t, t.name == self.source.tier)",
            "source.tier must name one of the tiers", ".source.tier"),
        cel("!has(self.exits) || self.exits.all(a, self.exits.exists_one(b, "
            "b.afterLayer == a.afterLayer))",
            "at most one exit per layer", ".exits"),
    )

    model: ModelSpec = Field(description="The model to split and serve.")
    source: SourceSpec = Field(description="Where requests arrive.")
    tiers: list[TierSpec] | None = Field(
        default=None, max_length=16,
        description="Candidate hardware classes; default: every class discovered on the nodes.",
    )
    objective: ObjectiveSpec = Field(
        default_factory=ObjectiveSpec, description="What the planner optimises."
    )
    slo: SloSpec | None = Field(default=None, description="Budgets the plan must meet.")
    exits: list[ExitSpec] | None = Field(
        default=None, max_length=8, description="Early-exit heads the planner may use."
    )
    replan: ReplanSpec = Field(default_factory=ReplanSpec, description="Replanning policy.")
    runtime: RuntimeSpec = Field(
        default_factory=RuntimeSpec, description="Stage worker settings."
    )


class DNNServiceStatus(ResourceStatus):
    """Observed state of a DNNService."""

    url: str | None = Field(
        default=None, max_length=2048,
        description="Base URL of the Open Inference Protocol v2 gateway (as KServe's).",
    )
    split_plan: str | None = Field(
        default=None, max_length=253, description="Name of the SplitPlan serving this model."
    )
    stages: int | None = Field(default=None, ge=0, description="Stages in the current plan.")
    predicted_latency_ms: float | None = Field(
        default=None, ge=0, description="Predicted end-to-end latency of the current plan (ms)."
    )
    hardware_classes: list[str] | None = Field(
        default=None, max_length=32, description="Hardware classes considered when planning."
    )


class DNNService(Resource):
    """A DNN served split into blocks across the nodes of an edge cluster."""

    kind: Literal["DNNService"] = Field(default="DNNService", description="DNNService")
    spec: DNNServiceSpec
    status: DNNServiceStatus | None = None
