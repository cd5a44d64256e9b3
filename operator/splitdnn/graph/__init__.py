"""Model graph: load a DNN as ONNX, find its cut points, split it into blocks and verify them.

Public entry points:

- :func:`resolve_model` turns a model reference (``torchvision:NAME`` or an ``.onnx`` path)
  into an ONNX file, exporting and caching torchvision models.
- :func:`analyse_model` finds the layers, cut points and segments of an ONNX model.
- :func:`split_model` writes the blocks between chosen cut points plus a manifest.
- :func:`verify_blocks` checks that the chained blocks compute what the whole model computes.
"""

from splitdnn.graph.analysis import Layer, ModelGraph, Segment, TensorInfo, analyse_model
from splitdnn.graph.blocks import BlockManifest, split_model
from splitdnn.graph.errors import (
    GraphError,
    InvalidCutError,
    ModelSourceError,
    UnsupportedModelError,
)
from splitdnn.graph.sources import ResolvedModel, resolve_model
from splitdnn.graph.verify import VerifyReport, verify_blocks

__all__ = [
    "BlockManifest",
    "GraphError",
    "InvalidCutError",
    "Layer",
    "ModelGraph",
    "ModelSourceError",
    "ResolvedModel",
    "Segment",
    "TensorInfo",
    "UnsupportedModelError",
    "VerifyReport",
    "analyse_model",
    "resolve_model",
    "split_model",
    "verify_blocks",
]
