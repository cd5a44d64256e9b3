"""The operator end to end on the devcluster: DNNService -> analysis and profiling Jobs ->
SplitPlan -> stage Deployments wired through headless Services -> gateway answering OIP v2.

One operator process (``splitdnn operator --all-namespaces``) serves the module; each test
works in its own namespace. The model is ResNet-18 with random weights (exported once and
cached), so results can be compared with the whole model run locally.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration.conftest import Api
from tests.integration.operators import OperatorProcess  # the `operator` fixture: conftest

pytestmark = pytest.mark.slow
GROUP_PATH = "/apis/splitdnn.io/v1alpha1/namespaces"
MODEL = "torchvision:resnet18"


def service(name: str, model: str = MODEL, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": {"source": model, "inputShape": [1, 3, 224, 224]},
        "source": {"tier": "jetson"},
        "tiers": [{"name": "jetson", "nodeSelector": {"splitdnn.io/device-class": "jetson-nano"}},
                  {"name": "v100", "nodeSelector": {
                      "nvidia.com/gpu.product": "Tesla-V100-SXM2-16GB"}}],
        "objective": {"kind": "latency", "maxStages": 3},
    }
    body.update(spec)
    return {"apiVersion": "splitdnn.io/v1alpha1", "kind": "DNNService",
            "metadata": {"name": name}, "spec": body}


def condition(obj: Any, type_: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        return {}
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == type_), {})


def wait_ready(api: Api, namespace: str, name: str, timeout: float = 180) -> dict[str, Any]:
    result: dict[str, Any] = api.wait_for(
        f"{GROUP_PATH}/{namespace}/dnnservices/{name}",
        lambda s: condition(s, "Ready").get("status") == "True"
        or condition(s, "Stalled").get("status") == "True",
        timeout=timeout, what=f"DNNService {name} Ready")
    assert condition(result, "Ready").get("status") == "True", result["status"]
    return result


def gateway_url(api: Api, namespace: str, name: str) -> str:
    endpoints = api.ok("GET", f"/api/v1/namespaces/{namespace}/endpoints/{name}-gateway")
    address = endpoints["subsets"][0]["addresses"][0]["ip"]
    return f"http://{address}:8000"


def reference_output(batch: np.ndarray) -> np.ndarray:
    import onnxruntime

    from splitdnn.graph import resolve_model

    model = resolve_model(MODEL, input_shape=(1, 3, 224, 224))
    session = onnxruntime.InferenceSession(str(model.onnx_path),
                                           providers=["CPUExecutionProvider"])
    output: np.ndarray = session.run(None, {session.get_inputs()[0].name: batch})[0]
    return output


def stage_pods(api: Api, namespace: str, plan: str) -> dict[str, list[str]]:
    pods = api.ok("GET", f"/api/v1/namespaces/{namespace}/pods",
                  labelSelector=f"splitdnn.io/plan={plan},splitdnn.io/stage")["items"]
    placed: dict[str, list[str]] = {}
    for pod in pods:
        if pod["metadata"].get("deletionTimestamp"):
            continue
        placed.setdefault(pod["metadata"]["labels"]["splitdnn.io/stage"], []).append(
            pod["spec"]["nodeName"])
    return placed


NODE_OF_TIER = {"jetson": "jetson-0", "v100": "v100-0"}


# Known bugs (issue 7 stays open): in two clean-clone runs of the whole suite the link
# ConfigMap was missing (the netprofile Job failed and the operator fell back to the
# configured link) and the pinned plan's gateway answered 504; both pass when the module runs
# on its own. Kept running, not strict, until the cause is found.
def test_service_becomes_ready_and_serves_correct_results(
        api: Api, namespace: str, operator: OperatorProcess) -> None:
    from splitdnn.runtime.client import Client

    api.ok("POST", f"{GROUP_PATH}/{namespace}/dnnservices", service("rn"))
    ready = wait_ready(api, namespace, "rn")
    status = ready["status"]
    assert status["splitPlan"] == "rn"
    assert status["url"] == f"http://rn-gateway.{namespace}.svc.cluster.local:8000"
    for step in ("ModelAnalyzed", "Profiled", "Planned", "RolledOut"):
        assert condition(ready, step)["status"] == "True", step
    plan = api.ok("GET", f"{GROUP_PATH}/{namespace}/splitplans/rn")
    assert plan["metadata"]["ownerReferences"][0]["uid"] == ready["metadata"]["uid"]
    placed = stage_pods(api, namespace, "rn")
    for stage in plan["spec"]["stages"]:
        assert placed[stage["name"]] == [NODE_OF_TIER[stage["tier"]]], (stage, placed)
    profiles = api.ok("GET", f"/api/v1/namespaces/{namespace}/configmaps",
                      labelSelector="splitdnn.io/profile=true")["items"]
    assert {cm["metadata"]["labels"]["splitdnn.io/hardware-class"] for cm in profiles} == {
        "jetson-nano", "v100-server"}
    links = api.ok("GET", f"/api/v1/namespaces/{namespace}/configmaps",
                   labelSelector="splitdnn.io/link=true")["items"]
    assert sorted((cm["metadata"]["labels"]["splitdnn.io/link-from"],
                   cm["metadata"]["labels"]["splitdnn.io/link-to"]) for cm in links) == [
        ("jetson-nano", "v100-server"), ("v100-server", "jetson-nano")]  # each direction
    blocks = api.ok("GET", f"/api/v1/namespaces/{namespace}/configmaps/rn-blocks")["data"]
    for stage in plan["spec"]["stages"]:  # each stage's init container checked this digest
        assert stage["blockSha256"] == blocks["{}-{}".format(*stage["layers"])], stage
    batch = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    with Client(gateway_url(api, namespace, "rn")) as client:
        output = client.infer(batch)
    np.testing.assert_allclose(output, reference_output(batch), rtol=1e-3, atol=1e-3)


def test_pinned_plan_is_rolled_out_and_kept(api: Api, namespace: str,
                                            operator: OperatorProcess) -> None:
    from splitdnn.runtime.client import Client

    pinned = {"apiVersion": "splitdnn.io/v1alpha1", "kind": "SplitPlan",
              "metadata": {"name": "by-hand", "annotations": {"splitdnn.io/pinned": "true"}},
              "spec": {"serviceRef": {"name": "pn"}, "stages": [
                  {"name": "head", "tier": "jetson", "layers": [0, 12],
                   "nodeSelector": {"splitdnn.io/device-class": "jetson-nano"}},
                  {"name": "tail", "tier": "v100", "layers": [13, 48],
                   "nodeSelector": {"nvidia.com/gpu.product": "Tesla-V100-SXM2-16GB"}}]}}
    api.ok("POST", f"{GROUP_PATH}/{namespace}/splitplans", pinned)
    api.ok("POST", f"{GROUP_PATH}/{namespace}/dnnservices", service("pn"))
    ready = wait_ready(api, namespace, "pn")
    assert ready["status"]["splitPlan"] == "by-hand"
    assert condition(ready, "Planned")["reason"] == "Pinned"
    assert stage_pods(api, namespace, "by-hand") == {"head": ["jetson-0"], "tail": ["v100-0"]}
    kept = api.ok("GET", f"{GROUP_PATH}/{namespace}/splitplans/by-hand")
    assert kept["spec"]["stages"] == pinned["spec"]["stages"] or \
        [s["layers"] for s in kept["spec"]["stages"]] == [[0, 12], [13, 48]]
    assert api.request("GET", f"{GROUP_PATH}/{namespace}/splitplans/pn").status_code == 404
    batch = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    with Client(gateway_url(api, namespace, "pn")) as client:
        output = client.infer(batch)
    np.testing.assert_allclose(output, reference_output(batch), rtol=1e-3, atol=1e-3)


def test_unknown_model_stalls_with_a_message(api: Api, namespace: str,
                                             operator: OperatorProcess) -> None:
    body = service("bad")
    body["spec"]["model"]["source"] = "torchvision:no_such_net"
    api.ok("POST", f"{GROUP_PATH}/{namespace}/dnnservices", body)
    stalled = api.wait_for(f"{GROUP_PATH}/{namespace}/dnnservices/bad",
                           lambda s: condition(s, "Stalled").get("status") == "True",
                           timeout=120, what="Stalled")
    message = condition(stalled, "Stalled")["message"]
    assert "spec.model.source" in message and "no_such_net" in message, message
    assert condition(stalled, "Ready")["status"] == "False"


def assert_deletion_cleans_up(api: Api, namespace: str, name: str) -> None:
    """Deleting the service removes every child and the finalizer lets it go."""
    api.ok("DELETE", f"{GROUP_PATH}/{namespace}/dnnservices/{name}")
    api.wait_for(f"{GROUP_PATH}/{namespace}/dnnservices/{name}", lambda r: r == 404,
                 timeout=60, what="the DNNService to go")
    for kind in ("apis/apps/v1/namespaces/{ns}/deployments", "api/v1/namespaces/{ns}/services",
                 "apis/batch/v1/namespaces/{ns}/jobs", "apis/splitdnn.io/v1alpha1/namespaces/"
                                                       "{ns}/splitplans"):
        path = "/" + kind.format(ns=namespace)
        api.wait_for(path, lambda r: isinstance(r, dict) and not r["items"], timeout=60,
                     what=f"{path} to empty")


def names(api: Api, namespace: str, path: str, selector: str = "") -> list[str]:
    items = api.ok("GET", path.format(ns=namespace), labelSelector=selector)["items"]
    return sorted(i["metadata"]["name"] for i in items
                  if not i["metadata"].get("deletionTimestamp"))


def plan_settled(api: Api, namespace: str, name: str, placement: str) -> Any:
    """The plan serves, its status is current and its placement starts with ``placement``."""
    return lambda p: isinstance(p, dict) and str((p.get("status") or {}).get(
        "placement", "")).startswith(placement) and condition(p, "Ready").get(
        "status") == "True" and p["status"].get("observedGeneration") == p["metadata"][
        "generation"]


def test_spec_change_replans_make_before_break(api: Api, namespace: str,
                                               operator: OperatorProcess) -> None:
    from splitdnn.runtime.client import Client

    api.ok("POST", f"{GROUP_PATH}/{namespace}/dnnservices", service("mb"))
    wait_ready(api, namespace, "mb")
    deployments = "/apis/apps/v1/namespaces/{ns}/deployments"
    before = names(api, namespace, deployments, "splitdnn.io/stage")
    gateway_pods = names(api, namespace, "/api/v1/namespaces/{ns}/pods",
                         "splitdnn.io/component=gateway")
    outcomes: list[str] = []
    stop = threading.Event()
    batch = np.random.default_rng(2).standard_normal((1, 3, 224, 224)).astype(np.float32)
    expected = reference_output(batch)

    def load() -> None:
        with Client(gateway_url(api, namespace, "mb")) as client:
            while not stop.is_set():
                try:
                    output = client.infer(batch)
                    outcomes.append("ok" if np.allclose(output, expected, rtol=1e-3, atol=1e-3)
                                    else "wrong")
                except Exception as error:  # every failure counts, whatever its kind
                    outcomes.append(repr(error))

    thread = threading.Thread(target=load)
    thread.start()
    try:
        # only the Jetson tier and one thread: a new placement and new stage revisions
        api.ok("PATCH", f"{GROUP_PATH}/{namespace}/dnnservices/mb",
               [{"op": "replace", "path": "/spec/tiers",
                 "value": service("x")["spec"]["tiers"][:1]},
                {"op": "add", "path": "/spec/runtime/threads", "value": 1}],
               content_type="application/json-patch+json")
        api.wait_for(f"{GROUP_PATH}/{namespace}/splitplans/mb",
                     plan_settled(api, namespace, "mb", "jetson[0-48]"), timeout=120,
                     what="the new plan to serve")
        time.sleep(2)
    finally:
        stop.set()
        thread.join(timeout=60)
    after = names(api, namespace, deployments, "splitdnn.io/stage")
    assert after and not set(after) & set(before), (before, after)
    assert stage_pods(api, namespace, "mb") == {"stage0": ["jetson-0"]}
    assert names(api, namespace, "/api/v1/namespaces/{ns}/pods",
                 "splitdnn.io/component=gateway") == gateway_pods  # the gateway never restarted
    failures = [o for o in outcomes if o != "ok"]
    assert len(outcomes) > 10 and not failures, (len(outcomes), failures[:5])
    wait_ready(api, namespace, "mb", timeout=30)


def test_operator_killed_mid_reconcile_converges_without_duplicates(
        api: Api, namespace: str, operator: OperatorProcess) -> None:
    api.ok("POST", f"{GROUP_PATH}/{namespace}/dnnservices", service("rs"))
    api.wait_for("/apis/batch/v1/namespaces/" + namespace + "/jobs",
                 lambda r: isinstance(r, dict) and bool(r["items"]), timeout=60,
                 what="the analysis job")
    operator.kill()
    operator.start()
    ready = wait_ready(api, namespace, "rs")
    jobs = names(api, namespace, "/apis/batch/v1/namespaces/{ns}/jobs")
    assert len([j for j in jobs if "-analyse-" in j]) == 1, jobs
    assert len([j for j in jobs if "-profile-" in j]) == 2, jobs
    assert len([j for j in jobs if "-netprobe-" in j]) == 2, jobs  # one per direction
    assert len([j for j in jobs if "-digests-" in j]) == 1, jobs
    plan = api.ok("GET", f"{GROUP_PATH}/{namespace}/splitplans/rs")
    deployments = names(api, namespace, "/apis/apps/v1/namespaces/{ns}/deployments")
    assert len(deployments) == len(plan["spec"]["stages"]) + 1, deployments  # + gateway
    pods = names(api, namespace, "/api/v1/namespaces/{ns}/pods", "splitdnn.io/stage")
    assert len(pods) == len(plan["spec"]["stages"]), pods
    assert ready["status"]["splitPlan"] == "rs"
    finalizers = ready["metadata"]["finalizers"]
    assert finalizers.count("splitdnn.io/finalizer") == 1, finalizers


def test_node_down_replans_within_60_seconds_then_deletion_cleans_up(
        api: Api, namespace: str, operator: OperatorProcess, devcluster: dict[str, Any]) -> None:
    from splitdnn.devcluster.manage import set_node

    # ResNet-50: enough compute per input byte that the V100 node, with four times the
    # Jetson's CPU quota, is worth the input's transfer over the 40 Mbit/s link
    api.ok("POST", f"{GROUP_PATH}/{namespace}/dnnservices",
           service("nd", "torchvision:resnet50"))
    wait_ready(api, namespace, "nd")
    plan = api.ok("GET", f"{GROUP_PATH}/{namespace}/splitplans/nd")
    assert "v100" in {s["tier"] for s in plan["spec"]["stages"]}, plan["spec"]["stages"]
    state_dir = Path(devcluster["stateDir"])
    set_node(state_dir, "v100-0", up=False)
    try:
        started = time.monotonic()
        api.wait_for(f"{GROUP_PATH}/{namespace}/splitplans/nd",
                     lambda p: isinstance(p, dict) and "v100" not in
                     {s["tier"] for s in p["spec"]["stages"]}, timeout=60,
                     what="a plan without the V100 tier")
        assert time.monotonic() - started < 60
        api.wait_for(f"{GROUP_PATH}/{namespace}/splitplans/nd",
                     plan_settled(api, namespace, "nd", "jetson[0-121]"), timeout=120,
                     what="the new plan to serve")
    finally:
        set_node(state_dir, "v100-0", up=True)
    # the V100 is back, but the plan still runs: no replan within minIntervalSeconds (60 s)
    held = api.wait_for(f"{GROUP_PATH}/{namespace}/dnnservices/nd", lambda s: condition(
        s, "Planned").get("reason") == "Holding", timeout=30, what="the replan held back")
    assert "60 s apart" in condition(held, "Planned")["message"]
    kept = api.ok("GET", f"{GROUP_PATH}/{namespace}/splitplans/nd")
    assert [s["tier"] for s in kept["spec"]["stages"]] == ["jetson"], kept["spec"]["stages"]
    assert_deletion_cleans_up(api, namespace, "nd")


def layers_on(stages: list[dict[str, Any]], tier: str) -> int:
    return sum(s["layers"][1] - s["layers"][0] + 1 for s in stages if s["tier"] == tier)


def test_latency_drift_replans_with_the_measured_costs(
        api: Api, namespace: str, operator: OperatorProcess, devcluster: dict[str, Any]) -> None:
    """The node running most of the model gets a fifth of its CPU quota under steady
    requests: the measured latency leaves the prediction, and once that lasted the operator
    plans with that class's costs scaled by what was measured, moving work off it."""
    from splitdnn.runtime.client import Client

    if not devcluster.get("cpuLimited"):
        pytest.skip("needs the devcluster's cgroup CPU quotas (root, cgroup v1)")
    api.ok("POST", f"{GROUP_PATH}/{namespace}/dnnservices", service("dr", replan={
        "latencyDriftPercent": 40, "driftPersistSeconds": 5, "minIntervalSeconds": 5,
        "minImprovementPercent": 5}))
    wait_ready(api, namespace, "dr")
    before = api.ok("GET", f"{GROUP_PATH}/{namespace}/splitplans/dr")["spec"]["stages"]
    busy = max(NODE_OF_TIER, key=lambda tier: layers_on(before, tier))
    quota = Path(f"/sys/fs/cgroup/cpu/splitdnn-{devcluster['clusterId']}/"
                 f"{NODE_OF_TIER[busy]}/cpu.cfs_quota_us")
    original = quota.read_text().strip()
    jobs = "/apis/batch/v1/namespaces/{ns}/jobs"
    digest_jobs = [j for j in names(api, namespace, jobs) if "-digests-" in j]
    stop = threading.Event()
    batch = np.zeros((1, 3, 224, 224), np.float32)

    def load() -> None:
        with Client(gateway_url(api, namespace, "dr")) as client:
            while not stop.is_set():
                try:
                    client.infer(batch)
                except Exception:  # only the latency matters here
                    time.sleep(0.2)

    thread = threading.Thread(target=load)
    thread.start()
    try:
        quota.write_text(str(int(original) // 5))
        # a better plan was found with the measured costs: its blocks' digests are computed
        # (the quota goes back now, so that Job and the rollout run at the usual speed)
        api.wait_for("/apis/batch/v1/namespaces/" + namespace + "/jobs", lambda r: isinstance(
            r, dict) and len([j for j in r["items"] if "-digests-" in j["metadata"]["name"]])
            > len(digest_jobs), timeout=150, what="a replan for the measured latency")
    finally:
        quota.write_text(original)
        stop.set()
        thread.join(timeout=60)
    plan = api.wait_for(f"{GROUP_PATH}/{namespace}/splitplans/dr", lambda p: isinstance(p, dict)
                        and "splitdnn.io/latency-scale" in p["metadata"].get("annotations", {}),
                        timeout=90, what="the plan made with measured costs")
    scale = json.loads(plan["metadata"]["annotations"]["splitdnn.io/latency-scale"])["classes"]
    busy_class = {"jetson": "jetson-nano", "v100": "v100-server"}[busy]
    assert scale[busy_class] > 1.5, scale
    assert layers_on(plan["spec"]["stages"], busy) < layers_on(before, busy), (before, plan)
    # kopf posts Events from a queue, and the status is written at the end of the pass: both
    # may come a moment after the plan
    api.wait_for(f"/api/v1/namespaces/{namespace}/events", lambda r: isinstance(r, dict) and any(
        e["reason"] == "LatencyDrift" and e["involvedObject"]["name"] == "dr"
        for e in r["items"]), timeout=30, what="a LatencyDrift event")
    drifted = api.wait_for(f"{GROUP_PATH}/{namespace}/dnnservices/dr", lambda s: isinstance(
        s, dict) and (condition(s, "Planned") or {}).get("reason") == "LatencyDrift",
        timeout=30, what="Planned: LatencyDrift on the service")
    service_status = drifted["status"]
    assert service_status["drift"]["message"], service_status  # what the last pass decided
    api.wait_for(f"{GROUP_PATH}/{namespace}/splitplans/dr",
                 lambda p: plan_settled(api, namespace, "dr", "")(p)
                 and p["status"].get("observedGeneration") == plan["metadata"]["generation"],
                 timeout=180, what="the new plan to serve")
