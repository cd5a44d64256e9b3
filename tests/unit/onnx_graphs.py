"""Small hand-built ONNX graphs with known cut points, for the graph tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
FLOAT = TensorProto.FLOAT


def save(nodes: list[onnx.NodeProto], path: Path, shape: list[int | str] | None = None,
         initializers: list[onnx.TensorProto] | None = None,
         output_shape: list[int] | None = None, extra_inputs: int = 0) -> Path:
    """Write a one-input, one-output float model whose input is X and output Y."""
    shape = shape or [1, 4]
    inputs = [helper.make_tensor_value_info("X", FLOAT, shape)]
    inputs += [helper.make_tensor_value_info(f"X{i}", FLOAT, shape) for i in range(extra_inputs)]
    output = helper.make_tensor_value_info("Y", FLOAT, output_shape or shape)
    graph = helper.make_graph(nodes, path.stem, inputs, [output], initializer=initializers or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def node(op: str, inputs: list[str], output: str, **attributes: object) -> onnx.NodeProto:
    return helper.make_node(op, inputs, [output], name=output, **attributes)


def sequential(path: Path) -> Path:
    """X -> Relu -> Sigmoid -> Tanh -> Y: every boundary is a cut point."""
    return save([node("Relu", ["X"], "a"), node("Sigmoid", ["a"], "b"),
                 node("Tanh", ["b"], "Y")], path)


def diamond(path: Path) -> Path:
    """a fans out into two branches that are added back: no cut inside the diamond."""
    return save([
        node("Relu", ["X"], "a"),
        node("Sigmoid", ["a"], "b"),
        node("Tanh", ["a"], "c"),
        node("Add", ["b", "c"], "d"),
        node("Relu", ["d"], "Y"),
    ], path)


def nested_residual(path: Path) -> Path:
    """An inner residual (r1 + r2) inside an outer one (x0 + ...)."""
    return save([
        node("Relu", ["X"], "x0"),
        node("Sigmoid", ["x0"], "r1"),
        node("Tanh", ["r1"], "r2"),
        node("Add", ["r2", "r1"], "s1"),
        node("Add", ["s1", "x0"], "s2"),
        node("Relu", ["s2"], "Y"),
    ], path)


def concat(path: Path) -> Path:
    """Two branches concatenated along the channel axis (Inception / DenseNet style)."""
    return save([
        node("Relu", ["X"], "a"),
        node("Sigmoid", ["a"], "b"),
        node("Tanh", ["a"], "c"),
        node("Concat", ["b", "c"], "d", axis=1),
        node("Relu", ["d"], "Y"),
    ], path, output_shape=[1, 8])


def constant_side_branches(path: Path) -> Path:
    """Shape arithmetic hangs off the data path; it must never count as crossing a cut.

    a = Relu(X[1,2,3,4]); flat = Reshape(a, concat(shape(a)[0:1], [-1])) -> [1, 24];
    Y = Sigmoid(flat).
    """
    return save([
        node("Relu", ["X"], "a"),
        node("Shape", ["a"], "a_shape"),
        node("Slice", ["a_shape", "zero", "one"], "batch"),
        node("Concat", ["batch", "minus_one"], "flat_shape", axis=0),
        node("Reshape", ["a", "flat_shape"], "flat"),
        node("Sigmoid", ["flat"], "Y"),
    ], path, shape=[1, 2, 3, 4], output_shape=[1, 24], initializers=[
        _int64("minus_one", [-1]), _int64("zero", [0]), _int64("one", [1]),
    ])


def shared_constant_producer(path: Path) -> Path:
    """A large transposed weight feeds two MatMuls that end up in different blocks.

    W is large enough (96×96) that the Transpose stays a node: it must be copied into
    both blocks that use it.
    """
    weight = np.random.default_rng(0).standard_normal((96, 96)).astype(np.float32) / 10
    return save([
        node("Relu", ["X"], "h"),
        node("Transpose", ["W"], "WT", perm=[1, 0]),
        node("MatMul", ["h", "WT"], "m1"),
        node("Relu", ["m1"], "r"),
        node("MatMul", ["r", "WT"], "Y"),
    ], path, shape=[1, 96], output_shape=[1, 96],
        initializers=[numpy_helper.from_array(weight, "W")])


def _int64(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def input_skip(path: Path) -> Path:
    """The model input is used again at the end, so nothing can be cut."""
    return save([node("Relu", ["X"], "a"), node("Sigmoid", ["a"], "b"),
                 node("Add", ["b", "X"], "Y")], path)


def branch_reads_outer_scope(path: Path) -> Path:
    """An If whose branches read the model input X from the outer graph.

    X is therefore still needed after layer 0, so layer 0 is not a cut point.
    """
    def branch(op: str) -> onnx.GraphProto:
        return helper.make_graph(
            [node(op, ["X", "a"], f"{op.lower()}_out")], f"{op.lower()}_branch", [],
            [helper.make_tensor_value_info(f"{op.lower()}_out", FLOAT, [1, 4])])

    condition = numpy_helper.from_array(np.array(True), "condition")
    return save([
        node("Relu", ["X"], "a"),
        helper.make_node("If", ["condition"], ["chosen"], name="chosen",
                         then_branch=branch("Add"), else_branch=branch("Sub")),
        node("Tanh", ["chosen"], "Y"),
    ], path, initializers=[condition])


def baked_batch_reshape(path: Path) -> Path:
    """A Reshape to the literal shape [1, 24]: the batch size is baked into the model."""
    return save([
        node("Relu", ["X"], "a"),
        node("Reshape", ["a", "flat_shape"], "flat"),
        node("Sigmoid", ["flat"], "Y"),
    ], path, shape=[1, 2, 3, 4], output_shape=[1, 24],
        initializers=[_int64("flat_shape", [1, 24])])
