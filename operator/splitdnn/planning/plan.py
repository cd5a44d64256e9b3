"""Plans and their evaluation: the exact semantics every algorithm and outside check share.

A plan is a list of stages ``Stage(tier, first, last)`` (segments inclusive) covering the
segments in order. ``evaluate`` recomputes a plan's latency, energy, throughput and memory
from the problem with plain Python, straight from the contract's formulas; the algorithms
use faster array code and the tests hold them to this function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from splitdnn.planning.problem import Link, Problem

TOLERANCE = 1e-9


def within(value: float, limit: float | None) -> bool:
    """``value <= limit`` up to a relative rounding tolerance (sums differ in the last bits)."""
    return limit is None or value <= limit + TOLERANCE * max(1.0, abs(limit))


@dataclass(frozen=True)
class Stage:
    """Segments ``first..last`` (inclusive) run on ``tier``."""

    tier: str
    first: int
    last: int

    def to_json(self) -> dict[str, Any]:
        return {"tier": self.tier, "segments": [self.first, self.last]}


@dataclass(frozen=True)
class Transfer:
    """One tensor sent over a link: ``what`` is input, a stage output or the result."""

    what: str
    src: str
    dst: str
    bytes: int
    ms: float
    serialise_ms: float
    mj: float


@dataclass(frozen=True)
class Evaluation:
    """A plan's predicted figures and every rule it breaks (empty when feasible)."""

    latency_ms: float
    energy_mj: float
    throughput_rps: float
    memory_bytes: dict[str, int]
    transfers: tuple[Transfer, ...]
    violations: tuple[str, ...] = field(default=())

    @property
    def feasible(self) -> bool:
        return not self.violations


def _link_map(problem: Problem) -> dict[tuple[str, str], Link]:
    return {(link.from_, link.to): link for link in problem.links}


def exit_head(problem: Problem, exit_index: int | None) -> tuple[int, int, dict[str, float]]:
    """Last segment computed, bytes sent to the sink, and the extra head latency per tier."""
    if exit_index is None:
        return len(problem.segments) - 1, problem.segments[-1].output_bytes, {}
    head = (problem.exits or [])[exit_index]
    return head.after_segment, head.output_bytes, dict(head.latency_ms)


def check_stages(problem: Problem, stages: list[Stage], last: int) -> None:
    """Raise ``ValueError`` unless the stages cover ``0..last`` in order on known tiers."""
    names = {tier.name for tier in problem.tiers}
    expected = 0
    for index, stage in enumerate(stages):
        if stage.tier not in names:
            raise ValueError(f"stages[{index}].tier: unknown tier {stage.tier!r}")
        if stage.first != expected or stage.last < stage.first:
            raise ValueError(f"stages[{index}].segments: expected to start at {expected}")
        if index and stages[index - 1].tier == stage.tier:
            raise ValueError(f"stages[{index}].tier: same tier as the stage before")
        expected = stage.last + 1
    if expected != last + 1:
        raise ValueError(f"stages: cover segments 0..{expected - 1}, expected 0..{last}")


