"""The splitdnn.io/v1alpha1 API: DNNService, SplitPlan and CrossLink as pydantic models.

The models are the single source of truth: ``splitdnn crds`` generates the CRDs from them
(:mod:`splitdnn.api.crdgen`), and their CEL rules run both in the API server and in Python
(:mod:`splitdnn.api.cel`). This package must not import kopf, kubernetes, torch or onnx.
"""

from splitdnn.api.common import API_VERSION, GROUP, VERSION, Condition, ResourceStatus
from splitdnn.api.crosslink import CrossLink, CrossLinkSpec, CrossLinkStatus
from splitdnn.api.dnnservice import DNNService, DNNServiceSpec, DNNServiceStatus
from splitdnn.api.kinds import KINDS, KINDS_BY_NAME, Kind
from splitdnn.api.splitplan import PINNED_ANNOTATION, SplitPlan, SplitPlanSpec, SplitPlanStatus
from splitdnn.api.validation import FieldError, validate_manifest

__all__ = [
    "API_VERSION",
    "GROUP",
    "KINDS",
    "KINDS_BY_NAME",
    "PINNED_ANNOTATION",
    "VERSION",
    "Condition",
    "CrossLink",
    "CrossLinkSpec",
    "CrossLinkStatus",
    "DNNService",
    "DNNServiceSpec",
    "DNNServiceStatus",
    "FieldError",
    "Kind",
    "ResourceStatus",
    "SplitPlan",
    "SplitPlanSpec",
    "SplitPlanStatus",
    "validate_manifest",
]
