"""Give a block a free batch dimension when it provably computes each sample independently.

Blocks are cut from a model normalised at one static input shape, so shape constants may
have the batch size baked in (a ViT's ``Reshape`` to ``[1, 197, 768]``). A block gets a
symbolic first dimension only if, run on a stack of two random samples, it returns what it
returns for each sample alone; otherwise it keeps its static shape and the runtime must
not batch it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

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
        single = _session(static)
        stacked = _session(relaxed)
    except Exception:  # ORT rejects the relaxed graph: shapes do not allow another batch size
        return False
    spec = single.get_inputs()[0]
    samples = [_random_like(spec, seed) for seed in (1, 2)]
    try:
        batched = stacked.run(None, {spec.name: np.concatenate(samples)})[0]
    except Exception:  # a baked-in shape constant does not fit the larger batch
        return False
    alone = np.concatenate([single.run(None, {spec.name: sample})[0] for sample in samples])
    return batched.shape == alone.shape and bool(
        np.allclose(batched, alone, atol=CHECK_ATOL, rtol=CHECK_RTOL)
    )


def _session(model: onnx.ModelProto) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def _random_like(spec: Any, seed: int) -> np.ndarray:
    dtype = {"tensor(float)": np.float32, "tensor(double)": np.float64,
             "tensor(float16)": np.float16}.get(spec.type, np.int64)
    rng = np.random.default_rng(seed)
    shape = [size if isinstance(size, int) else 1 for size in spec.shape]
    if dtype is np.int64:
        return rng.integers(0, 10, size=shape).astype(np.int64)
    return rng.standard_normal(shape).astype(dtype)
