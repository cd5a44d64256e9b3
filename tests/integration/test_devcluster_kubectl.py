"""Real kubectl (1.32, from ``make tools``) against the devcluster."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from tests.integration.conftest import KUBECTL

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, labels: {app: echo}}
spec:
  replicas: 1
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      containers:
      - name: echo
        image: python
        command: [python, -c, "import os, time; print('hello', os.environ['GREETING']);
                  time.sleep(600)"]
        env: [{name: GREETING, value: "GREETING_VALUE"}]
"""


def test_apply_get_wait_patch_replace_label_logs_delete(kubectl: Callable[..., str]) -> None:
    first = DEPLOYMENT.replace("GREETING_VALUE", "one")
    assert "deployment.apps/echo created" in kubectl("apply", "-f", "-", stdin=first)
    kubectl("rollout", "status", "deployment/echo", "--timeout=30s")
    kubectl("wait", "--for=condition=Available", "deployment/echo", "--timeout=30s")
    pods = json.loads(kubectl("get", "pods", "-l", "app=echo", "-o", "json"))["items"]
    assert len(pods) == 1 and pods[0]["status"]["phase"] == "Running"
    deadline = time.monotonic() + 10
    while "hello one" not in kubectl("logs", "deployment/echo") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "hello one" in kubectl("logs", "deployment/echo")
    # apply again with a changed env: a rolling update to a new ReplicaSet
    assert "configured" in kubectl("apply", "-f", "-",
                                   stdin=DEPLOYMENT.replace("GREETING_VALUE", "two"))
    kubectl("rollout", "status", "deployment/echo", "--timeout=30s")
    deploy = json.loads(kubectl("get", "deployment", "echo", "-o", "json"))
    assert deploy["metadata"]["generation"] == 2
    assert deploy["status"]["observedGeneration"] == 2
    assert deploy["status"]["updatedReplicas"] == 1
    assert len(json.loads(kubectl("get", "replicasets", "-o", "json"))["items"]) == 2
    kubectl("label", "deployment", "echo", "tier=edge")
    kubectl("patch", "deployment", "echo", "--type=merge", "-p", '{"spec":{"replicas":2}}')
    kubectl("wait", "--for=jsonpath={.status.readyReplicas}=2", "deployment/echo",
            "--timeout=30s")
    table = kubectl("get", "deployments", "-l", "tier=edge")
    assert "echo" in table and "2/2" in table
    current = json.loads(kubectl("get", "deployment", "echo", "-o", "json"))
    current["metadata"]["annotations"]["note"] = "replaced"
    kubectl("replace", "-f", "-", stdin=json.dumps(current))
    assert json.loads(kubectl("get", "deployment", "echo", "-o", "json"))["metadata"][
        "annotations"]["note"] == "replaced"
    kubectl("delete", "deployment", "echo", "--timeout=30s")
    deadline = time.monotonic() + 20
    while kubectl("get", "pods", "-o", "name") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert kubectl("get", "pods", "-o", "name") == ""  # pods deleted by garbage collection


def test_get_watch_streams_changes(kubectl: Callable[..., str], devcluster: dict[str, Any],
                                   namespace: str) -> None:
    env = dict(os.environ, KUBECONFIG=devcluster["kubeconfig"])
    watcher = subprocess.Popen([str(KUBECTL), "-n", namespace, "get", "configmaps", "-w",
                                "-o", "name", "--request-timeout=20s"], env=env,
                               stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        kubectl("apply", "-f", "-", stdin='{"apiVersion": "v1", "kind": "ConfigMap", '
                                           '"metadata": {"name": "watched"}}')
        assert watcher.stdout is not None
        line = ""
        while "watched" not in line:
            line = watcher.stdout.readline()
            assert line, "kubectl get -w ended without the event"
    finally:
        watcher.kill()
        watcher.wait()
    assert line.strip() == "configmap/watched"


def test_custom_resources_print_their_columns(kubectl: Callable[..., str]) -> None:
    from tests.integration.conftest import ROOT

    kubectl("apply", "-f", str(ROOT / "crds"))
    docs = [doc for path in sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]
    for doc in docs:
        doc["metadata"].pop("namespace", None)
    manifests = yaml.safe_dump_all(docs)
    assert "created" in kubectl("apply", "-f", "-", stdin=manifests)
    table = kubectl("get", "dnns")
    header = table.splitlines()[0].split()
    assert header[:3] == ["NAME", "READY", "REASON"], table
    assert sorted(row.split()[0] for row in table.splitlines()[1:]) == [
        "mobilenet-v2", "resnet50"], table
    assert "deleted" in kubectl("delete", "-f", "-", stdin=manifests)
    assert kubectl("get", "dnns,splitplans,crosslinks", "-o", "name") == ""


def test_protobuf_bodies_from_typed_clients(kubectl: Callable[..., str]) -> None:
    """kubectl's create generators and delete send protobuf, as Helm's release storage does."""
    kubectl("create", "configmap", "generated", "--from-literal=a=b")
    kubectl("create", "secret", "generic", "token", "--from-literal=key=value")
    kubectl("create", "serviceaccount", "bot")
    assert json.loads(kubectl("get", "configmap", "generated", "-o", "json"))["data"] == {
        "a": "b"}
    assert json.loads(kubectl("get", "secret", "token", "-o", "json"))["data"] == {
        "key": "dmFsdWU="}
    kubectl("delete", "configmap/generated", "secret/token", "serviceaccount/bot")
    assert kubectl("get", "configmaps,secrets,serviceaccounts", "-o", "name") == ""


def test_helm_installs_and_uninstalls_the_chart(kubectl: Callable[..., str],
                                                devcluster: dict[str, Any],
                                                namespace: str) -> None:
    from tests.integration.conftest import ROOT

    helm = ROOT / ".tools" / "helm"
    if not helm.exists():
        pytest.skip("helm not fetched: run `make tools`")
    env = dict(os.environ, KUBECONFIG=devcluster["kubeconfig"])

    def run(*args: str) -> str:
        result = subprocess.run([str(helm), *args, "--namespace", namespace], env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout

    # the CRDs exist already in this shared cluster (other tests applied crds/)
    run("install", "splitdnn", str(ROOT / "charts" / "splitdnn"), "--set", "crds.enabled=false")
    releases = json.loads(run("list", "-o", "json"))
    assert [(r["name"], r["status"]) for r in releases] == [("splitdnn", "deployed")]
    assert "deployment.apps/splitdnn" in kubectl("get", "deployments", "-o", "name")
    crds = kubectl("get", "crd", "-o", "name")
    assert "customresourcedefinition.apiextensions.k8s.io/splitplans.splitdnn.io" in crds
    run("uninstall", "splitdnn", "--wait")
    assert kubectl("get", "deployments,secrets", "-o", "name") == ""
