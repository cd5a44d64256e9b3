"""Throughput, average accuracy and reward of a path (paper 000 §II), and paper 001's cost.

The local service processes batches of ``b_l`` samples and sends ``s`` of each batch down the
path; the host reserves ``s`` slots of its own batch of ``b_h`` for them (paper 000 Fig. 3).
With ``t(i, b)`` the time of block ``i`` on a batch of ``b``:

- local cycle ``T_L = Σ_i t_l(i, b_l − s) + Σ_{i ≤ lout or i ≥ lin} t_l(i, s)``
  (+ the link of a skip path, which runs locally);
- host cycle ``T_H = Σ_j t_h(j, b_h − s) + Σ_{hin ≤ j ≤ hout} t_h(j, s) + t_links(s)``;
- local stream ``Th^l = (b_l − s) / T_L``; host stream ``Th^h = s / max(T_L, T_H)`` (the
  offloaded samples need both sides, so the slower one paces them);
- ``Th_0 = b_l / Σ_i t_l(i, b_l)``, ``Th_p = Th^l + Th^h``,
  ``A_av = (Th^l A_0 + Th^h A_p) / Th_p``,
  ``F(p) = sigmoid(k (A_av − A_min)) · (Th_p − Th_0)``.

Transfers between the services are taken as free, as in the paper's Experiment 4 (two GPUs in
one machine); paper 001's cost adds a communication term for when they are not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from splitdnn.coordination.errors import CoordinationError
from splitdnn.coordination.paths import Path

BatchTimes = Mapping[int, float]  # batch size -> seconds for one batch


@dataclass(frozen=True)
class StreamSetting:
    """Batch sizes ``b_l``, ``b_h`` and offloaded samples ``s`` per local batch."""

    local_batch: int = 32
    host_batch: int = 32
    offloaded: int = 8

    def __post_init__(self) -> None:
        if self.local_batch < 1 or self.host_batch < 1:
            raise CoordinationError("batch sizes: b_l and b_h must be >= 1")
        if not 1 <= self.offloaded <= min(self.local_batch, self.host_batch):
            raise CoordinationError(f"s: offloaded samples must be in 1..min(b_l, b_h)="
                                    f"{min(self.local_batch, self.host_batch)}, got "
                                    f"{self.offloaded}")

    def batch_sizes(self) -> tuple[int, ...]:
        """Batch sizes whose block times the model needs."""
        sizes = {self.local_batch, self.local_batch - self.offloaded, self.offloaded,
                 self.host_batch - self.offloaded}
        return tuple(sorted(size for size in sizes if size > 0))


@dataclass(frozen=True)
class BlockTimes:
    """Measured (or profiled) seconds per batch: local blocks, host blocks, links per path."""

    local: Sequence[BatchTimes]
    host: Sequence[BatchTimes]
    links: Mapping[Path, float]  # all links of a path, on a batch of s samples


def batch_seconds(times: BatchTimes, batch: int) -> float:
    """Seconds for ``batch`` samples: the measured value, else scaled from the nearest size."""
    if batch <= 0:
        return 0.0
    if batch in times:
        return times[batch]
    if not times:
        raise CoordinationError("block times: no measurement for this block")
    nearest = min(times, key=lambda size: abs(size - batch))
    return times[nearest] * batch / nearest


def range_seconds(blocks: Sequence[BatchTimes], indices: range, batch: int) -> float:
    """Seconds for the blocks in ``indices`` on a batch."""
    return sum(batch_seconds(blocks[i], batch) for i in indices)


@dataclass(frozen=True)
class PathThroughput:
    """Cycle times and stream throughputs (samples/s) of one path."""

    path: Path
    local_seconds: float
    host_seconds: float
    local_stream: float
    host_stream: float
    baseline: float

    @property
    def total(self) -> float:
        """``Th_p``."""
        return self.local_stream + self.host_stream

    @property
    def gain(self) -> float:
        """``Th_p − Th_0`` in samples/s."""
        return self.total - self.baseline

    @property
    def ratio(self) -> float:
        """``Th_p / Th_0``."""
        return self.total / self.baseline


def baseline_throughput(times: BlockTimes, setting: StreamSetting) -> float:
    """``Th_0``: the local model alone on full batches."""
    seconds = range_seconds(times.local, range(len(times.local)), setting.local_batch)
    return setting.local_batch / seconds


def path_throughput(path: Path, times: BlockTimes, setting: StreamSetting) -> PathThroughput:
    """Throughput of ``path`` under the stream model in the module docstring."""
    local_count = len(times.local)
    b_l, b_h, s = setting.local_batch, setting.host_batch, setting.offloaded
    if path not in times.links:
        raise CoordinationError(f"path {path}: no link time measured")
    kept = [*range(path.lout + 1), *range(path.lin, local_count)]
    local_seconds = (range_seconds(times.local, range(local_count), b_l - s)
                     + sum(batch_seconds(times.local[i], s) for i in kept))
    if path.is_skip:
        local_seconds += times.links[path]
        host_seconds = 0.0
    else:
        host_seconds = (range_seconds(times.host, range(len(times.host)), b_h - s)
                        + range_seconds(times.host, range(path.hin, path.hout + 1), s)
                        + times.links[path])
    return PathThroughput(
        path=path, local_seconds=local_seconds, host_seconds=host_seconds,
        local_stream=(b_l - s) / local_seconds,
        host_stream=s / max(local_seconds, host_seconds),
        baseline=baseline_throughput(times, setting))


def average_accuracy(throughput: PathThroughput, main_accuracy: float,
                     path_accuracy: float) -> float:
    """``A_av = (Th^l A_0 + Th^h A_p) / Th_p`` (paper 000 eq. 1)."""
    return (throughput.local_stream * main_accuracy
            + throughput.host_stream * path_accuracy) / throughput.total


def sigmoid(value: float) -> float:
    """Numerically safe logistic function."""
    if value >= 0:
        return 1.0 / (1.0 + math.exp(-value))
    exp = math.exp(value)
    return exp / (1.0 + exp)


def reward(avg_accuracy: float, throughput_gain: float, a_min: float, k: float) -> float:
    """``F(p) = sigmoid(k (A_av − A_min)) · (Th_p − Th_0)`` (paper 000 eq. 2)."""
    return sigmoid(k * (avg_accuracy - a_min)) * throughput_gain


@dataclass(frozen=True)
class CostWeights:
    """Coefficients of paper 001's cost: accuracy loss, communication, local and host time.

    Paper 001 eq. (1) weighs the accuracy drop against the communication time and the local
    and host computation times, with a delay bound in eq. (2); the equations themselves are
    missing from the text available here, so the linear form below is our reading of them.
    """

    accuracy: float = 1.0
    communication: float = 1.0
    local: float = 1.0
    host: float = 0.5
    max_delay: float = math.inf


@dataclass(frozen=True)
class PathDelay:
    """Per-sample seconds of a path: transfers, local computation, host computation."""

    communication: float
    local: float
    host: float

    @property
    def total(self) -> float:
        """End-to-end seconds of one sample."""
        return self.communication + self.local + self.host


def path_delay(path: Path, times: BlockTimes, setting: StreamSetting,
               transfer_seconds: float = 0.0) -> PathDelay:
    """Per-sample delay of ``path`` from block times at batch ``s``."""
    s = setting.offloaded
    local_count = len(times.local)
    kept = [*range(path.lout + 1), *range(path.lin, local_count)]
    local = sum(batch_seconds(times.local[i], s) for i in kept) / s
    link = times.links[path] / s
    if path.is_skip:
        return PathDelay(communication=0.0, local=local + link, host=0.0)
    host = range_seconds(times.host, range(path.hin, path.hout + 1), s) / s + link
    return PathDelay(communication=2 * transfer_seconds, local=local, host=host)


def main_delay(times: BlockTimes, setting: StreamSetting) -> PathDelay:
    """Per-sample delay of the local model alone."""
    s = setting.offloaded
    local = range_seconds(times.local, range(len(times.local)), s) / s
    return PathDelay(communication=0.0, local=local, host=0.0)


def path_cost(delay: PathDelay, main_accuracy: float, path_accuracy: float,
              weights: CostWeights) -> float:
    """``C(p) = α (A_0 − A_p) + β T_c + γ T_l + δ T_h``, or ``inf`` past the delay bound.

    Times enter in milliseconds so that accuracy (0..1) and time terms have similar scales.
    """
    if delay.total > weights.max_delay:
        return math.inf
    return (weights.accuracy * (main_accuracy - path_accuracy)
            + 1e3 * (weights.communication * delay.communication
                     + weights.local * delay.local + weights.host * delay.host))
