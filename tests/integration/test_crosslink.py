"""A CrossLink end to end on the devcluster: training Job -> links ConfigMap -> head, cross
and tail stages -> the local service's gateway routing its requests through the cross path.

Two small services with pinned one-stage plans (no profiling): ResNet-18 (local, on the
Jetson) and MobileNetV2 (host, on the V100), both random weights at 3×32×32. The CrossLink
runs ResNet-18's block 0, MobileNetV2's block 0 through trained links, and ResNet-18's
blocks 2..3, for every request (share 1, no load threshold). Answers through the gateway
must equal the same composition computed here from the links the operator stored.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration.conftest import KUBECTL, Api
from tests.integration.operators import OperatorProcess  # the `operator` fixture: conftest

pytestmark = pytest.mark.slow
GROUP_PATH = "/apis/splitdnn.io/v1alpha1/namespaces"
SHAPE = [1, 3, 32, 32]
TIERS = [{"name": "jetson", "nodeSelector": {"splitdnn.io/device-class": "jetson-nano"}},
         {"name": "v100", "nodeSelector": {"nvidia.com/gpu.product": "Tesla-V100-SXM2-16GB"}}]
LOCAL, HOST = "torchvision:resnet18", "torchvision:mobilenet_v2"
LAST_LAYER = {LOCAL: 48, HOST: 99}  # `splitdnn model-facts` of each at 3x32x32
PATH = [0, 0, 0, 2]  # skips ResNet-18's block 1


def service(name: str, model: str, tier: str) -> dict[str, Any]:
    return {"apiVersion": "splitdnn.io/v1alpha1", "kind": "DNNService",
            "metadata": {"name": name},
            "spec": {"model": {"source": model, "inputShape": SHAPE},
                     "source": {"tier": tier}, "tiers": TIERS}}


def pinned_plan(name: str, model: str, tier: str) -> dict[str, Any]:
    selector = next(t["nodeSelector"] for t in TIERS if t["name"] == tier)
    return {"apiVersion": "splitdnn.io/v1alpha1", "kind": "SplitPlan",
            "metadata": {"name": f"{name}-pinned", "annotations": {"splitdnn.io/pinned": "true"}},
            "spec": {"serviceRef": {"name": name}, "stages": [
                {"name": "all", "tier": tier, "layers": [0, LAST_LAYER[model]],
                 "nodeSelector": selector}]}}


def crosslink(name: str, local: str, host: str) -> dict[str, Any]:
    return {"apiVersion": "splitdnn.io/v1alpha1", "kind": "CrossLink",
            "metadata": {"name": name},
            "spec": {"localService": local, "hostService": host, "path": PATH,
                     "training": {"data": {"source": "sklearn:digits"}, "epochs": 1},
                     "offloadedSamples": 32, "localBatch": 32, "hostBatch": 32,
                     "offloadThresholdInFlight": 0}}


def condition(obj: Any, type_: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        return {}
    return next((c for c in (obj.get("status") or {}).get("conditions") or []
                 if c["type"] == type_), {})


def settled(obj: Any) -> bool:
    return condition(obj, "Ready").get("status") == "True" or \
        condition(obj, "Stalled").get("status") == "True"


def composed_offline(links: dict[str, Any], directory: Path, batch: np.ndarray) -> np.ndarray:
    """The path computed here from the stored links: code-block's stages, chained in ORT."""
    import onnxruntime

    from splitdnn.coordination.blocks import decompose
    from splitdnn.coordination.export import build_stage
    from splitdnn.coordination.models import load_model
    from splitdnn.coordination.paths import parse_path

    digests = json.loads(links["data"]["links.json"])["sha256"]
    for key, value in links["binaryData"].items():
        (directory / key).write_bytes(base64.b64decode(value))
    blocked = [decompose(loaded.module, 4, loaded.input_shape, ref) for ref, loaded in
               ((ref, load_model(ref, None, tuple(SHAPE[1:]))) for ref in (LOCAL, HOST))]
    path = parse_path(PATH, 4, 4)
    x = batch
    for stage in ("head", "cross", "tail"):
        block = build_stage(stage, path, blocked[0], blocked[1], directory, digests,
                            directory / stage)  # type: ignore[arg-type]
        session = onnxruntime.InferenceSession(str(block), providers=["CPUExecutionProvider"])
        x = session.run(None, {session.get_inputs()[0].name: x})[0]
    return x


