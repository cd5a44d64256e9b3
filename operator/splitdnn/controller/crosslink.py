"""CrossLink handler: validated here; its reconciliation belongs to the coordination area."""

from __future__ import annotations

from typing import Any

import kopf

from splitdnn.api import validate_manifest
from splitdnn.controller import conditions


def validate_crosslink(body: dict[str, Any]) -> dict[str, Any]:
    """The status to write: Stalled naming the field for an invalid spec, else Reconciling."""
    generation = body["metadata"].get("generation")
    errors = validate_manifest(dict(body))
    current = (body.get("status") or {}).get("conditions")
    if errors:
        message = "; ".join(str(error) for error in errors)
        status = {"observedGeneration": generation,
                  "conditions": conditions.stalled(current, "InvalidSpec", message, generation)}
        return status
    return {"observedGeneration": generation,
            "conditions": conditions.progressing(
                current, "Validated", "spec is valid; coordination is not reconciled by this "
                                      "operator yet", generation)}


def raise_if_stalled(status: dict[str, Any]) -> None:
    stalled = conditions.get_condition(status["conditions"], "Stalled")
    if stalled and stalled["status"] == "True":
        raise kopf.PermanentError(stalled["message"])
