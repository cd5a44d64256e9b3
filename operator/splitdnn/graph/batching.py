"""Give a block a free batch dimension when it provably computes each sample independently.

Blocks are cut from a model normalised at one static input shape, so folded shape
constants may have the batch size baked in (a ViT's ``Reshape`` to ``[1, 197, 768]``, its
attention's ``[197, 1 * 12, 64]``). Normalising the model again at two more batch sizes
shows which integer constants depend on the batch and whether linearly
(``value = base + batch * slope``); a block then computes those from its own input's first
dimension instead of storing them. Either way, a block gets a symbolic first dimension only
if, run on a stack of two random samples, it returns what it returns for each sample alone;
otherwise it keeps its static shape and the runtime must not batch it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from splitdnn.graph.errors import GraphError
from splitdnn.graph.normalise import normalise
from splitdnn.graph.onnx_runtime import cpu_session, random_input

BATCH_DIM = "batch"
CHECK_ATOL = 1e-5
CHECK_RTOL = 1e-4
MAX_CHECKED_BYTES = 1_800_000_000  # larger blocks cannot be handed to ORT from memory


def with_free_batch(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """A copy of ``model`` whose input and output have a symbolic first dimension, or None."""
    if model.ByteSize() > MAX_CHECKED_BYTES:
        return None
    relaxed = onnx.ModelProto()
    relaxed.CopyFrom(model)
    for value in (*relaxed.graph.input, *relaxed.graph.output):
        dims = value.type.tensor_type.shape.dim
        if not dims:
            return None
        dims[0].Clear()
        dims[0].dim_param = BATCH_DIM
    relaxed.graph.ClearField("value_info")  # inner shapes were inferred for one batch size
    return relaxed if _batches_independently(model, relaxed) else None


def _batches_independently(static: onnx.ModelProto, relaxed: onnx.ModelProto) -> bool:
    try:
        single = cpu_session(static.SerializeToString(), threads=1, log_level=4)
        stacked = cpu_session(relaxed.SerializeToString(), threads=1, log_level=4)
    except GraphError:  # ORT rejects the relaxed graph: shapes do not allow another batch size
        return False
    spec = single.get_inputs()[0]
    samples = [random_input(np.random.default_rng(seed), *_input_shape_and_dtype(static))
               for seed in (1, 2)]
    try:
        batched = stacked.run(None, {spec.name: np.concatenate(samples)})[0]
    except Exception:  # a baked-in shape constant does not fit the larger batch
        return False
    alone = np.concatenate([single.run(None, {spec.name: sample})[0] for sample in samples])
    return batched.shape == alone.shape and bool(
        np.allclose(batched, alone, atol=CHECK_ATOL, rtol=CHECK_RTOL)
    )


def _input_shape_and_dtype(model: onnx.ModelProto) -> tuple[tuple[int, ...], str]:
    tensor_type = model.graph.input[0].type.tensor_type
    shape = tuple(dim.dim_value or 1 for dim in tensor_type.shape.dim)
    return shape, str(np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)))


BatchFormulas = dict[str, tuple[np.ndarray, np.ndarray]]


def batch_formulas(
    source: Path, analysed: onnx.ModelProto, input_shape: tuple[int, ...]
) -> BatchFormulas:
    """Folded integer constants linear in the batch size: name -> (base, slope).

    ``analysed`` is ``source`` already normalised at ``input_shape``; the model is
    normalised again at the next two batch sizes.
    """
    batch = input_shape[0]
    samples = [_integer_constants(analysed)] + [
        _integer_constants(normalise(onnx.load(str(source)), (batch + step, *input_shape[1:])))
        for step in (1, 2)
    ]
    formulas: BatchFormulas = {}
    for name, first in samples[0].items():
        second, third = samples[1].get(name), samples[2].get(name)
        if second is None or third is None or not first.shape == second.shape == third.shape:
            continue
        slope = second - first
        if np.any(slope) and np.array_equal(third - second, slope):
            formulas[name] = (first - batch * slope, slope)
    return formulas


def _integer_constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer
            if tensor.data_type in INTEGER_TYPES and len(tensor.dims) <= 1}


INTEGER_TYPES = frozenset({onnx.TensorProto.INT64, onnx.TensorProto.INT32})


def compute_from_batch(model: onnx.ModelProto, formulas: BatchFormulas) -> onnx.ModelProto | None:
    """A copy of a block whose batch-dependent constants are computed from its input, or None."""
    replaced = [tensor for tensor in model.graph.initializer if tensor.name in formulas]
    if not replaced:
        return None
    generic = onnx.ModelProto()
    generic.CopyFrom(model)
    names = {tensor.name for tensor in replaced}
    kept = [tensor for tensor in generic.graph.initializer if tensor.name not in names]
    generic.graph.ClearField("initializer")
    generic.graph.initializer.extend(kept)
    batch = "splitdnn_batch_size"
    nodes = [helper.make_node("Shape", [generic.graph.input[0].name], [batch], start=0, end=1)]
    for tensor in replaced:
        nodes += _formula_nodes(tensor, batch, *formulas[tensor.name])
        generic.graph.initializer.extend(_formula_constants(tensor, *formulas[tensor.name]))
    existing = list(generic.graph.node)
    generic.graph.ClearField("node")
    generic.graph.node.extend([*nodes, *existing])
    return generic


def _formula_nodes(
    tensor: onnx.TensorProto, batch: str, base: np.ndarray, slope: np.ndarray
) -> list[onnx.NodeProto]:
    name = tensor.name
    batch_input = batch
    nodes = []
    if base.ndim == 0:
        nodes.append(helper.make_node("Squeeze", [batch], [f"{name}_batch"]))
        batch_input = f"{name}_batch"
    if tensor.data_type != onnx.TensorProto.INT64:
        nodes.append(helper.make_node("Cast", [batch_input], [f"{name}_batch_cast"],
                                      to=tensor.data_type))
        batch_input = f"{name}_batch_cast"
    nodes.append(helper.make_node("Mul", [batch_input, f"{name}_slope"], [f"{name}_scaled"]))
    nodes.append(helper.make_node("Add", [f"{name}_base", f"{name}_scaled"], [name]))
    return nodes


def _formula_constants(
    tensor: onnx.TensorProto, base: np.ndarray, slope: np.ndarray
) -> list[onnx.TensorProto]:
    dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    return [numpy_helper.from_array(base.astype(dtype), f"{tensor.name}_base"),
            numpy_helper.from_array(slope.astype(dtype), f"{tensor.name}_slope")]
