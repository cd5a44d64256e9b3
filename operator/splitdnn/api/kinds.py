"""The custom resource kinds: names, schemas and printer columns, in one table.

Everything kind-specific that the CRD generator and the validators need lives here, so a
new kind is one row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from splitdnn.api.common import GROUP, ApiModel
from splitdnn.api.crosslink import CrossLink, CrossLinkSpec, CrossLinkStatus
from splitdnn.api.dnnservice import DNNService, DNNServiceSpec, DNNServiceStatus
from splitdnn.api.splitplan import SplitPlan, SplitPlanSpec, SplitPlanStatus

CATEGORY = "splitdnn"


def column(name: str, path: str, kind: str = "string", priority: int = 0,
           description: str = "") -> dict[str, Any]:
    """One ``additionalPrinterColumns`` entry."""
    entry: dict[str, Any] = {"name": name, "type": kind, "jsonPath": path}
    if priority:
        entry["priority"] = priority
    if description:
        entry["description"] = description
    return entry


READY_COLUMNS = [
    column("Ready", '.status.conditions[?(@.type=="Ready")].status',
           description="Ready condition"),
    column("Reason", '.status.conditions[?(@.type=="Ready")].reason',
           description="Why the resource is or is not ready"),
]
AGE_COLUMN = column("Age", ".metadata.creationTimestamp", "date")


@dataclass(frozen=True)
class Kind:
    """Everything the CRD generator and validators need to know about one kind."""

    kind: str
    plural: str
    short_names: list[str]
    resource: type[ApiModel]
    spec: type[ApiModel]
    status: type[ApiModel]
    columns: list[dict[str, Any]] = field(default_factory=list)

    @property
    def singular(self) -> str:
        """The lower-case singular name (``dnnservice``)."""
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        """The CRD's metadata.name (``dnnservices.splitdnn.io``)."""
        return f"{self.plural}.{GROUP}"


KINDS = [
    Kind("DNNService", "dnnservices", ["dnns"], DNNService, DNNServiceSpec, DNNServiceStatus, [
        *READY_COLUMNS,
        column("Model", ".spec.model.source"),
        column("Stages", ".status.stages", "integer", description="Stages in the current plan"),
        column("Latency-ms", ".status.predictedLatencyMs", "number",
               description="Predicted end-to-end latency"),
        column("Measured-ms", ".status.measuredLatencyMs", "number", priority=1,
               description="Measured end-to-end latency"),
        column("Plan", ".status.splitPlan", priority=1),
        column("URL", ".status.url", priority=1),
        AGE_COLUMN,
    ]),
    Kind("SplitPlan", "splitplans", ["sp"], SplitPlan, SplitPlanSpec, SplitPlanStatus, [
        *READY_COLUMNS,
        column("Service", ".spec.serviceRef.name"),
        column("Placement", ".status.placement", description="Tier and layer range per stage"),
        column("Latency-ms", ".spec.predicted.latencyMs", "number",
               description="Predicted end-to-end latency"),
        column("Measured-ms", ".status.measured.latencyMs", "number", priority=1,
               description="Measured end-to-end latency"),
        column("Phase", ".status.phase", priority=1),
        AGE_COLUMN,
    ]),
    Kind("CrossLink", "crosslinks", ["xl"], CrossLink, CrossLinkSpec, CrossLinkStatus, [
        *READY_COLUMNS,
        column("Local", ".spec.localService"),
        column("Host", ".spec.hostService"),
        column("Accuracy", ".status.avgAccuracy", "number",
               description="Average accuracy, local and offloaded"),
        column("Gain", ".status.throughputGain", "number",
               description="Throughput gain over the uncoordinated baseline"),
        column("Reward", ".status.reward", "number", priority=1),
        AGE_COLUMN,
    ]),
]
KINDS_BY_NAME = {kind.kind: kind for kind in KINDS}
