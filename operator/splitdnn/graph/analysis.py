"""Find the layers, cut points and segments of an ONNX model.

*Layers* are the ONNX nodes that compute on data, in topological order. Nodes whose inputs
are all constants (initializers, ``Constant`` nodes, shape arithmetic on static shapes) are
*constant producers*: they are never layers, never cross a cut, and are copied into every
block that needs them. Cutting after layer ``i`` is valid — ``i`` is a *cut point* — when
exactly one non-constant tensor is produced at or before ``i`` and needed after it. Skip
connections, concatenations and attention therefore fall inside *segments*, the runs of
layers between consecutive cut points that the planner places as atomic units (paper 004).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from splitdnn.graph.errors import UnsupportedModelError
from splitdnn.graph.flops import node_flops
from splitdnn.graph.normalise import (
    constant_producers,
    is_constant_node,
    node_inputs,
    normalise,
    real_inputs,
    static_shape,
    value_infos,
)


@dataclass(frozen=True)
class TensorInfo:
    """Name, static shape and numpy dtype name of a tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class Layer:
    """One compute node of the model."""

    index: int
    name: str
    op_type: str
    flops: int
    params_bytes: int
    output_bytes: int


@dataclass(frozen=True)
class Segment:
    """The layers between two consecutive cut points: the unit the planner places."""

    index: int
    first_layer: int
    last_layer: int
    flops: int
    params_bytes: int
    output_bytes: int


@dataclass
class ModelGraph:
    """An analysed model: normalised ONNX, its layers, cut points and segments."""

    model: onnx.ModelProto
    input: TensorInfo
    output: TensorInfo
    layers: list[Layer]
    layer_nodes: list[onnx.NodeProto]
    constant_producers: dict[str, onnx.NodeProto]
    tensors: dict[str, TensorInfo]
    crossing: dict[int, str]
    source: str = ""
    source_path: str = ""
    segments: list[Segment] = field(default_factory=list)

    @cached_property
    def initializer_names(self) -> frozenset[str]:
        return frozenset(tensor.name for tensor in self.model.graph.initializer)

    @cached_property
    def cut_points(self) -> list[int]:
        return sorted(self.crossing)

    def nearest_cut_points(self, cut: int) -> list[int]:
        """The closest valid cut points below and above ``cut`` (one or two of them)."""
        points = self.cut_points
        position = bisect.bisect_left(points, cut)
        return points[max(0, position - 1) : position + 1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.source,
            "input": self.input.to_dict(),
            "output": self.output.to_dict(),
            "opset": max((entry.version for entry in self.model.opset_import), default=0),
            "total_flops": sum(layer.flops for layer in self.layers),
            "total_params_bytes": sum(layer.params_bytes for layer in self.layers),
            "layers": [asdict(layer) for layer in self.layers],
            "cut_points": self.cut_points,
            "segments": [asdict(segment) for segment in self.segments],
        }


def analyse_model(
    path: Path, input_shape: tuple[int, ...] | None = None, source: str = ""
) -> ModelGraph:
    """Load an ONNX file, fix its input shape and find its layers, cut points and segments."""
    try:
        model = onnx.load(str(path))
    except Exception as error:  # protobuf raises DecodeError, onnx raises its own types
        raise UnsupportedModelError(f"{path} is not a readable ONNX model: {error}") from error
    model = normalise(model, input_shape)
    graph = build_model_graph(model)
    graph.source = source or str(path)
    graph.source_path = str(path)
    return graph


def build_model_graph(model: onnx.ModelProto) -> ModelGraph:
    """Classify nodes, measure layers, and find cut points and segments of a normalised model."""
    graph = model.graph
    tensors = tensor_table(model)
    producers, constants = constant_producers(graph)
    layer_nodes = [node for node in graph.node if not is_constant_node(node, constants)]
    if not layer_nodes:
        raise UnsupportedModelError("the model has no compute nodes: nothing to split")
    _require_static_shapes(layer_nodes, tensors)
    input_info = tensors[real_inputs(graph)[0].name]
    output_info = tensors[graph.output[0].name]
    params = _attribute_params(layer_nodes, producers, tensors, graph)
    layers = [
        Layer(
            index=index,
            name=node.name or f"{node.op_type}_{index}",
            op_type=node.op_type,
            flops=node_flops(node, lambda name: _shape_or_none(tensors, name)),
            params_bytes=params[index],
            output_bytes=sum(tensors[name].nbytes for name in node.output if name in tensors),
        )
        for index, node in enumerate(layer_nodes)
    ]
    crossing = find_cut_points(layer_nodes, input_info.name, output_info.name, constants)
    result = ModelGraph(
        model, input_info, output_info, layers, layer_nodes, producers, tensors, crossing
    )
    result.segments = build_segments(layers, result.cut_points, crossing, tensors, output_info)
    return result


