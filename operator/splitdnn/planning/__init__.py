"""Planning: pure functions from a partitioning problem to a plan, and task-stream policies.

No Kubernetes and no I/O here: ``parse_problem`` validates the ``splitdnn plan`` problem
JSON, ``solve`` finds the best plan of an algorithm (Neurosurgeon, RoaD-RuNNer, chain,
pipeline; with early exits), ``evaluate`` recomputes a plan's figures with the contract's
formulas, and ``splitdnn.planning.stream`` simulates paper 003's task stream. torch is
imported only by ``splitdnn.planning.ddqn``.
"""

from __future__ import annotations

from splitdnn.planning.algorithms import (
    ALGORITHMS,
    OBJECTIVES,
    Candidate,
    PlanResult,
    resolve_algorithm,
    solve,
)
from splitdnn.planning.errors import InfeasibleError, PlanningError, ProblemError
from splitdnn.planning.plan import Evaluation, Stage, evaluate, stages_from_tiers
from splitdnn.planning.problem import Problem, parse_problem

__all__ = [
    "ALGORITHMS",
    "OBJECTIVES",
    "Candidate",
    "Evaluation",
    "InfeasibleError",
    "PlanResult",
    "PlanningError",
    "Problem",
    "ProblemError",
    "Stage",
    "evaluate",
    "parse_problem",
    "resolve_algorithm",
    "solve",
    "stages_from_tiers",
]
