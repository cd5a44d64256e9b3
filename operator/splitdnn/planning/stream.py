"""Task-stream simulator of paper 003: early exit and partition point per task, FCFS edge.

Time is slotted. In each slot at most one task arrives (Bernoulli, rate ``p``) on one of
``D`` end devices, with a data size ``D_n`` (images) drawn from a normal distribution and
rounded into [1, 10] and a deadline ``τ_n = k·D_n`` slots. A decision ``(m, p)`` runs the
first ``p`` layers of branch ``m`` on the device (after the device's previous task), sends
the layer-``p`` output at rate ``w`` and queues the rest on the edge server (first come,
first served); ``m = 0`` gives up on the task. Layer times and output sizes come from
linear models ``y = k·D + b`` per layer and per place. A task finished within its deadline
earns ``G_n = ⌈A_m⌉ + α / (1 + e^{-β (A_m − A_min)})``; a decision that would miss the
deadline is not run and earns what giving up earns. Durations are rounded up to whole slots.

Two departures from the paper, both so that the model is well defined: a task run fully on
its device (``p = l_m``) does not wait for the edge queue, and the edge queue is the finish
time of the last task that used the edge (not of the last task in the stream).

Policies: ``dp`` (the exact offline optimum, a label DP over tasks), ``greedy`` (the best
decision for the task in front of it), ``random`` (any decision, feasible or not), and
``ddqn`` in ``splitdnn.planning.ddqn``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Linear:
    """``y = slope·x + intercept``."""

    slope: float
    intercept: float

    def __call__(self, x: float) -> float:
        return self.slope * x + self.intercept


def fit_linear(xs: Sequence[float], ys: Sequence[float]) -> Linear:
    """Least-squares line through profile points (the paper's regression models)."""
    if len(xs) < 2 or len(set(xs)) < 2:
        raise ValueError("fit_linear: need measurements at two or more data sizes")
    slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return Linear(float(slope), float(intercept))


@dataclass(frozen=True)
class Layer:
    """One layer of a branch: device and edge time (slots) and output size (kbit)."""

    name: str
    device: Linear
    edge: Linear
    output_kbit: Linear


@dataclass(frozen=True)
class Branch:
    """One exit of the branchy model: its layers in order and its accuracy."""

    accuracy: float
    layers: tuple[Layer, ...]


@dataclass(frozen=True, eq=False)  # hashed by identity: durations are cached per model
class StreamModel:
    """The branchy model, the link rate ``w`` (kbit per slot) and the gain's α and β."""

    branches: tuple[Branch, ...]
    input_kbit: Linear
    rate_kbit_per_slot: float
    alpha: float = 0.1
    beta: float = 16.0

    @property
    def min_accuracy(self) -> float:
        return min(branch.accuracy for branch in self.branches)

    def gain(self, accuracy: float) -> float:
        """``G = ⌈A⌉ + α / (1 + e^{-β (A − A_min)})`` (paper 003, eq. 1)."""
        return math.ceil(accuracy) + self.alpha / (
            1 + math.exp(-self.beta * (accuracy - self.min_accuracy)))

    def actions(self) -> list[tuple[int, int]]:
        """``(0, 0)`` (give up) then every ``(m, p)``, ``1 ≤ m ≤ u``, ``0 ≤ p ≤ l_m``."""
        return [(0, 0)] + [(m, p) for m, branch in enumerate(self.branches, start=1)
                           for p in range(len(branch.layers) + 1)]

    def accuracy(self, action: tuple[int, int]) -> float:
        return 0.0 if action[0] == 0 else self.branches[action[0] - 1].accuracy

    def durations(self, action: tuple[int, int], size: int) -> tuple[int, int, int]:
        """(device, transfer, edge) slots of ``action`` on a task of ``size`` images."""
        return _durations(self, action, size)


@functools.lru_cache(maxsize=4096)
def _durations(model: StreamModel, action: tuple[int, int], size: int) -> tuple[int, int, int]:
    m, cut = action
    layers = model.branches[m - 1].layers
    device = sum(layer.device(size) for layer in layers[:cut])
    edge = sum(layer.edge(size) for layer in layers[cut:])
    if cut == len(layers):
        return _slots(device), 0, 0
    sent = model.input_kbit(size) if cut == 0 else layers[cut - 1].output_kbit(size)
    return _slots(device), _slots(sent / model.rate_kbit_per_slot), _slots(edge)


EDGE_SPEEDUP = 4.0


def _slots(value: float) -> int:
    return max(0, math.ceil(value - 1e-9))


def _layer(name: str, device_ms: float, output_kbit: float) -> Layer:
    """Default profile layer: the edge EDGE_SPEEDUP× faster than the device, small overheads."""
    return Layer(name, Linear(device_ms, 0.05), Linear(device_ms / EDGE_SPEEDUP, 0.02),
                 Linear(output_kbit, 0.1))


def branchy_alexnet() -> StreamModel:
    """The default model: a branchy AlexNet with 4 exits (paper 003, Fig. 2) and the
    accuracies of §IV; per-image layer costs are a synthetic profile in slots and kbit."""
    conv1, pool1 = _layer("conv1", 0.60, 12.0), _layer("pool1", 0.10, 3.0)
    conv2, conv3 = _layer("conv2", 0.90, 4.0), _layer("conv3", 0.70, 2.5)
    conv4, conv5 = _layer("conv4", 0.70, 2.5), _layer("conv5", 0.60, 1.5)
    fc1, fc2 = _layer("fc1", 0.40, 0.4), _layer("fc2", 0.05, 0.01)
    return StreamModel(
        branches=(
            Branch(0.527, (conv1, pool1, _layer("b1_conv", 0.50, 1.0),
                           _layer("b1_fc", 0.04, 0.01))),
            Branch(0.623, (conv1, pool1, conv2, _layer("b2_fc", 0.05, 0.01))),
            Branch(0.697, (conv1, pool1, conv2, conv3, _layer("b3_fc", 0.05, 0.01))),
            Branch(0.743, (conv1, pool1, conv2, conv3, conv4, conv5, fc1, fc2)),
        ),
        input_kbit=Linear(6.0, 0.1),
        rate_kbit_per_slot=10.0,
    )


@dataclass(frozen=True)
class Task:
    """``J_n = (D_n, τ_n, t_n^a)`` plus the device it arrived on."""

    arrival: int
    device: int
    size: int
    deadline: int  # τ_n, in slots


def generate_tasks(count: int, arrival_rate: float, k: int, devices: int,
                   rng: np.random.Generator, mean_size: float = 5.5, std_size: float = 2.0
                   ) -> list[Task]:
    """``count`` tasks from a Bernoulli process with rate ``arrival_rate`` per slot."""
    if not 0 < arrival_rate <= 1:
        raise ValueError(f"arrival rate: expected 0 < p <= 1, got {arrival_rate}")
    tasks: list[Task] = []
    slot = 0
    while len(tasks) < count:
        slot += int(rng.geometric(arrival_rate))  # slots until the next Bernoulli success
        size = int(np.clip(round(rng.normal(mean_size, std_size)), 1, 10))
        tasks.append(Task(slot, int(rng.integers(devices)), size, k * size))
    return tasks


@dataclass(frozen=True)
class Queues:
    """When each device can start its next task (``t_h^s``) and when the edge is free."""

    devices: tuple[int, ...]
    edge: int

    def settle(self, now: int) -> Queues:
        """Times before ``now`` no longer matter: the same state for every future."""
        return Queues(tuple(max(t, now) for t in self.devices), max(self.edge, now))


@dataclass(frozen=True)
class Outcome:
    """What a decision does: the queues after it, whether it met the deadline, its finish."""

    queues: Queues
    done: bool
    finish: int


def apply(model: StreamModel, queues: Queues, task: Task, action: tuple[int, int]) -> Outcome:
    """Run ``action`` on ``task``; a decision that would miss the deadline is not run."""
    if action[0] == 0:
        return Outcome(queues, False, task.arrival)
    device_slots, transfer_slots, edge_slots = model.durations(action, task.size)
    start = max(task.arrival, queues.devices[task.device])
    sent = start + device_slots
    edge = queues.edge
    if action[1] == len(model.branches[action[0] - 1].layers):
        finish = sent
    else:
        finish = max(sent + transfer_slots, queues.edge) + edge_slots
        edge = finish
    if finish > task.arrival + task.deadline:
        return Outcome(queues, False, finish)
    devices = list(queues.devices)
    devices[task.device] = sent
    return Outcome(Queues(tuple(devices), edge), True, finish)


def observe(queues: Queues, task: Task) -> tuple[float, float, float]:
    """The paper's state: (D_n, τ_n − device wait, edge overlap)."""
    device_wait = max(queues.devices[task.device] - task.arrival, 0)
    overlap = max(queues.edge - task.arrival, 0)
    return float(task.size), float(task.deadline - device_wait), float(overlap)


@dataclass
class StreamResult:
    """Sum of gains, tasks completed in time, mean accuracy of the completed tasks."""

    sum_reward: float
    completed: int
    mean_accuracy: float
    actions: list[tuple[int, int]] = field(default_factory=list)

    def to_json(self) -> dict[str, float | int]:
        return {"sum_reward": self.sum_reward, "completed": self.completed,
                "mean_accuracy": self.mean_accuracy}


Policy = Callable[[StreamModel, Queues, Task], tuple[int, int]]


def replay(model: StreamModel, tasks: Sequence[Task], devices: int,
           decide: Policy) -> StreamResult:
    """Run a policy over the stream, one decision per task in arrival order."""
    queues = Queues((0,) * devices, 0)
    total, completed, accuracy_sum, taken = 0.0, 0, 0.0, []
    for task in tasks:
        action = decide(model, queues, task)
        outcome = apply(model, queues, task, action)
        accuracy = model.accuracy(action) if outcome.done else 0.0
        total += model.gain(accuracy)
        completed += outcome.done
        accuracy_sum += accuracy
        queues = outcome.queues
        taken.append(action if outcome.done else (0, 0))
    return StreamResult(total, completed, accuracy_sum / completed if completed else 0.0, taken)


def greedy_action(model: StreamModel, queues: Queues, task: Task) -> tuple[int, int]:
    """The highest gain for this task alone; ties go to the earliest finish."""
    best, best_key = (0, 0), (model.gain(0.0), -math.inf)
    for action in model.actions()[1:]:
        outcome = apply(model, queues, task, action)
        if outcome.done:
            key = (model.gain(model.accuracy(action)), -outcome.finish)
            if key > best_key:
                best, best_key = action, key
    return best


def random_policy(rng: np.random.Generator) -> Policy:
    """Any decision, uniformly, without looking at the task or the queues."""
    def decide(model: StreamModel, queues: Queues, task: Task) -> tuple[int, int]:
        actions = model.actions()
        return actions[int(rng.integers(len(actions)))]
    return decide


def feasible_actions(model: StreamModel, queues: Queues, task: Task) -> list[bool]:
    """For each action, whether it would meet the task's deadline (give up always can)."""
    return [action[0] == 0 or apply(model, queues, task, action).done
            for action in model.actions()]


def dp_optimum(model: StreamModel, tasks: Sequence[Task], devices: int) -> StreamResult:
    """The offline optimum over every decision sequence (paper 003, Algorithm 1, made exact
    for the queueing model): a DP over tasks whose labels are the queue states reached,
    each with its best gain; a state whose queues are all no later and whose gain is no
    lower than another's makes that one useless, so only the non-dominated states are kept."""
    start = Queues((0,) * devices, 0)
    layer: dict[Queues, tuple[float, int, float, tuple[tuple[int, int], ...]]] = {
        start: (0.0, 0, 0.0, ())}
    actions = model.actions()
    for index, task in enumerate(tasks):
        following: dict[Queues, tuple[float, int, float, tuple[tuple[int, int], ...]]] = {}
        horizon = tasks[index + 1].arrival if index + 1 < len(tasks) else task.arrival
        for queues, (gain, done, accuracy_sum, taken) in layer.items():
            seen: set[Queues] = set()
            for action in actions:
                outcome = apply(model, queues, task, action)
                if action[0] and not outcome.done:
                    continue
                settled = outcome.queues.settle(horizon)
                accuracy = model.accuracy(action)
                value = (gain + model.gain(accuracy), done + outcome.done,
                         accuracy_sum + accuracy, (*taken, action))
                if settled in seen and following[settled][0] >= value[0]:
                    continue
                seen.add(settled)
                if settled not in following or following[settled][0] < value[0]:
                    following[settled] = value
        layer = _undominated(following)
    gain, done, accuracy_sum, taken = max(layer.values(), key=lambda item: item[0])
    return StreamResult(gain, done, accuracy_sum / done if done else 0.0, list(taken))


def _undominated(states: dict[Queues, tuple[float, int, float, tuple[tuple[int, int], ...]]]
                 ) -> dict[Queues, tuple[float, int, float, tuple[tuple[int, int], ...]]]:
    """Drop states another beats on gain with queues no later (exact: the future is monotone)."""
    ranked = sorted(states.items(), key=lambda item: -item[1][0])
    times = np.array([(*queues.devices, queues.edge) for queues, _ in ranked])
    kept: list[int] = []
    for index in range(len(ranked)):
        if not kept or not np.any(np.all(times[kept] <= times[index], axis=1)):
            kept.append(index)
    return dict(ranked[index] for index in kept)


def simulate(policy: str, tasks: Sequence[Task], devices: int, model: StreamModel,
             seed: int = 0, chooser: Policy | None = None) -> StreamResult:
    """Run ``dp``, ``greedy`` or ``random`` (or a given ``chooser``, e.g. a DDQN) on tasks."""
    if chooser is not None:
        return replay(model, tasks, devices, chooser)
    if policy == "dp":
        return dp_optimum(model, tasks, devices)
    if policy == "greedy":
        return replay(model, tasks, devices, greedy_action)
    if policy == "random":
        return replay(model, tasks, devices, random_policy(np.random.default_rng(seed + 1)))
    raise ValueError(f"policy: expected dp, greedy, random or ddqn, got {policy!r}")
