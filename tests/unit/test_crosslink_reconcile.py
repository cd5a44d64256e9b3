"""A CrossLink's reconcile passes against the devcluster's object store (no kubelets, no
operator process): the test plays the Job controller and the kubelet — it completes the
training Jobs with a pod log and marks Deployments ready — and checks what each pass decides.

The case a devcluster run does not cover in its time budget: a path change on a running
CrossLink is make-before-break. The old stages keep serving while the new links train and
while the new stages start; the entry Service moves to the new head only once all new
stages are ready; the old stages go only after the drain time.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from splitdnn.controller import children, crosslink, events
from splitdnn.controller import crosslink_children as xc
from splitdnn.controller.config import OperatorConfig
from splitdnn.controller.kube import FIELD_MANAGER
from splitdnn.controller.splitplan import DRAIN_SECONDS
from splitdnn.devcluster.resources import ResourceType
from splitdnn.devcluster.selectors import label_matcher
from splitdnn.devcluster.store import ApiError, Store

Obj = dict[str, Any]
NS = "edge"
CONFIG = OperatorConfig()
CRDS = Path(__file__).resolve().parents[2] / "crds"


class StoreKube:
    """``controller.kube.Kube``'s calls on a devcluster Store (the emulated API server's
    storage: CRD schemas and CEL rules, server-side apply, label selectors)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.logs: dict[str, str] = {}

    def rt(self, kind: str) -> ResourceType:
        return next(rt for rt in self.store.types.values() if rt.kind == kind)

    def get(self, kind: str, namespace: str | None, name: str) -> Obj | None:
        return self.store.find(self.rt(kind), namespace or "", name)

    def list(self, kind: str, namespace: str | None, selector: str = "") -> list[Obj]:
        return self.store.list_objects(self.rt(kind), namespace, label_matcher(selector))

    def apply(self, obj: Obj) -> Obj:
        meta = obj["metadata"]
        return self.store.patch(self.rt(obj["kind"]), meta.get("namespace") or "", meta["name"],
                                "application/apply-patch+yaml", obj, create_missing=True,
                                field_manager=FIELD_MANAGER)

    def patch_status(self, kind: str, namespace: str, name: str, status: Obj) -> None:
        self.store.patch(self.rt(kind), namespace, name, "application/merge-patch+json",
                         {"status": status}, subresource="status")

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        try:
            self.store.delete(self.rt(kind), namespace, name, "Background")
            return True
        except ApiError as error:
            if error.code == 404:
                return False
            raise

    def pod_log(self, namespace: str, pod: str, container: str | None = None) -> str:
        return self.logs.get(pod, "")


@pytest.fixture
def kube() -> StoreKube:
    return new_store_kube()


def new_store_kube() -> StoreKube:
    """An empty store with the CRDs and the namespace ``edge``."""
    store = Store()
    crd_type = store.type_for("apiextensions.k8s.io", "v1", "customresourcedefinitions")
    for file in sorted(CRDS.glob("*.yaml")):
        store.create(crd_type, "", yaml.safe_load(file.read_text()))
    store.create(store.type_for("", "v1", "namespaces"), "", {"metadata": {"name": NS}})
    return StoreKube(store)


def service(name: str, model: str, selector: dict[str, str]) -> Obj:
    return {"apiVersion": "splitdnn.io/v1alpha1", "kind": "DNNService",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"model": {"source": model, "inputShape": [1, 3, 32, 32]},
                     "source": {"tier": "edge"},
                     "tiers": [{"name": "edge", "nodeSelector": selector}]}}


def the_crosslink(path: list[int]) -> Obj:
    return {"apiVersion": "splitdnn.io/v1alpha1", "kind": "CrossLink",
            "metadata": {"name": "borrow", "namespace": NS},
            "spec": {"localService": "small", "hostService": "big", "path": path,
                     "training": {"data": {"source": "sklearn:digits"}, "epochs": 1},
                     "offloadedSamples": 8, "localBatch": 32, "hostBatch": 32}}


