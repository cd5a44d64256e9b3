"""Partition-and-placement algorithms: Neurosurgeon, RoaD-RuNNer, chain, pipeline, exits.

``solve(problem, objective, algorithm)`` returns the best feasible plan of the algorithm's
family for the objective (latency or energy: minimum; throughput: minimum bottleneck), with
ties broken by the other figures, and the exact Pareto set in (latency, energy) of that
family when the problem gives energies. With early exits it maximises accuracy under the
constraints first (Edgent) and then the objective. Every answer comes from the exact label
DP in ``splitdnn.planning.labels``; ``InfeasibleError`` names the constraint no plan meets.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from splitdnn.planning.errors import InfeasibleError
from splitdnn.planning.labels import (
    CLOSED,
    EN,
    LAT,
    OPEN,
    STAGE_MAX,
    STAGES,
    Family,
    Finals,
    LabelSpec,
    chain_family,
    exit_arrays,
    neurosurgeon_family,
    pareto_rows,
    plan_bottleneck_ms,
    roadrunner_family,
    run_labels,
)
from splitdnn.planning.plan import TOLERANCE, Stage, stages_from_tiers
from splitdnn.planning.problem import Problem, ProblemArrays, problem_arrays

OBJECTIVES = ("latency", "energy", "throughput")
ALGORITHMS = ("auto", "neurosurgeon", "roadrunner", "chain", "pipeline")
FAMILIES: dict[str, Callable[[ProblemArrays], Family]] = {
    "neurosurgeon": neurosurgeon_family,
    "roadrunner": roadrunner_family,
    "chain": chain_family,
    "pipeline": chain_family,
}


@dataclass(frozen=True)
class Candidate:
    """One complete plan with its predicted figures."""

    stages: tuple[Stage, ...]
    latency_ms: float
    energy_mj: float
    throughput_rps: float
    exit_index: int | None = None
    accuracy: float | None = None

    def figures(self) -> dict[str, float | None]:
        throughput = None if math.isinf(self.throughput_rps) else self.throughput_rps
        return {"latency_ms": self.latency_ms, "energy_mj": self.energy_mj,
                "throughput_rps": throughput}


@dataclass(frozen=True)
class PlanResult:
    """The chosen plan, the Pareto set it belongs to and how it was found."""

    algorithm: str
    objective: str
    best: Candidate
    pareto: tuple[Candidate, ...]


@dataclass(frozen=True)
class _Setting:
    """One exit candidate: its arrays, family and bounds."""

    problem: Problem
    arrays: ProblemArrays
    family: Family
    exit_index: int | None

    def memory(self) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """Tiers whose memory some plan could exceed, and their capacities."""
        total = float(self.arrays.params_bytes.sum())
        tight = tuple(t for t in range(self.arrays.tiers) if self.arrays.memory_bytes[t] < total)
        return tight, tuple(float(self.arrays.memory_bytes[t]) for t in tight)

    def spec(self, leading: tuple[int, ...], *, latency: bool = True, energy: bool = True,
             stages: bool = True, memory: bool = True, bottleneck: float = math.inf,
             least_bottleneck: float = 0.0, exact_loads: bool = True) -> LabelSpec:
        """Dominance on ``leading`` plus every bounded column that is switched on (the
        engine adds the memory columns, and the loads when the bottleneck counts)."""
        limits = self.problem.constraints
        tiers, caps = self.memory() if memory else ((), ())
        max_latency = limits.latency_ms if latency and limits.latency_ms is not None else math.inf
        max_energy = limits.energy_mj if energy and limits.energy_mj is not None else math.inf
        max_stages = limits.max_stages if stages and limits.max_stages is not None else math.inf
        columns = list(leading)
        for column, bound in ((LAT, max_latency), (EN, max_energy), (STAGES, max_stages)):
            if math.isfinite(bound) and column not in columns:
                columns.append(column)
        return LabelSpec(tuple(columns), max_latency, max_energy, max_stages, bottleneck,
                         least_bottleneck, exact_loads, tiers, caps)

    def candidate(self, finals: Finals, row: int, accuracy: float | None) -> Candidate:
        tiers = finals.tiers_of(row)
        names = [self.arrays.tier_names[t] for t in tiers]
        label = finals.labels[row]
        bottleneck = plan_bottleneck_ms(self.arrays, tiers)
        throughput = 1000.0 / bottleneck if bottleneck > 0 else math.inf
        return Candidate(tuple(stages_from_tiers(names)), float(label[LAT]), float(label[EN]),
                         throughput, self.exit_index, accuracy)


def _order(objective: str) -> tuple[int, ...]:
    return {"latency": (LAT, EN, STAGES), "energy": (EN, LAT, STAGES),
            "throughput": (CLOSED, LAT, EN)}[objective]


def _best_row(finals: Finals, objective: str) -> int:
    keys = [finals.labels[:, column] for column in reversed(_order(objective))]
    return int(np.lexsort(keys)[0])


def _optimise(setting: _Setting, objective: str) -> Finals | None:
    """Final labels containing the optimum for ``objective``, or None when infeasible."""
    if objective == "throughput":
        # The relaxation that counts each stage and transfer alone (no revisits sharing a
        # tier or link) is cheap and bounds the optimum B* from below; the true bottlenecks
        # of its plans and of a quick search that compares only the current tier's load
        # bound it from above. Only when the bounds differ is the exact search needed.
        relaxed = run_labels(setting.arrays, setting.family, setting.spec((STAGE_MAX, OPEN)))
        if not len(relaxed):
            return None
        least = max(float(relaxed.labels[:, STAGE_MAX].min()), _spread(setting.arrays))
        quick = run_labels(setting.arrays, setting.family, setting.spec(
            (CLOSED,), least_bottleneck=least, exact_loads=False))
        first = min((finals for finals in (relaxed, quick) if len(finals)),
                    key=lambda finals: float(finals.labels[:, CLOSED].min()))
        bound = float(first.labels[:, CLOSED].min())
        if bound > least + TOLERANCE * max(1.0, least):
            first = run_labels(setting.arrays, setting.family, setting.spec(
                (CLOSED,), bottleneck=bound, least_bottleneck=least))
            bound = float(first.labels[:, CLOSED].min())
        # The fastest plan within B*: comparing every load here too makes the fronts explode
        # on long models, so only the current tier's load is; the plans it finds keep the
        # bottleneck B* exactly, and when none is found the plans of B* found above serve.
        spec = setting.spec((LAT,), bottleneck=bound, exact_loads=False)
        finals = run_labels(setting.arrays, setting.family, spec)
        return finals if len(finals) else first
    if setting.problem.has_energy:  # one run gives the optimum and the Pareto set
        leading: tuple[int, ...] = (LAT, EN) if objective == "latency" else (EN, LAT)
    else:
        leading = (LAT,) if objective == "latency" else (EN,)
    finals = run_labels(setting.arrays, setting.family, setting.spec(leading))
    return finals if len(finals) else None


def _spread(arrays: ProblemArrays) -> float:
    """A lower bound on any plan's bottleneck: the least total compute spread evenly over
    every replica of every tier."""
    return float(arrays.compute_ms.min(axis=0).sum() / arrays.replicas.sum())


def pareto_set(setting: _Setting, accuracy: float | None,
               finals: Finals | None = None) -> tuple[Candidate, ...]:
    """The feasible plans of the family non-dominated in (latency, energy), fastest first;
    ``finals`` of a run with dominance on both (and every bound) saves running it again."""
    if finals is None:
        finals = run_labels(setting.arrays, setting.family, setting.spec((LAT, EN)))
    if not len(finals):
        return ()
    rows = _without_near_ties(finals.labels[:, [LAT, EN]], pareto_rows(finals.labels[:, [LAT, EN]]))
    return tuple(setting.candidate(finals, int(row), accuracy) for row in rows)


def _without_near_ties(points: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Fastest first, dropping points that another dominates once sums that differ only by
    rounding (the order of additions) count as equal."""
    rows = rows[np.lexsort((points[rows, 1], points[rows, 0]))]
    kept = [int(row) for i, row in enumerate(rows) if not any(
        _near_dominates(points[other], points[row])
        and (i > j or not _near_dominates(points[row], points[other]))
        for j, other in enumerate(rows) if j != i)]
    return np.array(kept, dtype=int)


