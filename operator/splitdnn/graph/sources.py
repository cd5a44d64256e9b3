"""Resolve a model reference to an ONNX file.

A reference is either ``torchvision:NAME`` (any torchvision classification model, random
weights from a fixed seed unless a state-dict file is given) or a path to an ``.onnx`` file.
torchvision models are exported once with the TorchScript exporter (opset 17, static
shapes) and cached under a key derived from everything that decides the exported bytes:
model name, weights digest, input shape, and the torch/torchvision/opset versions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from splitdnn.graph.errors import ModelSourceError, UnsupportedModelError

TORCHVISION_PREFIX = "torchvision:"
OPSET_VERSION = 17
RANDOM_WEIGHTS_SEED = 0
CALIBRATION_BATCHES = 2
CALIBRATION_BATCH_SIZE = 4
DEFAULT_IMAGE_SHAPE = (1, 3, 224, 224)


@dataclass(frozen=True)
class ResolvedModel:
    """An ONNX file ready for analysis, with the reference it came from."""

    reference: str
    onnx_path: Path
    input_shape: tuple[int, ...] | None  # None: take the shape declared in the ONNX file
    weights: Path | None = None


def cache_dir() -> Path:
    """Where exported models are cached: ``$SPLITDNN_CACHE_DIR`` or ``~/.cache/splitdnn``."""
    configured = os.environ.get("SPLITDNN_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "splitdnn"


def file_sha256(*paths: Path) -> str:
    """Hex SHA-256 of the files' bytes, one after the other, read in chunks."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def model_files(path: Path) -> list[Path]:
    """An ONNX file and, when its weights are stored beside it, ``NAME.onnx.data``."""
    data = path.with_name(path.name + ".data")
    return [path, data] if data.is_file() else [path]


def model_sha256(path: Path) -> str:
    """Hex SHA-256 over an ONNX file and its external data file, so weights are covered too."""
    return file_sha256(*model_files(path))


def resolve_model(
    reference: str,
    input_shape: tuple[int, ...] | None = None,
    weights: Path | None = None,
) -> ResolvedModel:
    """Turn a model reference into an ONNX file, exporting torchvision models on first use."""
    if reference.startswith(TORCHVISION_PREFIX):
        name = reference[len(TORCHVISION_PREFIX) :]
        shape = input_shape or default_input_shape(name)
        path = export_torchvision(name, shape, weights)
        return ResolvedModel(reference, path, shape, weights)
    if weights is not None:
        raise ModelSourceError("--weights applies only to torchvision:NAME models")
    path = Path(reference)
    if path.suffix != ".onnx":
        raise ModelSourceError(
            f"model reference {reference!r}: expected 'torchvision:NAME' or a path to an .onnx file"
        )
    if not path.is_file():
        raise ModelSourceError(f"model file {reference!r} does not exist")
    return ResolvedModel(reference, path, input_shape)


def classification_models() -> list[str]:
    """Names of every torchvision classification model."""
    return sorted(_torchvision_index())


def _torchvision_index() -> dict[str, list[int]]:
    """Every classification model's default input shape, cached per torchvision version.

    Building it imports torchvision (seconds); reading it does not, so a cached model
    resolves without importing torch at all.
    """
    path = cache_dir() / f"torchvision-{metadata.version('torchvision')}-models.json"
    if path.is_file():
        with contextlib.suppress(ValueError, OSError):
            return dict(json.loads(path.read_text()))
    index = {name: list(_designed_input_shape(name)) for name in _list_torchvision_models()}
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(f".{os.getpid()}.tmp")
    scratch.write_text(json.dumps(index, sort_keys=True))
    os.replace(scratch, path)
    return index


def _list_torchvision_models() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def _designed_input_shape(name: str) -> tuple[int, ...]:
    import torchvision

    try:
        weights_enum = torchvision.models.get_model_weights(name)
        side = int(weights_enum.DEFAULT.transforms().crop_size[0])
    except (AttributeError, ValueError, KeyError, IndexError, TypeError):
        return DEFAULT_IMAGE_SHAPE
    return (1, 3, side, side)


def _check_torchvision_name(name: str) -> None:
    known = classification_models()
    if name in known:
        return
    import difflib

    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ModelSourceError(
        f"torchvision:{name} is not a torchvision classification model{hint} "
        f"(known: {len(known)} models, e.g. resnet50, mobilenet_v2, vit_b_16)"
    )


