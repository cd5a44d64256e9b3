"""From a model's analysis and the class profiles to a planning problem, and back to a plan.

Pure: the analysis (``splitdnn model-facts`` output), the profiles (one merged
:class:`~splitdnn.profiling.Profile` per hardware class) and the service's tiers go in; a
:class:`~splitdnn.planning.Problem` comes out, and a planner result becomes a SplitPlan
spec (stages in layers, the prediction, the Pareto alternatives).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from splitdnn.planning import PlanResult, Problem, parse_problem
from splitdnn.planning.algorithms import Candidate
from splitdnn.predict import CostPredictor
from splitdnn.profiling import Profile, SegmentFeatures

Obj = dict[str, Any]


@dataclass
class PlanTier:
    """A tier of the service as the planner sees it."""

    name: str
    hardware_class: str
    node_selector: dict[str, str]
    tolerations: list[Obj] = field(default_factory=list)
    max_replicas: int = 1


def input_bytes(analysis: Obj) -> int:
    spec = analysis["input"]
    return int(np.prod(spec["shape"])) * np.dtype(spec["dtype"]).itemsize


def segment_costs(analysis: Obj, profiles: dict[str, Profile], classes: list[str]
                  ) -> dict[str, list[Obj]]:
    """Each segment's cost on each class (measured where profiled, else predicted by CF),
    followed by each exit head's (the sum over its segments, predicted)."""
    signatures = analysis["signatures"]
    heads = [facts["signatures"] for facts in analysis.get("exits") or []]
    features = {s["key"]: SegmentFeatures.from_dict(s["features"])
                for s in [*signatures, *(s for head in heads for s in head)]}
    predictor = CostPredictor(profiles, features, seed=0)

    def head_cost(cls: str, head: list[Obj]) -> Obj:
        parts = [predictor.segment_cost(cls, s["key"]) for s in head]
        energies = [part["energy_mj"] for part in parts]
        return {"latency_ms": sum(part["latency_ms"] for part in parts),
                "energy_mj": None if None in energies else sum(energies)}

    return {cls: [predictor.segment_cost(cls, s["key"]) for s in signatures]
            + [head_cost(cls, head) for head in heads] for cls in classes}


Link = tuple[float, float]  # (bandwidth Mbit/s, one-way latency ms)


def link_from_profile(profile: Obj) -> Link:
    """A ``netprofile`` link profile as the planner's link (bandwidth, one-way latency).

    The bandwidth is the slope between the two largest measured sizes, where the transfer
    time is all bandwidth (the tensors the planner weighs are that large); the latency is
    half the smallest size's round trip beyond its transfer time (the reply is tiny).
    """
    sizes, rtts = profile["sizes_bytes"], profile["rtt_ms"]
    if len(sizes) < 2 or rtts[-1] <= rtts[-2]:
        linear = profile["fits"]["linear"]
        return linear["bandwidth_mb_s"] * (1 << 20) * 8 / 1e6, max(0.0, linear["latency_ms"] / 2)
    mbps = (sizes[-1] - sizes[-2]) * 8 / (1000 * (rtts[-1] - rtts[-2]))
    latency = (rtts[0] - sizes[0] * 8 / (1000 * mbps)) / 2
    return mbps, max(0.0, latency)


def build_problem(analysis: Obj, tiers: list[PlanTier], costs: dict[str, list[Obj]],
                  spec: Obj, link: Link,
                  measured_links: dict[tuple[str, str], Link] | None = None) -> Problem:
    """The ``splitdnn plan`` problem of a service: its segments on its tiers.

    ``measured_links`` maps a pair of hardware classes (either order) to its measured link;
    pairs without one get ``link``.
    """
    segments = [{"name": f"s{s['index']}", "output_bytes": s["output_bytes"],
                 "params_bytes": s["params_bytes"]} for s in analysis["segments"]]
    count = len(segments)
    problem_tiers = []
    for tier in tiers:
        cost = costs[tier.hardware_class][:count]
        entry: Obj = {"name": tier.name, "latency_ms": [c["latency_ms"] for c in cost]}
        energies = [c["energy_mj"] for c in cost]
        if None not in energies:
            entry["energy_mj"] = energies
        problem_tiers.append(entry)
    measured = measured_links or {}

    def between(a: PlanTier, b: PlanTier) -> Link:
        pair = (a.hardware_class, b.hardware_class)
        if a.hardware_class == b.hardware_class:
            return link  # nodes of one class: not measured
        return measured.get(pair) or measured.get(pair[::-1]) or link

    links = [{"from": a.name, "to": b.name, "bandwidth_mbps": between(a, b)[0],
              "latency_ms": between(a, b)[1]}
             for a in tiers for b in tiers if a.name != b.name]
    slo = spec.get("slo") or {}
    objective = spec.get("objective") or {}
    source = spec["source"]
    problem: Obj = {
        "segments": segments, "input_bytes": input_bytes(analysis), "tiers": problem_tiers,
        "links": links, "source": source["tier"], "sink": source.get("sink"),
        "constraints": {"max_stages": objective.get("maxStages", 4),
                        "latency_ms": slo.get("latencyMs"), "energy_mj": slo.get("energyMj"),
                        "min_accuracy": slo.get("minAccuracy")},
    }
    if analysis.get("exits"):
        problem["exits"] = problem_exits(analysis, tiers, costs, spec)
    if analysis.get("accuracy"):
        problem["final_accuracy"] = analysis["accuracy"]["model"]
    return parse_problem(problem)


