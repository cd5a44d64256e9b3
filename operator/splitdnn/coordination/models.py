"""Model references for CoDE: the experiment's small digit CNNs and torchvision models.

- ``digits-cnn:local``: a 6-layer CNN (channels 16-64-64-128, fc 128) trained on the local
  task of ``sklearn:digits`` (digits 0–4);
- ``digits-cnn:host``: a CNN of a different shape (channels 24-48-96-96, pooling earlier,
  fc 128) trained on the host task (digits 5–9);
- ``digits-cnn:random``: the host architecture with random weights, the paper's control;
- ``torchvision:NAME``: a torchvision classification model with random weights (seed 0; no
  weights are downloaded), fed 3×64×64 images (digits are resized and repeated to fit).

The digit CNNs train deterministically (seed 0, single thread, fixed epochs) on first use and
are cached as state dicts under ``$SPLITDNN_CACHE_DIR/coordination`` (default
``~/.cache/splitdnn/coordination``), keyed by role and a version of this recipe.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from splitdnn.coordination.data import Task, TaskPair
from splitdnn.coordination.errors import CoordinationError
from splitdnn.coordination.threads import single_thread

DIGITS_PREFIX = "digits-cnn:"
TORCHVISION_PREFIX = "torchvision:"
DIGITS_ROLES = ("local", "host", "random")
TORCHVISION_INPUT = (3, 64, 64)
RECIPE_VERSION = 1
TRAIN_EPOCHS = 15
TRAIN_SEED = 0


@dataclass
class LoadedModel:
    """A torch model with the input shape it expects (without batch)."""

    reference: str
    module: nn.Module
    input_shape: tuple[int, ...]


def local_cnn(num_classes: int) -> nn.Sequential:
    """The local service's CNN (6 compute layers, input 1×8×8, most work in the middle)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(1),
        nn.Linear(128 * 2 * 2, 128), nn.ReLU(),
        nn.Linear(128, num_classes),
    )


def host_cnn(num_classes: int) -> nn.Sequential:
    """The host service's CNN: other widths, pooling after its second layer (input 1×8×8)."""
    return nn.Sequential(
        nn.Conv2d(1, 24, 3, padding=1), nn.ReLU(),
        nn.Conv2d(24, 48, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(48, 96, 3, padding=1), nn.ReLU(),
        nn.Conv2d(96, 96, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(1),
        nn.Linear(96 * 2 * 2, 128), nn.ReLU(),
        nn.Linear(128, num_classes),
    )


def train_classifier(model: nn.Module, task: Task, epochs: int = TRAIN_EPOCHS,
                     seed: int = TRAIN_SEED) -> nn.Module:
    """Train every parameter of ``model`` on ``task`` (Adam, batch 32), deterministically."""
    with single_thread():
        generator = torch.Generator().manual_seed(seed)
        optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(task.y_train), generator=generator)
            for start in range(0, len(order), 32):
                batch = order[start:start + 32]
                loss = nn.functional.cross_entropy(model(task.x_train[batch]),
                                                   task.y_train[batch])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
    return model.eval()


def digits_model(role: str, data: TaskPair) -> nn.Module:
    """Build (and train, or load from the cache) one of the digit CNNs."""
    from splitdnn.graph.sources import cache_dir

    task = data.local if role == "local" else data.host
    if data.source != "sklearn:digits" or task is None:
        raise CoordinationError(f"{DIGITS_PREFIX}{role}: needs --data sklearn:digits, got "
                                f"{data.source}")
    torch.manual_seed(TRAIN_SEED)
    model = (local_cnn if role == "local" else host_cnn)(task.num_classes)
    if role == "random":
        return model.eval()
    path = cache_dir() / "coordination" / f"digits-cnn-{role}-v{RECIPE_VERSION}.pt"
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    train_classifier(model, task)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    torch.save(model.state_dict(), partial)
    partial.replace(path)
    return model


def torchvision_model(name: str) -> nn.Module:
    """A torchvision classification model with random weights from seed 0."""
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise CoordinationError(f"model torchvision:{name}: not a torchvision classification "
                                "model")
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None).eval()


def load_model(reference: str, data: TaskPair | None,
               input_shape: tuple[int, ...] | None = None) -> LoadedModel:
    """Resolve ``--local``/``--host`` to a torch model; other sources get a clear error.

    ``input_shape`` (without batch) overrides a torchvision model's default 3×64×64 input, as
    a served DNNService's ``inputShape`` does; the digit CNNs take 1×8×8 only.
    """
    if reference.startswith(DIGITS_PREFIX):
        role = reference.removeprefix(DIGITS_PREFIX)
        if role not in DIGITS_ROLES:
            raise CoordinationError(f"model {reference}: expected {DIGITS_PREFIX}ROLE with ROLE "
                                    f"one of {', '.join(DIGITS_ROLES)}")
        if data is None:
            raise CoordinationError(f"model {reference}: needs --data sklearn:digits")
        if input_shape is not None and tuple(input_shape) != data.local.input_shape:
            raise CoordinationError(f"model {reference}: takes input "
                                    f"{list(data.local.input_shape)}, not {list(input_shape)}")
        return LoadedModel(reference, digits_model(role, data), data.local.input_shape)
    if reference.startswith(TORCHVISION_PREFIX):
        name = reference.removeprefix(TORCHVISION_PREFIX)
        shape = tuple(input_shape) if input_shape is not None else TORCHVISION_INPUT
        return LoadedModel(reference, torchvision_model(name), shape)
    raise CoordinationError(
        f"model {reference}: CoDE trains links through torch modules, so the model must be "
        f"{DIGITS_PREFIX}ROLE or {TORCHVISION_PREFIX}NAME (ONNX files and other sources "
        "cannot be trained through)")
