"""Partition and placement: every exact algorithm equals brute force, Pareto sets are exactly
the non-dominated plans, exits maximise accuracy, and bad problems name their field."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitdnn.planning import (
    InfeasibleError,
    Problem,
    ProblemError,
    Stage,
    evaluate,
    parse_problem,
    solve,
    stages_from_tiers,
)
from splitdnn.planning.labels import pareto_rows

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
FAMILY_OF = {"chain": "chain", "pipeline": "chain", "neurosurgeon": "neurosurgeon",
             "roadrunner": "roadrunner"}


@st.composite
def problems(draw: st.DrawFn, max_segments: int = 5, max_tiers: int = 3,
             exits: bool = False) -> Problem:
    """Small random problems: integer costs, some links missing, some bounds tight."""
    count = draw(st.integers(1, max_segments))
    tiers = draw(st.integers(1, max_tiers))
    small = st.integers(0, 9)
    tier_list: list[dict[str, Any]] = []
    for index in range(tiers):
        tier: dict[str, Any] = {"name": f"t{index}",
                                "latency_ms": draw(st.lists(small, min_size=count,
                                                            max_size=count)),
                                "replicas": draw(st.integers(1, 3))}
        if draw(st.booleans()):
            tier["energy_mj"] = draw(st.lists(small, min_size=count, max_size=count))
        if draw(st.integers(0, 3)) == 0:
            tier["memory_bytes"] = draw(st.integers(0, 40))
        tier_list.append(tier)
    links = [{"from": f"t{a}", "to": f"t{b}", "bandwidth_mbps": draw(st.sampled_from([8, 16, 80])),
              "latency_ms": draw(st.integers(0, 3)),
              **({"energy_mj_per_mb": draw(st.sampled_from([0, 1000, 4000]))}
                 if draw(st.booleans()) else {})}
             for a in range(tiers) for b in range(tiers) if a != b and draw(st.integers(0, 4))]
    constraints: dict[str, Any] = {}
    if draw(st.booleans()):
        constraints["max_stages"] = draw(st.integers(1, 4))
    if draw(st.booleans()):
        constraints["latency_ms"] = draw(st.integers(3, 50))
    if draw(st.booleans()):
        constraints["energy_mj"] = draw(st.integers(3, 50))
    data: dict[str, Any] = {
        "segments": [{"name": f"s{i}", "output_bytes": draw(st.integers(0, 6000)),
                      "params_bytes": draw(st.integers(0, 12))} for i in range(count)],
        "input_bytes": draw(st.integers(0, 6000)),
        "tiers": tier_list, "links": links,
        "source": "t0", "sink": draw(st.sampled_from([f"t{i}" for i in range(tiers)])),
        "constraints": constraints,
    }
    if exits:
        data["exits"] = [{"after_segment": draw(st.integers(0, count - 1)),
                          "accuracy": draw(st.sampled_from([0.5, 0.6, 0.7])),
                          "latency_ms": {f"t{i}": draw(small) for i in range(tiers)
                                         if draw(st.integers(0, 3))},
                          "output_bytes": draw(st.integers(0, 100))}
                         for _ in range(draw(st.integers(1, 3)))]
        if draw(st.booleans()):
            data["final_accuracy"] = draw(st.sampled_from([0.55, 0.8]))
        if draw(st.booleans()):
            constraints["min_accuracy"] = draw(st.sampled_from([0.55, 0.65, 0.9]))
    return parse_problem(data)


def in_family(tiers: list[str], family: str, source: str) -> bool:
    if family == "chain":
        return True
    if len(tiers) == 1:
        return True
    if family == "neurosurgeon":
        return len(tiers) == 2 and tiers[0] == source
    return (len(tiers) == 2 and source in tiers) or (
        len(tiers) == 3 and tiers[0] == tiers[2] == source)


def all_plans(problem: Problem, family: str, exit_index: int | None = None
              ) -> list[tuple[list[Stage], Any]]:
    """Every feasible plan of a family, by enumerating a tier for each segment."""
    last = len(problem.segments) - 1 if exit_index is None else \
        (problem.exits or [])[exit_index].after_segment
    names = [tier.name for tier in problem.tiers]
    found = []
    for assignment in itertools.product(names, repeat=last + 1):
        stages = stages_from_tiers(list(assignment))
        if not in_family([s.tier for s in stages], family, problem.source):
            continue
        evaluation = evaluate(problem, stages, exit_index)
        if evaluation.feasible:
            found.append((stages, evaluation))
    return found


def score(evaluation: Any, objective: str) -> float:
    if objective == "throughput":
        return 1 / evaluation.throughput_rps if evaluation.throughput_rps else math.inf
    return evaluation.latency_ms if objective == "latency" else evaluation.energy_mj


def non_dominated(points: list[tuple[float, float]]) -> set[tuple[float, float]]:
    """Points no other beats, sums that differ only by rounding counting as equal."""
    def close(a: float, b: float) -> bool:
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)

    def beats(q: tuple[float, float], p: tuple[float, float]) -> bool:
        no_worse = all(x <= y or close(x, y) for x, y in zip(q, p, strict=True))
        return no_worse and not all(close(x, y) for x, y in zip(q, p, strict=True))
    return {p for p in points if not any(beats(q, p) for q in points)}


def rounded(points: Any) -> set[tuple[float, float]]:
    return {(round(a, 6), round(b, 6)) for a, b in points}


CASES = [("chain", "latency"), ("chain", "energy"), ("neurosurgeon", "latency"),
         ("neurosurgeon", "energy"), ("roadrunner", "latency"), ("roadrunner", "energy"),
         ("pipeline", "throughput"), ("chain", "throughput")]


@pytest.mark.parametrize(("algorithm", "objective"), CASES)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=problems())
def test_algorithm_equals_brute_force(problem: Problem, algorithm: str, objective: str) -> None:
    plans = all_plans(problem, FAMILY_OF[algorithm])
    if not plans:
        with pytest.raises(InfeasibleError):
            solve(problem, objective, algorithm)
        return
    result = solve(problem, objective, algorithm)
    mine = evaluate(problem, list(result.best.stages))
    assert mine.feasible, mine.violations
    assert score(mine, objective) == pytest.approx(min(score(e, objective) for _, e in plans),
                                                   rel=1e-9, abs=1e-9)
    assert result.best.latency_ms == pytest.approx(mine.latency_ms)
    assert result.best.energy_mj == pytest.approx(mine.energy_mj)
    assert result.best.throughput_rps == pytest.approx(mine.throughput_rps)
    if problem.has_energy:
        front = non_dominated([(e.latency_ms, e.energy_mj) for _, e in plans])
        assert rounded((c.latency_ms, c.energy_mj) for c in result.pareto) == rounded(front)
        for candidate in result.pareto:
            assert evaluate(problem, list(candidate.stages)).feasible
    else:
        assert result.pareto == ()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=problems(max_segments=7, max_tiers=3))
def test_pipeline_equals_brute_force_when_plans_come_back_to_a_tier(problem: Problem) -> None:
    """Longer models, where the best plans often revisit a tier or reuse a link."""
    plans = all_plans(problem, "chain")
    if not plans:
        return
    result = solve(problem, "throughput", "pipeline")
    mine = evaluate(problem, list(result.best.stages))
    assert mine.feasible, mine.violations
    assert mine.throughput_rps == pytest.approx(max(e.throughput_rps for _, e in plans),
                                                rel=1e-9)
    assert result.best.throughput_rps == pytest.approx(mine.throughput_rps)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=problems(max_segments=4, exits=True))
def test_exits_maximise_accuracy_then_latency(problem: Problem) -> None:
    options = []
    for exit_index in [None, *range(len(problem.exits or []))]:
        accuracy = problem.final_accuracy if exit_index is None else \
            (problem.exits or [])[exit_index].accuracy
        rank = math.inf if accuracy is None else accuracy
        options += [(-rank, e.latency_ms) for _, e in all_plans(problem, "chain", exit_index)]
    if not options:
        with pytest.raises(InfeasibleError):
            solve(problem, "latency", "chain")
        return
    result = solve(problem, "latency", "chain")
    mine = evaluate(problem, list(result.best.stages), result.best.exit_index)
    assert mine.feasible, mine.violations
    best = min(options)
    chosen_rank = math.inf if result.best.accuracy is None else result.best.accuracy
    assert -chosen_rank == best[0]
    assert mine.latency_ms == pytest.approx(best[1], rel=1e-9, abs=1e-9)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6), st.integers(0, 3)),
                min_size=1, max_size=30), st.integers(1, 3))
def test_pareto_rows_are_exactly_the_non_dominated_rows(rows: list[tuple[int, int, int]],
                                                         dims: int) -> None:
    import numpy as np
    values = np.array([row[:dims] for row in rows], dtype=float)
    kept = pareto_rows(values)
    kept_points = {tuple(values[i]) for i in kept}
    points = [tuple(v) for v in values]
    expected = {p for p in points if not any(
        all(a <= b for a, b in zip(q, p, strict=True)) and q != p for q in points)}
    assert kept_points == expected
    assert len(kept) == len(kept_points)  # one row per distinct point


def test_evaluate_follows_the_contract_formulas() -> None:
    problem = parse_problem({
        "segments": [{"name": "a", "output_bytes": 1000, "params_bytes": 5},
                     {"name": "b", "output_bytes": 250, "params_bytes": 7}],
        "input_bytes": 2000,
        "tiers": [{"name": "dev", "latency_ms": [4, 8], "energy_mj": [1, 2]},
                  {"name": "srv", "latency_ms": [1, 2], "energy_mj": [3, 4], "replicas": 2}],
        "links": [{"from": "dev", "to": "srv", "bandwidth_mbps": 8, "latency_ms": 1.5,
                   "energy_mj_per_mb": 1000},
                  {"from": "srv", "to": "dev", "bandwidth_mbps": 16, "latency_ms": 0.5}],
        "source": "dev"})
    evaluation = evaluate(problem, [Stage("dev", 0, 0), Stage("srv", 1, 1)])
    # 4 ms on dev, 1000 B at 8 Mbps = 1 ms + 1.5, 2 ms on srv, 250 B at 16 Mbps = 0.125 + 0.5
    assert evaluation.latency_ms == pytest.approx(4 + 2.5 + 2 + 0.625)
    assert evaluation.energy_mj == pytest.approx(1 + 4 + 1000 / 1e6 * 1000)
    assert evaluation.throughput_rps == pytest.approx(1000 / 4)
    assert evaluation.memory_bytes == {"dev": 5, "srv": 7}
    everything_remote = evaluate(problem, [Stage("srv", 0, 1)])
    # input 2000 B at 8 Mbps = 2 ms + 1.5; compute 3 ms / 2 replicas = 1.5 ms per request
    assert everything_remote.latency_ms == pytest.approx(3.5 + 3 + 0.625)
    assert everything_remote.throughput_rps == pytest.approx(1000 / 2)


def revisiting_problem(jetson_ms: list[float], jetson_replicas: int,
                       v100_replicas: int) -> Problem:
    """jetson (source and sink) and v100, 8 Mbps both ways: 1000 B take 1 ms."""
    link = {"bandwidth_mbps": 8, "latency_ms": 0.5}
    return parse_problem({
        "segments": [{"name": "a", "output_bytes": 1000, "params_bytes": 0},
                     {"name": "b", "output_bytes": 1000, "params_bytes": 0},
                     {"name": "c", "output_bytes": 500, "params_bytes": 0}],
        "input_bytes": 2000,
        "tiers": [{"name": "jetson", "latency_ms": jetson_ms, "replicas": jetson_replicas},
                  {"name": "v100", "latency_ms": [3, 1, 3], "replicas": v100_replicas}],
        "links": [{"from": "jetson", "to": "v100", **link},
                  {"from": "v100", "to": "jetson", **link}],
        "source": "jetson"})


def test_stages_on_one_tier_share_it_and_transfers_on_one_link_share_it() -> None:
    problem = revisiting_problem([3, 2, 3], jetson_replicas=2, v100_replicas=4)
    there_and_back = evaluate(problem, [Stage("jetson", 0, 0), Stage("v100", 1, 1),
                                        Stage("jetson", 2, 2)])
    # jetson runs a and c: (3 + 3) ms / 2 replicas = 3 ms per request (each stage alone: 1.5)
    assert there_and_back.throughput_rps == pytest.approx(1000 / 3)
    assert there_and_back.latency_ms == pytest.approx(3 + 1.5 + 1 + 1.5 + 3)
    back_and_there = evaluate(problem, [Stage("v100", 0, 0), Stage("jetson", 1, 1),
                                        Stage("v100", 2, 2)])
    # v100: 6 ms / 4 = 1.5; jetson: 2 / 2 = 1; link jetson -> v100 carries the input (2000 B,
    # 2 ms) and b's output (1 ms): 3 ms per request; v100 -> jetson: 1 + 0.5 ms
    assert back_and_there.throughput_rps == pytest.approx(1000 / 3)


def test_pipeline_does_not_overrate_a_plan_that_comes_back() -> None:
    problem = revisiting_problem([3, 10, 3], jetson_replicas=1, v100_replicas=1)
    # jetson -> v100 -> jetson looks like 3 ms per stage, but jetson runs 3 + 3 = 6 ms per
    # request; one cut (jetson a, v100 b c) needs 4 ms on v100
    result = solve(problem, "throughput", "pipeline")
    assert result.best.throughput_rps == pytest.approx(1000 / 4)
    assert len(result.best.stages) == 2
    assert evaluate(problem, list(result.best.stages)).throughput_rps == pytest.approx(1000 / 4)


def test_latency_plans_report_the_shared_bottleneck() -> None:
    """Latency runs do not carry the loads; the throughput they report must still count a
    tier's stages together."""
    problem = revisiting_problem([3, 10, 0.1], jetson_replicas=1, v100_replicas=1)
    best = solve(problem, "latency", "chain").best
    assert list(best.stages) == [Stage("jetson", 0, 0), Stage("v100", 1, 1),
                                 Stage("jetson", 2, 2)]
    assert best.throughput_rps == pytest.approx(1000 / 3.1)  # jetson: 3 + 0.1 ms