def evaluate(problem: Problem, stages: list[Stage], exit_index: int | None = None) -> Evaluation:
    """Latency, energy, throughput, memory and violated rules of a plan (contract semantics)."""
    last, result_bytes, head_ms = exit_head(problem, exit_index)
    head_accuracy = None if exit_index is None else (problem.exits or [])[exit_index].accuracy
    check_stages(problem, stages, last)
    tiers = {tier.name: tier for tier in problem.tiers}
    links = _link_map(problem)
    violations: list[str] = []
    transfers: list[Transfer] = []

    def send(what: str, src: str, dst: str, size: int) -> None:
        if src == dst:
            return
        link = links.get((src, dst))
        if link is None:
            violations.append(f"links: no link {src} -> {dst} for the {what}")
            return
        serialise = size * 8 / (link.bandwidth_mbps * 1000)
        transfers.append(Transfer(what, src, dst, size, link.latency_ms + serialise, serialise,
                                  size / 1e6 * (link.energy_mj_per_mb or 0.0)))

    send("input", problem.source, stages[0].tier, problem.input_bytes)
    latency = energy = 0.0
    tier_load: dict[str, float] = {}
    memory: dict[str, int] = {}
    for index, stage in enumerate(stages):
        tier = tiers[stage.tier]
        compute = sum(tier.latency_ms[s] for s in range(stage.first, stage.last + 1))
        if stage.last == last and exit_index is not None:
            if stage.tier not in head_ms:
                violations.append(f"exits[{exit_index}].latency_ms: no latency for tier "
                                  f"{stage.tier!r}, the exit cannot run there")
            compute += head_ms.get(stage.tier, 0.0)
        latency += compute
        if tier.energy_mj is not None:
            energy += sum(tier.energy_mj[s] for s in range(stage.first, stage.last + 1))
        tier_load[stage.tier] = tier_load.get(stage.tier, 0.0) + compute
        memory[stage.tier] = memory.get(stage.tier, 0) + sum(
            problem.segments[s].params_bytes for s in range(stage.first, stage.last + 1))
        if index + 1 < len(stages):
            send(f"output of segment {stage.last}", stage.tier, stages[index + 1].tier,
                 problem.segments[stage.last].output_bytes)
    send("result", stages[-1].tier, problem.sink_tier, result_bytes)
    link_load: dict[tuple[str, str], float] = {}
    for transfer in transfers:
        latency += transfer.ms
        energy += transfer.mj
        link = (transfer.src, transfer.dst)
        link_load[link] = link_load.get(link, 0.0) + transfer.serialise_ms
    # Stages on the same tier share its replicas, transfers over the same link its bandwidth.
    bottleneck = max([load / tiers[name].replicas for name, load in tier_load.items()]
                     + list(link_load.values()))
    violations.extend(_constraint_violations(problem, stages, latency, energy, memory))
    accuracy = problem.final_accuracy if exit_index is None else head_accuracy
    bound = problem.constraints.min_accuracy
    if bound is not None and accuracy is not None and accuracy < bound:
        what = "the full model" if exit_index is None else f"exit {exit_index}"
        violations.append(f"constraints.min_accuracy: the accuracy of {what} ({accuracy:g}) "
                          f"is below {bound}")
    return Evaluation(latency, energy, 1000 / bottleneck if bottleneck > 0 else math.inf,
                      memory, tuple(transfers), tuple(violations))


def _constraint_violations(problem: Problem, stages: list[Stage], latency: float, energy: float,
                           memory: dict[str, int]) -> list[str]:
    found: list[str] = []
    limits = problem.constraints
    for index, tier in enumerate(problem.tiers):
        used = memory.get(tier.name, 0)
        if tier.memory_bytes is not None and used > tier.memory_bytes:
            found.append(f"tiers[{index}].memory_bytes: {used} bytes placed on {tier.name}, "
                         f"more than {tier.memory_bytes}")
    if limits.max_stages is not None and len(stages) > limits.max_stages:
        found.append(f"constraints.max_stages: {len(stages)} stages, more than "
                     f"{limits.max_stages}")
    if not within(latency, limits.latency_ms):
        found.append(f"constraints.latency_ms: {latency:.6g} ms, more than {limits.latency_ms}")
    if not within(energy, limits.energy_mj):
        found.append(f"constraints.energy_mj: {energy:.6g} mJ, more than {limits.energy_mj}")
    return found


def stages_from_tiers(tier_names: list[str], first: int = 0) -> list[Stage]:
    """Merge a per-segment tier assignment into stages."""
    stages: list[Stage] = []
    for offset, name in enumerate(tier_names):
        segment = first + offset
        if stages and stages[-1].tier == name:
            stages[-1] = Stage(name, stages[-1].first, segment)
        else:
            stages.append(Stage(name, segment, segment))
    return stages
