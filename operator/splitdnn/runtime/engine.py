"""One block (or exit head) loaded in ONNX Runtime, with the execution provider chosen by
availability (TensorRT, then CUDA, then CPU) and thread spinning off unless asked for."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from splitdnn.graph.onnx_runtime import session_options, with_provider_options

PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider",
                       "CPUExecutionProvider")


def nvidia_gpu_present() -> bool:
    """Whether this machine (or container) has an NVIDIA driver and device."""
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists()


def library_loads(*names: str) -> bool:
    """Whether one of the shared libraries can be loaded (TensorRT is an optional install)."""
    for name in names:
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return True
    return False


def usable_providers(compiled_in: list[str]) -> list[str]:
    """The providers ORT was built with that can really run here: the GPU wheel lists CUDA
    and TensorRT even on machines without a GPU, and then fails loudly at session creation."""
    gpu = nvidia_gpu_present()
    usable = []
    for name in compiled_in:
        if name == "CUDAExecutionProvider" and not gpu:
            continue
        if name == "TensorrtExecutionProvider" and not (
            gpu and library_loads("libnvinfer.so.10", "libnvinfer.so")
        ):
            continue
        usable.append(name)
    return usable


def choose_providers(available: list[str], allowed: list[str] | None = None) -> list[str]:
    """The available providers in preference order, optionally limited to ``allowed``."""
    wanted = [name for name in PROVIDER_PREFERENCE if allowed is None or name in allowed]
    chosen = [name for name in wanted if name in available]
    return chosen or ["CPUExecutionProvider"]


@dataclass(frozen=True)
class TensorSpec:
    """An ONNX graph input or output: name, element type and shape (None = symbolic)."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int | None, ...]


_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16",
    "tensor(uint16)": "uint16", "tensor(int32)": "int32", "tensor(uint32)": "uint32",
    "tensor(int64)": "int64", "tensor(uint64)": "uint64", "tensor(bool)": "bool",
}


def _spec(node: Any) -> TensorSpec:
    shape = tuple(dim if isinstance(dim, int) else None for dim in node.shape)
    return TensorSpec(node.name, np.dtype(_ORT_TYPES.get(node.type, "float32")), shape)


class BlockEngine:
    """An ONNX Runtime session over one single-input, single-output model file."""

    def __init__(self, path: Path, threads: int | None = None, spinning: bool = False,
                 providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        options = session_options("all", threads, spinning)
        wanted = choose_providers(usable_providers(ort.get_available_providers()), providers)
        self.session = ort.InferenceSession(str(path), options,
                                            providers=with_provider_options(wanted))
        self.providers: list[str] = self.session.get_providers()
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"{path}: a block must have one input and one output, "
                             f"has {len(inputs)} and {len(outputs)}")
        self.input, self.output = _spec(inputs[0]), _spec(outputs[0])

    @property
    def batch_free(self) -> bool:
        """Whether the first input dimension is symbolic, so requests can be stacked."""
        return bool(self.input.shape) and self.input.shape[0] is None

    def sample_input(self, batch: int = 1) -> np.ndarray:
        """A zero tensor of the input's shape (symbolic dimensions: ``batch`` first, then 1)."""
        dims = [dim if dim is not None else (batch if axis == 0 else 1)
                for axis, dim in enumerate(self.input.shape)]
        return np.zeros(dims, dtype=self.input.dtype)

    def check(self, tensor: np.ndarray) -> str | None:
        """Why ``tensor`` cannot be this block's input, or None when it can."""
        if tensor.dtype != self.input.dtype:
            return f"input dtype {tensor.dtype.name}, block expects {self.input.dtype.name}"
        if len(tensor.shape) != len(self.input.shape) or any(
            want is not None and want != got for want, got in zip(self.input.shape, tensor.shape,
                                                                  strict=True)
        ):
            wanted = ["?" if dim is None else dim for dim in self.input.shape]
            return f"input shape {list(tensor.shape)}, block expects {wanted}"
        return None

    def run(self, tensor: np.ndarray) -> np.ndarray:
        result: np.ndarray = self.session.run([self.output.name], {self.input.name: tensor})[0]
        return result

    def warm_up(self, runs: int = 2) -> None:
        sample = self.sample_input()
        for _ in range(runs):
            self.run(sample)


def top_probability(logits: np.ndarray) -> np.ndarray:
    """Per-sample maximum softmax probability of ``[batch, classes, ...]`` logits."""
    flat = logits.reshape(logits.shape[0], -1).astype(np.float64)
    shifted = flat - flat.max(axis=1, keepdims=True)
    probabilities = np.exp(shifted)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    result: np.ndarray = probabilities.max(axis=1)
    return result
