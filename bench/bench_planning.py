"""Benchmark the planner and reproduce the shape of paper 003's task-stream figures.

Two parts, in one run on this machine:

- partitioning: ``solve`` for every algorithm (neurosurgeon, roadrunner, chain, pipeline) on
  a 300-segment, 4-tier chain problem (device → gateway → edge → cloud, with a device–edge
  shortcut), median of ``--repeats``: without energies, with energies (and so the Pareto
  set), with a memory bound on the device, with ``max_stages`` and with latency and energy
  bounds. The issue's target is chain < 100 ms;
- task stream (paper 003, Figs. 5–7): sum reward of 100 tasks for dp / greedy / random /
  ddqn, versus k (p = 0.1, 3 devices), versus p (k = 3, 3 devices) and versus the number of
  devices (p = 0.1, k = 3), each the mean over ``--seeds`` streams; the DDQN is trained for
  each point (``--episodes``) in the simulator on other streams. Plots go to
  ``docs/planning-stream.png``.

Prints a markdown section; ``--write FILE`` replaces the ``bench_planning`` section::

    python bench/bench_planning.py --write docs/benchmarks.md    # what `make bench-planning` runs
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
from doc_section import load_average, machine_line, write_section

from splitdnn.planning import InfeasibleError, Problem, parse_problem
from splitdnn.planning.algorithms import solve
from splitdnn.planning.stream import branchy_alexnet, generate_tasks, simulate

TIERS = ("device", "gateway", "edge", "cloud")
ALGORITHMS = (("neurosurgeon", "latency"), ("roadrunner", "latency"), ("chain", "latency"),
              ("chain", "energy"), ("pipeline", "throughput"))
POLICIES = ("dp", "greedy", "random", "ddqn")
DOCS = Path(__file__).resolve().parent.parent / "docs"


def chain_problem(segments: int = 300, seed: int = 0, energies: bool = True,
                  **changes: Any) -> Problem:
    """A 4-tier chain: each tier faster, hungrier and further away than the one before."""
    rng = np.random.default_rng(seed)
    work = rng.uniform(0.1, 2.0, segments)
    speed, power = (1.0, 0.3, 0.1, 0.05), (5.0, 3.0, 20.0, 40.0)
    tiers = [{"name": name, "latency_ms": list(work * speed[i]),
              "energy_mj": list(work * speed[i] * power[i])} for i, name in enumerate(TIERS)]
    links = []
    for a, b, mbps, ms in ((0, 1, 100, 1.0), (1, 2, 500, 1.0), (2, 3, 1000, 5.0),
                           (0, 2, 50, 3.0)):
        for x, y in ((a, b), (b, a)):
            links.append({"from": TIERS[x], "to": TIERS[y], "bandwidth_mbps": mbps,
                          "latency_ms": ms, "energy_mj_per_mb": 10.0})
    data = {"segments": [{"name": f"s{i}", "output_bytes": int(rng.integers(1_000, 2_000_000)),
                          "params_bytes": int(rng.integers(0, 1_000_000))}
                         for i in range(segments)],
            "input_bytes": 600_000, "tiers": tiers, "links": links, "source": "device"}
    if "device_memory" in changes:
        tiers[0]["memory_bytes"] = changes.pop("device_memory")
    data["constraints"] = changes.pop("constraints", {})
    if not energies:
        for tier in tiers:
            del tier["energy_mj"]
        for link in links:
            del link["energy_mj_per_mb"]
    return parse_problem(data)


def median_ms(action: Callable[[], object], repeats: int) -> float:
    """Median wall time; a case slower than 2 s is timed once."""
    times: list[float] = []
    while len(times) < repeats and sum(times) < 2.0:
        began = time.perf_counter()
        action()
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000


def planning_rows(repeats: int) -> list[str]:
    variants = [("no energies, no bounds", {"energies": False}), ("no bounds", {}),
                ("device memory 60 MB", {"device_memory": 60_000_000}),
                ("max_stages 3", {"constraints": {"max_stages": 3}}),
                ("latency ≤ 120 ms and energy ≤ 900 mJ",
                 {"constraints": {"latency_ms": 120.0, "energy_mj": 900.0}})]
    rows = ["| problem (300 segments, 4 tiers) | algorithm | objective | time | stages | "
            "latency | Pareto plans |",
            "|---|---|---|---|---|---|---|"]
    for label, changes in variants:
        problem = chain_problem(**changes)
        for algorithm, objective in ALGORITHMS:
            try:
                result = solve(problem, objective, algorithm)
            except InfeasibleError as error:
                rows.append(f"| {label} | {algorithm} | {objective} | – | infeasible: "
                            f"{error.constraint} | | |")
                continue
            took = median_ms(lambda p=problem, a=algorithm, o=objective: solve(p, o, a),
                             repeats)
            rows.append(f"| {label} | {algorithm} | {objective} | {took:.0f} ms | "
                        f"{len(result.best.stages)} | {result.best.latency_ms:.1f} ms | "
                        f"{len(result.pareto)} |")
    return rows


def stream_point(k: int, rate: float, devices: int, seeds: int, episodes: int,
                 tasks: int) -> dict[str, float]:
    """Mean sum reward per policy over ``seeds`` streams (DDQN trained on other streams)."""
    from splitdnn.planning.ddqn import DDQNConfig, train

    model = branchy_alexnet()
    agent, _ = train(DDQNConfig(episodes=episodes, tasks=tasks, arrival_rate=rate, k=k,
                                devices=devices, seed=12345), model)
    totals = {policy: 0.0 for policy in POLICIES}
    for seed in range(seeds):
        stream = generate_tasks(tasks, rate, k, devices, np.random.default_rng(seed))
        for policy in POLICIES:
            chooser = agent.decide if policy == "ddqn" else None
            totals[policy] += simulate(policy, stream, devices, model, seed=seed,
                                       chooser=chooser).sum_reward
    return {policy: total / seeds for policy, total in totals.items()}


def stream_sweeps(seeds: int, episodes: int, tasks: int) -> dict[str, list[tuple[float, dict]]]:
    sweeps: dict[str, list[tuple[float, dict]]] = {"k": [], "p": [], "devices": []}
    for k in (1, 2, 3, 4, 5):
        sweeps["k"].append((k, stream_point(k, 0.1, 3, seeds, episodes, tasks)))
    for rate in (0.05, 0.1, 0.2, 0.3, 0.4):
        sweeps["p"].append((rate, stream_point(3, rate, 3, seeds, episodes, tasks)))
    for devices in (1, 2, 3, 4, 5):
        sweeps["devices"].append((devices, stream_point(3, 0.1, devices, seeds, episodes,
                                                        tasks)))
    return sweeps


def plot(sweeps: dict[str, list[tuple[float, dict]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {"k": ("ratio k (p = 0.1, 3 devices)", "Fig. 5"),
              "p": ("task arrival rate p (k = 3, 3 devices)", "Fig. 6"),
              "devices": ("number of end devices (p = 0.1, k = 3)", "Fig. 7")}
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for axis, (name, points) in zip(axes, sweeps.items(), strict=True):
        xs = [x for x, _ in points]
        for policy, marker in zip(POLICIES, "os^D", strict=True):
            axis.plot(xs, [values[policy] for _, values in points], marker=marker,
                      label=policy)
        axis.set_xlabel(titles[name][0])
        axis.set_ylabel("sum reward (100 tasks)")
        axis.set_title(f"sum reward vs {name} (paper 003 {titles[name][1]})")
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def stream_rows(sweeps: dict[str, list[tuple[float, dict]]]) -> list[str]:
    rows = []
    for name, points in sweeps.items():
        rows += ["", f"| {name} | " + " | ".join(POLICIES) + " |",
                 "|---|" + "---|" * len(POLICIES)]
        for x, values in points:
            rows.append(f"| {x:g} | " + " | ".join(f"{values[p]:.2f}" for p in POLICIES) + " |")
    return rows


def measure(repeats: int, seeds: int, episodes: int, tasks: int) -> str:
    load_before = load_average()
    planning = planning_rows(repeats)
    began = time.perf_counter()
    sweeps = stream_sweeps(seeds, episodes, tasks)
    stream_s = time.perf_counter() - began
    plot(sweeps, DOCS / "planning-stream.png")
    lines = [
        f"## Planning (`bench/bench_planning.py`, {date.today().isoformat()})",
        "",
        f"{machine_line()} Load average {load_before} at the start, {load_average()} at the "
        "end (other jobs may share the 2 cores; times are wall clock).",
        "",
        f"Partitioning: `solve` (what `splitdnn plan` runs, without reading the file), median "
        f"of {repeats} runs (cases over 2 s: one run). With energies one label run gives both "
        "the optimum and the exact (latency, energy) Pareto set the plan JSON carries.",
        "",
        *planning,
        "",
        f"Task stream (paper 003): mean sum reward of {tasks} tasks over {seeds} streams per "
        f"point; the DDQN trained for {episodes} episodes per point; {stream_s:.0f} s for the "
        "three sweeps. ![sum reward vs k, p and devices](planning-stream.png)",
        *stream_rows(sweeps),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timing repetitions")
    parser.add_argument("--seeds", type=int, default=3, help="task streams per point")
    parser.add_argument("--episodes", type=int, default=150, help="DDQN episodes per point")
    parser.add_argument("--tasks", type=int, default=100, help="tasks per stream")
    parser.add_argument("--write", type=Path, help="markdown file whose section to replace")
    args = parser.parse_args()
    section = measure(args.repeats, args.seeds, args.episodes, args.tasks)
    print(section)
    if args.write:
        write_section(args.write, "bench_planning", section)


if __name__ == "__main__":
    main()