def _near_dominates(better: np.ndarray, worse: np.ndarray) -> bool:
    slack = TOLERANCE * np.maximum(1.0, np.abs(worse))
    return bool(np.all(better <= worse + slack))


def exit_settings(problem: Problem, algorithm: str) -> list[_Setting]:
    """One setting per exit choice accurate enough (the full model first)."""
    arrays = problem_arrays(problem)
    exits: list[int | None] = [None, *range(len(problem.exits or []))]
    return [_Setting(problem, exit_arrays(problem, arrays, e), FAMILIES[algorithm](arrays), e)
            for e in exits if accurate_enough(problem, e)]


def accurate_enough(problem: Problem, exit_index: int | None) -> bool:
    """An exit (or the full model) meets ``constraints.min_accuracy``; an unstated accuracy
    of the full model counts as meeting it."""
    bound = problem.constraints.min_accuracy
    accuracy = accuracy_of(problem, exit_index)
    return bound is None or accuracy is None or accuracy >= bound


def accuracy_of(problem: Problem, exit_index: int | None) -> float | None:
    """Accuracy of an exit, or of the full model (None when not stated)."""
    if exit_index is None:
        return problem.final_accuracy
    return (problem.exits or [])[exit_index].accuracy


def rank_accuracy(problem: Problem, exit_index: int | None) -> float:
    """The full model without a stated accuracy ranks above every exit."""
    value = accuracy_of(problem, exit_index)
    return math.inf if value is None else value


