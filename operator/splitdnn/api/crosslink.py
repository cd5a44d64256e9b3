"""CrossLink: a service borrows another service's blocks through small trained links (CoDE).

The local model, divided into ``localBlocks`` blocks, leaves its own path after block
``lout``, runs the host model's blocks ``hin..hout`` through trained links and returns
before its own block ``lin`` (papers 000 and 001). A skip path ``[lout, lin]`` stays on the
local model and links ``lout`` to ``lin`` directly (the library writes it with the paper's
``N_f`` sentinel in the host positions; the API keeps it readable). The path is given, or
searched for.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from splitdnn.api.common import (
    ApiModel,
    DatasetRef,
    DnsLabel,
    NonNegative,
    Resource,
    ResourceStatus,
    cel,
    nested,
    validated_by,
)
from splitdnn.api.errors import FORBIDDEN

PathList = list[NonNegative]
PATH_DESCRIPTION = (
    "[lout, hin, hout, lin]: leave the local model after its block lout, run host blocks "
    "hin..hout, come back before local block lin (0 <= lout < lin < localBlocks, "
    "0 <= hin <= hout < hostBlocks); or [lout, lin], a skip path on the local model alone."
)


class LinkSpec(ApiModel):
    """The trainable modules that adapt tensors between two models' blocks (paper 000 §III-A)."""

    model_config = validated_by(
        cel("self.architecture == 'reduced' || !has(self.width)",
            "width applies only to the reduced architecture", ".width", FORBIDDEN),
    )

    architecture: Literal["conv", "bottleneck", "reduced"] = Field(
        default="conv",
        description="conv (a convolution adapting shapes), bottleneck (a bottleneck conv for "
                    "equal shapes) or reduced (a narrow inner width).",
    )
    width: int | None = Field(
        default=None, ge=1, le=4096, description="Inner channels of a reduced link."
    )


class SearchSpec(ApiModel):
    """Search for the best path instead of giving one (paper 000, Algorithm 1)."""

    a_min: float = Field(
        default=0.9, ge=0, le=1,
        description="A_min: least acceptable average accuracy (0.9 as in the digits "
                    "experiment: with k = 50 a path 0.05 below it keeps under 8 % of its gain).",
    )
    k: float = Field(default=50.0, gt=0, description="Steepness k of the reward's sigmoid.")
    c_stop: int = Field(
        default=3, ge=1, le=100,
        description="c_stop: stop after this many search stages without an epsilon improvement.",
    )
    epsilon: float = Field(default=0.0, ge=0, description="Least reward improvement that counts.")
    exhaustive: bool = Field(
        default=False, description="Train every path instead (ground truth; slow)."
    )


class TrainingSpec(ApiModel):
    """How the links are trained (every model block stays frozen)."""

    data: DatasetRef = Field(description="Training data of the local task.")
    epochs: int = Field(default=5, ge=1, le=1000, description="Training epochs per link set.")
    learning_rate: float = Field(
        default=1e-2, gt=0, le=1,
        description="Adam step size (1e-2: links trained in 5 epochs in the digits experiment).",
    )


class CrossLinkSpec(ApiModel):
    """Desired coordination between a local and a host DNNService (same namespace)."""

    model_config = validated_by(
        cel("has(self.path) != has(self.search)",
            "give exactly one of path or search", ".path"),
        cel("!has(self.path) || size(self.path) == 2 || size(self.path) == 4",
            "path is [lout, hin, hout, lin] or, for a skip path, [lout, lin]", ".path"),
        cel("!has(self.path) || self.path[0] < self.path[size(self.path) - 1]",
            "path [lout, hin, hout, lin] needs lout < lin", ".path"),
        cel("!has(self.path) || size(self.path) != 4 || self.path[1] <= self.path[2]",
            "path [lout, hin, hout, lin] needs hin <= hout", ".path"),
        cel("!has(self.path) || self.path[size(self.path) - 1] < self.localBlocks",
            "path [lout, hin, hout, lin] needs lin < localBlocks", ".path"),
        cel("!has(self.path) || size(self.path) != 4 || self.path[2] < self.hostBlocks",
            "path [lout, hin, hout, lin] needs hout < hostBlocks", ".path"),
        cel("self.localService != self.hostService",
            "localService and hostService must differ", ".hostService"),
        cel("self.offloadedSamples <= self.localBatch",
            "offloadedSamples cannot exceed localBatch", ".offloadedSamples"),
        cel("self.offloadedSamples <= self.hostBatch",
            "offloadedSamples cannot exceed hostBatch (the host reserves that many slots of "
            "its batch)", ".offloadedSamples"),
    )

    local_service: DnsLabel = Field(description="The DNNService that offloads work.")
    host_service: DnsLabel = Field(description="The DNNService whose blocks are borrowed.")
    local_blocks: int = Field(
        default=4, ge=2, le=64, description="N_l: blocks the local model is divided into."
    )
    host_blocks: int = Field(
        default=4, ge=1, le=64, description="N_h: blocks the host model is divided into."
    )
    path: PathList | None = Field(
        default=None, min_length=2, max_length=4, description=PATH_DESCRIPTION
    )
    search: SearchSpec | None = Field(
        default=None, description="Search for the best path (instead of giving one)."
    )
    link: LinkSpec = nested(LinkSpec, "Link architecture.")
    training: TrainingSpec = Field(description="How the links are trained.")
    offloaded_samples: int = Field(
        default=1, ge=0, le=4096,
        description="s: samples of each local batch sent through the cross path.",
    )
    local_batch: int = Field(default=32, ge=1, le=4096, description="Local batch size b_l.")
    host_batch: int = Field(default=32, ge=1, le=4096, description="Host batch size b_h.")
    offload_threshold_in_flight: int = Field(
        default=0, ge=0, le=4096,
        description="The local gateway offloads only while more requests than this are in "
                    "flight on it (its load); 0 offloads always. The share it offloads is "
                    "offloadedSamples / localBatch.",
    )


class CrossLinkStatus(ResourceStatus):
    """Observed state of a CrossLink."""

    path: PathList | None = Field(
        default=None, min_length=2, max_length=4,
        description="The path in use ([lout, lin] for a skip path).",
    )
    accuracy: float | None = Field(
        default=None, ge=0, le=1, description="Accuracy of samples through the cross path."
    )
    avg_accuracy: float | None = Field(
        default=None, ge=0, le=1, description="A_av: average accuracy, local and offloaded."
    )
    throughput_gain: float | None = Field(
        default=None,
        description="Th_p − Th_0: throughput over the uncoordinated baseline (samples/s).",
    )
    reward: float | None = Field(
        default=None, description="F(p) = sigmoid(k (A_av − A_min)) · (Th_p − Th_0)."
    )
    trainings: int | None = Field(
        default=None, ge=0, description="Link sets trained by the search."
    )
    links: str | None = Field(
        default=None, max_length=253,
        description="ConfigMap holding the trained links (ONNX) and their sha256 digests.",
    )
    stages: list[str] | None = Field(
        default=None, description="Deployments of the cross path, in order."
    )


class CrossLink(Resource):
    """Lets one DNNService run part of its work on another service's blocks (CoDE)."""

    kind: Literal["CrossLink"] = Field(default="CrossLink", description="CrossLink")
    spec: CrossLinkSpec = Field(description="Services, path or search, links and training.")
    status: CrossLinkStatus | None = Field(
        default=None, description="Observed state, written by the operator."
    )
