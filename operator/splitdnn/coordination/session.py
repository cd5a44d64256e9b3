"""One CoDE problem put together: data, the two models in blocks, times and an evaluator.

``prepare`` resolves the references, divides both models, measures the main path's accuracy
``A_0`` and every path's throughput; ``Session.evaluator`` trains a path's links on demand
(each path once). The CLI and the benchmark both go through here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from splitdnn.coordination.blocks import BlockedModel, Shape, decompose
from splitdnn.coordination.compose import PathModel
from splitdnn.coordination.data import TaskPair, adapt_images, check_fits, load_dataset
from splitdnn.coordination.errors import CoordinationError
from splitdnn.coordination.links import Architecture
from splitdnn.coordination.models import load_model
from splitdnn.coordination.paths import Path, enumerate_paths, validate_path
from splitdnn.coordination.search import Evaluate
from splitdnn.coordination.throughput import (
    BlockTimes,
    PathThroughput,
    StreamSetting,
    path_throughput,
)
from splitdnn.coordination.timing import measure
from splitdnn.coordination.training import TrainingConfig, TrainingResult, accuracy, train_links


@dataclass
class Session:
    """Everything needed to train and score paths between one local and one host model."""

    data: TaskPair
    local: BlockedModel
    host: BlockedModel
    main_accuracy: float
    setting: StreamSetting
    times: BlockTimes
    throughputs: list[PathThroughput]
    architecture: Architecture = "conv"
    width: int | None = None
    training: TrainingConfig = field(default_factory=TrainingConfig)
    results: dict[Path, TrainingResult] = field(default_factory=dict)
    models: dict[Path, PathModel] = field(default_factory=dict)

    def path_model(self, path: Path, just_links: bool = False) -> PathModel:
        """A fresh composed model (new, untrained links) for ``path``."""
        return PathModel(self.local, self.host, path, self.architecture, self.width,
                         just_links=just_links)

    def train(self, path: Path) -> TrainingResult:
        """Train the links of ``path`` (once; later calls return the first result)."""
        if path not in self.results:
            model = self.path_model(path)
            self.results[path] = train_links(model, self.data.local, self.training,
                                             self.local.input_shape)
            self.models[path] = model
        return self.results[path]

    def throughput(self, path: Path) -> PathThroughput:
        """The measured throughput of one prepared path."""
        found = next((t for t in self.throughputs if t.path == path), None)
        if found is None:
            raise CoordinationError(f"path {path}: not among the prepared paths")
        return found

    def evaluator(self) -> Evaluate:
        """The search's evaluate callback: train and return test accuracy."""
        return lambda path: self.train(path).accuracy


def outputs(model: BlockedModel) -> int:
    """Width of a classifier's output (the classes its labels may index)."""
    shape = model.block_outputs[-1]
    if len(shape) != 1:
        raise CoordinationError(f"model {model.reference}: its output has shape {list(shape)}; "
                                "CoDE trains links for classifiers (one score per class)")
    return shape[0]


def prepare(local_ref: str, host_ref: str, data_ref: str, local_blocks: int = 4,
            host_blocks: int = 4, setting: StreamSetting | None = None,
            architecture: Architecture = "conv", width: int | None = None,
            training: TrainingConfig | None = None, skip: bool = True,
            repeats: int = 5, paths: list[Path] | None = None,
            input_shapes: tuple[Shape | None, Shape | None] = (None, None),
            data_sha256: str | None = None) -> Session:
    """Resolve references, divide the models, measure ``A_0`` and the throughput of every
    path (or of ``paths`` only); ``input_shapes`` override the models' (local, host) inputs;
    ``data_sha256`` is the digest of a dataset file."""
    setting = setting or StreamSetting()
    data = load_dataset(data_ref, data_sha256)
    local_model = load_model(local_ref, data, input_shapes[0])
    host_model = load_model(host_ref, data, input_shapes[1])
    local = decompose(local_model.module, local_blocks, local_model.input_shape, local_ref)
    check_fits(data, local.input_shape, outputs(local))
    host = decompose(host_model.module, host_blocks, host_model.input_shape, host_ref)
    x_test = adapt_images(data.local.x_test, local.input_shape)
    main_accuracy = accuracy(local_model.module, x_test, data.local.y_test,
                             data.local.num_classes)
    if paths is None:
        paths = enumerate_paths(local_blocks, host_blocks, skip=skip)
    for path in paths:
        validate_path(path, local_blocks, host_blocks)
    times = measure(local, host, paths, setting, architecture, width, repeats)
    throughputs = [path_throughput(path, times, setting) for path in paths]
    return Session(data=data, local=local, host=host, main_accuracy=main_accuracy,
                   setting=setting, times=times, throughputs=throughputs,
                   architecture=architecture, width=width,
                   training=training or TrainingConfig())