def resolve_algorithm(algorithm: str, objective: str) -> str:
    """``auto``: ``pipeline`` for throughput, ``chain`` otherwise."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective: expected one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm: expected one of {', '.join(ALGORITHMS)}, got {algorithm!r}")
    if algorithm == "auto":
        return "pipeline" if objective == "throughput" else "chain"
    return algorithm


def solve(problem: Problem, objective: str = "latency", algorithm: str = "auto") -> PlanResult:
    """The best plan of ``algorithm`` for ``objective``; ``InfeasibleError`` when none fits."""
    algorithm = resolve_algorithm(algorithm, objective)
    best: tuple[tuple[float, ...], Candidate, _Setting, Finals] | None = None
    settings = exit_settings(problem, algorithm)
    if not settings:
        raise InfeasibleError("constraints.min_accuracy", (
            f"constraints.min_accuracy: neither the full model (accuracy "
            f"{problem.final_accuracy}) nor any early exit reaches "
            f"{problem.constraints.min_accuracy}"))
    for setting in settings:
        finals = _optimise(setting, objective)
        if finals is None:
            continue
        accuracy = accuracy_of(problem, setting.exit_index)
        row = _best_row(finals, objective)
        key = (-rank_accuracy(problem, setting.exit_index),
               *(finals.labels[row, c] for c in _order(objective)))
        if best is None or key < best[0]:
            best = (key, setting.candidate(finals, row, accuracy), setting, finals)
    if best is None:
        raise diagnose(settings)
    _, chosen, setting, finals = best
    pareto: tuple[Candidate, ...] = ()
    if problem.has_energy:
        reuse = finals if objective != "throughput" else None
        pareto = pareto_set(setting, chosen.accuracy, reuse)
    return PlanResult(algorithm, objective, chosen, pareto)


def diagnose(settings: list[_Setting]) -> InfeasibleError:
    """Add the constraints one at a time and name the first that leaves no plan."""
    worst: InfeasibleError | None = None
    worst_step = -1
    for setting in settings:
        step, error = first_violated(setting)
        if step > worst_step:
            worst, worst_step = error, step
    assert worst is not None
    if len(settings) > 1:
        return InfeasibleError(worst.constraint, f"{worst} (no early exit meets it either)")
    return worst


def first_violated(setting: _Setting) -> tuple[int, InfeasibleError]:
    """Step index and error of the first constraint that leaves no plan."""
    limits = setting.problem.constraints
    where = "" if setting.exit_index is None else f" (with exit {setting.exit_index})"
    steps = [
        ("links", dict(latency=False, energy=False, stages=False, memory=False)),
        ("memory_bytes", dict(latency=False, energy=False, stages=False)),
        ("constraints.max_stages", dict(latency=False, energy=False)),
        ("constraints.latency_ms", dict(energy=False)),
        ("constraints.energy_mj", {}),
    ]
    previous: dict[str, bool] = {}
    for step, (name, switches) in enumerate(steps):
        finals = run_labels(setting.arrays, setting.family, setting.spec((LAT,), **switches))
        if len(finals):
            previous = switches
            continue
        return step, InfeasibleError(name, _message(setting, name, previous, where))
    raise AssertionError(f"no constraint is violated{where}: {limits}")


def _message(setting: _Setting, name: str, relaxed: dict[str, bool], where: str) -> str:
    problem, limits = setting.problem, setting.problem.constraints
    if name == "links":
        return (f"links: no {setting.family.name} plan can carry the input from "
                f"{problem.source!r} through every segment to {problem.sink_tier!r} over the "
                f"given links{where}")
    if name == "memory_bytes":
        return (f"tiers[].memory_bytes: the segments' parameters "
                f"({int(setting.arrays.params_bytes.sum())} bytes) fit in no {setting.family.name}"
                f" plan's tiers{where}")
    if name == "constraints.max_stages":
        return (f"constraints.max_stages: no {setting.family.name} plan with at most "
                f"{limits.max_stages} stages fits the memory and links{where}")
    column, unit, limit = ((LAT, "ms", limits.latency_ms) if name == "constraints.latency_ms"
                           else (EN, "mJ", limits.energy_mj))
    leading = (column,)
    finals = run_labels(setting.arrays, setting.family, setting.spec(leading, **relaxed))
    closest = float(finals.labels[:, column].min())
    other = "" if column == LAT else " and the latency bound"
    return (f"{name}: no {setting.family.name} plan meets {limit} {unit}{where}; the best that "
            f"fits the memory, stages{other} needs {closest:.6g} {unit}")
