"""The Helm chart: `helm lint`, `helm template` in each mode, the rendered objects valid
against the Kubernetes schemas, values checked by values.schema.json, least-privilege RBAC
and a Pod Security "restricted" operator pod. Uses the real helm from `make tools`."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "splitdnn"
HELM = ROOT / ".tools" / "helm"
KUBERNETES_VERSION = "1.32.0"
# Kinds whose schemas come from CRDs, not from Kubernetes itself.
NOT_IN_KUBERNETES = {"ServiceMonitor"}


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    if not HELM.exists():
        pytest.fail("helm not fetched: run `make tools` (make test does)")
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=120,
                          check=False)


def render(*settings: str) -> list[dict[str, Any]]:
    flags = [part for setting in settings for part in ("--set", setting)]
    result = helm("template", "release", str(CHART), "--namespace", "splitdnn-system", *flags)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


MODES = {
    "cluster-wide": (),
    "namespaced": ("operator.watchNamespaces={team-a,team-b}",),
    "everything-on": ("operator.peering.enabled=true", "metrics.serviceMonitor.enabled=true",
                      "grafanaDashboard.enabled=true"),
    "no-crds-no-metrics": ("crds.enabled=false", "metrics.enabled=false"),
}


def test_helm_lint() -> None:
    result = helm("lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("mode", MODES)
def test_rendered_objects_are_valid_kubernetes(mode: str) -> None:
    objects = render(*MODES[mode])
    assert objects
    for obj in objects:
        if obj["kind"] in NOT_IN_KUBERNETES:
            continue
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize(("setting", "message"), [
    ("unknownKey=1", "Additional property unknownKey is not allowed"),
    ("operator.unknown=1", "Additional property unknown is not allowed"),
    ("image.pullPolicy=Sometimes", "pullPolicy"),
    ("operator.watchNamespaces={Not_A_Namespace}", "watchNamespaces"),
    ("metrics.port=0", "port"),
    ("gpu.perPod=-1", "perPod"),
    ("gpu.runtimeClassName=Not_A_Name", "runtimeClassName"),
])
def test_values_schema_rejects_bad_values(setting: str, message: str) -> None:
    result = helm("template", "release", str(CHART), "--set", setting)
    assert result.returncode != 0
    assert message in result.stderr


def test_one_recreated_operator_with_a_restricted_pod() -> None:
    deployment, = by_kind(render(), "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container, = pod["containers"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "--all-namespaces" in container["args"] and "--standalone" in container["args"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["SPLITDNN_GPU_RUNTIME_CLASS"] == "" and env["SPLITDNN_GPUS_PER_POD"] == "0"


def test_namespaced_mode_grants_workload_rights_only_in_watched_namespaces() -> None:
    objects = render(*MODES["namespaced"])
    roles = by_kind(objects, "Role")
    assert sorted(role["metadata"]["namespace"] for role in roles) == ["team-a", "team-b"]
    cluster_rules = [rule for role in by_kind(objects, "ClusterRole") for rule in role["rules"]]
    assert cluster_rules == [{"apiGroups": [""], "resources": ["nodes"],
                              "verbs": ["get", "list", "watch"]}]
    deployment, = by_kind(objects, "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--all-namespaces" not in args


def test_rbac_never_grants_wildcards_or_secrets() -> None:
    for mode in MODES.values():
        for role in by_kind(render(*mode), "ClusterRole") + by_kind(render(*mode), "Role"):
            for rule in role["rules"]:
                assert "*" not in rule["verbs"] and "*" not in rule["resources"]
                assert "secrets" not in rule["resources"]


def test_crds_can_be_left_out_and_kept_on_uninstall() -> None:
    assert not by_kind(render("crds.enabled=false"), "CustomResourceDefinition")
    crds = by_kind(render(), "CustomResourceDefinition")
    assert len(crds) == 3
    assert all(crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
               for crd in crds)


def test_dashboard_is_valid_json_over_splitdnn_metrics() -> None:
    import json

    configmap, = by_kind(render("grafanaDashboard.enabled=true"), "ConfigMap")
    dashboard = json.loads(configmap["data"]["splitdnn.json"])
    expressions = [target["expr"] for panel in dashboard["panels"]
                   for target in panel["targets"]]
    assert expressions and all("splitdnn_" in expr for expr in expressions)
