"""Datasets for training links: two related classification tasks from one source.

``sklearn:digits`` (scikit-learn's 8×8 handwritten digits, shipped with the package, no
download) becomes two tasks on disjoint images: the *local* task classifies digits 0–4, the
*host* task digits 5–9 (labels shifted to 0–4). Same domain and input, different classes: a
small-scale stand-in for the paper's CIFAR-10 local model and ImageNet/Food-101 hosts. Each
task is split 70/30 into train and test sets, stratified, with a fixed seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from splitdnn.coordination.errors import CoordinationError

if TYPE_CHECKING:
    import torch

SPLIT_SEED = 0
TEST_FRACTION = 0.3
DATASETS = ("sklearn:digits",)


@dataclass(frozen=True)
class Task:
    """One classification task: images ``(N, C, H, W)`` float32, labels ``(N,)`` int64."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample."""
        return tuple(self.x_train.shape[1:])


@dataclass(frozen=True)
class TaskPair:
    """The local service's task (links train on it) and the related task of the host."""

    source: str
    local: Task
    host: Task


def load_dataset(reference: str) -> TaskPair:
    """Resolve ``--data``; only datasets that ship with a package are available offline."""
    if reference == "sklearn:digits":
        return _digits()
    raise CoordinationError(f"--data: unknown dataset {reference!r}; expected one of "
                            f"{', '.join(DATASETS)}")


def _digits() -> TaskPair:
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    local = labels < 5
    return TaskPair(
        source="sklearn:digits",
        local=_task("digits 0-4", images[local], labels[local]),
        host=_task("digits 5-9", images[~local], labels[~local] - 5),
    )


def _task(name: str, images: object, labels: object) -> Task:
    import torch
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=labels)
    return Task(name=name, x_train=torch.from_numpy(x_train), y_train=torch.from_numpy(y_train),
                x_test=torch.from_numpy(x_test), y_test=torch.from_numpy(y_test),
                num_classes=int(y_train.max()) + 1)


def adapt_images(images: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Resize and repeat channels so a task's images fit a model expecting ``shape`` (C,H,W)."""
    import torch.nn.functional as functional

    if tuple(images.shape[1:]) == tuple(shape):
        return images
    if len(shape) != 3:
        raise CoordinationError(f"model input {shape}: expected an image input (C, H, W)")
    resized = functional.interpolate(images, size=shape[1:], mode="bilinear",
                                     align_corners=False)
    if resized.shape[1] == shape[0]:
        return resized
    if resized.shape[1] != 1:
        raise CoordinationError(f"model input {shape}: cannot map {images.shape[1]} channels "
                                f"to {shape[0]}")
    return resized.expand(-1, shape[0], -1, -1).contiguous()