def gateway_metric(api: Api, namespace: str, service_name: str, sample: str) -> float:
    import requests

    endpoints = api.ok("GET", f"/api/v1/namespaces/{namespace}/endpoints/"
                              f"{service_name}-gateway")
    address = endpoints["subsets"][0]["addresses"][0]["ip"]
    text = requests.get(f"http://{address}:8000/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(sample))


def infer_raw(api: Api, namespace: str, service_name: str, batch: np.ndarray
              ) -> tuple[np.ndarray, dict[str, Any]]:
    import requests

    from splitdnn.runtime.oip import decode_infer_response, encode_infer_request

    endpoints = api.ok("GET", f"/api/v1/namespaces/{namespace}/endpoints/"
                              f"{service_name}-gateway")
    address = endpoints["subsets"][0]["addresses"][0]["ip"]
    metadata = requests.get(f"http://{address}:8000/v2/models/{service_name}", timeout=10)
    body, headers = encode_infer_request(metadata.json()["inputs"][0]["name"], batch,
                                         binary=True)
    response = requests.post(f"http://{address}:8000/v2/models/{service_name}/infer",
                             data=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return decode_infer_response(response.content, response.headers)


def test_crosslink_trains_deploys_and_routes_through_the_host(
        api: Api, namespace: str, operator: OperatorProcess, cluster: dict[str, Any],
        tmp_path: Path) -> None:
    for name, model, tier in (("small", LOCAL, "jetson"), ("big", HOST, "v100")):
        api.ok("POST", f"{GROUP_PATH}/{namespace}/splitplans", pinned_plan(name, model, tier))
        api.ok("POST", f"{GROUP_PATH}/{namespace}/dnnservices", service(name, model, tier))
    api.ok("POST", f"{GROUP_PATH}/{namespace}/crosslinks", crosslink("borrow", "small", "big"))
    ready = api.wait_for(f"{GROUP_PATH}/{namespace}/crosslinks/borrow", settled, timeout=300,
                         what="CrossLink borrow Ready")
    assert condition(ready, "Ready")["status"] == "True", ready["status"]
    status = ready["status"]
    assert status["path"] == PATH and status["links"].startswith("borrow-links-")
    assert 0 <= status["accuracy"] <= 1 and 0 <= status["avgAccuracy"] <= 1
    assert {"throughputGain", "reward"} <= set(status)
    assert status["observedGeneration"] == ready["metadata"]["generation"]
    for step in ("LinksTrained", "PathDeployed", "Routed"):
        assert condition(ready, step)["status"] == "True", step

    pods = api.ok("GET", f"/api/v1/namespaces/{namespace}/pods",
                  labelSelector="splitdnn.io/crosslink=borrow,splitdnn.io/cross-stage")["items"]
    placed = {p["metadata"]["labels"]["splitdnn.io/cross-stage"]: p["spec"]["nodeName"]
              for p in pods if not p["metadata"].get("deletionTimestamp")}
    assert placed == {"head": "jetson-0", "cross": "v100-0", "tail": "jetson-0"}

    if KUBECTL.exists():  # the printer columns, as a user sees them
        table = subprocess.run(
            [str(KUBECTL), "-n", namespace, "get", "crosslinks", "-o", "wide"],
            capture_output=True, text=True, timeout=60, check=True,
            env=dict(os.environ, KUBECONFIG=cluster["kubeconfig"])).stdout
        print(table)
        assert table.split("\n")[1].split()[:5] == ["borrow", "True", "Offloading", "small",
                                                    "big"], table

    links = api.ok("GET", f"/api/v1/namespaces/{namespace}/configmaps/{status['links']}")
    assert links["metadata"]["ownerReferences"][0]["uid"] == ready["metadata"]["uid"]
    batches = [np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)
               for seed in range(3)]
    before = gateway_metric(api, namespace, "small",
                            'splitdnn_requests_total{outcome="sent",stage="gateway-cross"}')
    for batch in batches:
        output, parameters = infer_raw(api, namespace, "small", batch)
        assert parameters.get("route") == "cross"
        np.testing.assert_allclose(output, composed_offline(links, tmp_path, batch),
                                   rtol=1e-3, atol=1e-3)
    after = gateway_metric(api, namespace, "small",
                           'splitdnn_requests_total{outcome="sent",stage="gateway-cross"}')
    assert after - before == len(batches)

    # ResNet-18 has 10 compute units: its Job fails on bad input, naming the field
    too_many = crosslink("too-many", "small", "big")
    too_many["spec"].update(localBlocks=12, path=[0, 0, 0, 11])
    api.ok("POST", f"{GROUP_PATH}/{namespace}/crosslinks", too_many)
    stalled = api.wait_for(f"{GROUP_PATH}/{namespace}/crosslinks/too-many", settled,
                           timeout=120, what="CrossLink too-many Stalled")
    message = condition(stalled, "Stalled")["message"]
    assert message.startswith("spec.localBlocks:") and "10 compute units" in message, message
    api.ok("DELETE", f"{GROUP_PATH}/{namespace}/crosslinks/too-many")

    # the reverse link would let "small" borrow its own blocks through "big"
    api.ok("POST", f"{GROUP_PATH}/{namespace}/crosslinks", crosslink("back", "big", "small"))
    stalled = api.wait_for(f"{GROUP_PATH}/{namespace}/crosslinks/back", settled, timeout=60,
                           what="CrossLink back Stalled")
    message = condition(stalled, "Stalled")["message"]
    assert "spec.hostService" in message and "cycle" in message, message
    api.ok("DELETE", f"{GROUP_PATH}/{namespace}/crosslinks/back")
    api.ok("DELETE", f"{GROUP_PATH}/{namespace}/crosslinks/borrow")
    api.wait_for(f"/apis/apps/v1/namespaces/{namespace}/deployments",
                 lambda r: isinstance(r, dict) and not any(
                     d["metadata"]["labels"].get("splitdnn.io/crosslink") == "borrow"
                     for d in r["items"] if not d["metadata"].get("deletionTimestamp")),
                 timeout=60, what="the cross-path stages to go with the CrossLink")
    api.wait_for(f"/apis/apps/v1/namespaces/{namespace}/deployments/small-gateway",
                 lambda d: isinstance(d, dict) and "--cross-endpoint" not in
                 d["spec"]["template"]["spec"]["containers"][0]["args"],
                 timeout=60, what="the local gateway without the cross path")