def test_missing_link_is_not_connected_and_links_are_directed() -> None:
    data = json.loads((EXAMPLES / "planning-problem.json").read_text())
    data["links"] = [link for link in data["links"] if link["to"] != "jetson-nano"]
    data["constraints"] = {}
    data["tiers"][0].pop("memory_bytes")
    result = solve(parse_problem(data), "latency", "chain")
    assert result.best.stages[-1].tier == "jetson-nano"  # nothing can come back
    assert len(result.best.stages) == 1


def infeasible_constraint(data: dict[str, Any]) -> str:
    with pytest.raises(InfeasibleError) as caught:
        solve(parse_problem(data), "latency", "chain")
    assert caught.value.constraint in str(caught.value)
    return caught.value.constraint


def test_infeasible_problems_name_the_constraint() -> None:
    base = json.loads((EXAMPLES / "planning-problem.json").read_text())
    assert infeasible_constraint({**base, "constraints": {"latency_ms": 1.0}}) == \
        "constraints.latency_ms"
    assert infeasible_constraint({**base, "constraints": {"energy_mj": 1.0}}) == \
        "constraints.energy_mj"
    no_links = {**base, "links": [], "sink": "v100"}
    assert infeasible_constraint(no_links) == "links"
    tiny = [{**tier, "memory_bytes": 10} for tier in base["tiers"]]
    assert infeasible_constraint({**base, "tiers": tiny}) == "memory_bytes"
    halves = [base["tiers"][0] | {"memory_bytes": 10},
              *(tier | {"memory_bytes": 40_000_000} for tier in base["tiers"][1:])]
    assert solve(parse_problem({**base, "tiers": halves, "constraints": {}})).best
    one_stage = {**base, "tiers": halves, "constraints": {"max_stages": 1}}
    assert infeasible_constraint(one_stage) == "constraints.max_stages"


