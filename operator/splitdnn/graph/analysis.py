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
import heapq
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from splitdnn.graph.errors import UnsupportedModelError
from splitdnn.graph.flops import node_flops

NON_DETERMINISTIC_OPS = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"}
)
SHAPE_OPS = frozenset({"Shape", "Size"})
MAX_FOLD_ROUNDS = 200
SMALL_CONSTANT_ELEMENTS = 4096


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


def real_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are not initializers (old exporters list weights as inputs too)."""
    initializers = {tensor.name for tensor in graph.initializer}
    return [value for value in graph.input if value.name not in initializers]


def normalise(model: onnx.ModelProto, input_shape: tuple[int, ...] | None) -> onnx.ModelProto:
    """Give the model one static input shape, infer every shape, fold static shape ops."""
    inputs = real_inputs(model.graph)
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise UnsupportedModelError(
            f"splitdnn splits models with one input and one output; this model has "
            f"{len(inputs)} input(s) and {len(model.graph.output)} output(s)"
        )
    _set_input_shape(inputs[0], input_shape)
    ordered = topological_order(_original_nodes(model))
    model.graph.ClearField("node")
    model.graph.node.extend(ordered)
    weights, added = _detach_weights(model.graph)
    # Each round folds one more level of shape arithmetic (Shape -> Gather -> Concat -> ...).
    for _ in range(MAX_FOLD_ROUNDS):
        _clear_inferred_shapes(model.graph)  # stale entries would hide folded constants
        model = _infer_shapes(model)
        shapes_folded = _fold_static_shape_ops(model.graph)
        if not (_fold_constant_nodes(model) or shapes_folded):
            break
    _attach_weights(model.graph, weights, added)
    return model


def _detach_weights(graph: onnx.GraphProto) -> tuple[list[onnx.TensorProto], int]:
    """Turn large initializers into typed graph inputs so that shape inference stays cheap.

    Shape arithmetic only ever reads small constants; weights only need their shapes.
    """
    weights = [tensor for tensor in graph.initializer
               if math.prod(tensor.dims) > SMALL_CONSTANT_ELEMENTS]
    names = {tensor.name for tensor in weights}
    small = [tensor for tensor in graph.initializer if tensor.name not in names]
    graph.ClearField("initializer")
    graph.initializer.extend(small)
    declared = {value.name for value in graph.input}  # IR < 4 lists weights as inputs too
    added = [helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))
             for tensor in weights if tensor.name not in declared]
    graph.input.extend(added)
    return weights, len(added)


def _attach_weights(
    graph: onnx.GraphProto, weights: list[onnx.TensorProto], added: int
) -> None:
    """Undo :func:`_detach_weights`: drop the inputs it appended, restore the initializers."""
    kept = list(graph.input)[: len(graph.input) - added]
    graph.ClearField("input")
    graph.input.extend(kept)
    graph.initializer.extend(weights)


def _original_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [onnx.NodeProto.FromString(node.SerializeToString()) for node in model.graph.node]


def _set_input_shape(value: onnx.ValueInfoProto, input_shape: tuple[int, ...] | None) -> None:
    dims = value.type.tensor_type.shape.dim
    declared = [dim.dim_value if dim.HasField("dim_value") else None for dim in dims]
    if input_shape is None:
        if not declared or any(size is None for size in declared):
            raise UnsupportedModelError(
                f"model input {value.name!r} has symbolic dimensions {_dims_text(dims)}: "
                f"pass --input-shape"
            )
        return
    if declared and len(declared) != len(input_shape):
        raise UnsupportedModelError(
            f"--input-shape {','.join(map(str, input_shape))} has rank {len(input_shape)}, "
            f"but model input {value.name!r} has rank {len(declared)} {_dims_text(dims)}"
        )
    value.type.tensor_type.shape.ClearField("dim")
    for size in input_shape:
        value.type.tensor_type.shape.dim.add().dim_value = size


def _dims_text(dims: Iterable[onnx.TensorShapeProto.Dimension]) -> str:
    return "[" + ", ".join(dim.dim_param or str(dim.dim_value) for dim in dims) + "]"


def _clear_inferred_shapes(graph: onnx.GraphProto) -> None:
    graph.ClearField("value_info")
    for output in graph.output:
        output.type.tensor_type.ClearField("shape")


def _infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as error:  # onnx raises InferenceError and ValueError variants
        raise UnsupportedModelError(f"shape inference failed: {error}") from error


def topological_order(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Kahn's algorithm, preferring the original order (a sorted graph is left unchanged)."""
    producer = {name: index for index, node in enumerate(nodes) for name in node.output if name}
    waiting_on = [0] * len(nodes)
    dependants: list[list[int]] = [[] for _ in nodes]
    for index, node in enumerate(nodes):
        for name in {name for name in node.input if name in producer}:
            waiting_on[index] += 1
            dependants[producer[name]].append(index)
    ready = [index for index, count in enumerate(waiting_on) if count == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        for dependant in dependants[index]:
            waiting_on[dependant] -= 1
            if waiting_on[dependant] == 0:
                heapq.heappush(ready, dependant)
    if len(order) != len(nodes):
        raise UnsupportedModelError("the ONNX graph has a cycle")
    return [nodes[index] for index in order]


def _static_shape(value: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    dims = tensor_type.shape.dim
    if any(not dim.HasField("dim_value") for dim in dims):
        return None
    return tuple(dim.dim_value for dim in dims)


def _value_infos(graph: onnx.GraphProto) -> dict[str, onnx.ValueInfoProto]:
    values = {value.name: value for value in graph.value_info}
    values.update({value.name: value for value in graph.input})
    values.update({value.name: value for value in graph.output})
    return values


def _fold_static_shape_ops(graph: onnx.GraphProto) -> bool:
    """Replace Shape/Size of statically shaped tensors by Constants; True if any changed."""
    values = _value_infos(graph)
    initializers = {tensor.name: tuple(tensor.dims) for tensor in graph.initializer}
    changed = False
    for position, node in enumerate(graph.node):
        if node.op_type not in SHAPE_OPS:
            continue
        shape = initializers.get(node.input[0])
        if shape is None and node.input[0] in values:
            shape = _static_shape(values[node.input[0]])
        if shape is None:
            continue
        graph.node[position].CopyFrom(_shape_constant(node, shape))
        changed = True
    return changed


def _fold_constant_nodes(model: onnx.ModelProto) -> bool:
    """Evaluate nodes computed only from constants and store their results as initializers.

    Shape arithmetic folded this way lets shape inference see concrete Reshape/Slice/Pad
    arguments. Returns False (and leaves the graph alone) when there is nothing to fold or
    the reference evaluator cannot run one of the ops.
    """
    graph = model.graph
    producers, _ = _constant_producers(graph)
    nodes = _in_order(graph, producers.values())
    if not nodes:
        return False
    try:
        values = _evaluate_constants(model, nodes)
    except Exception:  # the reference evaluator raises anything from NotImplementedError on
        return False
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    folded = {id(node) for node in nodes}
    kept = [node for node in graph.node if id(node) not in folded]
    graph.ClearField("node")
    graph.node.extend(kept)
    graph.initializer.extend(
        numpy_helper.from_array(np.asarray(value), name)
        for name, value in values.items() if name in used
    )
    return True


def _in_order(graph: onnx.GraphProto, nodes: Iterable[onnx.NodeProto]) -> list[onnx.NodeProto]:
    wanted = {id(node) for node in nodes}
    return [node for node in graph.node if id(node) in wanted]


def _evaluate_constants(
    model: onnx.ModelProto, nodes: list[onnx.NodeProto]
) -> dict[str, np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    outputs = [name for node in nodes for name in node.output if name]
    needed = {name for node in nodes for name in node.input}
    constant_graph = helper.make_graph(
        nodes,
        "constants",
        [],
        [helper.make_empty_tensor_value_info(name) for name in outputs],
        initializer=[tensor for tensor in model.graph.initializer if tensor.name in needed],
    )
    constant_model = helper.make_model(
        constant_graph, opset_imports=list(model.opset_import), ir_version=model.ir_version
    )
    results = ReferenceEvaluator(constant_model).run(None, {})
    return dict(zip(outputs, results, strict=True))


def _shape_constant(node: onnx.NodeProto, shape: tuple[int, ...]) -> onnx.NodeProto:
    if node.op_type == "Size":
        value = np.array(math.prod(shape), dtype=np.int64)
    else:
        start = _int_attribute(node, "start", 0)
        end = _int_attribute(node, "end", len(shape))
        value = np.array(shape[slice(start, end)], dtype=np.int64)
    tensor = numpy_helper.from_array(value, name=node.output[0] + "_value")
    return helper.make_node(
        "Constant", [], [node.output[0]], name=node.name or node.output[0], value=tensor
    )


def _int_attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    for attribute in node.attribute:
        if attribute.name == name:
            return int(attribute.i)
    return default


def build_model_graph(model: onnx.ModelProto) -> ModelGraph:
    """Classify nodes, measure layers, and find cut points and segments of a normalised model."""
    graph = model.graph
    tensors = tensor_table(model)
    constant_producers, constants = _constant_producers(graph)
    layer_nodes = [node for node in graph.node if not _is_constant_node(node, constants)]
    if not layer_nodes:
        raise UnsupportedModelError("the model has no compute nodes: nothing to split")
    _require_static_shapes(layer_nodes, tensors)
    input_info = tensors[real_inputs(graph)[0].name]
    output_info = tensors[graph.output[0].name]
    params = _attribute_params(layer_nodes, constant_producers, tensors, graph)
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
        model, input_info, output_info, layers, layer_nodes, constant_producers, tensors, crossing
    )
    result.segments = build_segments(layers, result.cut_points, crossing, tensors, output_info)
    return result


def tensor_table(model: onnx.ModelProto) -> dict[str, TensorInfo]:
    """Every tensor with a fully static shape: inputs, outputs, values and initializers."""
    table: dict[str, TensorInfo] = {}
    for name, value in _value_infos(model.graph).items():
        shape = _static_shape(value)
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


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(attribute.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for attribute in node.attribute)


def _is_constant_node(node: onnx.NodeProto, constants: set[str]) -> bool:
    if node.op_type in NON_DETERMINISTIC_OPS or _has_subgraph(node):
        return False
    return all(name in constants for name in node.input if name)


def _constant_producers(graph: onnx.GraphProto) -> tuple[dict[str, onnx.NodeProto], set[str]]:
    """Map every constant tensor made by a node to that node; also return all constant names."""
    constants = {tensor.name for tensor in graph.initializer}
    producers: dict[str, onnx.NodeProto] = {}
    for node in graph.node:
        if _is_constant_node(node, constants):
            for name in node.output:
                if name:
                    constants.add(name)
                    producers[name] = node
    return producers, constants


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
        stack.extend(node.input)
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
        needed = [name for name in node.input if name in initializers or name in producers]
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
        for name in node.input:
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
