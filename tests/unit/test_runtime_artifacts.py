"""What a stage pod's init step does: fetch a model (torchvision, https with sha256, pvc),
cut out one stage's block and check its digest against the plan's."""

from __future__ import annotations

import functools
import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from splitdnn.graph import analyse_model, resolve_model, split_model
from splitdnn.graph.sources import file_sha256
from splitdnn.runtime.artifacts import ArtifactError, extract_block, fetch_model

MODEL = "torchvision:resnet18"


@pytest.fixture(scope="module")
def reference_split(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    resolved = resolve_model(MODEL)
    graph = analyse_model(resolved.onnx_path, resolved.input_shape, source=MODEL)
    out = tmp_path_factory.mktemp("split")
    manifest = split_model(graph, [17, 33], out)
    return {"onnx": resolved.onnx_path, "shape": resolved.input_shape, "blocks": manifest.blocks}


@pytest.mark.parametrize("index", [0, 2])  # the middle block: test_fetch_block_command
def test_extracted_block_is_the_split_block(reference_split: dict[str, object], index: int,
                                            tmp_path: Path) -> None:
    block = reference_split["blocks"][index]  # type: ignore[index]
    path = extract_block(Path(str(reference_split["onnx"])), MODEL, tuple(block["layers"]),
                         tmp_path / "out", reference_split["shape"],  # type: ignore[arg-type]
                         expected_sha256=block["sha256"])
    assert path.name == "block.onnx" and file_sha256(path.resolve()) == block["sha256"]


def test_block_digest_mismatch_fails(reference_split: dict[str, object], tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="the plan expects 00"):
        extract_block(Path(str(reference_split["onnx"])), MODEL, (18, 33), tmp_path,
                      reference_split["shape"],  # type: ignore[arg-type]
                      expected_sha256="00" * 32)


def test_layers_outside_the_model_fail(reference_split: dict[str, object],
                                       tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"outside the model.s 0\.\.48"):
        extract_block(Path(str(reference_split["onnx"])), MODEL, (40, 60), tmp_path,
                      reference_split["shape"])  # type: ignore[arg-type]


@pytest.fixture
def https_like_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server standing in for the download (the code path is the same)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path
    finally:
        server.shutdown()


def test_download_is_verified_and_cached(https_like_server: tuple[str, Path],
                                         reference_split: dict[str, object]) -> None:
    from splitdnn.runtime import artifacts

    base, served = https_like_server
    model = served / "model.onnx"
    model.write_bytes(Path(str(reference_split["onnx"])).read_bytes())
    digest = file_sha256(model)
    path = artifacts.download(f"{base}/model.onnx", digest, cache=served / "cache")
    assert file_sha256(path) == digest
    model.unlink()  # a second fetch comes from the cache
    assert artifacts.download(f"{base}/model.onnx", digest, cache=served / "cache") == path
    (served / "tampered.onnx").write_bytes(b"not the model")
    with pytest.raises(ArtifactError, match="does not match the expected"):
        artifacts.download(f"{base}/tampered.onnx", digest, cache=served / "other")
    assert not list((served / "other" / "downloads").iterdir()), "a bad download was kept"
    with pytest.raises(ArtifactError, match=r"cannot download .*404"):
        artifacts.download(f"{base}/missing.onnx", digest, cache=served / "other")


def test_sources_need_what_they_need(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ArtifactError, match="needs its sha256"):
        fetch_model("https://models.example/resnet.onnx")
    with pytest.raises(ArtifactError, match="plain http"):
        fetch_model("http://models.example/resnet.onnx", "ab" * 32)
    monkeypatch.setenv("SPLITDNN_PVC_ROOT", str(tmp_path))
    with pytest.raises(ArtifactError, match="is the claim mounted"):
        fetch_model("pvc://models/resnet.onnx")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "resnet.onnx").write_bytes(b"onnx bytes")
    assert fetch_model("pvc://models/resnet.onnx")[0] == tmp_path / "models" / "resnet.onnx"
    with pytest.raises(ArtifactError, match="sha256"):
        fetch_model("pvc://models/resnet.onnx", "ab" * 32)


def test_fetch_block_command(reference_split: dict[str, object], tmp_path: Path) -> None:
    block = reference_split["blocks"][1]  # type: ignore[index]
    command = [sys.executable, "-m", "splitdnn", "fetch-block", "--model", MODEL, "--layers",
               "18,33", "--out", str(tmp_path), "--block-sha256"]
    done = subprocess.run([*command, block["sha256"]], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "block.onnx").is_file()
    wrong = subprocess.run([*command, "0" * 64], capture_output=True, text=True, timeout=300)
    assert wrong.returncode == 2 and "the plan expects" in wrong.stderr
