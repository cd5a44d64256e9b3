"""Check that chained blocks compute what the whole model computes.

Runs the whole model and the blocks (each feeding the next) in ONNX Runtime on the same
random inputs and compares the final outputs element by element, the way
``numpy.allclose`` does: ``|blocks - whole| <= atol + rtol * |whole|``. Block files are
checked against the digests in the manifest first, so a tampered or stale block fails
loudly instead of silently computing something else.

Both sides run at the same ONNX Runtime graph optimisation level, ``extended`` by default:
then every operator runs the same kernel on both sides and a correct split matches exactly.
At ``all``, ORT's layout transformation (NCHWc) chooses kernels per session, so each block
boundary changes float32 rounding a little (~1e-4 after 100 boundaries in ResNet-152).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from splitdnn.graph.blocks import BlockManifest
from splitdnn.graph.errors import GraphError
from splitdnn.graph.normalise import real_inputs, set_input_shape
from splitdnn.graph.onnx_runtime import OPTIMIZATION_LEVELS, cpu_session, random_input
from splitdnn.graph.sources import model_sha256, resolve_model


@dataclass(frozen=True)
class VerifyReport:
    """Result of comparing the chained blocks with the whole model."""

    blocks: int
    samples: int
    max_abs_error: float
    max_rel_error: float
    atol: float
    rtol: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify_blocks(
    directory: Path,
    samples: int = 8,
    atol: float = 1e-4,
    rtol: float = 1e-5,
    seed: int = 0,
    optimization: str = "extended",
) -> VerifyReport:
    """Run whole model and chained blocks on ``samples`` random inputs and compare."""
    if samples < 1:
        raise GraphError(f"--samples must be at least 1, got {samples}")
    if optimization not in OPTIMIZATION_LEVELS:
        raise GraphError(f"--optimization must be one of {', '.join(OPTIMIZATION_LEVELS)}, "
                         f"got {optimization!r}")
    manifest = BlockManifest.load(directory)
    _check_block_digests(manifest)
    whole = cpu_session(_whole_model(manifest), optimization)
    chain = [cpu_session(str(directory / block["file"]), optimization)
             for block in manifest.blocks]
    spec = manifest.data["input"]
    rng = np.random.default_rng(seed)
    max_abs = max_rel = 0.0
    passed = True
    for _ in range(samples):
        sample = random_input(rng, tuple(spec["shape"]), spec["dtype"])
        expected = whole.run(None, {whole.get_inputs()[0].name: sample})[0]
        actual = _run_chain(chain, sample)
        error = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
        scale = np.abs(expected.astype(np.float64))
        max_abs = _worst(max_abs, float(error.max(initial=0.0)))
        max_rel = _worst(max_rel, float((error / np.maximum(scale, 1e-12)).max(initial=0.0)))
        passed = passed and bool(np.all(error <= atol + rtol * scale))
    return VerifyReport(len(chain), samples, max_abs, max_rel, atol, rtol, passed)


def _worst(so_far: float, current: float) -> float:
    """The larger error; NaN (a block produced NaN or inf) wins and stays."""
    if math.isnan(so_far) or math.isnan(current):
        return math.nan
    return max(so_far, current)


def _check_block_digests(manifest: BlockManifest) -> None:
    for block in manifest.blocks:
        path = manifest.directory / block["file"]
        if not path.is_file():
            raise GraphError(f"{path} is listed in the manifest but missing")
        actual = model_sha256(path)
        if actual != block["sha256"]:
            raise GraphError(
                f"{path}: sha256 {actual} does not match the manifest's {block['sha256']}; "
                f"the block was changed after it was split"
            )


def _whole_model(manifest: BlockManifest) -> str | bytes:
    """The whole model as the blocks saw it: original file, input shape fixed as in the split."""
    source = manifest.data.get("source") or {}
    path = Path(source["file"]) if source.get("file") else None
    shape = [int(size) for size in manifest.data["input"]["shape"]]
    if path is None or not path.is_file() or model_sha256(path) != source.get("sha256"):
        path = resolve_model(manifest.data["model"], input_shape=tuple(shape)).onnx_path
    model = onnx.load(str(path), load_external_data=False)
    model_input = real_inputs(model.graph)[0]
    declared = [dim.dim_value for dim in model_input.type.tensor_type.shape.dim]
    fits = len(declared) == len(shape) and all(
        size in (0, want) for size, want in zip(declared, shape, strict=True))
    if fits:  # 0 is a symbolic dimension, which takes any size
        return str(path)
    onnx.load_external_data_for_model(model, str(path.parent))
    set_input_shape(model_input, tuple(shape))
    model.graph.ClearField("value_info")
    return model.SerializeToString()


def _run_chain(chain: list[Any], sample: np.ndarray) -> np.ndarray:
    tensor = sample
    for session in chain:
        tensor = session.run(None, {session.get_inputs()[0].name: tensor})[0]
    return tensor
