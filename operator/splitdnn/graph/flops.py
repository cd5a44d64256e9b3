"""Floating-point operation counts for ONNX nodes, from their static shapes.

Convention: a multiply-accumulate counts as 2 FLOPs; element-wise ops count one FLOP per
output element (a few for transcendental ones); data movement (Reshape, Concat, ...) is free.
The counts rank layers by cost for the planner; they are not meant to match hardware counters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import onnx
from onnx import helper

Shape = tuple[int, ...]
ShapeOf = Callable[[str], "Shape | None"]

FREE_OPS = frozenset(
    {
        "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Split", "Slice",
        "Gather", "GatherElements", "Identity", "Dropout", "Shape", "Size", "Constant",
        "ConstantOfShape", "Expand", "Cast", "Pad", "Tile", "DepthToSpace", "SpaceToDepth",
    }
)
ELEMENTWISE_COST = {
    "Relu": 1, "LeakyRelu": 2, "PRelu": 2, "Clip": 1, "Add": 1, "Sub": 1, "Mul": 1, "Div": 1,
    "Max": 1, "Min": 1, "Neg": 1, "Abs": 1, "Sqrt": 2, "Pow": 4, "Sigmoid": 4, "Tanh": 4,
    "Exp": 4, "Log": 4, "Erf": 4, "HardSigmoid": 3, "HardSwish": 4, "Gelu": 8, "Elu": 4,
    "Selu": 4, "Softplus": 4, "Mish": 8, "Where": 1, "Equal": 1, "Less": 1, "Greater": 1,
    "Not": 1, "And": 1, "Or": 1, "Sum": 1, "Mean": 1, "Reciprocal": 1, "Floor": 1, "Ceil": 1,
    "Softmax": 5, "LogSoftmax": 6, "BatchNormalization": 2, "InstanceNormalization": 5,
    "LayerNormalization": 8, "GroupNormalization": 8, "LRN": 6,
}


def _elements(shape: Shape | None) -> int:
    return math.prod(shape) if shape else 0


def _attribute(node: onnx.NodeProto, name: str, default: object) -> object:
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def conv_flops(node: onnx.NodeProto, shape_of: ShapeOf) -> int:
    """2 × output elements × (input channels / groups) × kernel area, plus the bias adds."""
    weight, output = shape_of(node.input[1]), shape_of(node.output[0])
    if weight is None or output is None:
        return 0
    kernel_area = math.prod(weight[2:])
    macs = _elements(output) * weight[1] * kernel_area
    bias = _elements(output) if len(node.input) > 2 and node.input[2] else 0
    return 2 * macs + bias


def conv_transpose_flops(node: onnx.NodeProto, shape_of: ShapeOf) -> int:
    """Each input element scatters into kernel area × output channels / groups outputs."""
    source, weight = shape_of(node.input[0]), shape_of(node.input[1])
    if source is None or weight is None:
        return 0
    return 2 * _elements(source) * weight[1] * math.prod(weight[2:])


def matmul_flops(node: onnx.NodeProto, shape_of: ShapeOf) -> int:
    """2 × output elements × the contracted dimension."""
    left, output = shape_of(node.input[0]), shape_of(node.output[0])
    if left is None or output is None or not left:
        return 0
    return 2 * _elements(output) * left[-1]


def gemm_flops(node: onnx.NodeProto, shape_of: ShapeOf) -> int:
    """Gemm: contracted dimension depends on transA; C adds one FLOP per output."""
    left, output = shape_of(node.input[0]), shape_of(node.output[0])
    if left is None or output is None or len(left) != 2:
        return 0
    inner = left[0] if _attribute(node, "transA", 0) else left[1]
    bias = _elements(output) if len(node.input) > 2 and node.input[2] else 0
    return 2 * _elements(output) * inner + bias


def pool_flops(node: onnx.NodeProto, shape_of: ShapeOf) -> int:
    """Windowed pooling: one FLOP per window element per output."""
    kernel = _attribute(node, "kernel_shape", [])
    assert isinstance(kernel, list)
    return _elements(shape_of(node.output[0])) * max(1, math.prod(kernel))


def global_pool_flops(node: onnx.NodeProto, shape_of: ShapeOf) -> int:
    """Global pooling reads every input element once."""
    return _elements(shape_of(node.input[0]))


def reduce_flops(node: onnx.NodeProto, shape_of: ShapeOf) -> int:
    """Reductions read every input element once."""
    return _elements(shape_of(node.input[0]))


SPECIAL_OPS: dict[str, Callable[[onnx.NodeProto, ShapeOf], int]] = {
    "Conv": conv_flops,
    "ConvTranspose": conv_transpose_flops,
    "MatMul": matmul_flops,
    "Gemm": gemm_flops,
    "MaxPool": pool_flops,
    "AveragePool": pool_flops,
    "LpPool": pool_flops,
    "GlobalAveragePool": global_pool_flops,
    "GlobalMaxPool": global_pool_flops,
    "ReduceMean": reduce_flops,
    "ReduceSum": reduce_flops,
    "ReduceMax": reduce_flops,
    "ReduceMin": reduce_flops,
    "ReduceL2": reduce_flops,
}


def node_flops(node: onnx.NodeProto, shape_of: ShapeOf) -> int:
    """FLOPs of one node; unknown ops count one FLOP per output element."""
    if node.op_type in FREE_OPS:
        return 0
    special = SPECIAL_OPS.get(node.op_type)
    if special is not None:
        return special(node, shape_of)
    per_element = ELEMENTWISE_COST.get(node.op_type, 1)
    return per_element * sum(_elements(shape_of(name)) for name in _present(node.output))


def _present(names: Sequence[str]) -> list[str]:
    return [name for name in names if name]
