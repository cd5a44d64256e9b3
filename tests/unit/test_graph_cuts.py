"""Cut-point logic, block extraction and verification on small hand-built ONNX graphs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from splitdnn.graph import (
    InvalidCutError,
    UnsupportedModelError,
    analyse_model,
    split_model,
    verify_blocks,
)
from tests.unit import onnx_graphs

Builder = Callable[[Path], Path]


@pytest.mark.parametrize(
    ("builder", "layers", "cut_points"),
    [
        (onnx_graphs.sequential, 3, [0, 1]),
        (onnx_graphs.diamond, 5, [0, 3]),
        (onnx_graphs.nested_residual, 6, [0, 4]),
        (onnx_graphs.concat, 5, [0, 3]),
        (onnx_graphs.constant_side_branches, 3, [0, 1]),
        (onnx_graphs.shared_constant_producer, 4, [0, 1, 2]),
        (onnx_graphs.input_skip, 3, []),
        (onnx_graphs.branch_reads_outer_scope, 3, [1]),
    ],
)
def test_cut_points_of_hand_built_graphs(
    tmp_path: Path, builder: Builder, layers: int, cut_points: list[int]
) -> None:
    graph = analyse_model(builder(tmp_path / "model.onnx"))
    assert len(graph.layers) == layers
    assert graph.cut_points == cut_points


def test_constant_nodes_are_not_layers(tmp_path: Path) -> None:
    graph = analyse_model(onnx_graphs.constant_side_branches(tmp_path / "model.onnx"))
    assert [layer.op_type for layer in graph.layers] == ["Relu", "Reshape", "Sigmoid"]
    assert graph.crossing == {0: "a", 1: "flat"}


def test_segments_cover_every_layer_once(tmp_path: Path) -> None:
    graph = analyse_model(onnx_graphs.nested_residual(tmp_path / "model.onnx"))
    spans = [(segment.first_layer, segment.last_layer) for segment in graph.segments]
    assert spans == [(0, 0), (1, 4), (5, 5)]
    assert [segment.output_bytes for segment in graph.segments] == [16, 16, 16]
    assert sum(segment.flops for segment in graph.segments) == sum(
        layer.flops for layer in graph.layers
    )


def test_concat_segment_reports_the_concatenated_size(tmp_path: Path) -> None:
    graph = analyse_model(onnx_graphs.concat(tmp_path / "model.onnx"))
    assert graph.segments[1].output_bytes == 8 * 4
    assert graph.output.shape == (1, 8)


@pytest.mark.parametrize(
    ("builder", "cuts"),
    [
        (onnx_graphs.sequential, [0, 1]),
        (onnx_graphs.diamond, [0, 3]),
        (onnx_graphs.nested_residual, [4]),
        (onnx_graphs.concat, [0, 3]),
        (onnx_graphs.constant_side_branches, [0, 1]),
        (onnx_graphs.shared_constant_producer, [0, 1, 2]),
        (onnx_graphs.branch_reads_outer_scope, [1]),
    ],
)
def test_split_blocks_chain_to_the_whole_model(
    tmp_path: Path, builder: Builder, cuts: list[int]
) -> None:
    graph = analyse_model(builder(tmp_path / "model.onnx"))
    manifest = split_model(graph, cuts, tmp_path / "blocks")
    assert len(manifest.blocks) == len(cuts) + 1
    for block in manifest.blocks:
        onnx.checker.check_model(str(tmp_path / "blocks" / block["file"]), full_check=True)
    report = verify_blocks(tmp_path / "blocks", samples=3)
    assert report.passed
    assert report.max_abs_error <= 1e-6


def test_shared_constant_producer_is_copied_into_each_block(tmp_path: Path) -> None:
    graph = analyse_model(onnx_graphs.shared_constant_producer(tmp_path / "model.onnx"))
    split_model(graph, [1], tmp_path / "blocks")
    for name in ("block_0.onnx", "block_1.onnx"):
        block = onnx.load(str(tmp_path / "blocks" / name))
        assert [node.op_type for node in block.graph.node].count("Transpose") == 1
        assert [tensor.name for tensor in block.graph.initializer] == ["W"]


def test_blocks_carry_only_the_weights_they_use(tmp_path: Path) -> None:
    graph = analyse_model(onnx_graphs.shared_constant_producer(tmp_path / "model.onnx"))
    split_model(graph, [0], tmp_path / "blocks")
    first = onnx.load(str(tmp_path / "blocks" / "block_0.onnx"))
    assert [node.op_type for node in first.graph.node] == ["Relu"]
    assert len(first.graph.initializer) == 0


def test_manifest_matches_the_contract(tmp_path: Path) -> None:
    graph = analyse_model(onnx_graphs.diamond(tmp_path / "model.onnx"), source="diamond.onnx")
    split_model(graph, [0], tmp_path / "blocks")
    manifest = json.loads((tmp_path / "blocks" / "manifest.json").read_text())
    assert manifest["model"] == "diamond.onnx"
    assert manifest["input"] == {"name": "X", "shape": [1, 4], "dtype": "float32"}
    first, second = manifest["blocks"]
    assert first["layers"] == [0, 0] and second["layers"] == [1, 4]
    assert first["output"] == second["input"] == {"name": "a", "shape": [1, 4], "dtype": "float32"}
    assert second["output"]["name"] == "Y"
    assert all(len(block["sha256"]) == 64 for block in manifest["blocks"])


def test_invalid_cut_names_the_cut_and_its_neighbours(tmp_path: Path) -> None:
    graph = analyse_model(onnx_graphs.nested_residual(tmp_path / "model.onnx"))
    out = tmp_path / "blocks"
    with pytest.raises(InvalidCutError) as caught:
        split_model(graph, [0, 2], out)
    assert caught.value.cut == 2
    assert caught.value.nearest == [0, 4]
    assert "cut 2 is not a cut point" in str(caught.value)
    assert "0 or 4" in str(caught.value)
    assert not out.exists()


@pytest.mark.parametrize("cut", [-1, 5, 99])
def test_cut_outside_the_model_is_rejected(tmp_path: Path, cut: int) -> None:
    graph = analyse_model(onnx_graphs.nested_residual(tmp_path / "model.onnx"))
    with pytest.raises(InvalidCutError, match=f"cut {cut} is not a cut point"):
        split_model(graph, [cut], tmp_path / "blocks")


def test_failed_split_leaves_existing_blocks_untouched(tmp_path: Path) -> None:
    graph = analyse_model(onnx_graphs.sequential(tmp_path / "model.onnx"))
    out = tmp_path / "blocks"
    split_model(graph, [0], out)
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    with pytest.raises(InvalidCutError):
        split_model(graph, [2], out)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before


def test_unsorted_nodes_are_put_in_topological_order(tmp_path: Path) -> None:
    path = onnx_graphs.diamond(tmp_path / "model.onnx")
    model = onnx.load(str(path))
    nodes = list(model.graph.node)
    model.graph.ClearField("node")
    model.graph.node.extend(reversed(nodes))
    onnx.save(model, str(path))
    graph = analyse_model(path)
    assert graph.cut_points == [0, 3]
    assert graph.layers[0].name == "a" and graph.layers[-1].name == "Y"


def test_symbolic_input_needs_an_input_shape(tmp_path: Path) -> None:
    path = onnx_graphs.save(
        [onnx_graphs.node("Relu", ["X"], "a"), onnx_graphs.node("Tanh", ["a"], "Y")],
        tmp_path / "model.onnx", shape=["batch", 4],
    )
    with pytest.raises(UnsupportedModelError, match="pass --input-shape"):
        analyse_model(path)
    graph = analyse_model(path, input_shape=(3, 4))
    assert graph.input.shape == (3, 4)
    assert graph.layers[0].output_bytes == 3 * 4 * 4


def test_input_shape_of_the_wrong_rank_is_rejected(tmp_path: Path) -> None:
    path = onnx_graphs.sequential(tmp_path / "model.onnx")
    with pytest.raises(UnsupportedModelError, match="has rank 3"):
        analyse_model(path, input_shape=(1, 4, 1))


def test_models_with_two_inputs_are_rejected(tmp_path: Path) -> None:
    path = onnx_graphs.save(
        [onnx_graphs.node("Add", ["X", "X0"], "Y")], tmp_path / "model.onnx", extra_inputs=1
    )
    with pytest.raises(UnsupportedModelError, match="2 input"):
        analyse_model(path)


def test_not_an_onnx_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"definitely not protobuf")
    with pytest.raises(UnsupportedModelError, match="not a readable ONNX model"):
        analyse_model(path)


def test_verify_fails_when_a_block_computes_something_else(tmp_path: Path) -> None:
    graph = analyse_model(onnx_graphs.sequential(tmp_path / "model.onnx"))
    out = tmp_path / "blocks"
    split_model(graph, [0], out)
    _replace_block(out, 1, _append_add_one)
    report = verify_blocks(out, samples=2)
    assert not report.passed
    assert report.max_abs_error == pytest.approx(1.0, abs=1e-6)


def test_verify_refuses_a_block_changed_after_the_split(tmp_path: Path) -> None:
    from splitdnn.graph import GraphError

    graph = analyse_model(onnx_graphs.sequential(tmp_path / "model.onnx"))
    out = tmp_path / "blocks"
    split_model(graph, [0], out)
    block = out / "block_1.onnx"
    model = onnx.load(str(block))
    _append_add_one(model)
    onnx.save(model, str(block))
    with pytest.raises(GraphError, match="does not match the manifest"):
        verify_blocks(out)


def test_layer_costs_follow_the_shapes(tmp_path: Path) -> None:
    graph = analyse_model(onnx_graphs.shared_constant_producer(tmp_path / "model.onnx"))
    matmuls = [layer for layer in graph.layers if layer.op_type == "MatMul"]
    assert [layer.flops for layer in matmuls] == [2 * 96 * 96, 2 * 96 * 96]
    # the weight is counted once, at its first user
    assert [layer.params_bytes for layer in matmuls] == [96 * 96 * 4, 0]
    assert all(layer.output_bytes == 96 * 4 for layer in graph.layers)


def test_blocks_run_in_onnxruntime_on_their_own(tmp_path: Path) -> None:
    graph = analyse_model(onnx_graphs.concat(tmp_path / "model.onnx"))
    manifest = split_model(graph, [0, 3], tmp_path / "blocks")
    tensor = np.ones((1, 4), dtype=np.float32)
    for block in manifest.blocks:
        session = ort.InferenceSession(str(tmp_path / "blocks" / block["file"]))
        assert session.get_inputs()[0].name == block["input"]["name"]
        tensor = session.run(None, {block["input"]["name"]: tensor})[0]
        assert list(tensor.shape) == block["output"]["shape"]


def _replace_block(directory: Path, index: int, change: Callable[[onnx.ModelProto], None]) -> None:
    """Rewrite a block and record its new digest, as a buggy splitter would have."""
    from splitdnn.graph.sources import model_sha256

    path = directory / f"block_{index}.onnx"
    model = onnx.load(str(path))
    change(model)
    onnx.save(model, str(path))
    manifest_path = directory / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["blocks"][index]["sha256"] = model_sha256(path)
    manifest_path.write_text(json.dumps(manifest))


def _apply_to_output(model: onnx.ModelProto, op: str, operand: float) -> None:
    """Make the block's output ``op(old output, operand)``."""
    old_name = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [name + "_raw" if name == old_name else name for name in node.output]
    model.graph.initializer.append(
        onnx.numpy_helper.from_array(np.array(operand, dtype=np.float32), "operand"))
    model.graph.node.append(onnx.helper.make_node(op, [old_name + "_raw", "operand"],
                                                  [old_name]))


