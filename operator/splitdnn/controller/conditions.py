"""Status conditions (metav1.Condition) for every splitdnn kind, read by kstatus, Flux, Argo CD.

Ready, Reconciling and Stalled summarise the object; ModelAnalyzed, Profiled, Planned and
RolledOut say how far the pipeline got. Every function here is pure: it returns the new
list of conditions, leaving ``lastTransitionTime`` alone when the status does not change.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

Condition = dict[str, Any]
STEPS = ("ModelAnalyzed", "Profiled", "Planned", "RolledOut")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_time(when: float | None) -> str | None:
    """``when`` (seconds since the epoch) as RFC 3339, as ``now`` writes it."""
    if when is None:
        return None
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> float | None:
    """Seconds since the epoch of an RFC 3339 time (as ``now`` writes it); None if unreadable."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def set_condition(conditions: list[Condition] | None, type_: str, status: bool | None,
                  reason: str, message: str = "", generation: int | None = None
                  ) -> list[Condition]:
    """Return ``conditions`` with ``type_`` set (status True/False/Unknown for None)."""
    text = "Unknown" if status is None else ("True" if status else "False")
    old = next((c for c in conditions or [] if c.get("type") == type_), None)
    changed = old is None or old.get("status") != text
    condition: Condition = {
        "type": type_, "status": text, "reason": reason, "message": message[:32000],
        "lastTransitionTime": now() if changed else old["lastTransitionTime"],  # type: ignore[index]
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    kept = [c for c in conditions or [] if c.get("type") != type_]
    return sorted([*kept, condition], key=lambda c: str(c["type"]))


def get_condition(conditions: list[Condition] | None, type_: str) -> Condition | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def is_true(conditions: list[Condition] | None, type_: str) -> bool:
    condition = get_condition(conditions, type_)
    return condition is not None and condition.get("status") == "True"


def progressing(conditions: list[Condition] | None, reason: str, message: str,
                generation: int | None) -> list[Condition]:
    """Still working (waiting for a Job, a rollout): Reconciling, not Ready, not Stalled."""
    conditions = set_condition(conditions, "Reconciling", True, reason, message, generation)
    conditions = set_condition(conditions, "Stalled", False, reason, "", generation)
    return set_condition(conditions, "Ready", False, reason, message, generation)


def stalled(conditions: list[Condition] | None, reason: str, message: str,
            generation: int | None) -> list[Condition]:
    """Cannot go on without a change by the user: Stalled with the message saying what."""
    conditions = set_condition(conditions, "Stalled", True, reason, message, generation)
    conditions = set_condition(conditions, "Reconciling", False, reason, "", generation)
    return set_condition(conditions, "Ready", False, reason, message, generation)


def ready(conditions: list[Condition] | None, reason: str, message: str,
          generation: int | None) -> list[Condition]:
    conditions = set_condition(conditions, "Stalled", False, reason, "", generation)
    conditions = set_condition(conditions, "Reconciling", False, reason, "", generation)
    return set_condition(conditions, "Ready", True, reason, message, generation)
