"""Why the chosen plan beats the runners-up: the alternatives each algorithm and each single
tier would give, with the difference split into compute and transfer time (or energy)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from splitdnn.planning.algorithms import (
    ALGORITHMS,
    Candidate,
    PlanResult,
    accuracy_of,
    exit_settings,
    first_violated,
    rank_accuracy,
    solve,
)
from splitdnn.planning.errors import InfeasibleError
from splitdnn.planning.plan import Evaluation, Stage, evaluate
from splitdnn.planning.problem import Problem


@dataclass(frozen=True)
class Alternative:
    """A runner-up plan, where it came from, and its evaluation."""

    label: str
    stages: tuple[Stage, ...]
    evaluation: Evaluation


def _describe(stages: tuple[Stage, ...]) -> str:
    return " → ".join(f"{s.tier}[{s.first}-{s.last}]" for s in stages)


def _score(evaluation: Evaluation, objective: str) -> float:
    if objective == "throughput":
        return -evaluation.throughput_rps
    return evaluation.latency_ms if objective == "latency" else evaluation.energy_mj


def alternatives(problem: Problem, result: PlanResult) -> list[Alternative]:
    """Feasible runners-up: every algorithm's plan for the objective and every single tier."""
    exit_index = result.best.exit_index
    found: dict[tuple[Stage, ...], Alternative] = {}
    for algorithm in ALGORITHMS[1:]:
        try:
            plan = solve(problem, result.objective, algorithm).best
        except InfeasibleError:
            continue
        if plan.exit_index != exit_index:
            continue
        if plan.stages in found:
            known = found[plan.stages]
            found[plan.stages] = replace(known, label=f"{known.label}, {algorithm}")
        else:
            found[plan.stages] = Alternative(algorithm, plan.stages,
                                             evaluate(problem, list(plan.stages), exit_index))
    last = len(problem.segments) - 1 if exit_index is None else \
        (problem.exits or [])[exit_index].after_segment
    for tier in problem.tiers:
        stages = (Stage(tier.name, 0, last),)
        evaluation = evaluate(problem, list(stages), exit_index)
        if evaluation.feasible:
            found.setdefault(stages, Alternative(f"all on {tier.name}", stages, evaluation))
    return sorted(found.values(), key=lambda alt: _score(alt.evaluation, result.objective))


def _split(evaluation: Evaluation, what: str) -> tuple[float, float]:
    """(compute, transfer) parts of latency or energy."""
    if what == "latency":
        moved = sum(t.ms for t in evaluation.transfers)
        return evaluation.latency_ms - moved, moved
    moved = sum(t.mj for t in evaluation.transfers)
    return evaluation.energy_mj - moved, moved


def explain(problem: Problem, result: PlanResult) -> list[str]:
    """Lines saying what the chosen plan costs and by how much each runner-up loses."""
    chosen = result.best
    mine = evaluate(problem, list(chosen.stages), chosen.exit_index)
    what = "energy" if result.objective == "energy" else "latency"
    unit = "mJ" if what == "energy" else "ms"
    compute, moved = _split(mine, what)
    lines = [f"chosen ({result.algorithm}, {result.objective}): {_describe(chosen.stages)}",
             f"  {what} {compute + moved:.3f} {unit} = compute {compute:.3f} + transfers "
             f"{moved:.3f}; throughput {_rps(mine.throughput_rps)}"]
    if problem.exits:
        lines.append(f"  exit {chosen.exit_index}, accuracy {chosen.accuracy} (the most accurate "
                     "choice that meets the constraints)")
        lines.extend(_better_exits(problem, result))
    for alt in alternatives(problem, result):
        if alt.stages == chosen.stages:
            continue
        other_compute, other_moved = _split(alt.evaluation, what)
        delta = other_compute + other_moved - compute - moved
        lines.append(f"runner-up {alt.label}: {_describe(alt.stages)}")
        lines.append(f"  {what} {delta:+.3f} {unit} (compute {other_compute - compute:+.3f}, "
                     f"transfers {other_moved - moved:+.3f}); throughput "
                     f"{_rps(alt.evaluation.throughput_rps)}")
    return lines


def _better_exits(problem: Problem, result: PlanResult) -> list[str]:
    """Why each more accurate exit (or the full model) was not chosen."""
    lines = []
    chosen_rank = rank_accuracy(problem, result.best.exit_index)
    for setting in exit_settings(problem, result.algorithm):
        if rank_accuracy(problem, setting.exit_index) <= chosen_rank:
            continue
        name = "full model" if setting.exit_index is None else f"exit {setting.exit_index}"
        lines.append(f"  {name} (accuracy {accuracy_of(problem, setting.exit_index)}) is "
                     f"infeasible: {first_violated(setting)[1]}")
    return lines


def _rps(value: float) -> str:
    return "unbounded" if math.isinf(value) else f"{value:.2f} req/s"


def candidate_json(candidate: Candidate) -> dict[str, object]:
    """A plan as the contract's JSON (stages and figures)."""
    return {"stages": [stage.to_json() for stage in candidate.stages], **candidate.figures()}