def problem_exits(analysis: Obj, tiers: list[PlanTier], costs: dict[str, list[Obj]],
                  spec: Obj) -> list[Obj]:
    """The service's exits as the planner sees them: the segment each follows, its accuracy
    (as stated, else as measured), its head's latency on each tier (after the segments in
    ``costs``) and the size of its result."""
    count = len(analysis["segments"])
    measured = (analysis.get("accuracy") or {}).get("exits") or [None] * len(analysis["exits"])
    stated = [exit_spec.get("accuracy") for exit_spec in spec.get("exits") or []]
    return [{"after_segment": facts["after_segment"],
             "accuracy": measured[index] if stated[index] is None else stated[index],
             "latency_ms": {t.name: costs[t.hardware_class][count + index]["latency_ms"]
                            for t in tiers},
             "output_bytes": facts["output_bytes"]}
            for index, facts in enumerate(analysis["exits"])]


def layer_range(analysis: Obj, first_segment: int, last_segment: int) -> list[int]:
    segments = analysis["segments"]
    return [segments[first_segment]["first_layer"], segments[last_segment]["last_layer"]]


def plan_stages(candidate: Candidate, analysis: Obj, tiers: dict[str, PlanTier]) -> list[Obj]:
    stages = []
    for index, stage in enumerate(candidate.stages):
        tier = tiers[stage.tier]
        entry: Obj = {"name": f"stage{index}", "tier": tier.name,
                      "layers": layer_range(analysis, stage.first, stage.last),
                      "nodeSelector": tier.node_selector, "replicas": 1}
        if tier.tolerations:
            entry["tolerations"] = tier.tolerations
        stages.append(entry)
    return stages


def figures(candidate: Candidate, with_energy: bool) -> Obj:
    values = candidate.figures()
    result: Obj = {"latencyMs": round(float(values["latency_ms"] or 0), 4)}
    if with_energy:
        result["energyMj"] = round(float(values["energy_mj"] or 0), 4)
    if values["throughput_rps"] is not None:
        result["throughputRps"] = round(float(values["throughput_rps"]), 4)
    return result


def plan_spec(service_name: str, result: PlanResult, problem: Problem, analysis: Obj,
              tiers: list[PlanTier], exits: list[Obj] | None = None) -> Obj:
    """The SplitPlan spec for the planner's choice, with the other Pareto plans; a plan
    ending at an early exit (of the service's ``exits``) runs its head on the last stage."""
    by_name = {tier.name: tier for tier in tiers}
    with_energy = problem.has_energy
    alternatives = [
        {"stages": [{"tier": s.tier, "layers": layer_range(analysis, s.first, s.last)}
                    for s in candidate.stages], **figures(candidate, with_energy)}
        for candidate in result.pareto if candidate.stages != result.best.stages
    ][:32]
    stages = plan_stages(result.best, analysis, by_name)
    predicted = figures(result.best, with_energy)
    chosen = result.best.exit_index
    if chosen is not None:
        stages[-1]["exit"] = {"index": chosen, "threshold": (exits or [])[chosen]["threshold"],
                              "headSha256": analysis["exits"][chosen]["sha256"]}
    if result.best.accuracy is not None:
        predicted["accuracy"] = result.best.accuracy
        for alternative in alternatives:
            alternative["accuracy"] = result.best.accuracy
    spec: Obj = {"serviceRef": {"name": service_name}, "stages": stages,
                 "predicted": predicted, "algorithm": result.algorithm}
    if alternatives:
        spec["alternatives"] = alternatives
    return spec


def placement(stages: list[Obj]) -> str:
    """``jetson-nano[0-38] v100[39-121]``: the stages in brief for ``kubectl get``."""
    return " ".join(f"{s['tier']}[{s['layers'][0]}-{s['layers'][1]}]" for s in stages)[:1024]
