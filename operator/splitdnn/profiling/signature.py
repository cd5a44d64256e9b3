"""Layer signatures: one key per kind of profiled unit, shared across models and positions.

The profiled unit is a segment (the layers between two cut points, see
``splitdnn.graph.analysis``). Its signature is a canonical description of everything that
decides its cost and nothing else: for every layer, in order, the op type and domain, all
attributes (kernel, stride, pads, dilations, groups, ...), the shape and dtype of every
tensor it reads or writes (so channels, spatial size and batch), and how the layers are
wired to each other inside the segment. Tensor and node names, weight values and the
segment's position in the model are left out, so ResNet-18's and ResNet-34's identical
basic blocks, or the repeated blocks of one stage, share one column of the
hardware × signature matrix.

The key reads ``OPS[in>out]dtype#digest``: a short human-readable part plus the first
``DIGEST_CHARS`` hex digits of the SHA-256 of the canonical description.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import onnx
from onnx import helper

from splitdnn.graph.analysis import ModelGraph, Segment, TensorInfo
from splitdnn.graph.normalise import node_inputs

DIGEST_CHARS = 12
SHOWN_OPS = 4
DTYPE_SHORT = {"float32": "f32", "float16": "f16", "float64": "f64", "bfloat16": "bf16",
               "int8": "i8", "uint8": "u8", "int32": "i32", "int64": "i64"}


@dataclass(frozen=True)
class SegmentFeatures:
    """What the Neurosurgeon-style baseline regresses on, and what a reader wants to see."""

    op_types: dict[str, int]
    dominant_op: str
    layers: int
    flops: int
    input_bytes: int
    output_bytes: int
    params_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmentFeatures:
        return cls(
            op_types={str(key): int(value) for key, value in data["op_types"].items()},
            dominant_op=str(data["dominant_op"]),
            layers=int(data["layers"]),
            flops=int(data["flops"]),
            input_bytes=int(data["input_bytes"]),
            output_bytes=int(data["output_bytes"]),
            params_bytes=int(data["params_bytes"]),
        )


@dataclass(frozen=True)
class SegmentSignature:
    """A segment's signature key and its cost features."""

    key: str
    features: SegmentFeatures


def segment_signature(graph: ModelGraph, segment: Segment) -> SegmentSignature:
    """The signature of one segment of an analysed model."""
    nodes = graph.layer_nodes[segment.first_layer : segment.last_layer + 1]
    seg_input = segment_input(graph, segment)
    seg_output = segment_output(graph, segment)
    description = [_describe_node(node, index, nodes, graph, seg_input.name)
                   for index, node in enumerate(nodes)]
    canonical = json.dumps(description, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:DIGEST_CHARS]
    key = (f"{_ops_text([node.op_type for node in nodes])}"
           f"[{_shape_text(seg_input.shape)}>{_shape_text(seg_output.shape)}]"
           f"{DTYPE_SHORT.get(seg_input.dtype, seg_input.dtype)}#{digest}")
    return SegmentSignature(key, _features(graph, segment, seg_input, seg_output))


def model_signatures(graph: ModelGraph) -> list[SegmentSignature]:
    """The signature of every segment, in segment order."""
    return [segment_signature(graph, segment) for segment in graph.segments]


def segment_input(graph: ModelGraph, segment: Segment) -> TensorInfo:
    """The one tensor a segment reads: the model input or the tensor crossing the cut before."""
    if segment.first_layer == 0:
        return graph.input
    return graph.tensors[graph.crossing[segment.first_layer - 1]]


def segment_output(graph: ModelGraph, segment: Segment) -> TensorInfo:
    """The one tensor a segment hands on: the crossing tensor or the model output."""
    name = graph.crossing.get(segment.last_layer)
    return graph.tensors[name] if name is not None else graph.output


def _describe_node(
    node: onnx.NodeProto, index: int, nodes: list[onnx.NodeProto], graph: ModelGraph,
    segment_input_name: str,
) -> dict[str, Any]:
    """Op, attributes and wiring of one layer, with names replaced by positions and shapes."""
    local = {name: f"n{position}.{slot}"
             for position, earlier in enumerate(nodes[:index])
             for slot, name in enumerate(earlier.output) if name}
    inputs = []
    for name in node_inputs(node):
        if not name:
            inputs.append("")
        elif name == segment_input_name:
            inputs.append("in")
        elif name in local:
            inputs.append(local[name])
        else:
            inputs.append(f"const:{_tensor_text(graph, name)}")
    return {
        "op": f"{node.domain}::{node.op_type}" if node.domain else node.op_type,
        "attributes": {attribute.name: _attribute_text(attribute) for attribute in node.attribute},
        "inputs": inputs,
        "shapes": [_tensor_text(graph, name) for name in node_inputs(node) if name],
        "outputs": [_tensor_text(graph, name) for name in node.output if name],
    }


def _tensor_text(graph: ModelGraph, name: str) -> str:
    info = graph.tensors.get(name)
    return f"{_shape_text(info.shape)}:{info.dtype}" if info is not None else "?"


def _attribute_text(attribute: onnx.AttributeProto) -> Any:
    """A JSON-able value; tensors by shape and dtype, subgraphs by their op sequence."""
    value = helper.get_attribute_value(attribute)
    if isinstance(value, onnx.TensorProto):
        return {"tensor": [list(value.dims), int(value.data_type)]}
    if isinstance(value, onnx.GraphProto):
        return {"graph": [node.op_type for node in value.node]}
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, list):
        return [_list_item(item) for item in value]
    return value


def _list_item(item: Any) -> Any:
    if isinstance(item, bytes):
        return item.decode(errors="replace")
    if isinstance(item, onnx.GraphProto):
        return [node.op_type for node in item.node]
    if isinstance(item, onnx.TensorProto):
        return [list(item.dims), int(item.data_type)]
    return item


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "scalar"


def _ops_text(op_types: list[str]) -> str:
    """Run-length op sequence (``Conv+Relu``, ``Conv*2+Add``), elided past a few runs."""
    runs: list[list[Any]] = []
    for op in op_types:
        if runs and runs[-1][0] == op:
            runs[-1][1] += 1
        else:
            runs.append([op, 1])
    parts = [op if count == 1 else f"{op}*{count}" for op, count in runs]
    if len(parts) > SHOWN_OPS:
        parts = [*parts[: SHOWN_OPS - 1], f"..{len(op_types)}ops..", parts[-1]]
    return "+".join(parts)


def _features(
    graph: ModelGraph, segment: Segment, seg_input: TensorInfo, seg_output: TensorInfo
) -> SegmentFeatures:
    layers = graph.layers[segment.first_layer : segment.last_layer + 1]
    flops_by_op: Counter[str] = Counter()
    for layer in layers:
        flops_by_op[layer.op_type] += layer.flops
    dominant = max(flops_by_op, key=lambda op: flops_by_op[op]) if any(
        flops_by_op.values()) else layers[-1].op_type
    return SegmentFeatures(
        op_types=dict(Counter(layer.op_type for layer in layers)),
        dominant_op=dominant,
        layers=len(layers),
        flops=segment.flops,
        input_bytes=seg_input.nbytes,
        output_bytes=seg_output.nbytes,
        params_bytes=segment.params_bytes,
    )
