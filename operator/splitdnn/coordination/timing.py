"""Block and link times measured with torch on this machine's CPU.

Each module runs on random input of the right shape under ``torch.inference_mode`` with one
thread (the machine is shared; one thread keeps the numbers comparable between blocks): a
warm-up call, then the least of ``repeats`` timings, each averaging enough calls to last
about a millisecond (on a shared machine other work only ever adds time, so the minimum is
the best estimate of the module's own cost). Links are timed untrained (training does not
change their cost) and shared between paths that link the same shapes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch
from torch import nn

from splitdnn.coordination.blocks import BlockedModel, Shape
from splitdnn.coordination.links import Architecture, make_link
from splitdnn.coordination.paths import Path
from splitdnn.coordination.threads import single_thread
from splitdnn.coordination.throughput import BlockTimes, StreamSetting

MIN_SECONDS = 1e-3


def module_seconds(module: nn.Module, shape: Shape, batch: int, repeats: int = 7) -> float:
    """Least seconds of one forward pass of ``module`` on a batch of ``batch``."""
    sample = torch.rand((batch, *shape))
    with torch.inference_mode():
        module(sample)
        started = time.perf_counter()
        module(sample)
        once = max(time.perf_counter() - started, 1e-7)
        calls = max(1, int(MIN_SECONDS / once))
        timings = []
        for _ in range(repeats):
            started = time.perf_counter()
            for _ in range(calls):
                module(sample)
            timings.append((time.perf_counter() - started) / calls)
    return min(timings)


def block_times(model: BlockedModel, batches: Iterable[int],
                repeats: int = 7) -> list[dict[int, float]]:
    """Seconds per batch of every block of ``model`` for each batch size."""
    with single_thread():
        return [{batch: module_seconds(block, model.block_inputs[index], batch, repeats)
                 for batch in batches} for index, block in enumerate(model.blocks)]


def link_shapes(local: BlockedModel, host: BlockedModel, path: Path) -> list[tuple[Shape, Shape]]:
    """The (source, target) shapes of the links a path needs."""
    leaving, returning = local.block_outputs[path.lout], local.block_inputs[path.lin]
    if path.is_skip:
        return [(leaving, returning)]
    return [(leaving, host.block_inputs[path.hin]), (host.block_outputs[path.hout], returning)]


def link_times(local: BlockedModel, host: BlockedModel, paths: Iterable[Path], batch: int,
               architecture: Architecture = "conv", width: int | None = None,
               repeats: int = 7) -> dict[Path, float]:
    """Seconds of all links of each path on a batch of ``batch`` (shared per shape pair)."""
    measured: dict[tuple[Shape, Shape], float] = {}
    result = {}
    with single_thread():
        for path in paths:
            total = 0.0
            for pair in link_shapes(local, host, path):
                if pair not in measured:
                    link = make_link(pair[0], pair[1], architecture, width)
                    measured[pair] = module_seconds(link, pair[0], batch, repeats)
                total += measured[pair]
            result[path] = total
    return result


def measure(local: BlockedModel, host: BlockedModel, paths: Iterable[Path],
            setting: StreamSetting, architecture: Architecture = "conv",
            width: int | None = None, repeats: int = 7) -> BlockTimes:
    """Everything the throughput model needs, measured here."""
    batches = setting.batch_sizes()
    return BlockTimes(local=block_times(local, batches, repeats),
                      host=block_times(host, batches, repeats),
                      links=link_times(local, host, paths, setting.offloaded, architecture,
                                       width, repeats))
