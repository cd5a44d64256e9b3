"""The splitdnn.io/v1alpha1 API: DNNService, SplitPlan and CrossLink as pydantic models.

The models are the single source of truth: ``splitdnn crds`` generates the CRDs from them
(:mod:`splitdnn.api.crdgen`); their CEL rules run in the API server, in the models and in
:mod:`splitdnn.api.validation` (via :mod:`splitdnn.api.cel`), so a spec is judged alike
everywhere and every error names its field. This package must not import kopf, kubernetes,
torch or onnx.
"""

from splitdnn.api.common import (
    API_VERSION,
    CONDITION_TYPES,
    GROUP,
    VERSION,
    Condition,
    ConditionType,
    ResourceStatus,
)
from splitdnn.api.crosslink import CrossLink, CrossLinkSpec, CrossLinkStatus
from splitdnn.api.dnnservice import DNNService, DNNServiceSpec, DNNServiceStatus
from splitdnn.api.errors import FieldError
from splitdnn.api.kinds import KINDS, KINDS_BY_NAME, Kind
from splitdnn.api.splitplan import PINNED_ANNOTATION, SplitPlan, SplitPlanSpec, SplitPlanStatus
from splitdnn.api.validation import (
    CrdValidator,
    default_manifest,
    validate_manifest,
    validate_model,
    validators_for,
)

__all__ = [
    "API_VERSION",
    "CONDITION_TYPES",
    "GROUP",
    "KINDS",
    "KINDS_BY_NAME",
    "PINNED_ANNOTATION",
    "VERSION",
    "Condition",
    "ConditionType",
    "CrdValidator",
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
    "default_manifest",
    "validate_manifest",
    "validate_model",
    "validators_for",
]
