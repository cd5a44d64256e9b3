"""Divide a torch model into N sequential blocks of roughly equal size (paper 000 Fig. 4).

A model is first flattened into a list of layers whose chained application equals the
model's forward pass: ``nn.Sequential`` models as they are, torchvision models of the
``features → pool → classifier`` family (AlexNet, VGG, MobileNet, EfficientNet, ...) and of
the ResNet family (stem, residual blocks, pool, fc). The list is checked against the model on
a random input; a model whose forward does something else gets a clear error rather than a
wrong split. Layers are then grouped into N blocks with equal numbers of *compute units*
(a unit is a layer holding a convolution or linear layer, followed by the parameter-free
layers behind it: activations, pooling, normalisation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from splitdnn.coordination.errors import CoordinationError

Shape = tuple[int, ...]


@dataclass
class BlockedModel:
    """A model as ``blocks`` (frozen ``nn.Sequential``s) with each block's input/output shape."""

    reference: str
    blocks: nn.ModuleList
    input_shape: Shape
    block_inputs: list[Shape]
    block_outputs: list[Shape]

    def __len__(self) -> int:
        return len(self.blocks)

    def parameters_in(self, indices: range | list[int]) -> int:
        """Number of parameters of the given blocks."""
        return sum(p.numel() for i in indices for p in self.blocks[i].parameters())

    def forward_range(self, x: torch.Tensor, first: int, last: int) -> torch.Tensor:
        """Run blocks ``first..last`` (inclusive) on ``x``."""
        for index in range(first, last + 1):
            x = self.blocks[index](x)
        return x


def model_layers(model: nn.Module) -> list[nn.Module]:
    """The model as a list of layers applied one after the other, or a CoordinationError."""
    if isinstance(model, nn.Sequential):
        return list(model)
    if all(hasattr(model, name) for name in ("conv1", "layer1", "layer4", "avgpool", "fc")):
        stem = [getattr(model, name) for name in ("conv1", "bn1", "relu", "maxpool")]
        stages = [block for name in ("layer1", "layer2", "layer3", "layer4")
                  for block in getattr(model, name)]
        return [*stem, *stages, model.avgpool, nn.Flatten(1), model.fc]
    features, classifier = getattr(model, "features", None), getattr(model, "classifier", None)
    if isinstance(features, nn.Sequential) and isinstance(classifier, nn.Module):
        pool = getattr(model, "avgpool", None) or nn.AdaptiveAvgPool2d(1)
        head = list(classifier) if isinstance(classifier, nn.Sequential) else [classifier]
        return [*features, pool, nn.Flatten(1), *head]
    raise CoordinationError(
        f"model {type(model).__name__}: cannot divide into sequential blocks; supported are "
        "nn.Sequential models and torchvision models of the features/classifier and ResNet "
        "families")


def is_compute_layer(layer: nn.Module) -> bool:
    """True for layers that hold a convolution or linear layer (the units blocks balance)."""
    return any(isinstance(m, nn.Conv2d | nn.Linear) for m in layer.modules())


def compute_units(layers: list[nn.Module]) -> list[list[nn.Module]]:
    """Group layers into units: a compute layer with the parameter-free layers behind it."""
    units: list[list[nn.Module]] = []
    for layer in layers:
        if is_compute_layer(layer) or not units:
            units.append([layer])
        else:
            units[-1].append(layer)
    if len(units) > 1 and not any(is_compute_layer(layer) for layer in units[0]):
        units[1] = units[0] + units[1]
        units.pop(0)
    return units


def split_units(units: list[list[nn.Module]], count: int, reference: str) -> list[nn.Sequential]:
    """``count`` blocks of consecutive units, sizes differing by at most one unit."""
    if not 1 <= count <= len(units):
        raise CoordinationError(f"blocks: {reference} has {len(units)} compute units, so it "
                                f"divides into 1..{len(units)} blocks, not {count}")
    base, extra = divmod(len(units), count)
    blocks, start = [], 0
    for index in range(count):
        size = base + (1 if index < extra else 0)
        blocks.append(nn.Sequential(*[layer for unit in units[start:start + size]
                                      for layer in unit]))
        start += size
    return blocks


def freeze(module: nn.Module) -> nn.Module:
    """Stop gradients to every parameter and keep normalisation statistics fixed (eval mode)."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module.eval()


def decompose(model: nn.Module, count: int, input_shape: Shape, reference: str = "model",
              tolerance: float = 1e-4) -> BlockedModel:
    """Divide ``model`` into ``count`` frozen blocks, checked to compute what the model does."""
    model = freeze(model)
    blocks = nn.ModuleList(split_units(compute_units(model_layers(model)), count, reference))
    generator = torch.Generator().manual_seed(0)
    sample = torch.rand((2, *input_shape), generator=generator)
    inputs, outputs = [], []
    with torch.inference_mode():
        expected = model(sample)
        x = sample
        for block in blocks:
            inputs.append(tuple(x.shape[1:]))
            try:
                x = block(x)
            except RuntimeError as error:
                raise CoordinationError(
                    f"model {reference}: its layers chained in order fail on input "
                    f"{tuple(input_shape)} ({str(error).splitlines()[0]}), so it cannot be "
                    "divided into blocks") from error
            outputs.append(tuple(x.shape[1:]))
    if x.shape != expected.shape or not torch.allclose(x, expected, atol=tolerance,
                                                       rtol=tolerance):
        raise CoordinationError(f"model {reference}: its layers chained in order do not compute "
                                "its forward pass, so it cannot be divided into blocks")
    return BlockedModel(reference=reference, blocks=blocks, input_shape=tuple(input_shape),
                        block_inputs=inputs, block_outputs=outputs)