def tensor_table(model: onnx.ModelProto) -> dict[str, TensorInfo]:
    """Every tensor with a fully static shape: inputs, outputs, values and initializers."""
    table: dict[str, TensorInfo] = {}
    for name, value in value_infos(model.graph).items():
        shape = static_shape(value)
        elem_type = value.type.tensor_type.elem_type
        if shape is not None and elem_type:
            table[name] = TensorInfo(name, shape, _numpy_dtype(elem_type))
    for tensor in model.graph.initializer:
        dtype = _numpy_dtype(tensor.data_type)
        table[tensor.name] = TensorInfo(tensor.name, tuple(tensor.dims), dtype)
    return table


def _numpy_dtype(elem_type: int) -> str:
    return str(np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)))


def _shape_or_none(tensors: dict[str, TensorInfo], name: str) -> tuple[int, ...] | None:
    info = tensors.get(name)
    return info.shape if info else None


def _require_static_shapes(nodes: list[onnx.NodeProto], tensors: dict[str, TensorInfo]) -> None:
    missing = [name for node in nodes for name in node.output if name and name not in tensors]
    if missing:
        raise UnsupportedModelError(
            f"shape inference left {len(missing)} tensor(s) without a static shape "
            f"(first: {missing[0]!r}); export the model with static shapes"
        )


def constant_closure(
    names: Iterable[str], producers: dict[str, onnx.NodeProto]
) -> tuple[set[str], list[onnx.NodeProto]]:
    """Constant source tensors and producer nodes that the given tensors depend on."""
    sources: set[str] = set()
    nodes: dict[int, onnx.NodeProto] = {}
    stack = list(names)
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if not name or name in seen:
            continue
        seen.add(name)
        node = producers.get(name)
        if node is None:
            sources.add(name)
            continue
        nodes[id(node)] = node
        if node.op_type == "Constant":
            sources.add(name)
        stack.extend(node_inputs(node))
    return sources, list(nodes.values())


def _attribute_params(
    layer_nodes: list[onnx.NodeProto],
    producers: dict[str, onnx.NodeProto],
    tensors: dict[str, TensorInfo],
    graph: onnx.GraphProto,
) -> list[int]:
    """Bytes of constants each layer needs, each constant counted at its first user only."""
    initializers = {tensor.name for tensor in graph.initializer}
    constant_bytes = {name: tensors[name].nbytes for name in initializers if name in tensors}
    counted: set[str] = set()
    result = []
    for node in layer_nodes:
        needed = [name for name in node_inputs(node) if name in initializers or name in producers]
        sources, _ = constant_closure(needed, producers)
        fresh = sources - counted
        counted |= fresh
        result.append(sum(constant_bytes.get(name, _constant_node_bytes(name, producers))
                          for name in fresh))
    return result


def _constant_node_bytes(name: str, producers: dict[str, onnx.NodeProto]) -> int:
    node = producers.get(name)
    if node is None or node.op_type != "Constant":
        return 0
    for attribute in node.attribute:
        if attribute.name == "value":
            return int(numpy_helper.to_array(attribute.t).nbytes)
    return 0


def find_cut_points(
    layer_nodes: list[onnx.NodeProto], input_name: str, output_name: str, constants: set[str]
) -> dict[int, str]:
    """Map each cut point ``i`` to the single non-constant tensor crossing a cut after layer i.

    A tensor produced by layer ``p`` (-1 for the model input) whose last user is layer ``c``
    (len(layers) for the model output) crosses every cut ``i`` with ``p <= i < c``.
    """
    count = len(layer_nodes)
    producer: dict[str, int] = {input_name: -1}
    last_user: dict[str, int] = {}
    for index, node in enumerate(layer_nodes):
        for name in node_inputs(node):
            if name and name not in constants:
                last_user[name] = index
        for name in node.output:
            if name:
                producer[name] = index
    last_user[output_name] = count
    starts: list[list[str]] = [[] for _ in range(count + 1)]
    ends: list[list[str]] = [[] for _ in range(count + 1)]
    for name, first in producer.items():
        end = last_user.get(name, first)
        if end > first:
            starts[max(first, 0)].append(name)
            ends[end].append(name)
    return _sweep_crossings(count, starts, ends)


def _sweep_crossings(count: int, starts: list[list[str]], ends: list[list[str]]) -> dict[int, str]:
    active: set[str] = set()
    crossing: dict[int, str] = {}
    for cut in range(count - 1):
        active.update(starts[cut])
        active.difference_update(ends[cut])
        if len(active) == 1:
            crossing[cut] = next(iter(active))
    return crossing


def build_segments(
    layers: list[Layer],
    cut_points: list[int],
    crossing: dict[int, str],
    tensors: dict[str, TensorInfo],
    output: TensorInfo,
) -> list[Segment]:
    """The runs of layers between consecutive cut points."""
    bounds = [*cut_points, len(layers) - 1]
    segments = []
    first = 0
    for index, last in enumerate(bounds):
        members = layers[first : last + 1]
        out = tensors[crossing[last]] if last in crossing else output
        segments.append(
            Segment(
                index=index,
                first_layer=first,
                last_layer=last,
                flops=sum(layer.flops for layer in members),
                params_bytes=sum(layer.params_bytes for layer in members),
                output_bytes=out.nbytes,
            )
        )
        first = last + 1
    return segments
