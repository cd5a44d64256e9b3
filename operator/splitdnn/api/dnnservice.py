"""DNNService: one DNN to run split across the cluster, and what "good" means for it.

The spec says which model, on which hardware classes (tiers), where requests arrive, what
to optimise (latency, energy or throughput, under SLOs), which early exits may be taken,
when to replan and how the stage workers run. The operator answers with a SplitPlan and
reports the gateway URL and the plan's prediction in the status.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from splitdnn.api.common import (
    PVC_URI,
    ApiModel,
    ArtifactRef,
    DatasetRef,
    DnsLabel,
    LabelMap,
    ListMap,
    Resource,
    ResourceRequirements,
    ResourceStatus,
    Sha256,
    Toleration,
    cel,
    nested,
    validated_by,
)
from splitdnn.api.errors import FORBIDDEN, REQUIRED

MODEL_SOURCE = rf"^(torchvision:[a-z0-9_]+|{PVC_URI}\.onnx|https://.+)$"


class ModelSpec(ApiModel):
    """Which model to run and the shape of one request."""

    model_config = validated_by(
        cel("!self.source.startsWith('https://') || has(self.sha256)",
            "sha256 is required for https:// model sources", ".sha256", REQUIRED),
        cel("!self.source.startsWith('torchvision:') || !has(self.sha256)",
            "sha256 applies to ONNX files, not to torchvision: models", ".sha256", FORBIDDEN),
        cel("self.source.startsWith('torchvision:') || !has(self.weights)",
            "weights apply only to torchvision: models", ".weights", FORBIDDEN),
    )

    source: str = Field(
        max_length=2048,
        pattern=MODEL_SOURCE,
        description=(
            "torchvision:NAME (any torchvision classification model, e.g. "
            "torchvision:resnet50), pvc://CLAIM/PATH.onnx or https://URL of an ONNX file."
        ),
    )
    sha256: Sha256 | None = Field(
        default=None,
        description="Hex SHA-256 of the ONNX file; required for https:// sources.",
    )
    weights: ArtifactRef | None = Field(
        default=None,
        description="A state dict for a torchvision model (torch.save(model.state_dict()), "
                    "loaded with weights_only) that the analysis Job and each stage's init "
                    "container export the model with; random weights (fixed seed) when unset.",
    )
    input_shape: list[Annotated[int, Field(ge=1)]] | None = Field(
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
        description="Labels a node needs to belong to this tier, e.g. "
                    "{nvidia.com/gpu.product: Tesla-V100-SXM2-16GB}.",
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
    node_selector: LabelMap | None = Field(
        default=None,
        description="Labels of the node(s) where requests arrive, when only some nodes of the "
                    "tier have the camera; the gateway runs there. Default: any node of tier.",
    )
    sink: DnsLabel | None = Field(
        default=None, description="Tier that receives results; default: the source tier."
    )


class ObjectiveSpec(ApiModel):
    """What the planner optimises."""

    kind: Literal["latency", "energy", "throughput"] = Field(
        default="latency",
        description="latency (end-to-end per request), energy (per request) or throughput "
                    "(requests/s of the pipelined stages).",
    )
    latency_weight: float = Field(
        default=1.0, ge=0, description="Weight of latency in a weighted latency/energy cost."
    )
    energy_weight: float = Field(
        default=0.0, ge=0, description="Weight of energy in a weighted latency/energy cost."
    )
    max_stages: int = Field(default=4, ge=1, le=16, description="Most stages a plan may have.")


class SloSpec(ApiModel):
    """Service-level objectives the plan must meet (the planner's constraints)."""

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
    """An early-exit head after a layer: results confident enough return early."""

    after_layer: int = Field(
        ge=0,
        description="Layer index (as `splitdnn inspect` numbers layers) after which the head "
                    "runs; it must end a segment (a cut point).",
    )
    head: ArtifactRef = Field(
        description="The exit head as an ONNX file: it reads the activation after "
                    "afterLayer and returns the result (e.g. class logits); "
                    "`splitdnn exit-head` writes a shape-correct one to train."
    )
    threshold: float = Field(
        gt=0, le=1,
        description="Top softmax probability at which a result leaves here while later "
                    "stages follow (a pinned plan's mid-pipeline exit); the last stage of a "
                    "plan that ends at this exit answers every request from the head.",
    )
    accuracy: float | None = Field(
        default=None, ge=0, le=1,
        description="Accuracy of results leaving at this exit; when unset, measured on "
                    "spec.validation (which is then required).",
    )


class ValidationSpec(ApiModel):
    """Labelled data the analysis measures the model's and its exits' accuracy on."""

    data: DatasetRef = Field(
        description="sklearn:digits (its test split of digits 0-4, as CrossLink uses it) or "
                    "an .npz file of x and y (x_test and y_test when present), samples "
                    "shaped as the model's input without the batch dimension."
    )
    samples: int = Field(
        default=500, ge=1, le=100000, description="Most test samples to measure on."
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
        default=None, ge=1, le=64,
        description="Intra-op threads per worker; default: the container's CPU limit.",
    )
    resources: ResourceRequirements | None = Field(
        default=None, description="Container resources of each stage worker."
    )
    batching: BatchingSpec = nested(BatchingSpec, "Micro-batching settings.")


class ReplanSpec(ApiModel):
    """When the operator computes a new plan."""

    mode: Literal["Auto", "Manual"] = Field(
        default="Auto",
        description="Auto: replan on spec, node, profile or latency-drift changes; Manual: only "
                    "when the spec changes.",
    )
    latency_drift_percent: float = Field(
        default=25, gt=0, le=1000,
        description="Replan when the measured latency differs from the prediction by more than "
                    "this (%), either way.",
    )
    drift_persist_seconds: int = Field(
        default=30, ge=0, le=3600,
        description="How long the drift must last before a replan is considered (hysteresis).",
    )
    min_interval_seconds: int = Field(
        default=60, ge=0, le=86400,
        description="Least time between two replans not caused by a spec change (hysteresis).",
    )
    min_improvement_percent: float = Field(
        default=10, ge=0, le=100,
        description="A new plan replaces the current one only if it is this much better (%).",
    )


class DNNServiceSpec(ApiModel):
    """Desired state of a DNNService."""

    model_config = validated_by(
        cel("!has(self.tiers) || size(self.tiers) == 0 || "
            "self.tiers.exists(t, t.name == self.source.tier)",
            "source.tier must name one of the tiers", ".source.tier"),
        cel("!has(self.tiers) || size(self.tiers) == 0 || !has(self.source.sink) || "
            "self.tiers.exists(t, t.name == self.source.sink)",
            "source.sink must name one of the tiers", ".source.sink"),
        cel("!has(self.exits) || has(self.validation) || "
            "self.exits.all(e, has(e.accuracy))",
            "every exit needs its accuracy, or spec.validation to measure it on", ".exits"),
    )

    model: ModelSpec = Field(description="The model to split and serve.")
    source: SourceSpec = Field(description="Where requests arrive.")
    tiers: Annotated[list[TierSpec], ListMap("name")] | None = Field(
        default=None, max_length=16,
        description="Candidate hardware classes; default: every class discovered on the nodes.",
    )
    objective: ObjectiveSpec = nested(ObjectiveSpec, "What the planner optimises.")
    slo: SloSpec | None = Field(default=None, description="Budgets the plan must meet.")
    exits: Annotated[list[ExitSpec], ListMap("afterLayer")] | None = Field(
        default=None, max_length=8, description="Early-exit heads the planner may use."
    )
    validation: ValidationSpec | None = Field(
        default=None,
        description="Labelled data to measure the model's and each exit's accuracy on.",
    )
    replan: ReplanSpec = nested(ReplanSpec, "Replanning policy.")
    runtime: RuntimeSpec = nested(RuntimeSpec, "Stage worker settings.")


class DriftStatus(ApiModel):
    """Measured against predicted latency, as the latency-drift replanning sees it."""

    percent: float | None = Field(
        default=None, description="Measured latency minus the prediction, in % of the "
                                  "prediction (recent requests at the gateway)."
    )
    since: datetime | None = Field(
        default=None, description="Since when the drift has been beyond the threshold."
    )
    checked_at: datetime | None = Field(
        default=None, description="When a replan for drift was last considered."
    )
    message: str | None = Field(
        default=None, max_length=1024, description="What the last check decided and why."
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
    model_digest: Sha256 | None = Field(
        default=None, description="SHA-256 of the analysed ONNX model."
    )
    segments: int | None = Field(
        default=None, ge=0, description="Atomic segments (runs between cut points) found."
    )
    stages: int | None = Field(default=None, ge=0, description="Stages in the current plan.")
    predicted_latency_ms: float | None = Field(
        default=None, ge=0, description="Predicted end-to-end latency of the current plan (ms)."
    )
    measured_latency_ms: float | None = Field(
        default=None, ge=0, description="Measured end-to-end latency at the gateway (ms)."
    )
    hardware_classes: list[Annotated[str, Field(max_length=63)]] | None = Field(
        default=None, max_length=32, description="Hardware classes considered when planning."
    )
    drift: DriftStatus | None = Field(
        default=None, description="Latency drift and the replanning decision about it."
    )


class DNNService(Resource):
    """A DNN served split into blocks across the nodes of an edge cluster."""

    kind: Literal["DNNService"] = Field(default="DNNService", description="DNNService")
    spec: DNNServiceSpec = Field(description="Desired state: model, tiers, objective, SLOs.")
    status: DNNServiceStatus | None = Field(
        default=None, description="Observed state, written by the operator."
    )
