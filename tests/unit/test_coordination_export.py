"""A path's links and stages as ONNX: the chained stages compute what the torch path model
computes, and a link whose digest differs is refused."""

from __future__ import annotations

from pathlib import Path as FilePath

import numpy as np
import onnxruntime as ort
import pytest
import torch

from splitdnn.coordination import CoordinationError, Path, skip_path
from splitdnn.coordination.blocks import BlockedModel, decompose
from splitdnn.coordination.compose import PathModel
from splitdnn.coordination.export import build_stage, export_links
from splitdnn.coordination.models import host_cnn, local_cnn


@pytest.fixture(scope="module")
def models() -> tuple[BlockedModel, BlockedModel]:
    torch.manual_seed(0)
    local = decompose(local_cnn(5), 4, (1, 8, 8), "local")
    host = decompose(host_cnn(5), 4, (1, 8, 8), "host")
    return local, host


def run(file: FilePath, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    result: np.ndarray = session.run(None, {session.get_inputs()[0].name: x})[0]
    return result


def stages_output(path: Path, local: BlockedModel, host: BlockedModel, tmp: FilePath,
                  x: np.ndarray) -> np.ndarray:
    model = PathModel(local, host, path)
    torch.nn.init.normal_(next(model.links.parameters()))  # not the initial weights
    links = export_links(model, local, host, tmp / "links")
    digests = {link.name: link.sha256 for link in links}
    y = x
    for stage in ("head", "cross", "tail"):
        y = run(build_stage(stage, path, local, host, tmp / "links", digests, tmp / stage), y)
    with torch.inference_mode():
        expected = model.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
    return y


@pytest.mark.parametrize("path", [Path(0, 1, 2, 2), Path(1, 0, 3, 3), skip_path(0, 2)],
                         ids=str)
def test_chained_stages_equal_the_path_model(models: tuple[BlockedModel, BlockedModel],
                                             path: Path, tmp_path: FilePath) -> None:
    local, host = models
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    assert stages_output(path, local, host, tmp_path, x).shape == (3, 5)


def test_a_link_with_another_digest_is_refused(models: tuple[BlockedModel, BlockedModel],
                                               tmp_path: FilePath) -> None:
    local, host = models
    path = Path(0, 1, 2, 2)
    links = export_links(PathModel(local, host, path), local, host, tmp_path)
    digests = {link.name: link.sha256 for link in links}
    digests["exit"] = "0" * 64
    with pytest.raises(CoordinationError, match=r"link exit: .* has sha256"):
        build_stage("cross", path, local, host, tmp_path, digests, tmp_path / "out")
    with pytest.raises(CoordinationError, match="link entry: no sha256"):
        build_stage("cross", path, local, host, tmp_path, {}, tmp_path / "out")
