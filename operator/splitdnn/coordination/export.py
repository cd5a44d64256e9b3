"""A trained path as ONNX artifacts: its links (with sha256 digests) and its stages.

``export_links`` writes a trained path's links (``entry.onnx`` and ``exit.onnx`` of a cross
path, ``entry.onnx`` alone for a skip path) — what a training Job hands to the operator.
``build_stage`` writes the ONNX block one stage of the deployed path runs:

- ``head``: local blocks ``0..lout``;
- ``cross``: entry link → host blocks ``hin..hout`` → exit link, one graph (a skip path's
  ``cross`` stage is its one link);
- ``tail``: local blocks ``lin..N_l−1``.

Blocks are exported from the same torch models the links were trained through; links are
taken only from files whose sha256 matches the digests given, so a stage never runs links
other than the ones trained. Every graph has a free batch dimension.
"""

from __future__ import annotations

import hashlib
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import Literal

import onnx
import onnx.compose
import torch
from torch import nn

from splitdnn.coordination.blocks import BlockedModel, Shape
from splitdnn.coordination.compose import PathModel
from splitdnn.coordination.errors import CoordinationError
from splitdnn.coordination.paths import Path
from splitdnn.coordination.threads import single_thread

Stage = Literal["head", "cross", "tail"]
STAGES: tuple[Stage, ...] = ("head", "cross", "tail")
OPSET = 17
INPUT, OUTPUT = "input", "output"


@dataclass(frozen=True)
class LinkArtifact:
    """One exported link: its file and sha256."""

    name: str
    file: FilePath
    sha256: str


def file_sha256(path: FilePath) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_module(module: nn.Module, input_shape: Shape, path: FilePath) -> FilePath:
    """``module`` as ONNX (opset 17, free batch dimension, input ``input``, output ``output``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sample = torch.rand((1, *input_shape), generator=torch.Generator().manual_seed(0))
    with single_thread(), torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(module.eval(), (sample,), str(path), input_names=[INPUT],
                          output_names=[OUTPUT], opset_version=OPSET, dynamo=False,
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    return path


def link_inputs(model: PathModel, local: BlockedModel, host: BlockedModel | None
                ) -> dict[str, tuple[nn.Module, Shape]]:
    """The links of a path with the shape each one takes."""
    path = model.path
    links = {"entry": (model.entry, local.block_outputs[path.lout])}
    if not path.is_skip:
        assert host is not None
        links["exit"] = (model.exit, host.block_outputs[path.hout])
    return links


def export_links(model: PathModel, local: BlockedModel, host: BlockedModel | None,
                 directory: FilePath) -> list[LinkArtifact]:
    """Write the (trained) links of ``model`` as ``<name>.onnx`` under ``directory``."""
    artifacts = []
    for name, (link, shape) in link_inputs(model, local, host).items():
        file = export_module(link, shape, directory / f"{name}.onnx")
        artifacts.append(LinkArtifact(name, file, file_sha256(file)))
    return artifacts


def checked_link(directory: FilePath, name: str, digests: dict[str, str]) -> onnx.ModelProto:
    """Load ``<name>.onnx`` after checking its sha256 against ``digests[name]``."""
    file = directory / f"{name}.onnx"
    if name not in digests:
        raise CoordinationError(f"link {name}: no sha256 given for it")
    if not file.is_file():
        raise CoordinationError(f"link {name}: {file} does not exist")
    actual = file_sha256(file)
    if actual != digests[name]:
        raise CoordinationError(f"link {name}: {file} has sha256 {actual}, expected "
                                f"{digests[name]}")
    return onnx.load(str(file))


def chain(models: list[onnx.ModelProto]) -> onnx.ModelProto:
    """One graph running ``models`` one after the other (each: ``input`` → ``output``)."""
    prefixed = [onnx.compose.add_prefix(m, f"p{index}/") for index, m in enumerate(models)]
    merged = prefixed[0]
    for index, following in enumerate(prefixed[1:], start=1):
        merged = onnx.compose.merge_models(
            merged, following, io_map=[(f"p{index - 1}/{OUTPUT}", f"p{index}/{INPUT}")])
    return merged


def blocks_module(model: BlockedModel, first: int, last: int) -> nn.Sequential:
    return nn.Sequential(*model.blocks[first:last + 1])


def build_stage(stage: Stage, path: Path, local: BlockedModel, host: BlockedModel | None,
                links: FilePath | None, digests: dict[str, str], out: FilePath) -> FilePath:
    """Write ``out/block.onnx``: the ONNX graph the given stage of ``path`` runs."""
    out.mkdir(parents=True, exist_ok=True)
    target = out / "block.onnx"
    if stage == "head":
        return export_module(blocks_module(local, 0, path.lout), local.input_shape, target)
    if stage == "tail":
        return export_module(blocks_module(local, path.lin, len(local) - 1),
                             local.block_inputs[path.lin], target)
    if stage != "cross":
        raise CoordinationError(f"stage: expected one of {', '.join(STAGES)}, got {stage!r}")
    if links is None:
        raise CoordinationError("links: the cross stage needs the trained links")
    entry = checked_link(links, "entry", digests)
    if path.is_skip:
        shutil.copyfile(links / "entry.onnx", target)
        return target
    if host is None:
        raise CoordinationError(f"path {path}: a cross path needs the host model")
    exit_link = checked_link(links, "exit", digests)
    host_file = export_module(blocks_module(host, path.hin, path.hout),
                              host.block_inputs[path.hin], out / "host-blocks.onnx")
    merged = chain([entry, onnx.load(str(host_file)), exit_link])
    host_file.unlink()
    onnx.save(merged, str(target))
    return target
