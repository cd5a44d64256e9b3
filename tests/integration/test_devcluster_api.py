"""The emulated API server's Kubernetes semantics, over HTTP."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
import yaml

from tests.integration.conftest import ROOT, Api

MERGE = "application/merge-patch+json"


def _cm(name: str, **extra: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, **extra}, "data": {"k": "v"}}


def _crds(api: Api) -> None:
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        name = crd["metadata"]["name"]
        if api.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
                       ).status_code == 404:
            api.ok("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)


def _example(kind: str) -> dict[str, Any]:
    for path in sorted((ROOT / "manifests" / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == kind:
                return dict(doc)
    raise AssertionError(f"no {kind} example")


def test_create_is_201_with_identity_and_lists_carry_kind(api: Api, namespace: str) -> None:
    response = api.request("POST", f"/api/v1/namespaces/{namespace}/configmaps", _cm("a"))
    assert response.status_code == 201
    meta = response.json()["metadata"]
    assert meta["uid"] and meta["resourceVersion"] and meta["creationTimestamp"]
    assert meta["namespace"] == namespace
    again = api.request("POST", f"/api/v1/namespaces/{namespace}/configmaps", _cm("a"))
    assert again.status_code == 409 and again.json()["reason"] == "AlreadyExists"
    listing = api.ok("GET", f"/api/v1/namespaces/{namespace}/configmaps")
    assert (listing["kind"], listing["apiVersion"]) == ("ConfigMapList", "v1")
    assert int(listing["metadata"]["resourceVersion"]) >= int(meta["resourceVersion"])
    assert [item["metadata"]["name"] for item in listing["items"]] == ["a"]
    missing = api.request("POST", "/api/v1/namespaces/nope-missing/configmaps", _cm("a"))
    assert missing.status_code == 404


def test_stale_resource_version_is_a_conflict(api: Api, namespace: str) -> None:
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    first = api.ok("POST", base, _cm("c"))
    first["data"]["k"] = "one"
    second = api.ok("PUT", f"{base}/c", first)
    assert int(second["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    first["data"]["k"] = "stale"
    stale = api.request("PUT", f"{base}/c", first)
    assert stale.status_code == 409 and stale.json()["reason"] == "Conflict"
    patched = api.request("PATCH", f"{base}/c", {"metadata": {
        "resourceVersion": first["metadata"]["resourceVersion"]}, "data": {"k": "x"}}, MERGE)
    assert patched.status_code == 409
    assert api.ok("GET", f"{base}/c")["data"]["k"] == "one"


def test_generation_and_status_subresource(api: Api, namespace: str) -> None:
    _crds(api)
    base = f"/apis/splitdnn.io/v1alpha1/namespaces/{namespace}/dnnservices"
    body = _example("DNNService")
    body["metadata"] = {"name": "svc"}
    body["status"] = {"observedGeneration": 99}
    created = api.ok("POST", base, body)
    assert created["metadata"]["generation"] == 1
    assert "status" not in created or "observedGeneration" not in created["status"]
    labelled = api.ok("PATCH", f"{base}/svc", {"metadata": {"labels": {"a": "b"}}}, MERGE)
    assert labelled["metadata"]["generation"] == 1
    status = api.ok("PATCH", f"{base}/svc/status", {"status": {"observedGeneration": 1},
                                                     "spec": {"objective": None}}, MERGE)
    assert status["status"]["observedGeneration"] == 1
    assert status["metadata"]["generation"] == 1 and status["spec"] == created["spec"]
    ignored = api.ok("PATCH", f"{base}/svc", {"status": {"observedGeneration": 7}}, MERGE)
    assert ignored["status"]["observedGeneration"] == 1
    spec = api.ok("PATCH", f"{base}/svc", {"spec": {"model": {"source": "torchvision:resnet18"}}},
                  MERGE)
    assert spec["metadata"]["generation"] == 2
    assert spec["status"]["observedGeneration"] == 1


def test_crd_created_then_served_and_discovered(api: Api, namespace: str) -> None:
    _crds(api)
    crd = api.ok("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
                        "splitplans.splitdnn.io")
    assert {c["type"]: c["status"] for c in crd["status"]["conditions"]}["Established"] == "True"
    groups = {g["name"] for g in api.ok("GET", "/apis")["groups"]}
    assert "splitdnn.io" in groups
    names = {r["name"] for r in api.ok("GET", "/apis/splitdnn.io/v1alpha1")["resources"]}
    assert {"dnnservices", "dnnservices/status", "splitplans", "crosslinks"} <= names
    plan = _example("SplitPlan")
    plan["metadata"] = {"name": "p"}
    api.ok("POST", f"/apis/splitdnn.io/v1alpha1/namespaces/{namespace}/splitplans", plan)
    listed = api.ok("GET", "/apis/splitdnn.io/v1alpha1/splitplans")
    assert listed["kind"] == "SplitPlanList"
    assert any(item["metadata"]["name"] == "p" for item in listed["items"])


def _watch(api: Api, path: str, count: int, **params: Any) -> list[dict[str, Any]]:
    events = []
    with requests.get(api.server + path, params={"watch": "1", **params}, stream=True,
                      timeout=15) as response:
        for line in response.iter_lines():
            if line:
                events.append(json.loads(line))
            if len(events) >= count:
                break
    return events


def test_watch_resumes_from_resource_version_after_disconnect(api: Api, namespace: str) -> None:
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    start_rv = api.ok("GET", base)["metadata"]["resourceVersion"]
    api.ok("POST", base, _cm("w1"))
    first = _watch(api, base, 1, resourceVersion=start_rv)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in first] == [("ADDED", "w1")]
    seen_rv = first[0]["object"]["metadata"]["resourceVersion"]
    # disconnected: these happen while nobody watches
    api.ok("PATCH", f"{base}/w1", {"data": {"k": "2"}}, MERGE)
    api.ok("POST", base, _cm("w2"))
    api.ok("DELETE", f"{base}/w1")
    resumed = _watch(api, base, 3, resourceVersion=seen_rv)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in resumed] == [
        ("MODIFIED", "w1"), ("ADDED", "w2"), ("DELETED", "w1")]
    assert resumed[0]["object"]["data"]["k"] == "2"
    assert all(e["object"]["kind"] == "ConfigMap" for e in resumed)


def test_label_and_field_selectors(api: Api, namespace: str) -> None:
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    api.ok("POST", base, _cm("x", labels={"tier": "edge", "n": "1"}))
    api.ok("POST", base, _cm("y", labels={"tier": "core"}))
    api.ok("POST", base, _cm("z"))

    def names(**params: Any) -> list[str]:
        return [i["metadata"]["name"] for i in api.ok("GET", base, **params)["items"]]

    assert names(labelSelector="tier=edge") == ["x"]
    assert names(labelSelector="tier in (edge,core)") == ["x", "y"]
    assert names(labelSelector="!tier") == ["z"]
    assert names(labelSelector="tier,n!=1") == ["y"]  # != also matches a missing label
    assert names(fieldSelector="metadata.name!=x") == ["y", "z"]
    bad = api.request("GET", base, labelSelector="tier in (edge")
    assert bad.status_code == 400


def test_finalizers_hold_deletion_until_removed(api: Api, namespace: str) -> None:
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    api.ok("POST", base, _cm("f", finalizers=["example.com/hold"]))
    marked = api.ok("DELETE", f"{base}/f")
    assert marked["metadata"]["deletionTimestamp"]
    assert api.ok("GET", f"{base}/f")["metadata"]["finalizers"] == ["example.com/hold"]
    added = api.request("PATCH", f"{base}/f", {"metadata": {"finalizers": ["a", "b"]}}, MERGE)
    assert added.status_code == 422
    api.ok("PATCH", f"{base}/f", {"metadata": {"finalizers": None}}, MERGE)
    assert api.request("GET", f"{base}/f").status_code == 404


@pytest.mark.parametrize("policy", ["Background", "Foreground", "Orphan"])
def test_owner_reference_garbage_collection(api: Api, namespace: str, policy: str) -> None:
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    owner = api.ok("POST", base, _cm("owner"))
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
           "uid": owner["metadata"]["uid"], "blockOwnerDeletion": True}
    api.ok("POST", base, _cm("child", ownerReferences=[ref], finalizers=["example.com/hold"]))
    api.ok("POST", base, _cm("grandchild", ownerReferences=[
        ref | {"name": "child", "uid": api.ok("GET", f"{base}/child")["metadata"]["uid"]}]))
    api.ok("DELETE", f"{base}/owner", {"propagationPolicy": policy})
    if policy == "Orphan":
        assert api.request("GET", f"{base}/owner").status_code == 404
        assert "ownerReferences" not in api.ok("GET", f"{base}/child")["metadata"]
        return
    child = api.ok("GET", f"{base}/child")
    assert child["metadata"]["deletionTimestamp"]  # held by its own finalizer
    if policy == "Foreground":
        held = api.ok("GET", f"{base}/owner")
        assert "foregroundDeletion" in held["metadata"]["finalizers"]
        assert api.request("GET", f"{base}/grandchild").status_code == 404
    else:
        assert api.request("GET", f"{base}/owner").status_code == 404
    api.ok("PATCH", f"{base}/child", {"metadata": {"finalizers": None}}, MERGE)
    for name in ("owner", "child", "grandchild"):
        assert api.request("GET", f"{base}/{name}").status_code == 404, name


def test_namespace_deletion_removes_its_objects(api: Api) -> None:
    api.ok("POST", "/api/v1/namespaces", {"metadata": {"name": "doomed-ns"}})
    api.ok("POST", "/api/v1/namespaces/doomed-ns/configmaps", _cm("inside"))
    api.ok("DELETE", "/api/v1/namespaces/doomed-ns")
    api.wait_for("/api/v1/namespaces/doomed-ns", lambda r: r == 404, what="namespace gone")
    assert api.request("GET", "/api/v1/namespaces/doomed-ns/configmaps/inside").status_code == 404


def test_discovery_and_openapi_for_kubectl(api: Api) -> None:
    assert api.ok("GET", "/version")["major"] == "1"
    core = {r["name"] for r in api.ok("GET", "/api/v1")["resources"]}
    assert {"pods", "pods/log", "pods/status", "nodes", "services", "endpoints"} <= core
    root = api.ok("GET", "/openapi/v3")["paths"]
    doc = api.ok("GET", "/openapi/v3/apis/apps/v1")
    patches = [p["patch"] for p in doc["paths"].values() if "patch" in p]
    assert any(p["x-kubernetes-group-version-kind"]["kind"] == "Deployment" for p in patches)
    assert "apis/apps/v1" in root and "api/v1" in root


def test_package_ships_default_config() -> None:
    from splitdnn.devcluster.config import load_config

    config = load_config(None)
    labels = {node.name: node.labels for node in config.nodes}
    jetson = next(n for n in config.nodes if n.labels.get("splitdnn.io/device-class") ==
                  "jetson-nano")
    assert jetson.labels["kubernetes.io/arch"] == "arm64"
    assert jetson.kernel_version.endswith("-tegra")
    assert any(node.get("nvidia.com/gpu.product") == "Tesla-V100-SXM2-16GB" and
               node.get("nvidia.com/gpu.count") == "1" for node in labels.values())


def test_custom_resources_are_validated_pruned_and_defaulted(api: Api, namespace: str) -> None:
    _crds(api)
    base = f"/apis/splitdnn.io/v1alpha1/namespaces/{namespace}/splitplans"
    plan = _example("SplitPlan")
    plan["metadata"] = {"name": "gap"}
    plan["spec"]["stages"][1]["layers"] = [39, 80]  # a gap after stage 0: a CEL rule
    rejected = api.request("POST", base, plan)
    assert rejected.status_code == 422
    assert {c["field"] for c in rejected.json()["details"]["causes"]} == {"spec.stages"}
    plan = _example("SplitPlan")
    plan["metadata"] = {"name": "extra"}
    plan["spec"]["surprise"] = 1
    strict = api.request("POST", base, plan, fieldValidation="Strict")
    assert strict.status_code == 422 and "surprise" in strict.text
    stored = api.ok("POST", base, plan)
    assert "surprise" not in stored["spec"]  # pruned, as the API server does
