"""``splitdnn plan | stream-sim | stream-train``: partitioning plans and the task stream.

Exit codes: 2 for a malformed problem or option (the message names the field), 3 when the
problem is well formed but no plan meets its constraints (the message names the constraint).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from splitdnn.cli.common import JsonOpt, app, fail, stdout
from splitdnn.planning import (
    ALGORITHMS,
    OBJECTIVES,
    InfeasibleError,
    PlanResult,
    Problem,
    ProblemError,
    parse_problem,
    solve,
)
from splitdnn.planning.explain import candidate_json, explain


def read_json(path: Path, option: str) -> Any:
    """Decoded JSON from ``path`` or exit 2 naming the option."""
    try:
        return json.loads(path.read_text())
    except OSError as error:
        fail(f"{option}: cannot read {path}: {error.strerror}")
    except json.JSONDecodeError as error:
        fail(f"{option}: {path} is not JSON: {error}")


def load_problem(path: Path) -> Problem:
    """Parse a problem file or exit 2 naming the field that is wrong."""
    data = read_json(path, "--problem")
    try:
        return parse_problem(data)
    except ProblemError as error:
        fail(f"problem {path}: {error}")
    raise AssertionError("unreachable")


def plan_json(problem: Problem, result: PlanResult) -> dict[str, Any]:
    """The contract's plan JSON."""
    body: dict[str, Any] = {"algorithm": result.algorithm, "objective": result.objective,
                            **candidate_json(result.best),
                            "pareto": [candidate_json(c) for c in result.pareto]}
    if problem.exits:
        body["exit"] = result.best.exit_index
        body["accuracy"] = result.best.accuracy
    return body


def plan_table(problem: Problem, result: PlanResult) -> Table:
    """One row per stage of the chosen plan."""
    best = result.best
    title = (f"{result.algorithm} plan for {result.objective}: {best.latency_ms:.3f} ms, "
             f"{best.energy_mj:.3f} mJ, {_rps(best.throughput_rps)}")
    if problem.exits:
        title += f", exit {best.exit_index}, accuracy {best.accuracy}"
    table = Table(title=title)
    for column in ("stage", "tier", "segments", "first", "last"):
        table.add_column(column, justify="left" if column in ("tier", "first", "last")
                         else "right")
    for index, stage in enumerate(best.stages):
        table.add_row(str(index), stage.tier, f"{stage.first}-{stage.last}",
                      problem.segments[stage.first].name, problem.segments[stage.last].name)
    return table


def _rps(value: float) -> str:
    return "unbounded req/s" if value == float("inf") else f"{value:.2f} req/s"


def _choice(value: str, allowed: tuple[str, ...], option: str) -> str:
    if value not in allowed:
        fail(f"{option}: expected one of {', '.join(allowed)}, got {value!r}")
    return value


@app.command()
def plan(
    problem_file: Annotated[Path, typer.Option("--problem", help="Problem JSON file")],
    objective: Annotated[str, typer.Option(
        "--objective", help="latency | energy | throughput")] = "latency",
    algorithm: Annotated[str, typer.Option(
        "--algorithm", help="auto | neurosurgeon | roadrunner | chain | pipeline")] = "auto",
    show_explanation: Annotated[bool, typer.Option(
        "--explain", help="Say why the chosen plan beats the runners-up")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Cut a model into stages and place them on tiers (exit 3 when no plan is feasible)."""
    _choice(objective, OBJECTIVES, "--objective")
    _choice(algorithm, ALGORITHMS, "--algorithm")
    problem = load_problem(problem_file)
    try:
        result = solve(problem, objective, algorithm)
    except InfeasibleError as error:
        fail(f"infeasible: {error}", code=3)
    lines = explain(problem, result) if show_explanation else []
    if as_json:
        body = plan_json(problem, result)
        if show_explanation:
            body["explanation"] = lines
        print(json.dumps(body))
        return
    stdout.print(plan_table(problem, result))
    if result.pareto:
        stdout.print(f"Pareto set (latency, energy): {len(result.pareto)} plans: " + ", ".join(
            f"({c.latency_ms:.2f} ms, {c.energy_mj:.2f} mJ)" for c in result.pareto))
    for line in lines:
        stdout.print(line, highlight=False)
