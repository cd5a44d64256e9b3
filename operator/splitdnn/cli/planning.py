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

from splitdnn.cli.common import JsonOpt, app, fail, stderr, stdout
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


POLICIES = ("dp", "greedy", "random", "ddqn")
TasksOpt = Annotated[int, typer.Option("--tasks", help="Tasks in the stream (M)")]
RateOpt = Annotated[float, typer.Option("--arrival-rate", help="Bernoulli arrival rate p per slot")]
KOpt = Annotated[int, typer.Option("--k", help="Deadline ratio: τ = k·D slots")]
DevicesOpt = Annotated[int, typer.Option("--devices", help="Number of end devices")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed of the stream")]


def _check_stream(tasks: int, arrival_rate: float, k: int, devices: int) -> None:
    if tasks < 1:
        fail(f"--tasks: expected at least 1, got {tasks}")
    if not 0 < arrival_rate <= 1:
        fail(f"--arrival-rate: expected 0 < p <= 1, got {arrival_rate}")
    if k < 1:
        fail(f"--k: expected a positive integer, got {k}")
    if devices < 1:
        fail(f"--devices: expected at least 1, got {devices}")


@app.command("stream-sim")
def stream_sim(
    policy: Annotated[str, typer.Option("--policy", help="dp | greedy | random | ddqn")],
    tasks: TasksOpt = 100,
    arrival_rate: RateOpt = 0.1,
    k: KOpt = 3,
    devices: DevicesOpt = 3,
    seed: SeedOpt = 0,
    model_file: Annotated[Path | None, typer.Option(
        "--model", help="DDQN weights written by stream-train (required for ddqn)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Simulate a task stream (paper 003) under one decision policy."""
    import numpy as np

    from splitdnn.planning.stream import branchy_alexnet, generate_tasks, simulate

    _choice(policy, POLICIES, "--policy")
    _check_stream(tasks, arrival_rate, k, devices)
    chooser = None
    if policy == "ddqn":
        if model_file is None:
            fail("--model: required with --policy ddqn (train one with "
                 "`splitdnn stream-train --out FILE`)")
        assert model_file is not None
        chooser = _load_agent(model_file).decide
    elif model_file is not None:
        fail(f"--model: only used with --policy ddqn, not {policy}")
    model = branchy_alexnet()
    if chooser is not None and len(model.actions()) != chooser.__self__.config.actions:
        fail(f"--model: {model_file} was trained for {chooser.__self__.config.actions} actions, "
             f"the stream model has {len(model.actions())}")
    stream = generate_tasks(tasks, arrival_rate, k, devices, np.random.default_rng(seed))
    result = simulate(policy, stream, devices, model, seed=seed, chooser=chooser)
    if as_json:
        print(json.dumps({**result.to_json(), "policy": policy, "tasks": tasks,
                          "arrival_rate": arrival_rate, "k": k, "devices": devices,
                          "seed": seed}))
        return
    stdout.print(f"{policy}: sum reward {result.sum_reward:.3f}, {result.completed} of {tasks} "
                 f"tasks completed in time, mean accuracy {result.mean_accuracy:.3f}",
                 highlight=False)


def _load_agent(path: Path) -> Any:
    from splitdnn.planning.ddqn import DDQNAgent

    config = path.with_suffix(".json")
    if not path.is_file() or not config.is_file():
        fail(f"--model: expected {path} and {config} written by `splitdnn stream-train`")
    try:
        return DDQNAgent.load(path)
    except (ValueError, TypeError, RuntimeError, json.JSONDecodeError) as error:
        fail(f"--model: cannot load {path}: {error}")


@app.command("stream-train")
def stream_train(
    out: Annotated[Path, typer.Option("--out", help="Where to write the weights (FILE) and "
                                      "configuration (FILE with suffix .json)")],
    episodes: Annotated[int, typer.Option("--episodes", help="Training episodes")] = 300,
    tasks: TasksOpt = 100,
    arrival_rate: RateOpt = 0.1,
    k: KOpt = 3,
    devices: DevicesOpt = 3,
    seed: SeedOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Train the DDQN policy (paper 003, Algorithm 2) in the simulator and save it."""
    from splitdnn.planning.ddqn import DDQNConfig, train

    _check_stream(tasks, arrival_rate, k, devices)
    if episodes < 1:
        fail(f"--episodes: expected at least 1, got {episodes}")
    if not out.parent.is_dir():
        fail(f"--out: directory {out.parent} does not exist")
    config = DDQNConfig(episodes=episodes, tasks=tasks, arrival_rate=arrival_rate, k=k,
                        devices=devices, seed=seed)
    with stderr.status(f"training DDQN for {episodes} episodes ..."):
        agent, returns = train(config)
    config_path = agent.save(out)
    tail = returns[-min(10, len(returns)):]
    summary = {"model": str(out), "config": str(config_path), "episodes": episodes,
               "first_episode_reward": returns[0], "last_10_mean_reward": sum(tail) / len(tail)}
    if as_json:
        print(json.dumps(summary))
        return
    stdout.print(f"saved {out} and {config_path}: {episodes} episodes, sum reward "
                 f"{returns[0]:.2f} in the first, {summary['last_10_mean_reward']:.2f} on average "
                 "in the last 10 (ε-greedy)", highlight=False)
