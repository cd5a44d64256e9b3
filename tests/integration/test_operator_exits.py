"""A DNNService with an early exit, end to end on the devcluster.

The model (trained nowhere: random weights) is a cheap stem followed by a heavy stack of
convolutions, and its exit head reads the stem's output; both are ONNX files on a
PersistentVolumeClaim (the devcluster's ``pvc/`` directory), with a second, more accurate
exit deep in the stack; the analysis Job also measures the accuracies on scikit-learn's digits
(the random model's are near chance, so the stated ones rule). With a latency budget only the
stem's exit can meet, the operator plans the stem alone with its head on its stage, and requests
through the gateway come back from the head, marked with the exit. Moving the exit to a layer
whose activation the head cannot read stalls the service with a message naming the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration.conftest import Api
from tests.integration.operators import OperatorProcess
from tests.integration.test_operator import (
    GROUP_PATH,
    condition,
    gateway_url,
    stage_pods,
    wait_ready,
)

pytestmark = pytest.mark.slow
INPUT_SHAPE = (1, 3, 32, 32)
EXIT_AFTER = 1  # the stem's Relu
DEEP_EXIT_AFTER = 25  # the Relu after the eleventh of the twelve heavy convolutions
SAMPLES = 40  # digits measured for the accuracy (resized to 3x32x32)


def write_model(path: Path) -> Path:
    """Conv+ReLU stem, then twelve 64-channel 3x3 convolutions and a classifier."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    body: list[nn.Module] = [nn.Conv2d(16, 64, 3, padding=1), nn.ReLU()]
    for _ in range(12):
        body += [nn.Conv2d(64, 64, 3, padding=1), nn.ReLU()]
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), *body,
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)).eval()
    torch.onnx.export(net, (torch.zeros(INPUT_SHAPE),), str(path), dynamo=False,
                      opset_version=17, input_names=["input"], output_names=["logits"])
    return path


@pytest.fixture
def claim(devcluster: dict[str, Any]) -> Path:
    """The devcluster claim ``models`` with the model and its exit head."""
    from typer.testing import CliRunner

    from splitdnn.cli import app

    root = Path(devcluster["stateDir"]) / "pvc" / "models"
    root.mkdir(parents=True, exist_ok=True)
    write_model(root / "stacked.onnx")
    for layer, name in ((EXIT_AFTER, "exit-stem"), (DEEP_EXIT_AFTER, "exit-deep")):
        result = CliRunner().invoke(app, [
            "exit-head", str(root / "stacked.onnx"), "--after-layer", str(layer),
            "--out", str(root / f"{name}.onnx")])
        assert result.exit_code == 0, result.output
    return root


def exit_service(name: str, after_layer: int) -> dict[str, Any]:
    return {"apiVersion": "splitdnn.io/v1alpha1", "kind": "DNNService",
            "metadata": {"name": name},
            "spec": {"model": {"source": "pvc://models/stacked.onnx",
                               "inputShape": list(INPUT_SHAPE)},
                     "source": {"tier": "jetson"},
                     "tiers": [{"name": "jetson", "nodeSelector": {
                         "splitdnn.io/device-class": "jetson-nano"}}],
                     "objective": {"kind": "latency", "maxStages": 2},
                     "slo": {"latencyMs": 8},
                     "exits": [{"afterLayer": after_layer, "threshold": 0.9, "accuracy": 0.6,
                                "head": {"source": "pvc://models/exit-stem.onnx"}},
                               {"afterLayer": DEEP_EXIT_AFTER, "threshold": 0.9,
                                "accuracy": 0.9,
                                "head": {"source": "pvc://models/exit-deep.onnx"}}],
                     "validation": {"data": {"source": "sklearn:digits"},
                                    "samples": SAMPLES}}}


def reference(claim: Path, batch: np.ndarray, tmp_path: Path) -> np.ndarray:
    """The stem's block and then the head, run locally."""
    import onnxruntime

    from splitdnn.runtime.artifacts import extract_block

    block = extract_block(claim / "stacked.onnx", "stacked", (0, EXIT_AFTER), tmp_path,
                          INPUT_SHAPE)
    features = batch
    for model in (block, claim / "exit-stem.onnx"):
        session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        features = session.run(None, {session.get_inputs()[0].name: features})[0]
    return features


def test_a_tight_budget_serves_from_the_early_exit(
        api: Api, namespace: str, operator: OperatorProcess, claim: Path,
        tmp_path: Path) -> None:
    from splitdnn.runtime.client import Client

    api.ok("POST", f"{GROUP_PATH}/{namespace}/dnnservices", exit_service("ex", EXIT_AFTER))
    ready = wait_ready(api, namespace, "ex", timeout=240)
    assert "2 exit heads; accuracy" in condition(ready, "ModelAnalyzed")["message"]
    analysis = json.loads(api.ok("GET", f"/api/v1/namespaces/{namespace}/configmaps/"
                                        f"ex-analysis")["data"]["analysis.json"])
    measured = analysis["accuracy"]  # measured on digits; the stated exit accuracies rule
    assert measured["samples"] == SAMPLES and len(measured["exits"]) == 2
    plan = api.ok("GET", f"{GROUP_PATH}/{namespace}/splitplans/ex")
    (stage,) = plan["spec"]["stages"]  # the deep exit (0.9) does not meet 8 ms either
    assert stage["layers"] == [0, EXIT_AFTER]
    assert stage["exit"]["index"] == 0 and len(stage["exit"]["headSha256"]) == 64
    assert plan["spec"]["predicted"]["accuracy"] == 0.6
    assert plan["spec"]["predicted"]["latencyMs"] <= 8
    assert stage_pods(api, namespace, "ex") == {"stage0": ["jetson-0"]}
    batch = np.random.default_rng(0).standard_normal(INPUT_SHAPE).astype(np.float32)
    with Client(gateway_url(api, namespace, "ex")) as client:
        result = client.infer_result(batch)
    assert result.exit == 0
    np.testing.assert_allclose(result.output, reference(claim, batch, tmp_path),
                               rtol=1e-4, atol=1e-5)

    moved = exit_service("ex", EXIT_AFTER)["spec"]["exits"]  # merge patch: the whole list
    moved[0]["afterLayer"] = 2  # 64 channels there: the stem's head reads 16
    api.ok("PATCH", f"{GROUP_PATH}/{namespace}/dnnservices/ex", {"spec": {"exits": moved}},
           "application/merge-patch+json")
    stalled = api.wait_for(f"{GROUP_PATH}/{namespace}/dnnservices/ex",
                           lambda s: condition(s, "Stalled").get("status") == "True",
                           timeout=120, what="Stalled")
    message = condition(stalled, "Stalled")["message"]
    assert "spec.exits[0].head: the head reads" in message, message
