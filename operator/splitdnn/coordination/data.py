"""Datasets for training links: the local service's task (and, for digits, a related one).

``sklearn:digits`` (scikit-learn's 8×8 handwritten digits, shipped with the package, no
download) becomes two tasks on disjoint images: the *local* task classifies digits 0–4, the
*host* task digits 5–9 (labels shifted to 0–4). Same domain and input, different classes: a
small-scale stand-in for the paper's CIFAR-10 local model and ImageNet/Food-101 hosts. Each
task is split 70/30 into train and test sets, stratified, with a fixed seed. Digit images are
resized to whatever input a model takes.

A *dataset file* (``https://URL`` with its sha256, fetched and cached as model files are, or
``pvc://CLAIM/PATH`` on a mounted claim) holds the local task alone, as a NumPy ``.npz``
(read without pickle):

- ``x``: float32 ``[N, C, H, W]``, samples exactly as the local model takes them;
- ``y``: integer ``[N]``, class labels ``0..K−1`` with ``K`` at most the model's outputs;
- ``x_test``/``y_test`` (optional, both or neither): the test split; without them ``x``/``y``
  are split 70/30 as the digits are (stratified when every class has two samples).

Anything else (another array, a wrong dtype or rank, NaN, a label out of range, a sample
shape other than the model's) is refused naming the array and what was expected.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import TYPE_CHECKING, Any

from splitdnn.coordination.errors import CoordinationError, DatasetUnavailable

if TYPE_CHECKING:
    import torch

SPLIT_SEED = 0
TEST_FRACTION = 0.3
DATASETS = ("sklearn:digits",)
FILE_SCHEMES = ("https://", "pvc://")
FILE_ARRAYS = ("x", "y", "x_test", "y_test")


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
    """The local service's task (links train on it) and, for the digits, the related task
    of the host (a dataset file has the local task alone). ``resizable``: samples may be
    resized to fit a model (the digits); a file's samples must have the model's shape."""

    source: str
    local: Task
    host: Task | None
    resizable: bool = True


def load_dataset(reference: str, sha256: str | None = None) -> TaskPair:
    """Resolve ``--data``: a dataset shipped with a package, or a dataset file (https:// with
    ``sha256``, or pvc://CLAIM/PATH, whose digest is checked when one is given)."""
    if reference == "sklearn:digits":
        return _digits()
    if reference.startswith(FILE_SCHEMES):
        return load_file_dataset(reference, sha256)
    raise CoordinationError(f"--data: unknown dataset {reference!r}; expected one of "
                            f"{', '.join(DATASETS)}, https://URL (with --data-sha256) or "
                            "pvc://CLAIM/PATH")


def fetch_dataset_file(reference: str, sha256: str | None) -> FilePath:
    """The local copy of a dataset file, fetched as model files are (runtime.artifacts)."""
    from splitdnn.runtime.artifacts import ArtifactError, fetch_model, network_failure

    if reference.startswith("https://") and sha256 is None:
        raise CoordinationError(f"--data-sha256: the https dataset {reference} needs its sha256")
    try:
        return fetch_model(reference, sha256)[0]
    except ArtifactError as error:
        option = "--data-sha256" if "does not match the expected" in str(error) else "--data"
        if network_failure(error):  # not the input: worth a retry
            raise DatasetUnavailable(f"{option}: {error}") from error
        raise CoordinationError(f"{option}: {error}") from error


def load_file_dataset(reference: str, sha256: str | None = None) -> TaskPair:
    """A dataset file (module docstring) as the local task, validated array by array."""
    import numpy as np

    path = fetch_dataset_file(reference, sha256)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise CoordinationError(f"--data: {reference} is not a NumPy .npz archive of x and y "
                                f"({error})") from error
    return TaskPair(source=reference, local=file_task(reference, arrays), host=None,
                    resizable=False)


def file_task(reference: str, arrays: dict[str, Any]) -> Task:
    """Check the arrays of a dataset file and split them into train and test sets."""
    unknown = sorted(set(arrays) - set(FILE_ARRAYS))
    if unknown:
        raise CoordinationError(f"--data: {reference}: unexpected arrays {', '.join(unknown)}; "
                                f"expected x, y and optionally x_test, y_test")
    for name in ("x", "y"):
        if name not in arrays:
            raise CoordinationError(f"--data: {reference}: no array {name!r} (expected x: "
                                    "float32 [N, C, H, W], y: integer labels [N])")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise CoordinationError(f"--data: {reference}: give both x_test and y_test or neither")
    for images, labels in (("x", "y"), ("x_test", "y_test")):
        if images in arrays:
            check_arrays(reference, images, arrays[images], labels, arrays[labels])
    if "x_test" in arrays:
        if arrays["x_test"].shape[1:] != arrays["x"].shape[1:]:
            raise CoordinationError(f"--data: {reference}: x_test has samples of shape "
                                    f"{list(arrays['x_test'].shape[1:])}, x of "
                                    f"{list(arrays['x'].shape[1:])}")
        return _task_from_splits(reference, arrays["x"], arrays["y"], arrays["x_test"],
                                 arrays["y_test"])
    if len(arrays["y"]) < 4:
        raise CoordinationError(f"--data: {reference}: {len(arrays['y'])} samples are too few "
                                "to split into train and test sets (give x_test/y_test)")
    return _task(reference, arrays["x"], arrays["y"].astype("int64"))


def check_arrays(reference: str, images_name: str, images: Any, labels_name: str,
                 labels: Any) -> None:
    import numpy as np

    where = f"--data: {reference}: {images_name}"
    if images.dtype != np.float32:
        raise CoordinationError(f"{where}: expected float32 samples, got {images.dtype}")
    if images.ndim != 4 or min(images.shape, default=0) < 1:
        raise CoordinationError(f"{where}: expected shape [N, C, H, W] with N >= 1, got "
                                f"{list(images.shape)}")
    if not np.isfinite(images).all():
        raise CoordinationError(f"{where}: contains NaN or infinite values")
    where = f"--data: {reference}: {labels_name}"
    if labels.dtype.kind not in "iu":
        raise CoordinationError(f"{where}: expected integer labels, got {labels.dtype}")
    if labels.shape != images.shape[:1]:
        raise CoordinationError(f"{where}: expected shape [{images.shape[0]}] (one label per "
                                f"sample of {images_name}), got {list(labels.shape)}")
    if labels.min() < 0:
        raise CoordinationError(f"{where}: labels must be 0..K-1, found {labels.min()}")


def check_fits(data: TaskPair, input_shape: tuple[int, ...], outputs: int) -> None:
    """A dataset file's samples must have the local model's input shape and its labels
    index the model's outputs (digits are resized and use the first outputs)."""
    task = data.local
    if not data.resizable and task.input_shape != tuple(input_shape):
        raise CoordinationError(f"--data: {data.source}: x holds samples of shape "
                                f"{list(task.input_shape)}, the local model takes "
                                f"{list(input_shape)} (its input shape without the batch)")
    if task.num_classes > outputs:
        raise CoordinationError(f"--data: {data.source}: labels go up to "
                                f"{task.num_classes - 1}, the local model has {outputs} outputs "
                                f"(classes 0..{outputs - 1})")


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


def _task(name: str, images: Any, labels: Any) -> Task:
    import numpy as np
    from sklearn.model_selection import train_test_split

    classes, counts = np.unique(labels, return_counts=True)
    stratify = labels if counts.min() >= 2 and len(labels) * TEST_FRACTION >= len(classes) \
        else None
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=stratify)
    return _task_from_splits(name, x_train, y_train, x_test, y_test)


def _task_from_splits(name: str, x_train: Any, y_train: Any, x_test: Any, y_test: Any) -> Task:
    import torch

    return Task(name=name, x_train=torch.from_numpy(x_train),
                y_train=torch.from_numpy(y_train.astype("int64")),
                x_test=torch.from_numpy(x_test), y_test=torch.from_numpy(y_test.astype("int64")),
                num_classes=int(max(y_train.max(), y_test.max())) + 1)


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
