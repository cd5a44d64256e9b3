"""Train a path's links on the local task while every block stays frozen.

Only link parameters go to the optimiser, frozen blocks stay in eval mode (batch-norm
statistics fixed), and after training every parameter and buffer of the borrowed blocks is
compared bit for bit with a snapshot taken before: a change raises FrozenParameterChanged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from splitdnn.coordination.compose import PathModel
from splitdnn.coordination.data import Task, adapt_images
from splitdnn.coordination.errors import CoordinationError, FrozenParameterChanged
from splitdnn.coordination.threads import single_thread


@dataclass(frozen=True)
class TrainingConfig:
    """Optimiser settings for the links (Adam, cross-entropy)."""

    epochs: int = 5
    learning_rate: float = 1e-2
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise CoordinationError(f"epochs: expected >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise CoordinationError(f"batch size: expected >= 1, got {self.batch_size}")
        if not 0 < self.learning_rate <= 1:
            raise CoordinationError(f"learning rate: expected 0 < lr <= 1, got "
                                    f"{self.learning_rate}")


@dataclass(frozen=True)
class TrainingResult:
    """Mean loss per epoch (before training first), test accuracy and training time."""

    losses: list[float]
    accuracy: float
    seconds: float


def state_snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every parameter and buffer of ``module``."""
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def changed_entries(module: nn.Module, snapshot: dict[str, torch.Tensor]) -> list[str]:
    """Names of parameters or buffers that differ from ``snapshot``."""
    current = module.state_dict()
    return [name for name, value in snapshot.items() if not torch.equal(current[name], value)]


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
             batch_size: int = 256) -> float:
    """Top-1 accuracy over the first ``num_classes`` outputs."""
    was_training = model.training
    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(labels), batch_size):
            logits = model(images[start:start + batch_size])[:, :num_classes]
            correct += int((logits.argmax(1) == labels[start:start + batch_size]).sum())
    model.train(was_training)
    return correct / max(1, len(labels))


def mean_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
              num_classes: int) -> float:
    """Cross-entropy over a data set, without updating anything."""
    with torch.inference_mode():
        logits = model(images)[:, :num_classes]
        return float(nn.functional.cross_entropy(logits, labels))


def train_links(model: PathModel, task: Task, config: TrainingConfig | None = None,
                input_shape: tuple[int, ...] | None = None) -> TrainingResult:
    """Train only ``model.links`` on ``task`` (one thread); verify frozen blocks kept still."""
    with single_thread():
        return _train_links(model, task, config or TrainingConfig(), input_shape)


def _train_links(model: PathModel, task: Task, config: TrainingConfig,
                 input_shape: tuple[int, ...] | None) -> TrainingResult:
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    x_train = adapt_images(task.x_train, input_shape) if input_shape else task.x_train
    x_test = adapt_images(task.x_test, input_shape) if input_shape else task.x_test
    trainable = [p for p in model.links.parameters() if p.requires_grad]
    if not trainable:
        raise CoordinationError(f"path {model.path}: its links have no trainable parameters")
    frozen = model.frozen_modules()
    if any(p.requires_grad for p in frozen.parameters()):
        raise CoordinationError(f"path {model.path}: a block parameter is not frozen")
    snapshot = state_snapshot(frozen)
    optimiser = torch.optim.Adam(trainable, lr=config.learning_rate)
    model.eval()
    losses = [mean_loss(model, x_train, task.y_train, task.num_classes)]
    model.train()
    generator = torch.Generator().manual_seed(config.seed)
    for _ in range(config.epochs):
        order = torch.randperm(len(task.y_train), generator=generator)
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            batch = order[start:start + config.batch_size]
            logits = model(x_train[batch])[:, :task.num_classes]
            loss = nn.functional.cross_entropy(logits, task.y_train[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
        losses.append(total / len(order))
    model.eval()
    changed = changed_entries(frozen, snapshot)
    if changed:
        raise FrozenParameterChanged(f"path {model.path}: training changed frozen "
                                     f"{', '.join(changed[:5])}")
    return TrainingResult(losses=losses, accuracy=accuracy(model, x_test, task.y_test,
                                                           task.num_classes),
                          seconds=time.perf_counter() - started)
