"""Resolve a model reference to an ONNX file.

A reference is either ``torchvision:NAME`` (any torchvision classification model, random
weights from a fixed seed unless a state-dict file is given) or a path to an ``.onnx`` file.
torchvision models are exported once with the TorchScript exporter (opset 17, static
shapes) and cached under a key derived from everything that decides the exported bytes:
model name, weights digest, input shape, and the torch/torchvision/opset versions.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from splitdnn.graph.errors import ModelSourceError, UnsupportedModelError

TORCHVISION_PREFIX = "torchvision:"
OPSET_VERSION = 17
RANDOM_WEIGHTS_SEED = 0
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


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


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
    import torchvision

    _check_torchvision_name(name)
    try:
        weights_enum = torchvision.models.get_model_weights(name)
        crop = weights_enum.DEFAULT.transforms().crop_size  # type: ignore[attr-defined]
        side = int(crop[0])
    except (AttributeError, ValueError, KeyError, IndexError, TypeError):
        return DEFAULT_IMAGE_SHAPE
    return (1, 3, side, side)


def _cache_key(name: str, shape: tuple[int, ...], weights: Path | None) -> str:
    import torch
    import torchvision

    fields = {
        "name": name,
        "shape": list(shape),
        "weights": file_sha256(weights) if weights else f"seed:{RANDOM_WEIGHTS_SEED}",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "opset": OPSET_VERSION,
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
    module = _build_torchvision(name, weights)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        exported = Path(scratch) / target.name
        _export_module(module, name, shape, exported)
        os.replace(exported, target)
        external = exported.with_name(exported.name + ".data")
        if external.exists():
            os.replace(external, target.with_name(target.name + ".data"))
    return target


def _build_torchvision(name: str, weights: Path | None) -> object:
    import torch
    import torchvision

    torch.manual_seed(RANDOM_WEIGHTS_SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torchvision.models.get_model(name, weights=None)
    if weights is not None:
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            module.load_state_dict(state)
        except (RuntimeError, OSError, ValueError, KeyError) as error:
            raise ModelSourceError(
                f"weights file {str(weights)!r} does not fit torchvision:{name}: "
                f"{_first_line(error)}"
            ) from error
    return module.eval()


def _export_module(module: object, name: str, shape: tuple[int, ...], target: Path) -> None:
    import torch

    example = torch.randn(*shape)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,  # type: ignore[arg-type]
                (example,),
                str(target),
                dynamo=False,
                opset_version=OPSET_VERSION,
                input_names=["input"],
                output_names=["output"],
                do_constant_folding=True,
            )
    except Exception as error:  # the exporter raises many unrelated types
        raise UnsupportedModelError(
            f"torchvision:{name} cannot be exported to ONNX with input shape "
            f"{list(shape)}: {_first_line(error)}"
        ) from error


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]
