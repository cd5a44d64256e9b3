"""ONNX Runtime session settings shared by verify, the runtime and the profiler; CPU sessions
and random inputs for verify and the batch check."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from splitdnn.graph.errors import GraphError

OPTIMIZATION_LEVELS = ("disabled", "basic", "extended", "all")


def session_options(optimization: str = "all", threads: int | None = None,
                    spinning: bool | None = None, log_level: int = 3) -> Any:
    """ONNX Runtime session options: optimisation level, intra-op threads (inter-op 1 when
    threads are given) and thread-pool spinning (None: ORT's default, which spins)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = log_level
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if spinning is not None:
        for scope in ("intra_op", "inter_op"):
            options.add_session_config_entry(f"session.{scope}.allow_spinning",
                                             "1" if spinning else "0")
    options.graph_optimization_level = {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    return options


TF32_VARIABLE = "SPLITDNN_CUDA_TF32"


def with_provider_options(providers: list[str]) -> list[str | tuple[str, dict[str, str]]]:
    """``providers`` as ``InferenceSession`` takes them, with our options for CUDA.

    CUDA runs float32 MatMul/Gemm/Conv in full float32 precision unless ``SPLITDNN_CUDA_TF32=1``:
    ORT's default, TF32 on Ampere and newer GPUs, changes results by about 1e-3 relative, so a
    split would no longer give the whole model's output on other hardware."""
    tf32 = "1" if os.environ.get(TF32_VARIABLE, "0") == "1" else "0"
    return [(name, {"use_tf32": tf32}) if name == "CUDAExecutionProvider" else name
            for name in providers]


def cpu_session(
    model: str | bytes, optimization: str = "all", threads: int | None = None,
    log_level: int = 3,
) -> Any:
    """An InferenceSession on the CPU provider; a model ORT rejects is a GraphError."""
    import onnxruntime as ort

    options = session_options(optimization, threads, log_level=log_level)
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
        what = model if isinstance(model, str) else "the model"
        raise GraphError(f"ONNX Runtime cannot load {what}: {error}") from error


def random_input(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Standard-normal floats, or integers in [0, 10) for integer inputs."""
    if np.issubdtype(np.dtype(dtype), np.floating):
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(0, 10, size=shape).astype(dtype)
