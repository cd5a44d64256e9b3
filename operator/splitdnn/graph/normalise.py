"""Normalise an ONNX model before analysis: one static input shape, every shape inferred.

Exported models often compute shapes at run time (``Shape -> Gather -> Concat -> Reshape``).
With a static input shape all of that is constant, so it is folded: ``Shape`` of a
statically shaped tensor becomes a constant, and every node computed only from constants
is evaluated once (ONNX reference evaluator) and stored as an initializer. Shape inference
then sees concrete ``Reshape``/``Slice`` arguments and gives every tensor a static shape.
Large weights are detached during the folding rounds, so each round's shape inference
handles only the graph structure.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from splitdnn.graph.errors import UnsupportedModelError

NON_DETERMINISTIC_OPS = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"}
)
SHAPE_OPS = frozenset({"Shape", "Size"})
MAX_FOLD_ROUNDS = 200
SMALL_CONSTANT_ELEMENTS = 4096


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
    set_input_shape(inputs[0], input_shape)
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


def set_input_shape(value: onnx.ValueInfoProto, input_shape: tuple[int, ...] | None) -> None:
    """Give a model input ``input_shape`` (same rank), or check its declared shape is static."""
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
        for name in {name for name in node_inputs(node) if name in producer}:
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


def static_shape(value: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    dims = tensor_type.shape.dim
    if any(not dim.HasField("dim_value") for dim in dims):
        return None
    return tuple(dim.dim_value for dim in dims)


def value_infos(graph: onnx.GraphProto) -> dict[str, onnx.ValueInfoProto]:
    values = {value.name: value for value in graph.value_info}
    values.update({value.name: value for value in graph.input})
    values.update({value.name: value for value in graph.output})
    return values


def _fold_static_shape_ops(graph: onnx.GraphProto) -> bool:
    """Replace Shape/Size of statically shaped tensors by Constants; True if any changed."""
    values = value_infos(graph)
    initializers = {tensor.name: tuple(tensor.dims) for tensor in graph.initializer}
    changed = False
    for position, node in enumerate(graph.node):
        if node.op_type not in SHAPE_OPS:
            continue
        shape = initializers.get(node.input[0])
        if shape is None and node.input[0] in values:
            shape = static_shape(values[node.input[0]])
        if shape is None:
            continue
        graph.node[position].CopyFrom(_shape_constant(node, shape))
        changed = True
    return changed


def _fold_constant_nodes(model: onnx.ModelProto) -> bool:
    """Evaluate nodes computed only from constants; store integer results as initializers.

    Folding the integer (shape) arithmetic lets shape inference see concrete Reshape, Slice
    and Pad arguments. Constant nodes with float outputs (an expanded class token, a
    transposed weight) stay nodes: their size may depend on the batch size, and a block
    recomputes them cheaply. Nodes the reference evaluator cannot run stay as well. Returns
    True when anything was folded.
    """
    graph = model.graph
    producers, _ = constant_producers(graph)
    nodes = in_graph_order(graph, producers.values())
    values = _evaluate_constants(model, nodes)
    folded = [node for node in nodes if _foldable(node, values)]
    if not folded:
        return False
    used = {name for node in graph.node for name in node_inputs(node)}
    used |= {output.name for output in graph.output}
    folded_ids = {id(node) for node in folded}
    kept = [node for node in graph.node if id(node) not in folded_ids]
    graph.ClearField("node")
    graph.node.extend(_without_dead_constants(kept, producers, graph))
    graph.initializer.extend(
        numpy_helper.from_array(np.asarray(values[name]), name)
        for node in folded for name in node.output if name in used
    )
    return True


def _foldable(node: onnx.NodeProto, values: dict[str, np.ndarray]) -> bool:
    outputs = [name for name in node.output if name]
    if not all(name in values for name in outputs):
        return False
    return node.op_type == "Constant" or all(
        np.asarray(values[name]).dtype.kind in "iub" for name in outputs
    )


def _without_dead_constants(
    nodes: list[onnx.NodeProto], producers: dict[str, onnx.NodeProto], graph: onnx.GraphProto
) -> list[onnx.NodeProto]:
    """Drop constant producers nobody reads any more (their readers were folded)."""
    constant_ids = {id(node) for node in producers.values()}
    outputs = {output.name for output in graph.output}
    while True:
        used = {name for node in nodes for name in node_inputs(node)} | outputs
        alive = [node for node in nodes if id(node) not in constant_ids
                 or any(name in used for name in node.output)]
        if len(alive) == len(nodes):
            return alive
        nodes = alive


def in_graph_order(
    graph: onnx.GraphProto, nodes: Iterable[onnx.NodeProto]
) -> list[onnx.NodeProto]:
    """The given nodes (by identity) in the order the graph lists them."""
    wanted = {id(node) for node in nodes}
    return [node for node in graph.node if id(node) in wanted]


def node_inputs(node: onnx.NodeProto) -> list[str]:
    """Explicit inputs plus outer-scope tensors read inside If/Loop/Scan bodies."""
    names = [name for name in node.input if name]
    for attribute in node.attribute:
        for body in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else \
                list(attribute.graphs):
            names.extend(_outer_scope_names(body))
    return names


def _outer_scope_names(body: onnx.GraphProto) -> list[str]:
    defined = {value.name for value in body.input} | {t.name for t in body.initializer}
    defined |= {name for node in body.node for name in node.output}
    return [name for node in body.node for name in node_inputs(node) if name not in defined]


def _evaluate_constants(
    model: onnx.ModelProto, nodes: list[onnx.NodeProto]
) -> dict[str, np.ndarray]:
    """Values of the given constant nodes' outputs: all at once, else node by node."""
    if not nodes:
        return {}
    try:
        return _evaluate(model, nodes, list(model.graph.initializer))
    except Exception:  # the reference evaluator raises anything, NotImplementedError included
        pass
    values: dict[str, np.ndarray] = {}
    for node in nodes:
        known = [*model.graph.initializer,
                 *(numpy_helper.from_array(np.asarray(value), name)
                   for name, value in values.items() if name in node.input)]
        try:
            values.update(_evaluate(model, [node], known))
        except Exception:  # this node stays in the graph; so do the nodes that depend on it
            continue
    return values


def _evaluate(
    model: onnx.ModelProto, nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto]
) -> dict[str, np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    outputs = [name for node in nodes for name in node.output if name]
    needed = {name for node in nodes for name in node.input}
    constant_graph = helper.make_graph(
        nodes,
        "constants",
        [],
        [helper.make_empty_tensor_value_info(name) for name in outputs],
        initializer=[tensor for tensor in initializers if tensor.name in needed],
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


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(attribute.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for attribute in node.attribute)


def is_constant_node(node: onnx.NodeProto, constants: set[str]) -> bool:
    if node.op_type in NON_DETERMINISTIC_OPS or _has_subgraph(node):
        return False
    return all(name in constants for name in node.input if name)


def constant_producers(graph: onnx.GraphProto) -> tuple[dict[str, onnx.NodeProto], set[str]]:
    """Map every constant tensor made by a node to that node; also return all constant names."""
    constants = {tensor.name for tensor in graph.initializer}
    producers: dict[str, onnx.NodeProto] = {}
    for node in graph.node:
        if is_constant_node(node, constants):
            for name in node.output:
                if name:
                    constants.add(name)
                    producers[name] = node
    return producers, constants
