"""The exact engine behind every partitioning algorithm: a label-setting DP over segments.

A *family* of plans is a small graph of nodes, each pinned to a tier: staying on a node
extends the current stage by one segment, following an edge starts a new stage on another
tier. ``chain`` is the complete graph over the tiers; Neurosurgeon's one cut and
RoaD-RuNNer's local → remote → local are smaller graphs over the same engine.

At each (segment, node) the engine keeps the *labels* — vectors of latency, energy, stages,
bottleneck so far, the load put on each tier (compute ms, all its stages together) and on
each directed link (serialisation ms, all its transfers together), and memory used on each
memory-bounded tier — of partial plans that no other partial plan dominates in the columns
that matter for the question asked. Every column only grows along a plan, so a dominated
label can never lead to a better plan and dropping it is exact; labels over a bound are
dropped too, and so are those that would exceed the latency or energy bound even if the
rest of the model cost the least any plan could add. With one column this is the classic
shortest-path DP over (segment boundary × tier); with two it keeps an exact Pareto front.

The loads matter for the bottleneck because a plan may come back to a tier (or send over a
link again): the pipeline's bottleneck is the most loaded tier (per replica) or link, not
the slowest stage. When the bottleneck is compared (or bounded), the loads join the
dominance, each *clipped to 0* once it can no longer decide anything: when even the most
the rest of the model could add to it (every later segment on that tier, every later
tensor over that link) stays within the label's bottleneck so far (or the bound). Only
loads that could still become the bottleneck tell labels apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from splitdnn.planning.plan import TOLERANCE
from splitdnn.planning.problem import Problem, ProblemArrays

# CLOSED: the bottleneck so far (most loaded tier per replica or link); OPEN: compute of the
# open stage; STAGE_MAX: the slowest single stage or transfer so far, the bottleneck of the
# relaxation that ignores revisits (a lower bound on CLOSED).
LAT, EN, STAGES, CLOSED, OPEN, STAGE_MAX = 0, 1, 2, 3, 4, 5
FIXED_COLUMNS = 6


@dataclass(frozen=True)
class Family:
    """Which tier sequences a plan may follow: nodes (each on a tier), edges, start nodes."""

    name: str
    node_tiers: tuple[int, ...]
    edges: tuple[tuple[int, int], ...]
    starts: tuple[int, ...]


@dataclass(frozen=True)
class LabelSpec:
    """Columns compared for dominance, and upper bounds (``inf`` when unbounded).

    The memory columns always join the dominance; the (clipped) loads join it when
    ``CLOSED`` is compared or ``max_bottleneck`` is finite. ``min_bottleneck`` is a lower
    bound on the best bottleneck: below it every bottleneck counts the same. With
    ``exact_loads`` off, only the current tier's load is compared: a quick heuristic whose
    plans (and their bottlenecks) are real but not always the best.
    """

    dominance: tuple[int, ...]
    max_latency: float = np.inf
    max_energy: float = np.inf
    max_stages: float = np.inf
    max_bottleneck: float = np.inf
    min_bottleneck: float = 0.0
    exact_loads: bool = True
    memory_tiers: tuple[int, ...] = ()
    memory_caps: tuple[float, ...] = ()


@dataclass
class Finals:
    """Complete plans left at the end: their label rows and how to rebuild their tiers."""

    labels: np.ndarray                     # (n, columns)
    end_nodes: np.ndarray                  # (n,)
    end_rows: np.ndarray                   # (n,)
    parents: list[list[tuple[np.ndarray, np.ndarray]]] = field(repr=False)
    node_tiers: tuple[int, ...] = ()

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def tiers_of(self, row: int) -> list[int]:
        """Tier index of every segment of final plan ``row``."""
        node, index = int(self.end_nodes[row]), int(self.end_rows[row])
        tiers = []
        for step in range(len(self.parents) - 1, -1, -1):
            tiers.append(self.node_tiers[node])
            parent_node, parent_row = self.parents[step][node]
            node, index = int(parent_node[index]), int(parent_row[index])
        return tiers[::-1]


def chain_family(arrays: ProblemArrays) -> Family:
    """Any sequence of tiers, consecutive stages on different (connected) tiers."""
    count = arrays.tiers
    edges = tuple((a, b) for a in range(count) for b in range(count) if a != b)
    return Family("chain", tuple(range(count)), edges, tuple(range(count)))


def neurosurgeon_family(arrays: ProblemArrays) -> Family:
    """All on the source tier, all on one other tier, or source then one other tier."""
    others = [t for t in range(arrays.tiers) if t != arrays.source]
    nodes = (arrays.source, *others)
    edges = tuple((0, 1 + i) for i in range(len(others)))
    return Family("neurosurgeon", nodes, edges, tuple(range(len(nodes))))


def roadrunner_family(arrays: ProblemArrays) -> Family:
    """Up to two cuts: local → remote → local, any part possibly empty (RoaD-RuNNer)."""
    others = [t for t in range(arrays.tiers) if t != arrays.source]
    nodes = (arrays.source, *others, arrays.source)
    back = len(nodes) - 1
    edges = tuple((0, 1 + i) for i in range(len(others))) + tuple(
        (1 + i, back) for i in range(len(others)))
    return Family("roadrunner", nodes, edges, tuple(range(len(nodes) - 1)))


def exit_arrays(problem: Problem, arrays: ProblemArrays, exit_index: int | None) -> ProblemArrays:
    """The problem cut after an exit: the head's latency joins the last segment (``inf`` on
    tiers it has no latency for) and its output is what goes to the sink."""
    if exit_index is None:
        return arrays
    head = (problem.exits or [])[exit_index]
    last = head.after_segment
    compute_ms = arrays.compute_ms[:, : last + 1].copy()
    for tier, name in enumerate(arrays.tier_names):
        compute_ms[tier, last] += head.latency_ms.get(name, np.inf)
    output_bytes = arrays.output_bytes[: last + 1].copy()
    output_bytes[last] = head.output_bytes
    return replace(arrays, compute_ms=compute_ms, compute_mj=arrays.compute_mj[:, : last + 1],
                   output_bytes=output_bytes, params_bytes=arrays.params_bytes[: last + 1])


def pareto_rows(values: np.ndarray) -> np.ndarray:
    """Indices of the rows no other row dominates (all ≤, one <); one of equal rows kept."""
    count, dims = values.shape
    if count <= 1:
        return np.arange(count)
    if dims == 1:
        return np.array([int(np.argmin(values[:, 0]))])
    if dims == 2:
        order = np.lexsort((values[:, 1], values[:, 0]))
        second = values[order, 1]
        best_before = np.concatenate(([np.inf], np.minimum.accumulate(second)[:-1]))
        return np.sort(order[second < best_before])
    if dims == 3:
        grouped = _pareto_3d_by_group(values)
        if grouped is not None:
            return grouped
    # In lexicographic order a row can only be dominated by an earlier one, so the first
    # remaining row is on the front; it removes every row it dominates (and its duplicates).
    order = np.lexsort(values.T[::-1])
    ranked = values[order]
    remaining = np.arange(count)
    kept = []
    while remaining.size:
        first = remaining[0]
        kept.append(first)
        remaining = remaining[~np.all(ranked[remaining] >= ranked[first], axis=1)]
    return np.sort(order[kept])


def _pareto_3d_by_group(values: np.ndarray, max_groups: int = 48) -> np.ndarray | None:
    """Three columns, one with few distinct values (stages, say): a 2-D front per value, each
    thinned by the fronts of the smaller values with a staircase lookup. None when every
    column has too many distinct values for this to pay."""
    distinct = [np.unique(values[:, c]) for c in range(3)]
    column = min(range(3), key=lambda c: distinct[c].size)
    if distinct[column].size > max_groups:
        return None
    x, y = [c for c in range(3) if c != column]
    kept: list[np.ndarray] = []
    below_x = np.zeros(0)
    below_y = np.zeros(0)
    for value in distinct[column]:
        rows = np.flatnonzero(values[:, column] == value)
        rows = rows[pareto_rows(values[rows][:, [x, y]])]
        if below_x.size:
            before = np.searchsorted(below_x, values[rows, x], side="right") - 1
            lowest = np.minimum.accumulate(below_y)
            beaten = (before >= 0) & (lowest[np.maximum(before, 0)] <= values[rows, y])
            rows = rows[~beaten]
        kept.append(rows)
        order = np.argsort(np.concatenate([below_x, values[rows, x]]), kind="stable")
        below_x = np.concatenate([below_x, values[rows, x]])[order]
        below_y = np.concatenate([below_y, values[rows, y]])[order]
    return np.sort(np.concatenate(kept))


def _least_to_go(arrays: ProblemArrays, compute: np.ndarray, fixed: np.ndarray,
                 per_byte: np.ndarray) -> np.ndarray:
    """``[i, t]``: the least any chain plan adds after segment ``i`` ran on tier ``t`` (the
    later segments and every transfer, to the sink included) — a lower bound for every
    family, so that a label that cannot meet a bound even so is dropped early."""
    count = arrays.segments
    to_go = np.zeros((count, arrays.tiers))
    to_go[-1] = fixed[:, arrays.sink] + arrays.output_bytes[-1] * per_byte[:, arrays.sink]
    for segment in range(count - 2, -1, -1):
        move = fixed + arrays.output_bytes[segment] * per_byte  # (from, to); 0 on the diagonal
        after = compute[:, segment + 1] + to_go[segment + 1]
        to_go[segment] = np.min(move + after[None, :], axis=1)
    return to_go


def _load_to_go(arrays: ProblemArrays, pairs: list[tuple[int, int]]) -> np.ndarray:
    """``[i, k]``: the most any plan can still add to load ``k`` (tiers per replica, then
    links) after segment ``i``: every later segment on that tier, every later tensor (the
    result included) over that link."""
    later = np.cumsum(arrays.compute_ms[:, ::-1], axis=1)[:, ::-1]
    tiers = np.concatenate([later[:, 1:], np.zeros((arrays.tiers, 1))], axis=1)
    tensors = np.cumsum(arrays.output_bytes[::-1])[::-1]
    links = [tensors * arrays.ms_per_byte[a, b] for a, b in pairs]
    return np.column_stack([*(tiers / arrays.replicas[:, None]), *links])


def plan_bottleneck_ms(arrays: ProblemArrays, tiers: list[int]) -> float:
    """The bottleneck of a complete plan given as its tier per segment: the most loaded tier
    (compute of all its segments per replica) or directed link (all the tensors it carries,
    without the link latency)."""
    on = np.asarray(tiers, dtype=int)
    compute = arrays.compute_ms[on, np.arange(on.size)]
    tier_load = np.bincount(on, weights=compute, minlength=arrays.tiers) / arrays.replicas
    path = np.concatenate([[arrays.source], on, [arrays.sink]])
    src, dst = path[:-1], path[1:]
    sizes = np.concatenate([[arrays.input_bytes], arrays.output_bytes])
    moved = src != dst
    serialise = sizes[moved] * arrays.ms_per_byte[src[moved], dst[moved]]
    link_load = np.bincount(src[moved] * arrays.tiers + dst[moved], weights=serialise,
                            minlength=arrays.tiers ** 2)
    return float(max(tier_load.max(initial=0.0), link_load.max(initial=0.0)))


def _slack(limit: float) -> float:
    return limit + TOLERANCE * max(1.0, abs(limit)) if np.isfinite(limit) else np.inf


class _Engine:
    """One run of the DP for one family, spec and problem."""

    def __init__(self, arrays: ProblemArrays, family: Family, spec: LabelSpec) -> None:
        self.a = arrays
        self.family = family
        self.spec = spec
        count = arrays.tiers
        pairs = [(a, b) for a in range(count) for b in range(count)
                 if a != b and arrays.connected[a, b]]
        self.loads = slice(FIXED_COLUMNS, FIXED_COLUMNS + count + len(pairs))
        self.link_column = np.full((count, count), -1, dtype=int)
        for index, (a, b) in enumerate(pairs):
            self.link_column[a, b] = FIXED_COLUMNS + count + index
        self.load_scale = np.concatenate([arrays.replicas, np.ones(len(pairs))])
        self.load_to_go = _load_to_go(arrays, pairs)
        self.compare_loads = CLOSED in spec.dominance or bool(np.isfinite(spec.max_bottleneck))
        # Latency and energy questions skip the loads: the candidates' throughput comes from
        # plan_bottleneck_ms, and the narrower labels keep those runs as fast as before.
        self.track_loads = self.compare_loads or STAGE_MAX in spec.dominance
        if not self.track_loads:
            self.loads = slice(FIXED_COLUMNS, FIXED_COLUMNS)
        first_memory = self.loads.stop
        self.columns = first_memory + len(spec.memory_tiers)
        self.memory_column = {tier: first_memory + i for i, tier in enumerate(spec.memory_tiers)}
        self.dominance = [*spec.dominance, *range(first_memory, self.columns)]
        self.closed_key = spec.dominance.index(CLOSED) if CLOSED in spec.dominance else None
        self.node_tier_array = np.array(family.node_tiers, dtype=int)
        self.predecessors: list[list[int]] = [[] for _ in family.node_tiers]
        for src, dst in family.edges:
            if arrays.connected[family.node_tiers[src], family.node_tiers[dst]]:
                self.predecessors[dst].append(src)
        self.caps = np.full(self.columns, np.inf)
        self.caps[LAT] = _slack(spec.max_latency)
        self.caps[EN] = _slack(spec.max_energy)
        self.caps[STAGES] = spec.max_stages + 0.5
        self.caps[CLOSED] = _slack(spec.max_bottleneck)
        for tier, cap in zip(spec.memory_tiers, spec.memory_caps, strict=True):
            self.caps[self.memory_column[tier]] = cap
        self.latency_to_go = _least_to_go(arrays, arrays.compute_ms, arrays.link_ms,
                                          arrays.ms_per_byte)
        self.energy_to_go = _least_to_go(arrays, arrays.compute_mj,
                                         np.where(arrays.connected, 0.0, np.inf),
                                         arrays.mj_per_byte)

    def _keep(self, labels: np.ndarray, tier: int, segment: int) -> np.ndarray:
        """Rows within every bound (counting the least still to come) and not dominated."""
        ok = np.all(labels <= self.caps, axis=1) & np.isfinite(labels[:, LAT])
        ok &= labels[:, LAT] + self.latency_to_go[segment, tier] <= self.caps[LAT]
        ok &= labels[:, EN] + self.energy_to_go[segment, tier] <= self.caps[EN]
        rows = np.flatnonzero(ok)
        if rows.size > 1:
            keys = labels[rows][:, self.dominance]
            if self.compare_loads:
                loads = self._deciding_loads(labels[rows], segment)
                if not self.spec.exact_loads:
                    loads = loads[:, [tier]]
                keys = np.hstack([keys, loads])
                if self.closed_key is not None:
                    keys[:, self.closed_key] = np.maximum(keys[:, self.closed_key],
                                                          self.spec.min_bottleneck)
                keys = keys[:, np.ptp(keys, axis=0) > 0]  # equal columns tell no label apart
            rows = rows[pareto_rows(keys)] if keys.shape[1] else rows[:1]
        return rows

    def _deciding_loads(self, labels: np.ndarray, segment: int) -> np.ndarray:
        """Loads per replica, 0 where even the most still to come stays within the label's
        bottleneck so far (when compared) or the bound: such a load can decide nothing."""
        loads = labels[:, self.loads] / self.load_scale
        if CLOSED in self.spec.dominance:
            within = np.maximum(labels[:, CLOSED], self.spec.min_bottleneck)
        else:
            within = np.full(labels.shape[0], self.caps[CLOSED])
        loads[loads + self.load_to_go[segment] <= within[:, None]] = 0.0
        return loads

    def _add_segment(self, labels: np.ndarray, tier: int, segment: int) -> None:
        labels[:, LAT] += self.a.compute_ms[tier, segment]
        labels[:, EN] += self.a.compute_mj[tier, segment]
        labels[:, OPEN] += self.a.compute_ms[tier, segment]
        if self.track_loads:
            load = FIXED_COLUMNS + tier
            labels[:, load] += self.a.compute_ms[tier, segment]
            labels[:, CLOSED] = np.maximum(labels[:, CLOSED],
                                           labels[:, load] / self.a.replicas[tier])
            labels[:, STAGE_MAX] = np.maximum(labels[:, STAGE_MAX],
                                              labels[:, OPEN] / self.a.replicas[tier])
        column = self.memory_column.get(tier)
        if column is not None:
            labels[:, column] += self.a.params_bytes[segment]

    def _send(self, labels: np.ndarray, src: int | np.ndarray, dst: int, size: float) -> None:
        """Close the stage on ``src`` (one tier, or one per row) and send ``size`` bytes to a
        different, connected ``dst``."""
        serialise = size * self.a.ms_per_byte[src, dst]
        labels[:, LAT] += self.a.link_ms[src, dst] + serialise
        labels[:, EN] += size * self.a.mj_per_byte[src, dst]
        labels[:, OPEN] = 0.0
        if self.track_loads:
            each, load = np.arange(labels.shape[0]), self.link_column[src, dst]
            labels[each, load] += serialise
            np.maximum(labels[:, CLOSED], labels[each, load], out=labels[:, CLOSED])
            np.maximum(labels[:, STAGE_MAX], serialise, out=labels[:, STAGE_MAX])

    def run(self) -> Finals:
        nodes = self.family.node_tiers
        empty = np.zeros((0, self.columns))
        current: list[np.ndarray] = []
        parents: list[list[tuple[np.ndarray, np.ndarray]]] = []
        step_parents: list[tuple[np.ndarray, np.ndarray]] = []
        for node, tier in enumerate(nodes):
            if node not in self.family.starts or not self.a.connected[self.a.source, tier]:
                current.append(empty)
                step_parents.append((np.zeros(0, int), np.zeros(0, int)))
                continue
            label = np.zeros((1, self.columns))
            label[:, STAGES] = 1
            if tier != self.a.source:
                self._send(label, self.a.source, tier, self.a.input_bytes)
            self._add_segment(label, tier, 0)
            rows = self._keep(label, tier, 0)
            current.append(label[rows])
            step_parents.append((np.full(rows.size, -1), np.full(rows.size, -1)))
        parents.append(step_parents)
        for segment in range(1, self.a.segments):
            current, step_parents = self._step(current, segment)
            parents.append(step_parents)
        return self._finish(current, parents)

    def _step(self, current: list[np.ndarray], segment: int
              ) -> tuple[list[np.ndarray], list[tuple[np.ndarray, np.ndarray]]]:
        size = self.a.output_bytes[segment - 1]
        following: list[np.ndarray] = []
        step_parents: list[tuple[np.ndarray, np.ndarray]] = []
        for node, tier in enumerate(self.family.node_tiers):
            sources = [src for src in (node, *self.predecessors[node]) if current[src].shape[0]]
            if not sources:
                following.append(np.zeros((0, self.columns)))
                step_parents.append((np.zeros(0, int), np.zeros(0, int)))
                continue
            labels = np.concatenate([current[src] for src in sources])
            counts = [current[src].shape[0] for src in sources]
            from_node = np.repeat(sources, counts)
            from_row = np.concatenate([np.arange(count) for count in counts])
            if sources != [node]:
                self._send_rows(labels, from_node != node, self.node_tier_array[from_node],
                                tier, size)
            self._add_segment(labels, tier, segment)
            rows = self._keep(labels, tier, segment)
            following.append(labels[rows])
            step_parents.append((from_node[rows], from_row[rows]))
        return following, step_parents

    def _send_rows(self, labels: np.ndarray, moved: np.ndarray, src_tiers: np.ndarray,
                   dst: int, size: float) -> None:
        """``_send`` for the ``moved`` rows, each from its own tier; they start a new stage."""
        rows = np.flatnonzero(moved)
        part = labels[rows]  # one gather and one scatter: cheaper than indexing per column
        self._send(part, src_tiers[rows], dst, size)
        part[:, STAGES] += 1
        labels[rows] = part

    def _finish(self, current: list[np.ndarray], parents: list[list[tuple[np.ndarray,
                                                                             np.ndarray]]]
                ) -> Finals:
        size = self.a.output_bytes[-1]
        blocks, end_nodes, end_rows = [], [], []
        for node, tier in enumerate(self.family.node_tiers):
            if current[node].shape[0] == 0 or not self.a.connected[tier, self.a.sink]:
                continue
            labels = current[node].copy()
            if tier != self.a.sink:
                self._send(labels, tier, self.a.sink, size)
            ok = np.flatnonzero(np.all(labels <= self.caps, axis=1))
            blocks.append(labels[ok])
            end_nodes.append(np.full(ok.size, node))
            end_rows.append(ok)
        if not blocks:
            return Finals(np.zeros((0, self.columns)), np.zeros(0, int), np.zeros(0, int),
                          parents, self.family.node_tiers)
        return Finals(np.concatenate(blocks), np.concatenate(end_nodes),
                      np.concatenate(end_rows), parents, self.family.node_tiers)


def run_labels(arrays: ProblemArrays, family: Family, spec: LabelSpec) -> Finals:
    """All complete plans of ``family`` within ``spec``'s bounds that survive dominance."""
    return _Engine(arrays, family, spec).run()
