"""Latency-drift replanning: when measured latency says the plan's prediction was wrong.

Pure functions. :func:`decide` is the hysteresis: a replan is considered only when the
measured end-to-end latency has differed from the prediction by more than the service's
``latencyDriftPercent`` for ``driftPersistSeconds`` without a break, the plan is at least
``minIntervalSeconds`` old, and the last check that found no better plan is that old too.
:func:`class_scale` turns the measurements into a latency factor per hardware class
(measured stage time over the profile's prediction for the same segments), which scales
that class's costs in the planning problem, so the new plan is planned with what was
measured; :func:`improves` says whether its prediction is better by ``minImprovementPercent``
than the current plan's under the same corrected costs.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]
MIN_SCALE, MAX_SCALE = 0.1, 10.0  # a measurement this far off is a broken measurement


class Action(enum.Enum):
    STEADY = "steady"  # no drift (or no measurement): nothing to do
    DRIFTING = "drifting"  # drift seen, not for long enough yet
    HOLD = "hold"  # drift persisted, but the plan or the last check is too recent
    EVALUATE = "evaluate"  # plan again with the measured costs


@dataclass(frozen=True)
class Policy:
    """The service's ``spec.replan``."""

    auto: bool = True
    drift_percent: float = 25.0
    persist_seconds: float = 30.0
    min_interval_seconds: float = 60.0
    min_improvement_percent: float = 10.0

    @classmethod
    def from_spec(cls, replan: Obj | None) -> Policy:
        replan = replan or {}
        return cls(auto=replan.get("mode", "Auto") == "Auto",
                   drift_percent=float(replan.get("latencyDriftPercent", 25)),
                   persist_seconds=float(replan.get("driftPersistSeconds", 30)),
                   min_interval_seconds=float(replan.get("minIntervalSeconds", 60)),
                   min_improvement_percent=float(replan.get("minImprovementPercent", 10)))


@dataclass(frozen=True)
class Observation:
    """What one pass sees (times in seconds since the epoch)."""

    now: float
    predicted_ms: float | None
    measured_ms: float | None
    planned_at: float  # when the current plan was written
    since: float | None = None  # drift beyond the threshold since (from the last pass)
    checked_at: float | None = None  # last evaluation that kept the plan


@dataclass(frozen=True)
class Decision:
    action: Action
    percent: float | None  # signed drift, % of the prediction
    since: float | None  # to remember for the next pass
    message: str


def drift_percent(predicted_ms: float | None, measured_ms: float | None) -> float | None:
    if not predicted_ms or predicted_ms <= 0 or measured_ms is None:
        return None
    return 100.0 * (measured_ms - predicted_ms) / predicted_ms


def decide(policy: Policy, seen: Observation) -> Decision:
    """Whether to plan again because of latency drift (see the module docstring)."""
    percent = drift_percent(seen.predicted_ms, seen.measured_ms)
    if not policy.auto:
        return Decision(Action.STEADY, percent, None, "replan.mode is Manual")
    if percent is None:
        return Decision(Action.STEADY, None, None, "no recent requests measured")
    if abs(percent) <= policy.drift_percent:
        return Decision(Action.STEADY, percent, None,
                        f"within {policy.drift_percent:g}% of the prediction")
    since = seen.since if seen.since is not None and seen.since <= seen.now else seen.now
    lasted = seen.now - since
    if lasted < policy.persist_seconds:
        return Decision(Action.DRIFTING, percent, since,
                        f"{percent:+.0f}% for {lasted:.0f} s of {policy.persist_seconds:g} s")
    age = seen.now - seen.planned_at
    if age < policy.min_interval_seconds:
        return Decision(Action.HOLD, percent, since,
                        f"{percent:+.0f}%; the plan is {age:.0f} s old, replans are at least "
                        f"{policy.min_interval_seconds:g} s apart")
    if seen.checked_at is not None and seen.now - seen.checked_at < policy.min_interval_seconds:
        return Decision(Action.HOLD, percent, since,
                        f"{percent:+.0f}%; checked {seen.now - seen.checked_at:.0f} s ago, no "
                        f"plan was better by {policy.min_improvement_percent:g}%")
    return Decision(Action.EVALUATE, percent, since,
                    f"{percent:+.0f}% for {lasted:.0f} s: planning with the measured costs")


def improves(objective: str, current: float, candidate: float, min_percent: float) -> bool:
    """Is ``candidate`` better than ``current`` by at least ``min_percent`` (% of current)?
    Lower is better for latency and energy, higher for throughput."""
    if current == float("inf"):
        return candidate != float("inf")
    if objective == "throughput":
        return candidate >= current * (1 + min_percent / 100) and candidate > current
    return candidate <= current * (1 - min_percent / 100) and candidate < current


def stage_segments(analysis: Obj, layers: list[int]) -> list[int]:
    """Indices of the segments a stage's layer range covers."""
    return [s["index"] for s in analysis["segments"]
            if layers[0] <= s["first_layer"] and s["last_layer"] <= layers[1]]


def class_scale(stages: list[Obj], stage_status: list[Obj], tier_class: dict[str, str],
                analysis: Obj, base_costs: dict[str, list[Obj]], scale: dict[str, float],
                predicted_ms: float | None, measured_ms: float | None) -> dict[str, float]:
    """Latency factor per hardware class from the measurements of the current plan.

    A class's factor is its stages' measured latency over the unscaled profile prediction
    for their segments. Without any stage measurement, the end-to-end ratio (measured over
    predicted) multiplies the factor of every class the plan uses. Classes the plan does not
    use keep their factor; every factor stays within [0.1, 10].
    """
    measured: dict[str, float] = {}
    base: dict[str, float] = {}
    for stage in stages:
        status = next((s for s in stage_status if s.get("name") == stage["name"]), {})
        cls = tier_class.get(stage["tier"])
        if status.get("latencyMs") is None or cls is None or cls not in base_costs:
            continue
        segments = stage_segments(analysis, stage["layers"])
        predicted = sum(base_costs[cls][i]["latency_ms"] for i in segments)
        if predicted > 0:
            measured[cls] = measured.get(cls, 0.0) + float(status["latencyMs"])
            base[cls] = base.get(cls, 0.0) + predicted
    result = dict(scale)
    if measured:
        result.update({cls: measured[cls] / base[cls] for cls in measured})
    elif predicted_ms and measured_ms:
        ratio = measured_ms / predicted_ms
        for cls in {tier_class[s["tier"]] for s in stages if s["tier"] in tier_class}:
            result[cls] = result.get(cls, 1.0) * ratio
    return {cls: round(min(MAX_SCALE, max(MIN_SCALE, value)), 4)
            for cls, value in sorted(result.items())}


def scaled_costs(costs: dict[str, list[Obj]], scale: dict[str, float]
                 ) -> dict[str, list[Obj]]:
    """``costs`` with each class's latencies multiplied by its factor (energy unchanged)."""
    return {cls: [{**cost, "latency_ms": cost["latency_ms"] * scale.get(cls, 1.0)}
                  for cost in entries] for cls, entries in costs.items()}