def job_result(path: list[int], seed: int) -> str:
    """The JSON line code-train prints (links are stand-in bytes with their real digests)."""
    links = {}
    for name in ("entry", "exit"):
        data = bytes([seed]) * 64 + name.encode()
        links[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                       "base64": base64.b64encode(data).decode()}
    return json.dumps({"path": path, "accuracy": 0.9, "avg_accuracy": 0.95,
                       "throughput_gain": 100.0 + seed, "reward": 50.0, "main_accuracy": 1.0,
                       "trainings": 1, "links": links})


def run_pass(kube: StoreKube) -> str:
    """One reconcile pass over the stored CrossLink, as the operator's timer runs it; the
    reason it waits, or 'done'. Checks after every pass that each cross stage could start."""
    body = kube.get("CrossLink", NS, "borrow")
    assert body is not None
    try:
        crosslink.reconcile_crosslink(body, kube, CONFIG)  # type: ignore[arg-type]
        outcome = "done"
    except events.Waiting:
        stored = kube.get("CrossLink", NS, "borrow") or {}
        outcome = str(condition(stored, "Reconciling").get("reason"))
    cross_stages_can_start(kube)
    return outcome


def condition(body: Obj, type_: str) -> Obj:
    return next((c for c in (body.get("status") or {}).get("conditions") or []
                 if c["type"] == type_), {})


def complete_training(kube: StoreKube, path: list[int], seed: int) -> None:
    """The Job controller and kubelet: the training Job's pod succeeded and printed JSON."""
    [job] = [j for j in kube.list("Job", NS, f"{xc.CROSSLINK_LABEL}=borrow")
             if not (j.get("status") or {}).get("conditions")]
    name = job["metadata"]["name"]
    kube.apply({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"{name}-pod", "namespace": NS,
                             "labels": {"job-name": name}},
                "spec": {"containers": [{"name": "main", "image": "img"}]}})
    kube.patch_status("Pod", NS, f"{name}-pod", {"phase": "Succeeded"})
    kube.patch_status("Job", NS, name, {"conditions": [{"type": "Complete", "status": "True"}]})
    kube.logs[f"{name}-pod"] = f"training...\n{job_result(path, seed)}\n"


def make_ready(kube: StoreKube, name: str) -> None:
    deployment = kube.get("Deployment", NS, name)
    assert deployment is not None
    kube.patch_status("Deployment", NS, name, {
        "observedGeneration": deployment["metadata"]["generation"], "replicas": 1,
        "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1})


def stages(kube: StoreKube) -> set[str]:
    return {d["metadata"]["name"] for d in kube.list("Deployment", NS,
                                                     f"{xc.CROSSLINK_LABEL}=borrow")}


def cross_stages_can_start(kube: StoreKube) -> None:
    """Every cross stage's links ConfigMap holds the links its init step checks, so a pod of
    the old path that restarts while the new one comes up still starts."""
    for deployment in kube.list("Deployment", NS, "splitdnn.io/cross-stage=cross"):
        pod = deployment["spec"]["template"]["spec"]
        [volume] = [v for v in pod["volumes"] if "configMap" in v]
        configmap = kube.get("ConfigMap", NS, volume["configMap"]["name"])
        assert configmap is not None, f"{deployment['metadata']['name']}: no links ConfigMap"
        args = pod["initContainers"][0]["args"]
        wanted = dict(args[i + 1].split("=") for i, a in enumerate(args) if a == "--link-sha256")
        stored = {name: hashlib.sha256(base64.b64decode(data)).hexdigest()
                  for name, data in configmap["binaryData"].items()}
        assert stored == {f"{name}.onnx": digest for name, digest in wanted.items()}, \
            f"{deployment['metadata']['name']}: the mounted links differ from those it checks"


def entry_head(kube: StoreKube) -> str:
    entry = kube.get("Service", NS, xc.entry_name("borrow"))
    assert entry is not None
    head = [d for d in kube.list("Deployment", NS, "splitdnn.io/cross-stage=head")
            if d["spec"]["selector"]["matchLabels"] == entry["spec"]["selector"]]
    assert len(head) == 1, "the entry selects exactly one head"
    return str(head[0]["metadata"]["name"])


def local_gateway(kube: StoreKube) -> None:
    """The SplitPlan rollout's part: the local gateway runs with the cross options."""
    crosslinks = kube.list("CrossLink", NS)
    args = ["gateway", *xc.gateway_cross_args(crosslinks, "small", NS, CONFIG)]
    labels = {"app": "small-gateway"}
    kube.apply({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": children.gateway_name("small"), "namespace": NS},
                "spec": {"selector": {"matchLabels": labels}, "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "gateway", "image": "img",
                                             "args": args}]}}}})
    make_ready(kube, children.gateway_name("small"))