def _append_add_one(model: onnx.ModelProto) -> None:
    """Make the block's output its old output plus one."""
    _apply_to_output(model, "Add", 1.0)


def test_blocks_that_batch_per_sample_get_a_free_batch_dimension(tmp_path: Path) -> None:
    graph = analyse_model(onnx_graphs.nested_residual(tmp_path / "model.onnx"))
    manifest = split_model(graph, [0, 4], tmp_path / "blocks")
    assert all(block["batch_free"] for block in manifest.blocks)
    session = ort.InferenceSession(str(tmp_path / "blocks" / "block_1.onnx"))
    batch = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    assert session.run(None, {"x0": batch})[0].shape == (5, 4)


def test_batch_arithmetic_is_recomputed_from_the_block_input(tmp_path: Path) -> None:
    # Reshape(a, concat(shape(a)[0:1], [-1])) is folded to [1, -1] at batch 1; the block
    # learns that its first entry is the batch size and computes it from its input.
    graph = analyse_model(onnx_graphs.constant_side_branches(tmp_path / "model.onnx"))
    manifest = split_model(graph, [0, 1], tmp_path / "blocks")
    assert [block["batch_free"] for block in manifest.blocks] == [True, True, True]
    session = ort.InferenceSession(str(tmp_path / "blocks" / "block_1.onnx"))
    batch = np.random.default_rng(0).standard_normal((3, 2, 3, 4)).astype(np.float32)
    flat = session.run(None, {"a": batch})[0]
    assert flat.shape == (3, 24)
    np.testing.assert_array_equal(flat, batch.reshape(3, 24))
    assert verify_blocks(tmp_path / "blocks", samples=2).passed


