"""Split and verify real torchvision architectures (random weights) at several cut points.

One model per family the issue names: sequential, residual, inverted-residual,
concatenating and transformer. The big ones are marked slow (still run by `make test`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from splitdnn.graph import (
    ModelSourceError,
    analyse_model,
    resolve_model,
    split_model,
    verify_blocks,
)
from splitdnn.graph.blocks import balanced_cuts

FAMILIES = [
    pytest.param("alexnet", id="sequential-alexnet"),
    pytest.param("vgg16", id="sequential-vgg16", marks=pytest.mark.slow),
    pytest.param("resnet18", id="residual-resnet18"),
    pytest.param("resnet50", id="residual-resnet50"),
    pytest.param("resnet152", id="residual-resnet152", marks=pytest.mark.slow),
    pytest.param("mobilenet_v2", id="inverted-residual-mobilenet_v2"),
    pytest.param("mobilenet_v3_small", id="inverted-residual-mobilenet_v3_small"),
    pytest.param("densenet121", id="concat-densenet121"),
    pytest.param("googlenet", id="concat-googlenet"),
    pytest.param("inception_v3", id="concat-inception_v3", marks=pytest.mark.slow),
    pytest.param("vit_b_16", id="transformer-vit_b_16", marks=pytest.mark.slow),
    pytest.param("swin_t", id="transformer-swin_t", marks=pytest.mark.slow),
]


def analyse(name: str) -> object:
    resolved = resolve_model(f"torchvision:{name}")
    return analyse_model(resolved.onnx_path, resolved.input_shape, source=f"torchvision:{name}")


@pytest.mark.parametrize("name", FAMILIES)
def test_split_and_verify_at_several_cut_points(tmp_path: Path, name: str) -> None:
    graph = analyse(name)
    points = graph.cut_points
    assert len(points) >= 3, f"{name} should have several cut points, found {points}"
    edges_and_middle = [points[0], points[len(points) // 2], points[-1]]
    for label, cuts in (("edges", edges_and_middle), ("balanced", balanced_cuts(graph, 3))):
        out = tmp_path / label
        manifest = split_model(graph, cuts, out)
        assert manifest.blocks[0]["layers"][0] == 0
        assert manifest.blocks[-1]["layers"][1] == len(graph.layers) - 1
        report = verify_blocks(out, samples=2)
        assert report.passed, f"{name} cut at {cuts}: max abs error {report.max_abs_error}"
        assert all(block["batch_free"] for block in manifest.blocks), f"{name} at {cuts}"


def test_resnet_cut_points_are_the_block_boundaries() -> None:
    graph = analyse("resnet18")
    # stem (conv, relu, maxpool) then 8 basic blocks, each ending in Add -> Relu
    adds = [layer.index for layer in graph.layers if layer.op_type == "Add"]
    assert len(adds) == 8
    assert all(add in graph.cut_points for add in adds)
    inside_first_block = range(3, adds[0])
    assert not any(index in graph.cut_points for index in inside_first_block)
    assert graph.segments[3].output_bytes == 64 * 56 * 56 * 4  # 803 KB after layer1.0


def test_every_cut_point_of_resnet18_at_once(tmp_path: Path) -> None:
    graph = analyse("resnet18")
    manifest = split_model(graph, graph.cut_points, tmp_path / "all")
    assert len(manifest.blocks) == len(graph.segments)
    assert all(block["batch_free"] for block in manifest.blocks)  # CNN: no baked-in batch
    assert verify_blocks(tmp_path / "all", samples=2).passed


def test_unknown_torchvision_model_suggests_names() -> None:
    with pytest.raises(ModelSourceError, match="did you mean resnet50"):
        resolve_model("torchvision:resnet5O")


def test_weights_file_is_loaded(tmp_path: Path) -> None:
    import torch
    import torchvision

    torch.manual_seed(7)
    model = torchvision.models.get_model("mobilenet_v3_small", weights=None)
    weights = tmp_path / "weights.pt"
    torch.save(model.state_dict(), weights)
    shape = (1, 3, 96, 96)
    seeded = resolve_model("torchvision:mobilenet_v3_small", input_shape=shape)
    loaded = resolve_model("torchvision:mobilenet_v3_small", input_shape=shape, weights=weights)
    assert loaded.onnx_path != seeded.onnx_path
    assert analyse_model(loaded.onnx_path, shape).input.shape == shape


def test_weights_that_do_not_fit_are_a_clear_error(tmp_path: Path) -> None:
    import torch

    weights = tmp_path / "weights.pt"
    torch.save({"not.a.layer": torch.zeros(1)}, weights)
    with pytest.raises(ModelSourceError, match="does not fit torchvision:resnet18"):
        resolve_model("torchvision:resnet18", weights=weights)


def test_exports_are_cached(export_cache: Path) -> None:
    first = resolve_model("torchvision:squeezenet1_1")
    stamp = first.onnx_path.stat().st_mtime_ns
    again = resolve_model("torchvision:squeezenet1_1")
    assert again.onnx_path == first.onnx_path
    assert again.onnx_path.stat().st_mtime_ns == stamp
    assert first.onnx_path.parent.parent == export_cache


def test_default_input_shape_follows_the_model() -> None:
    assert resolve_model("torchvision:inception_v3").input_shape == (1, 3, 299, 299)
    assert resolve_model("torchvision:alexnet").input_shape == (1, 3, 224, 224)


def test_an_input_the_model_cannot_take_is_a_clear_error() -> None:
    from splitdnn.graph import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match=r"resnet18 cannot be run or exported .*"
                                                    r"\[1, 3, 224\]"):
        resolve_model("torchvision:resnet18", input_shape=(1, 3, 224))