def default_input_shape(name: str) -> tuple[int, ...]:
    """The input shape the model was designed for: its weights' crop size, else 224×224."""
    _check_torchvision_name(name)
    return tuple(_torchvision_index()[name])


def _cache_key(name: str, shape: tuple[int, ...], weights: Path | None) -> str:
    fields = {
        "name": name,
        "shape": list(shape),
        "weights": file_sha256(weights) if weights else f"seed:{RANDOM_WEIGHTS_SEED}+bn-calibrated",
        "torch": metadata.version("torch"),
        "torchvision": metadata.version("torchvision"),
        "opset": OPSET_VERSION,
        "batch": "dynamic",
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]


def export_torchvision(name: str, shape: tuple[int, ...], weights: Path | None = None) -> Path:
    """Export a torchvision model to ONNX (cached) and return the file's path."""
    _check_torchvision_name(name)
    if weights is not None and not weights.is_file():
        raise ModelSourceError(f"weights file {str(weights)!r} does not exist")
    target = cache_dir() / "onnx" / f"{name}-{_cache_key(name, shape, weights)}.onnx"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    module = _build_torchvision(name, weights, shape)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        exported = Path(scratch) / target.name
        _export_module(module, name, shape, exported)
        if len(list(Path(scratch).iterdir())) > 1:
            _gather_external_data(exported, target)  # > 2 GiB: weights beside the graph
        else:
            os.replace(exported, target)
    return target


def _gather_external_data(exported: Path, target: Path) -> None:
    """Re-save a model exported with one external file per tensor as graph + one data file."""
    import onnx

    model = onnx.load(str(exported))
    data_name = target.name + ".data"
    staged = exported.with_name("gathered.onnx")
    onnx.save_model(model, str(staged), save_as_external_data=True,
                    all_tensors_to_one_file=True, location=data_name)
    os.replace(exported.with_name(data_name), target.with_name(data_name))
    os.replace(staged, target)


def _build_torchvision(name: str, weights: Path | None, shape: tuple[int, ...]) -> Any:
    import torch
    import torchvision

    torch.manual_seed(RANDOM_WEIGHTS_SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torchvision.models.get_model(name, weights=None)
    if weights is None:
        _run_or_explain(name, shape, lambda: _calibrate_batchnorm(module, shape))
    else:
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            module.load_state_dict(state)
        except (RuntimeError, OSError, ValueError, KeyError) as error:
            raise ModelSourceError(
                f"weights file {str(weights)!r} does not fit torchvision:{name}: "
                f"{_first_line(error)}"
            ) from error
    return module.eval()


def _calibrate_batchnorm(module: Any, shape: tuple[int, ...]) -> None:
    """Set BatchNorm statistics from random inputs, as a trained network would have them.

    With default statistics (mean 0, variance 1) deep random networks such as ResNet-152
    amplify activations to ~1e4, where float32 rounding differences between fused and
    unfused kernels are larger than any useful verify tolerance. Calibrated statistics keep
    activations near unit scale.
    """
    import torch

    norms = [layer for layer in module.modules()
             if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the calibration batches
    module.train()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(CALIBRATION_BATCHES):
            module(torch.randn(CALIBRATION_BATCH_SIZE, *shape[1:]))
    module.eval()


def _export_module(module: Any, name: str, shape: tuple[int, ...], target: Path) -> None:
    import torch

    example = torch.randn(*shape)
    # The fused attention fast path (aten::_native_multi_head_attention) has no ONNX export.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)

    def export() -> None:
        with warnings.catch_warnings(), torch.no_grad(), _quiet():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example,),
                str(target),
                dynamo=False,
                opset_version=OPSET_VERSION,
                input_names=["input"],
                output_names=["output"],
                # A symbolic batch keeps batch-size arithmetic in the graph (Shape -> ...),
                # so that blocks can learn it and accept any batch (see batching.py).
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                do_constant_folding=True,
            )

    try:
        _run_or_explain(name, shape, export)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _run_or_explain(name: str, shape: tuple[int, ...], step: Callable[[], None]) -> None:
    """Run a step that feeds the model an input; any failure becomes a one-line error."""
    try:
        step()
    except Exception as error:  # torch and its exporter raise many unrelated types
        raise UnsupportedModelError(
            f"torchvision:{name} cannot be run or exported to ONNX with input shape "
            f"{list(shape)}: {_first_line(error)}"
        ) from error


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter, which prints the whole TorchScript graph when it fails."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), \
            contextlib.redirect_stderr(sink):
        yield


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]
