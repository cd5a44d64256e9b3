"""Top-1 accuracy of a model and of its early-exit heads on labelled samples.

What the analysis Job measures when a DNNService gives ``spec.validation`` and leaves an
exit's ``accuracy`` unset: the model is cut at the exits' layers (as the stages would cut
it), every sample runs through the blocks in order, and at each exit the head reads the
activation there. The results are the fraction of samples whose highest output is the label,
for the whole model and for each exit, and the number of samples.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from splitdnn.graph import ModelGraph, split_model
from splitdnn.runtime.engine import BlockEngine


@dataclass(frozen=True)
class Accuracy:
    """Top-1 accuracy of the whole model and of each exit (in the order given)."""

    model: float
    exits: tuple[float, ...]
    samples: int


def measure_accuracy(graph: ModelGraph, heads: list[tuple[int, Path]], images: np.ndarray,
                     labels: np.ndarray, threads: int | None = None) -> Accuracy:
    """Run ``images`` (``[N, ...]``, one sample = the model input without its batch) one by
    one through the model cut after each head's layer; ``heads`` are ``(after_layer, head
    ONNX file)``."""
    if len(images) != len(labels) or not len(images):
        raise ValueError(f"expected as many labels as samples (at least one), got "
                         f"{len(images)} samples and {len(labels)} labels")
    cuts = sorted({after for after, _ in heads})
    exit_hits = np.zeros(len(heads), dtype=np.int64)
    model_hits = 0
    with tempfile.TemporaryDirectory(prefix="splitdnn-accuracy-") as work:
        manifest = split_model(graph, cuts, Path(work) / "blocks")
        engines = [BlockEngine(path, threads) for _, path in heads]
        # each block with the heads (by index) that read its output
        blocks = [(BlockEngine(manifest.directory / block["file"], threads),
                   [index for index, (after, _) in enumerate(heads)
                    if after == block["layers"][1]]) for block in manifest.blocks]
        for sample, label in zip(images, labels, strict=True):
            tensor = sample[None].astype(blocks[0][0].input.dtype)
            for engine, readers in blocks:
                tensor = engine.run(tensor)
                for index in readers:
                    exit_hits[index] += top1(engines[index].run(tensor)) == label
            model_hits += top1(tensor) == label
    count = len(images)
    return Accuracy(model_hits / count, tuple(float(hits / count) for hits in exit_hits), count)


def top1(logits: np.ndarray) -> int:
    return int(np.argmax(logits.reshape(-1)))
