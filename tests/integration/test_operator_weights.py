"""A torchvision model served with the user's weights (``spec.model.weights``), end to end.

The state dict (ResNet-18 initialised from another seed than the export's random weights)
lies on a PersistentVolumeClaim (the devcluster's ``pvc/`` directory). The analysis Job, the
block-digests Job and each stage's init container fetch it and export the model with it, so
the gateway answers what the torch model with those weights answers; new weights roll out new
stage pods that answer with the new weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration.conftest import Api
from tests.integration.operators import OperatorProcess
from tests.integration.test_operator import GROUP_PATH, gateway_url, service, wait_ready

pytestmark = pytest.mark.slow
INPUT_SHAPE = (1, 3, 64, 64)


@pytest.fixture
def claim(devcluster: dict[str, Any]) -> Path:
    """The devcluster claim ``weights`` with two ResNet-18 state dicts (seeds 7 and 8)."""
    import torch
    import torchvision

    root = Path(devcluster["stateDir"]) / "pvc" / "weights"
    root.mkdir(parents=True, exist_ok=True)
    for seed in (7, 8):
        torch.manual_seed(seed)
        torch.save(torchvision.models.resnet18().state_dict(), root / f"r18-{seed}.pt")
    return root


def with_weights(name: str, path: Path) -> dict[str, Any]:
    from splitdnn.graph.sources import file_sha256

    body = service(name)
    body["spec"]["model"] = {"source": "torchvision:resnet18", "inputShape": list(INPUT_SHAPE),
                             "weights": {"source": f"pvc://weights/{path.name}",
                                         "sha256": file_sha256(path)}}
    return body


def torch_output(path: Path, batch: np.ndarray) -> np.ndarray:
    import torch
    import torchvision

    net = torchvision.models.resnet18()
    net.load_state_dict(torch.load(path, weights_only=True))
    with torch.no_grad():
        output: np.ndarray = net.eval()(torch.from_numpy(batch)).numpy()
    return output


def answer(api: Api, namespace: str, batch: np.ndarray) -> np.ndarray:
    from splitdnn.runtime.client import Client

    with Client(gateway_url(api, namespace, "w")) as client:
        return client.infer(batch)


def test_the_gateway_answers_with_the_users_weights_and_new_weights_roll_out(
        api: Api, namespace: str, operator: OperatorProcess, claim: Path) -> None:
    batch = np.random.default_rng(0).standard_normal(INPUT_SHAPE).astype(np.float32)
    first, second = claim / "r18-7.pt", claim / "r18-8.pt"
    api.ok("POST", f"{GROUP_PATH}/{namespace}/dnnservices", with_weights("w", first))
    ready = wait_ready(api, namespace, "w", timeout=240)
    np.testing.assert_allclose(answer(api, namespace, batch), torch_output(first, batch),
                               rtol=1e-3, atol=1e-4)
    digest = ready["status"]["modelDigest"]

    api.ok("PATCH", f"{GROUP_PATH}/{namespace}/dnnservices/w",
           {"spec": {"model": with_weights("w", second)["spec"]["model"]}},
           "application/merge-patch+json")
    api.wait_for(f"{GROUP_PATH}/{namespace}/dnnservices/w",
                 lambda s: s["status"].get("modelDigest") not in (None, digest)
                 and s["status"].get("observedGeneration") == s["metadata"]["generation"],
                 timeout=180, what="the analysis of the new weights")
    wait_ready(api, namespace, "w", timeout=240)
    expected = torch_output(second, batch)
    api.wait_for(f"{GROUP_PATH}/{namespace}/dnnservices/w",
                 lambda _: np.allclose(answer(api, namespace, batch), expected, rtol=1e-3,
                                       atol=1e-4),
                 timeout=120, what="the gateway to answer with the new weights")
