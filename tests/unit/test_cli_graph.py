"""The inspect / split / verify command-line contract: JSON shapes, exit codes, messages."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from splitdnn.cli import app
from tests.unit import onnx_graphs

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_inspect_json_has_layers_cut_points_and_segments(tmp_path: Path) -> None:
    model = onnx_graphs.nested_residual(tmp_path / "model.onnx")
    code, out, _ = invoke("inspect", str(model), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["cut_points"] == [0, 4]
    assert [layer["index"] for layer in data["layers"]] == list(range(6))
    assert set(data["layers"][0]) == {
        "index", "name", "op_type", "flops", "params_bytes", "output_bytes"}
    assert set(data["segments"][0]) == {
        "index", "first_layer", "last_layer", "flops", "params_bytes", "output_bytes"}
    assert [(s["first_layer"], s["last_layer"]) for s in data["segments"]] == [
        (0, 0), (1, 4), (5, 5)]


def test_inspect_prints_a_cut_point_table(tmp_path: Path) -> None:
    model = onnx_graphs.diamond(tmp_path / "model.onnx")
    code, out, _ = invoke("inspect", str(model))
    assert code == 0
    text = " ".join(out.split())  # the table title may wrap
    assert "2 cut points, 3 segments" in text
    assert "5 layers" in text


def test_split_then_verify(tmp_path: Path) -> None:
    model = onnx_graphs.concat(tmp_path / "model.onnx")
    out_dir = tmp_path / "blocks"
    code, out, _ = invoke("split", str(model), "--cuts", "3,0", "--out", str(out_dir), "--json")
    assert code == 0
    manifest = json.loads(out)
    assert [block["file"] for block in manifest["blocks"]] == [
        "block_0.onnx", "block_1.onnx", "block_2.onnx"]
    assert json.loads((out_dir / "manifest.json").read_text()) == manifest
    code, out, _ = invoke("verify", str(out_dir), "--samples", "3", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["passed"] and report["samples"] == 3 and report["blocks"] == 3


def test_invalid_cut_exits_2_and_leaves_nothing(tmp_path: Path) -> None:
    model = onnx_graphs.nested_residual(tmp_path / "model.onnx")
    out_dir = tmp_path / "blocks"
    code, _, err = invoke("split", str(model), "--cuts", "2", "--out", str(out_dir))
    assert code == 2
    assert "cut 2 is not a cut point" in err
    assert "nearest valid cut points: 0 or 4" in err
    assert not out_dir.exists()


def test_verify_exits_1_above_tolerance(tmp_path: Path) -> None:
    model = onnx_graphs.sequential(tmp_path / "model.onnx")
    out_dir = tmp_path / "blocks"
    assert invoke("split", str(model), "--cuts", "0", "--out", str(out_dir))[0] == 0
    code, out, _ = invoke("verify", str(out_dir), "--atol", "-1", "--rtol", "0")
    assert code == 1
    assert "FAIL" in out


def test_unknown_model_is_an_error_not_a_traceback() -> None:
    code, out, err = invoke("inspect", "torchvision:not_a_model")
    assert code == 2
    assert "not a torchvision classification model" in err
    assert "Traceback" not in out + err


def test_malformed_input_shape_names_the_option(tmp_path: Path) -> None:
    model = onnx_graphs.sequential(tmp_path / "model.onnx")
    code, _, err = invoke("inspect", str(model), "--input-shape", "1,x")
    assert code == 2
    assert "--input-shape" in err


def test_verify_of_a_directory_without_manifest(tmp_path: Path) -> None:
    code, _, err = invoke("verify", str(tmp_path))
    assert code == 2
    assert "no manifest.json" in err


def test_missing_onnx_file(tmp_path: Path) -> None:
    code, _, err = invoke("inspect", str(tmp_path / "missing.onnx"))
    assert code == 2
    assert "does not exist" in err


def test_static_batch_flag(tmp_path: Path) -> None:
    model = onnx_graphs.sequential(tmp_path / "model.onnx")
    code, out, _ = invoke("split", str(model), "--cuts", "0", "--out", str(tmp_path / "b"),
                          "--static-batch", "--json")
    assert code == 0
    assert [block["batch_free"] for block in json.loads(out)["blocks"]] == [False, False]
