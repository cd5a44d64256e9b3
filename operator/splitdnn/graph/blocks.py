"""Split an analysed model into ONNX blocks at chosen cut points and write a manifest.

Block ``k`` holds the layers between cut ``k-1`` (exclusive) and cut ``k`` (inclusive), plus
copies of the constant producers and initializers those layers need. Its single input is
the tensor crossing the previous cut (the model input for block 0) and its single output the
tensor crossing the next cut (the model output for the last block).

``DIR/manifest.json`` (contract)::

    {model, input: {name, shape, dtype},
     blocks: [{index, file, sha256, layers: [first, last], input: {...}, output: {...}}]}

plus ``source`` (the whole model's ONNX file and digest, for ``verify``) and ``cuts``.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from splitdnn.graph.analysis import ModelGraph, TensorInfo, constant_closure
from splitdnn.graph.batching import (
    BatchFormulas,
    batch_formulas,
    compute_from_batch,
    with_free_batch,
)
from splitdnn.graph.errors import InvalidCutError
from splitdnn.graph.normalise import in_graph_order, node_inputs
from splitdnn.graph.sources import model_files, model_sha256

MANIFEST_NAME = "manifest.json"
EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # protobuf cannot serialise messages over 2 GiB


@dataclass(frozen=True)
class BlockManifest:
    """What ``split`` wrote: the parsed contents of ``manifest.json``."""

    directory: Path
    data: dict[str, Any]

    @classmethod
    def load(cls, directory: Path) -> BlockManifest:
        with (directory / MANIFEST_NAME).open() as handle:
            return cls(directory, json.load(handle))

    @property
    def blocks(self) -> list[dict[str, Any]]:
        return list(self.data["blocks"])


def check_cuts(graph: ModelGraph, cuts: list[int]) -> list[int]:
    """Return the cuts sorted and de-duplicated, or raise naming the first invalid one."""
    for cut in cuts:
        if cut not in graph.crossing:
            nearest = graph.nearest_cut_points(cut)
            raise InvalidCutError(_invalid_cut_message(graph, cut, nearest), cut, nearest)
    return sorted(set(cuts))


def _invalid_cut_message(graph: ModelGraph, cut: int, nearest: list[int]) -> str:
    count = len(graph.layers)
    if not 0 <= cut < count:
        where = f"layer {cut} does not exist (the model has layers 0..{count - 1})"
    elif cut == count - 1:
        where = f"layer {cut} is the last layer: cutting after it leaves an empty block"
    else:
        layer = graph.layers[cut]
        where = (f"cutting after layer {cut} ({layer.name}, {layer.op_type}) leaves more than "
                 f"one tensor crossing the cut")
    hint = " or ".join(map(str, nearest)) if nearest else "none: the model has no cut points"
    return f"cut {cut} is not a cut point: {where}; nearest valid cut points: {hint}"


def block_ranges(graph: ModelGraph, cuts: list[int]) -> list[tuple[int, int]]:
    """Inclusive layer ranges of the blocks that the (valid, sorted) cuts produce."""
    starts = [0, *(cut + 1 for cut in cuts)]
    ends = [*cuts, len(graph.layers) - 1]
    return list(zip(starts, ends, strict=True))


def build_block(graph: ModelGraph, first: int, last: int) -> onnx.ModelProto:
    """A standalone ONNX model computing layers first..last of the graph."""
    block_input = graph.input if first == 0 else graph.tensors[graph.crossing[first - 1]]
    block_output = graph.tensors[graph.crossing[last]] if last in graph.crossing else graph.output
    layer_nodes = graph.layer_nodes[first : last + 1]
    constant_inputs = [name for node in layer_nodes for name in node_inputs(node)
                       if name in graph.constant_producers or name in graph.initializer_names]
    sources, constant_nodes = constant_closure(constant_inputs, graph.constant_producers)
    nodes = in_graph_order(graph.model.graph, [*constant_nodes, *layer_nodes])
    initializers = [tensor for tensor in graph.model.graph.initializer if tensor.name in sources]
    values = _block_value_infos(graph, nodes, block_input.name, block_output.name)
    block_graph = helper.make_graph(
        nodes,
        f"block_{first}_{last}",
        [_value_info(block_input)],
        [_value_info(block_output)],
        initializer=initializers,
        value_info=values,
    )
    model = helper.make_model(
        block_graph,
        opset_imports=list(graph.model.opset_import),
        ir_version=graph.model.ir_version,
        producer_name="splitdnn",
    )
    model.functions.extend(graph.model.functions)
    return model


def _value_info(tensor: TensorInfo) -> onnx.ValueInfoProto:
    elem_type = helper.np_dtype_to_tensor_dtype(np.dtype(tensor.dtype))
    return helper.make_tensor_value_info(tensor.name, elem_type, list(tensor.shape))


def _block_value_infos(
    graph: ModelGraph, nodes: list[onnx.NodeProto], input_name: str, output_name: str
) -> list[onnx.ValueInfoProto]:
    inner = {name for node in nodes for name in node.output if name} - {input_name, output_name}
    return [value for value in graph.model.graph.value_info if value.name in inner]


def split_model(
    graph: ModelGraph, cuts: list[int], out_dir: Path, dynamic_batch: bool = True
) -> BlockManifest:
    """Write one ONNX file per block and ``manifest.json`` into ``out_dir``.

    With ``dynamic_batch`` each block whose samples are computed independently gets a
    symbolic first dimension (``batch_free`` in the manifest), so that the runtime can batch.

    Everything is written to a scratch directory first and moved into place at the end,
    so an invalid cut or a failure midway leaves ``out_dir`` as it was.
    """
    cuts = check_cuts(graph, cuts)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".splitdnn-", dir=out_dir.parent) as scratch:
        staging = Path(scratch)
        batching = BatchRelaxer(graph) if dynamic_batch else None
        blocks = [_write_block(graph, index, first, last, staging, batching)
                  for index, (first, last) in enumerate(block_ranges(graph, cuts))]
        data = _manifest_data(graph, cuts, blocks)
        (staging / MANIFEST_NAME).write_text(json.dumps(data, indent=2) + "\n")
        _move_into(staging, out_dir)
    return BlockManifest(out_dir, data)


class BatchRelaxer:
    """Gives blocks a free batch dimension, learning the batch formulas only when needed."""

    def __init__(self, graph: ModelGraph) -> None:
        self.graph = graph
        self._formulas: BatchFormulas | None = None

    def formulas(self) -> BatchFormulas:
        if self._formulas is None:
            source = Path(self.graph.source_path)
            self._formulas = batch_formulas(source, self.graph.model, self.graph.input.shape) \
                if source.is_file() else {}
        return self._formulas

    def relax(self, block: onnx.ModelProto) -> onnx.ModelProto | None:
        """The block with a symbolic batch dimension, or None when it cannot have one."""
        relaxed = with_free_batch(block)
        if relaxed is None:
            generic = compute_from_batch(block, self.formulas())
            relaxed = with_free_batch(generic) if generic is not None else None
        return relaxed


def _write_block(
    graph: ModelGraph,
    index: int,
    first: int,
    last: int,
    directory: Path,
    batching: BatchRelaxer | None,
) -> dict[str, Any]:
    model = build_block(graph, first, last)
    relaxed = batching.relax(model) if batching is not None else None
    model = relaxed or model
    path = directory / f"block_{index}.onnx"
    large = model.ByteSize() > EXTERNAL_DATA_THRESHOLD
    onnx.save_model(model, str(path), save_as_external_data=large,
                    location=f"{path.name}.data" if large else None)
    block_input = model.graph.input[0].name
    output = model.graph.output[0].name
    return {
        "index": index,
        "file": path.name,
        "sha256": model_sha256(path),
        "layers": [first, last],
        "input": graph.tensors[block_input].to_dict(),
        "output": graph.tensors[output].to_dict(),
        "batch_free": relaxed is not None,
        "flops": sum(layer.flops for layer in graph.layers[first : last + 1]),
        "bytes": sum(part.stat().st_size for part in model_files(path)),
    }


def _manifest_data(
    graph: ModelGraph, cuts: list[int], blocks: list[dict[str, Any]]
) -> dict[str, Any]:
    source = Path(graph.source_path) if graph.source_path else None
    return {
        "model": graph.source,
        "input": graph.input.to_dict(),
        "output": graph.output.to_dict(),
        "cuts": cuts,
        "source": {
            "file": str(source.resolve()) if source else None,
            "sha256": model_sha256(source) if source and source.is_file() else None,
        },
        "blocks": blocks,
    }


def _move_into(staging: Path, out_dir: Path) -> None:
    """Move staged files into ``out_dir``, replacing earlier block files of the same names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("block_*.onnx*"):
        stale.unlink()
    for item in sorted(staging.iterdir(), key=lambda path: path.name == MANIFEST_NAME):
        os.replace(item, out_dir / item.name)


def balanced_cuts(graph: ModelGraph, blocks: int) -> list[int]:
    """Cut points that split the model's FLOPs into ``blocks`` roughly equal parts."""
    total = sum(layer.flops for layer in graph.layers)
    done = 0
    cumulative: dict[int, int] = {}
    for layer in graph.layers:
        done += layer.flops
        cumulative[layer.index] = done
    cuts: list[int] = []
    for part in range(1, blocks):
        target = total * part / blocks
        best = min(graph.cut_points, key=lambda cut: abs(cumulative[cut] - target), default=None)
        if best is not None and best not in cuts:
            cuts.append(best)
    return sorted(cuts)
