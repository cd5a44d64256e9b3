"""CrossLink: a service borrows another service's blocks through small trained links (CoDE)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from splitdnn.api.common import ApiModel, DnsLabel, Resource, ResourceStatus, cel, validated_by

PathList = list[int]


class LinkSpec(ApiModel):
    """The trainable module that adapts tensors between two models' blocks (paper 000 §III-A)."""

    architecture: Literal["conv", "bottleneck", "reduced"] = Field(
        default="conv",
        description="conv when shapes differ, bottleneck when equal, reduced: narrow inner width.",
    )
    width: int | None = Field(
        default=None, ge=1, le=4096, description="Inner channels of a reduced link."
    )


class SearchSpec(ApiModel):
    """Search for the best path instead of giving one (paper 000, Algorithm 1)."""

    a_min: float = Field(default=0.5, ge=0, le=1, description="Least acceptable avg accuracy.")
    k: float = Field(default=50.0, gt=0, description="Steepness of the accuracy sigmoid.")
    c_stop: int = Field(
        default=3, ge=1, le=100, description="Stop after this many stages without improvement."
    )
    epsilon: float = Field(default=0.0, ge=0, description="Least improvement that counts.")
    exhaustive: bool = Field(default=False, description="Train every path (ground truth).")


class CrossLinkSpec(ApiModel):
    """Desired coordination between a local and a host DNNService."""

    model_config = validated_by(
        cel("has(self.path) != has(self.search)",
            "give exactly one of path or search", ".path"),
        cel("!has(self.path) || self.path[0] < self.path[3]",
            "path [lout, hin, hout, lin] needs lout < lin", ".path"),
        cel("!has(self.path) || self.path[1] <= self.path[2]",
            "path [lout, hin, hout, lin] needs hin <= hout", ".path"),
        cel("self.localService != self.hostService",
            "localService and hostService must differ", ".hostService"),
    )

    local_service: DnsLabel = Field(description="The DNNService that offloads work.")
    host_service: DnsLabel = Field(description="The DNNService whose blocks are borrowed.")
    path: PathList | None = Field(
        default=None, min_length=4, max_length=4,
        description="[lout, hin, hout, lin]: leave the local model after block lout, run host "
                    "blocks hin..hout, return before local block lin.",
    )
    search: SearchSpec | None = Field(default=None, description="Search for the best path.")
    link: LinkSpec = Field(default_factory=LinkSpec, description="Link architecture.")
    offloaded_samples: int = Field(
        default=1, ge=0, le=4096, description="Samples per local batch sent through the link."
    )
    local_batch: int = Field(default=32, ge=1, le=4096, description="Local batch size b_l.")
    host_batch: int = Field(default=32, ge=1, le=4096, description="Host batch size b_h.")


class CrossLinkStatus(ResourceStatus):
    """Observed state of a CrossLink."""

    path: PathList | None = Field(
        default=None, min_length=4, max_length=4, description="The path in use."
    )
    accuracy: float | None = Field(default=None, ge=0, le=1, description="Offloaded accuracy.")
    avg_accuracy: float | None = Field(
        default=None, ge=0, le=1, description="Average accuracy over local and offloaded."
    )
    throughput_gain: float | None = Field(
        default=None, description="Throughput over the uncoordinated baseline (requests/s)."
    )
    reward: float | None = Field(default=None, description="F(p) of paper 000.")
    trainings: int | None = Field(default=None, ge=0, description="Links trained by the search.")


class CrossLink(Resource):
    """Lets one DNNService run part of its work on another service's blocks."""

    kind: Literal["CrossLink"] = Field(default="CrossLink", description="CrossLink")
    spec: CrossLinkSpec
    status: CrossLinkStatus | None = None