def test_a_baked_in_batch_size_keeps_the_block_static(tmp_path: Path) -> None:
    graph = analyse_model(onnx_graphs.baked_batch_reshape(tmp_path / "model.onnx"))
    manifest = split_model(graph, [0, 1], tmp_path / "blocks")
    assert [block["batch_free"] for block in manifest.blocks] == [True, False, True]
    reshape_block = onnx.load(str(tmp_path / "blocks" / "block_1.onnx"))
    assert reshape_block.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1


def test_static_batch_can_be_requested(tmp_path: Path) -> None:
    graph = analyse_model(onnx_graphs.sequential(tmp_path / "model.onnx"))
    manifest = split_model(graph, [0], tmp_path / "blocks", dynamic_batch=False)
    assert not any(block["batch_free"] for block in manifest.blocks)


def test_a_block_onnxruntime_cannot_load_is_a_clear_error(tmp_path: Path) -> None:
    from splitdnn.graph import GraphError

    graph = analyse_model(onnx_graphs.sequential(tmp_path / "model.onnx"))
    out = tmp_path / "blocks"
    split_model(graph, [0], out)

    def unknown_op(model: onnx.ModelProto) -> None:
        model.graph.node[0].op_type = "NoSuchOperator"

    _replace_block(out, 1, unknown_op)
    with pytest.raises(GraphError, match=r"ONNX Runtime cannot load .*block_1\.onnx"):
        verify_blocks(out)


