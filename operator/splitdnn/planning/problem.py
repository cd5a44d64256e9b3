"""The planning problem: segments, tiers, directed links, constraints and early exits.

``Problem`` parses the JSON contract of ``splitdnn plan --problem`` with pydantic; unknown
fields and inconsistent references (a tier list of the wrong length, a link to an unknown
tier) are ``ProblemError``s naming the field, e.g. ``tiers[1].latency_ms: expected 12
values (one per segment), got 11``. ``ProblemArrays`` is the same problem as numpy arrays
indexed by tier number, which is what the algorithms work on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

from splitdnn.planning.errors import ProblemError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class Segment(_Strict):
    """One atomic unit of the model, in execution order."""

    name: str
    output_bytes: int = Field(ge=0)
    params_bytes: int = Field(ge=0)


class Tier(_Strict):
    """A kind of node: per-segment latency (and energy), memory, replicas."""

    name: str = Field(min_length=1)
    latency_ms: list[float]
    energy_mj: list[float] | None = None
    memory_bytes: int | None = Field(default=None, ge=0)
    replicas: int = Field(default=1, ge=1)


class Link(_Strict):
    """A directed network link between two tiers."""

    from_: str = Field(alias="from")
    to: str
    bandwidth_mbps: float = Field(gt=0)
    latency_ms: float = Field(ge=0)
    energy_mj_per_mb: float | None = Field(default=None, ge=0)


class Constraints(_Strict):
    """Optional bounds every plan must meet."""

    max_stages: int | None = Field(default=None, ge=1)
    latency_ms: float | None = Field(default=None, ge=0)
    energy_mj: float | None = Field(default=None, ge=0)
    min_accuracy: float | None = Field(default=None, ge=0, le=1)


class Exit(_Strict):
    """An early-exit head after a segment: its accuracy, per-tier latency and output size."""

    after_segment: int = Field(ge=0)
    accuracy: float = Field(ge=0, le=1)
    latency_ms: dict[str, float]
    output_bytes: int = Field(ge=0)


class Problem(_Strict):
    """The whole planning problem (the ``splitdnn plan`` input contract)."""

    segments: list[Segment] = Field(min_length=1)
    input_bytes: int = Field(ge=0)
    tiers: list[Tier] = Field(min_length=1)
    links: list[Link] = Field(default_factory=list)
    source: str
    sink: str | None = None
    constraints: Constraints = Field(default_factory=Constraints)
    exits: list[Exit] | None = None
    final_accuracy: float | None = Field(default=None, ge=0, le=1)

    @model_validator(mode="after")
    def _check_references(self) -> Problem:
        count = len(self.segments)
        names = [tier.name for tier in self.tiers]
        for index, tier in enumerate(self.tiers):
            if names.index(tier.name) != index:
                raise ValueError(f"tiers[{index}].name: duplicate tier name {tier.name!r}")
            for field in ("latency_ms", "energy_mj"):
                values = getattr(tier, field)
                if values is None:
                    continue
                if len(values) != count:
                    raise ValueError(f"tiers[{index}].{field}: expected {count} values (one per "
                                     f"segment), got {len(values)}")
                if any(not math.isfinite(v) or v < 0 for v in values):
                    raise ValueError(f"tiers[{index}].{field}: values must be finite and >= 0")
        known = set(names)
        for field in ("source", "sink"):
            value = getattr(self, field)
            if value is not None and value not in known:
                raise ValueError(f"{field}: unknown tier {value!r} (tiers: {', '.join(names)})")
        pairs: set[tuple[str, str]] = set()
        for index, link in enumerate(self.links):
            for field, value in (("from", link.from_), ("to", link.to)):
                if value not in known:
                    raise ValueError(f"links[{index}].{field}: unknown tier {value!r}")
            if link.from_ == link.to:
                raise ValueError(f"links[{index}]: a link must join two different tiers")
            if (link.from_, link.to) in pairs:
                raise ValueError(f"links[{index}]: duplicate link {link.from_} -> {link.to}")
            pairs.add((link.from_, link.to))
        for index, exit_ in enumerate(self.exits or []):
            if exit_.after_segment >= count:
                raise ValueError(f"exits[{index}].after_segment: {exit_.after_segment} is not a "
                                 f"segment index (0..{count - 1})")
            for tier_name in exit_.latency_ms:
                if tier_name not in known:
                    raise ValueError(f"exits[{index}].latency_ms: unknown tier {tier_name!r}")
        return self

    @property
    def sink_tier(self) -> str:
        return self.sink if self.sink is not None else self.source

    @property
    def has_energy(self) -> bool:
        """Energies are given when any tier or link states one."""
        return any(tier.energy_mj is not None for tier in self.tiers) or any(
            link.energy_mj_per_mb is not None for link in self.links)


def _location(error: ErrorDetails) -> str:
    parts: list[str] = []
    for item in error["loc"]:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + ("from" if item == "from_" else str(item)))
    return "".join(parts)


def parse_problem(data: Any) -> Problem:
    """Validate the problem JSON (already decoded) or raise ``ProblemError`` naming the field."""
    try:
        return Problem.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = _location(first)
        message = str(first["msg"]).removeprefix("Value error, ")
        if not where:
            raise ProblemError(message) from None
        raise ProblemError(f"{where}: {message}") from None


@dataclass(frozen=True)
class ProblemArrays:
    """The problem as arrays indexed by tier number (``T`` tiers, ``S`` segments).

    ``link_ms[a, b]`` is the fixed latency of link a→b (``inf`` when not connected, 0 on the
    diagonal), ``ms_per_byte[a, b]`` its serialisation time per byte and ``mj_per_byte`` its
    energy per byte.
    """

    tier_names: tuple[str, ...]
    compute_ms: np.ndarray      # (T, S)
    compute_mj: np.ndarray      # (T, S)
    output_bytes: np.ndarray    # (S,)
    params_bytes: np.ndarray    # (S,)
    input_bytes: int
    memory_bytes: np.ndarray    # (T,) inf when unbounded
    replicas: np.ndarray        # (T,)
    connected: np.ndarray       # (T, T) bool, True on the diagonal
    link_ms: np.ndarray         # (T, T)
    ms_per_byte: np.ndarray     # (T, T)
    mj_per_byte: np.ndarray     # (T, T)
    source: int
    sink: int

    @property
    def tiers(self) -> int:
        return len(self.tier_names)

    @property
    def segments(self) -> int:
        return int(self.output_bytes.shape[0])


def problem_arrays(problem: Problem) -> ProblemArrays:
    """Compile the problem into arrays (missing energies count as 0)."""
    names = tuple(tier.name for tier in problem.tiers)
    index = {name: i for i, name in enumerate(names)}
    count, size = len(names), len(problem.segments)
    connected = np.eye(count, dtype=bool)
    link_ms = np.zeros((count, count))
    ms_per_byte = np.zeros((count, count))
    mj_per_byte = np.zeros((count, count))
    for link in problem.links:
        a, b = index[link.from_], index[link.to]
        connected[a, b] = True
        link_ms[a, b] = link.latency_ms
        ms_per_byte[a, b] = 8.0 / (link.bandwidth_mbps * 1000.0)
        mj_per_byte[a, b] = (link.energy_mj_per_mb or 0.0) / 1e6
    link_ms[~connected] = np.inf
    return ProblemArrays(
        tier_names=names,
        compute_ms=np.array([tier.latency_ms for tier in problem.tiers], dtype=float),
        compute_mj=np.array([tier.energy_mj or [0.0] * size for tier in problem.tiers],
                            dtype=float),
        output_bytes=np.array([s.output_bytes for s in problem.segments], dtype=float),
        params_bytes=np.array([s.params_bytes for s in problem.segments], dtype=float),
        input_bytes=problem.input_bytes,
        memory_bytes=np.array([np.inf if t.memory_bytes is None else t.memory_bytes
                               for t in problem.tiers], dtype=float),
        replicas=np.array([tier.replicas for tier in problem.tiers], dtype=float),
        connected=connected,
        link_ms=link_ms,
        ms_per_byte=ms_per_byte,
        mj_per_byte=mj_per_byte,
        source=index[problem.source],
        sink=index[problem.sink_tier],
    )
