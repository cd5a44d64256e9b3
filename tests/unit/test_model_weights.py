"""A torchvision model served with the user's weights (``spec.model.weights``): the state
dict is fetched from a claim or https by the analysis Job, the block-digests Job and each
stage's init container (``--weights``/``--weights-sha256``), the model is exported with it,
and the blocks a stage serves compute what the torch model with those weights computes."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from splitdnn.cli import app
from splitdnn.controller import children
from splitdnn.controller.config import OperatorConfig
from splitdnn.graph.sources import file_sha256
from tests.unit.test_controller import PLAN, SERVICE

MODEL = "torchvision:resnet18"
SHAPE = (1, 3, 64, 64)
WEIGHTS = {"source": "pvc://weights/nets/r18.pt", "sha256": "c" * 64}


def run(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def claim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A claim root holding ``weights/r18.pt``: ResNet-18 initialised from another seed
    than the random weights the export uses by default."""
    import torch
    import torchvision

    root = tmp_path_factory.mktemp("pvc")
    (root / "weights").mkdir()
    torch.manual_seed(7)
    torch.save(torchvision.models.resnet18().state_dict(), root / "weights" / "r18.pt")
    return root


@pytest.fixture
def weights(claim: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("SPLITDNN_PVC_ROOT", str(claim))
    return ["--weights", "pvc://weights/r18.pt",
            "--weights-sha256", file_sha256(claim / "weights" / "r18.pt")]


def facts(*args: str) -> dict[str, Any]:
    result = run("model-facts", MODEL, "--input-shape", ",".join(map(str, SHAPE)), *args)
    assert result.exit_code == 0, result.output
    facts: dict[str, Any] = json.loads(result.output.strip().splitlines()[-1])
    return facts


def test_a_stage_block_computes_what_the_model_with_those_weights_computes(
        weights: list[str], claim: Path, tmp_path: Path) -> None:
    import onnxruntime
    import torch
    import torchvision

    last = len(facts(*weights)["layers"]) - 1
    shape = ["--input-shape", ",".join(map(str, SHAPE))]
    digests = run("block-digests", MODEL, "--layers", f"0-{last}", *shape, *weights)
    assert digests.exit_code == 0, digests.output
    planned = json.loads(digests.output.strip().splitlines()[-1])["blocks"][f"0-{last}"]
    fetched = run("fetch-block", "--model", MODEL, "--layers", f"0,{last}", "--out",
                  str(tmp_path / "block"), "--block-sha256", planned, *shape, *weights)
    assert fetched.exit_code == 0, fetched.output

    net = torchvision.models.resnet18()
    net.load_state_dict(torch.load(claim / "weights" / "r18.pt", weights_only=True))
    image = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    with torch.no_grad():
        expected = net.eval()(torch.from_numpy(image)).numpy()
    session = onnxruntime.InferenceSession(str(tmp_path / "block" / "block.onnx"))
    served = session.run(None, {session.get_inputs()[0].name: image})[0]
    np.testing.assert_allclose(served, expected, rtol=1e-3, atol=1e-4)

    random = run("fetch-block", "--model", MODEL, "--layers", f"0,{last}", "--out",
                 str(tmp_path / "random"), "--block-sha256", planned, *shape)
    assert random.exit_code == 2 and "the plan expects" in random.output, \
        "the random-weights block passed for the weighted one"


def test_the_weights_change_the_model_digest(weights: list[str]) -> None:
    assert facts(*weights)["model_digest"] != facts()["model_digest"]


@pytest.mark.parametrize(("weights", "code", "message"), [
    (["--weights", "pvc://weights/r18.pt", "--weights-sha256", "ab" * 32], 2,
     "weights: pvc://weights/r18.pt: sha256"),
    (["--weights", "pvc://weights/missing.pt"], 2, "weights: pvc://weights/missing.pt"),
    (["--weights", "pvc://weights/fc.pt"], 2, "does not fit torchvision:resnet18"),
    (["--weights", "UNREACHABLE/r18.pt", "--weights-sha256", "ab" * 32], 75,
     "weights: cannot download"),
])
def test_weights_that_cannot_be_used_fail_the_analysis_saying_why(
        claim: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, weights: list[str],
        code: int, message: str) -> None:
    import torch

    monkeypatch.setenv("SPLITDNN_PVC_ROOT", str(claim))
    monkeypatch.setenv("SPLITDNN_CACHE_DIR", str(tmp_path))
    torch.save({"fc.weight": torch.zeros(3, 3)}, claim / "weights" / "fc.pt")
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        unreachable = f"https://127.0.0.1:{closed.getsockname()[1]}"
    args = [arg.replace("UNREACHABLE", unreachable) for arg in weights]
    result = run("model-facts", MODEL, "--input-shape", "1,3,64,64", *args)
    assert result.exit_code == code and message in " ".join(result.output.split()), \
        result.output


def test_weights_are_only_for_torchvision_models() -> None:
    result = run("fetch-block", "--model", "pvc://models/m.onnx", "--layers", "0,1", "--out",
                 "x", "--weights", "pvc://weights/r18.pt")
    assert result.exit_code == 2 and "--weights: applies only to torchvision" in result.output


SERVICE_WITH_WEIGHTS = {**SERVICE, "spec": {**SERVICE["spec"], "model": {
    **SERVICE["spec"]["model"], "weights": WEIGHTS}}}


def test_jobs_and_stages_fetch_the_weights_from_their_claim() -> None:
    from splitdnn.runtime.artifacts import DEFAULT_PVC_ROOT

    config = OperatorConfig()
    spec = SERVICE_WITH_WEIGHTS["spec"]
    analysis = children.build_analysis_job(SERVICE_WITH_WEIGHTS, "img")["spec"]["template"]
    digests = children.build_digest_job(SERVICE_WITH_WEIGHTS, "img", ["0-3"])["spec"][
        "template"]
    stage = children.build_stage_deployment(PLAN, PLAN["spec"]["stages"][0], spec, "r1", None,
                                            "img", config)["spec"]["template"]
    for pod, args in [(analysis["spec"], analysis["spec"]["containers"][0]["args"]),
                      (digests["spec"], digests["spec"]["containers"][0]["args"]),
                      (stage["spec"], stage["spec"]["initContainers"][0]["args"])]:
        assert args[args.index("--weights") + 1:args.index("--weights") + 4] == [
            WEIGHTS["source"], "--weights-sha256", WEIGHTS["sha256"]]
        assert {"name": "model", "persistentVolumeClaim": {
            "claimName": "weights", "readOnly": True}} in pod["volumes"]
        assert {"name": "model", "mountPath": f"{DEFAULT_PVC_ROOT}/weights",
                "readOnly": True} in pod["containers"][0]["volumeMounts"]
    profile = children.build_profile_job(SERVICE_WITH_WEIGHTS, "cpu", "n1", "img", [],
                                         config)["spec"]["template"]["spec"]
    assert "--weights" not in profile["containers"][0]["args"]  # timing: random weights
    assert [v["name"] for v in profile["volumes"]] == ["work"]


def test_new_weights_mean_a_new_analysis_and_new_stage_pods() -> None:
    spec, plain = SERVICE_WITH_WEIGHTS["spec"], SERVICE["spec"]
    other = {**spec, "model": {**spec["model"], "weights": {**WEIGHTS, "sha256": "d" * 64}}}
    keys = {children.service_analysis_key(s) for s in (plain, spec, other)}
    stage = PLAN["spec"]["stages"][0]
    revisions = {children.stage_revision(s, stage) for s in (plain, spec, other)}
    assert len(keys) == 3 and len(revisions) == 3


def test_a_model_file_with_other_weights_is_another_planning_problem() -> None:
    """The plan's block digests are the file's: same shapes, other weights must replan."""
    from splitdnn.controller.dnnservice import problem_hash
    from splitdnn.controller.planner import PlanTier, build_problem
    from tests.unit.test_controller import ANALYSIS, costs

    tiers = [PlanTier("edge", "jetson", {})]
    problem = build_problem(ANALYSIS, tiers, {"jetson": costs(1, 1, 1)},
                            {"source": {"tier": "edge"}}, (100.0, 2.0))
    hashes = {problem_hash(problem, {**ANALYSIS, "model_digest": d}) for d in "ab"}
    assert len(hashes) == 2