@pytest.mark.parametrize(("change", "field"), [
    (lambda d: d["tiers"][1].update(latency_ms=[1.0]), "tiers[1].latency_ms"),
    (lambda d: d["links"][0].update(to="mars"), "links[0].to"),
    (lambda d: d.update(source="mars"), "source"),
    (lambda d: d["segments"][2].pop("output_bytes"), "segments[2].output_bytes"),
    (lambda d: d["links"][1].update(bandwidth_mbps=0), "links[1].bandwidth_mbps"),
    (lambda d: d.update(colour="red"), "colour"),
    (lambda d: d.update(exits=[{"after_segment": 99, "accuracy": 0.5, "latency_ms": {},
                                "output_bytes": 1}]), "exits[0].after_segment"),
    (lambda d: d["constraints"].update(max_stages=0), "constraints.max_stages"),
])
def test_malformed_problems_name_the_field(change: Any, field: str) -> None:
    data = json.loads((EXAMPLES / "planning-problem.json").read_text())
    change(data)
    with pytest.raises(ProblemError, match=r"^" + field.replace("[", r"\[").replace("]", r"\]")):
        parse_problem(data)


def test_example_plans_are_feasible_for_every_algorithm() -> None:
    problem = parse_problem(json.loads((EXAMPLES / "planning-problem.json").read_text()))
    latency = {alg: solve(problem, "latency", alg).best.latency_ms
               for alg in ("neurosurgeon", "roadrunner", "chain")
               if _feasible(problem, alg)}
    assert latency["chain"] <= min(latency.values())
    throughput = solve(problem, "throughput").best.throughput_rps
    assert throughput >= solve(problem, "latency").best.throughput_rps - 1e-9


def _feasible(problem: Problem, algorithm: str) -> bool:
    try:
        solve(problem, "latency", algorithm)
    except InfeasibleError:
        return False
    return True