def deploy_first_path(kube: StoreKube) -> set[str]:
    kube.apply(service("small", "torchvision:resnet18", {"board": "jetson"}))
    kube.apply(service("big", "torchvision:mobilenet_v2", {"gpu": "v100"}))
    kube.apply(the_crosslink([0, 0, 0, 2]))
    assert run_pass(kube) == "Training"
    complete_training(kube, [0, 0, 0, 2], seed=1)
    assert run_pass(kube) == "StagesStarting"
    first = stages(kube)
    for name in first:
        make_ready(kube, name)
    assert run_pass(kube) == "GatewayUpdating"
    local_gateway(kube)
    assert run_pass(kube) == "done"
    body = kube.get("CrossLink", NS, "borrow") or {}
    assert condition(body, "Ready")["status"] == "True"
    return first


def test_a_path_change_is_make_before_break(
        kube: StoreKube, posted: Callable[[], list[tuple[str, str]]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    first = deploy_first_path(kube)
    first_head = entry_head(kube)
    assert len(first) == 3 and first_head in first
    gateway_args = (kube.get("Deployment", NS, children.gateway_name("small")) or {})[
        "spec"]["template"]["spec"]["containers"][0]["args"]

    kube.apply(the_crosslink([0, 1, 1, 2]))  # the user picks another path
    assert run_pass(kube) == "Training"      # new links train; the old path serves meanwhile
    body = kube.get("CrossLink", NS, "borrow") or {}
    assert condition(body, "PathDeployed")["status"] == "True"
    assert stages(kube) == first and entry_head(kube) == first_head
    assert xc.gateway_cross_args(kube.list("CrossLink", NS), "small", NS, CONFIG) == \
        gateway_args[1:], "the gateway keeps its cross options (no rollout)"

    complete_training(kube, [0, 1, 1, 2], seed=2)
    assert run_pass(kube) == "StagesStarting"  # new stages beside the old ones
    second = stages(kube) - first
    assert len(second) == 3 and first < stages(kube)
    body = kube.get("CrossLink", NS, "borrow") or {}
    assert condition(body, "PathDeployed")["status"] == "True"
    assert condition(body, "PathDeployed")["reason"] == "Replacing"
    assert entry_head(kube) == first_head, "the entry stays on the old head until all are ready"
    assert body["status"]["path"] == [0, 1, 1, 2]

    *starting, last = sorted(second)
    for name in starting:
        make_ready(kube, name)
    assert run_pass(kube) == "StagesStarting" and entry_head(kube) == first_head

    make_ready(kube, last)
    assert run_pass(kube) == "Draining"  # the entry moved; the old stages drain
    assert entry_head(kube) in second and stages(kube) == first | second

    real_time = crosslink.time.time
    monkeypatch.setattr(crosslink.time, "time", lambda: real_time() + DRAIN_SECONDS + 1)
    assert run_pass(kube) == "done"
    assert stages(kube) == second, "the old stages are gone after the drain time"
    old_services = {s["metadata"]["name"] for s in kube.list("Service", NS,
                                                             "splitdnn.io/cross-stage")}
    assert old_services == second
    body = kube.get("CrossLink", NS, "borrow") or {}
    assert condition(body, "PathDeployed")["reason"] == "Deployed"
    assert condition(body, "Ready")["status"] == "True"
    assert body["status"]["stages"] == [n for s in xc.STAGES for n in second
                                        if f"-{s}-" in n]
    [links] = kube.list("ConfigMap", NS, f"{xc.CROSSLINK_LABEL}=borrow")
    assert links["metadata"]["name"] == body["status"]["links"], "the old links went too"
    assert json.loads(links["data"]["links.json"])["path"] == [0, 1, 1, 2]
    reasons = [reason for reason, _ in posted()]
    assert reasons.count("JobStarted") == reasons.count("LinksTrained") == 2
    assert reasons.count("StageRemoved") == 7  # 3 Deployments, 3 Services, the links, once