def test_external_weights_are_counted_and_digested(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from splitdnn.graph import GraphError, blocks

    monkeypatch.setattr(blocks, "EXTERNAL_DATA_THRESHOLD", 1000)  # as for blocks over 1.8 GB
    graph = analyse_model(onnx_graphs.shared_constant_producer(tmp_path / "model.onnx"))
    out = tmp_path / "blocks"
    manifest = split_model(graph, [1], out)
    data = out / "block_0.onnx.data"
    assert data.is_file()
    graph_bytes = (out / "block_0.onnx").stat().st_size
    assert manifest.blocks[0]["bytes"] == graph_bytes + data.stat().st_size
    assert verify_blocks(out, samples=1).passed
    raw = bytearray(data.read_bytes())
    raw[:4] = b"\x7f" * 4  # corrupt one weight
    data.write_bytes(bytes(raw))
    with pytest.raises(GraphError, match="does not match the manifest"):
        verify_blocks(out)


def test_nan_output_is_reported_not_hidden(tmp_path: Path) -> None:
    graph = analyse_model(onnx_graphs.sequential(tmp_path / "model.onnx"))
    out = tmp_path / "blocks"
    split_model(graph, [0], out)

    def output_nan(model: onnx.ModelProto) -> None:
        _apply_to_output(model, "Mul", np.nan)

    _replace_block(out, 1, output_nan)
    report = verify_blocks(out, samples=2)
    assert not report.passed
    assert np.isnan(report.max_abs_error)
