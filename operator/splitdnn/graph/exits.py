"""Early-exit heads: where one can attach to a model, whether a head fits there, and a
shape-correct head to start training from.

An exit head is an ONNX model reading the activation that crosses one cut point (what the
block ending at ``after_layer`` sends on) and returning a result of the model's kind (class
logits). :func:`exit_activation` finds that activation, :func:`check_head_input` checks a
head reads it, and :func:`write_pooled_head` writes a GlobalAveragePool → Flatten → Gemm
head for it (random weights: train it on your data before relying on its accuracy).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from splitdnn.graph.analysis import ModelGraph, TensorInfo
from splitdnn.graph.errors import InvalidCutError, UnsupportedModelError
from splitdnn.graph.normalise import real_inputs

HEAD_OPSET = 17


def exit_activation(graph: ModelGraph, after_layer: int, field: str = "after_layer"
                    ) -> TensorInfo:
    """The tensor crossing the cut after ``after_layer`` (an exit head's input)."""
    last = len(graph.layers) - 1
    if not 0 <= after_layer < last:
        raise InvalidCutError(f"{field}: {after_layer} is not a layer before the model's last "
                              f"one (0..{last - 1})", after_layer, graph.cut_points[-1:])
    name = graph.crossing.get(after_layer)
    if name is None:
        nearest = graph.nearest_cut_points(after_layer)
        raise InvalidCutError(f"{field}: layer {after_layer} does not end a segment (no single "
                              f"tensor crosses there); nearest cut points: "
                              f"{', '.join(map(str, nearest))}", after_layer, nearest)
    return graph.tensors[name]


def check_head_input(head: onnx.ModelProto, activation: TensorInfo, field: str = "head") -> None:
    """Raise unless ``head`` has one input of the activation's rank and fixed sizes (the
    batch dimension may be symbolic)."""
    inputs = real_inputs(head.graph)
    if len(inputs) != 1:
        raise UnsupportedModelError(f"{field}: an exit head needs exactly one input, it has "
                                    f"{len(inputs)}")
    dims = inputs[0].type.tensor_type.shape.dim
    declared = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    expected = list(activation.shape)
    fits = len(declared) == len(expected) and all(
        size is None or size == want or position == 0
        for position, (size, want) in enumerate(zip(declared, expected, strict=True)))
    if not fits:
        shown = ", ".join("?" if size is None else str(size) for size in declared)
        raise UnsupportedModelError(f"{field}: the head reads [{shown}], but the activation "
                                    f"after that layer is {expected}")


def write_pooled_head(activation: TensorInfo, classes: int, path: Path, seed: int = 0) -> Path:
    """A GlobalAveragePool → Flatten → Gemm head over ``activation`` (N, C, ...) with random
    weights, batch dimension symbolic."""
    if activation.dtype != "float32":
        raise UnsupportedModelError(f"the activation is {activation.dtype}; a pooled head "
                                    f"reads float32")
    if len(activation.shape) < 3:
        raise UnsupportedModelError(f"the activation {list(activation.shape)} has no spatial "
                                    f"dimensions to pool; a pooled head needs (N, C, ...)")
    channels = activation.shape[1]
    rng = np.random.default_rng(seed)
    weights = (rng.standard_normal((classes, channels)) / np.sqrt(channels)).astype(np.float32)
    bias = np.zeros(classes, dtype=np.float32)
    shape: list[int | str] = ["N", *activation.shape[1:]]
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["features"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("Gemm", ["flat", "weight", "bias"], ["logits"], transB=1)],
        "exit_head",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(weights, "weight"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", HEAD_OPSET)],
                              ir_version=8)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
