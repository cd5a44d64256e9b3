"""Links: the small trainable modules that carry a tensor from one block to another.

Following paper 000 §III-A and paper 001 §IV-A, a link between an output of shape ``source``
and an input of shape ``target`` (shapes without the batch dimension) is

- ``conv`` (the paper's rule): a 3×3 convolution when the shapes differ (after resampling
  the spatial size when that differs too), a bottleneck convolution when they are equal;
- ``bottleneck``: always a bottleneck, 1×1 down to a quarter of the channels, 3×3 up;
- ``reduced``: the bottleneck with a given narrow inner ``width`` (the paper's reduced-25 and
  reduced-5 links).

There is no activation inside a link (the paper's links are "two CNN layers"): with a ReLU
between the two convolutions, narrow links often died during training and scored chance.

Feature vectors (``(F,)`` shapes, after a flatten) get the linear-layer equivalents; a
feature map going into a vector is average-pooled to 2×2 and flattened first, and a vector
going into a feature map is expanded by a linear layer and reshaped.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as functional
from torch import nn

from splitdnn.coordination.errors import CoordinationError

Shape = tuple[int, ...]
Architecture = Literal["conv", "bottleneck", "reduced"]
ARCHITECTURES: tuple[Architecture, ...] = ("conv", "bottleneck", "reduced")
BOTTLENECK_DIVISOR = 4
POOLED_SIDE = 2  # a feature map entering a vector keeps a 2×2 layout (1×1 loses "where")


class Resample(nn.Module):
    """Change the spatial size: average pooling to shrink, bilinear interpolation to grow."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if self.size[0] <= height and self.size[1] <= width:
            return functional.adaptive_avg_pool2d(x, self.size)
        return functional.interpolate(x, size=self.size, mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"size={self.size}"


def inner_width(source: int, target: int, architecture: Architecture, width: int | None) -> int:
    """Channels (or features) inside a bottleneck or reduced link."""
    if architecture == "reduced":
        if width is None or width < 1:
            raise CoordinationError(f"link width: a reduced link needs a width >= 1, got {width}")
        return width
    if width is not None:
        raise CoordinationError("link width: applies only to the reduced architecture")
    return max(1, min(source, target) // BOTTLENECK_DIVISOR)


def make_link(source: Shape, target: Shape, architecture: Architecture = "conv",
              width: int | None = None) -> nn.Module:
    """A trainable module mapping tensors of shape ``source`` to shape ``target``."""
    if architecture not in ARCHITECTURES:
        raise CoordinationError(f"link architecture: expected one of {', '.join(ARCHITECTURES)}, "
                                f"got {architecture!r}")
    if len(source) not in (1, 3) or len(target) not in (1, 3):
        raise CoordinationError(f"link {source} -> {target}: only (C, H, W) feature maps and "
                                "(F,) vectors can be linked")
    plain = architecture == "conv" and tuple(source) != tuple(target)
    mid = None if plain else inner_width(source[0], target[0], architecture, width)
    if len(source) == 3 and len(target) == 3:
        return _map_to_map(source, target, mid)
    if len(source) == 3:
        side = min(POOLED_SIDE, source[1], source[2])
        return nn.Sequential(nn.AdaptiveAvgPool2d(side), nn.Flatten(1),
                             _vector_to_vector(source[0] * side * side, target[0], mid))
    if len(target) == 3:
        return nn.Sequential(_vector_to_vector(source[0], target[0] * target[1] * target[2], mid),
                             nn.Unflatten(1, tuple(target)))
    return _vector_to_vector(source[0], target[0], mid)


def _map_to_map(source: Shape, target: Shape, mid: int | None) -> nn.Module:
    layers: list[nn.Module] = []
    if tuple(source[1:]) != tuple(target[1:]):
        layers.append(Resample((target[1], target[2])))
    if mid is None:
        layers.append(nn.Conv2d(source[0], target[0], kernel_size=3, padding=1))
    else:
        layers += [nn.Conv2d(source[0], mid, kernel_size=1),
                   nn.Conv2d(mid, target[0], kernel_size=3, padding=1)]
    return nn.Sequential(*layers)


def _vector_to_vector(source: int, target: int, mid: int | None) -> nn.Module:
    if mid is None:
        return nn.Linear(source, target)
    return nn.Sequential(nn.Linear(source, mid), nn.Linear(mid, target))


def parameter_count(module: nn.Module) -> int:
    """Number of parameters of a module."""
    return sum(p.numel() for p in module.parameters())
