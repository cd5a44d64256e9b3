"""The resource types the emulated API server serves, and the discovery/OpenAPI documents.

Built-in types are those the operator, kopf, kubectl and the process kubelet use; custom
resources join when a CustomResourceDefinition is created (``ResourceType.from_crd``).
Discovery is the legacy (non-aggregated) form; the OpenAPI v3 documents carry one PATCH
operation per kind with the ``fieldValidation`` parameter, which is what kubectl checks
before it relies on server-side validation (schemas are not served: kubectl then builds
strategic merge patches from its compiled-in types, and JSON merge patches for custom kinds).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@dataclass(frozen=True)
class ResourceType:
    """One served (group, version, plural)."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    printer_columns: tuple[tuple[str, str, str], ...] = field(default=(), compare=False)

    @property
    def api_version(self) -> str:
        return self.version if not self.group else f"{self.group}/{self.version}"

    @property
    def storage_key(self) -> tuple[str, str]:
        """All versions of a resource share one storage."""
        return (self.group, self.plural)

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources

    @staticmethod
    def from_crd(crd: dict[str, Any]) -> list[ResourceType]:
        """The served versions of a CustomResourceDefinition."""
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        result = []
        for version in spec.get("versions") or []:
            if not version.get("served", True):
                continue
            subresources = tuple(sorted((version.get("subresources") or {}).keys()))
            columns = tuple(
                (col.get("name", ""), col.get("jsonPath", ""), col.get("type", "string"))
                for col in version.get("additionalPrinterColumns") or []
            )
            result.append(ResourceType(
                group=spec.get("group", ""), version=version.get("name", ""),
                plural=names.get("plural", ""), kind=names.get("kind", ""),
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                subresources=subresources, printer_columns=columns,
            ))
        return result


def _t(group: str, version: str, plural: str, kind: str, **kwargs: Any) -> ResourceType:
    return ResourceType(group, version, plural, kind, **kwargs)


BUILTIN_TYPES: list[ResourceType] = [
    _t("", "v1", "namespaces", "Namespace", namespaced=False, short_names=("ns",),
       subresources=("status",)),
    _t("", "v1", "nodes", "Node", namespaced=False, short_names=("no",), subresources=("status",)),
    _t("", "v1", "pods", "Pod", short_names=("po",), categories=("all",),
       subresources=("log", "status")),
    _t("", "v1", "services", "Service", short_names=("svc",), categories=("all",),
       subresources=("status",)),
    _t("", "v1", "endpoints", "Endpoints", short_names=("ep",)),
    _t("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
    _t("", "v1", "secrets", "Secret"),
    _t("", "v1", "serviceaccounts", "ServiceAccount", short_names=("sa",)),
    _t("", "v1", "events", "Event", short_names=("ev",)),
    _t("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", short_names=("pvc",),
       subresources=("status",)),
    _t("apps", "v1", "deployments", "Deployment", short_names=("deploy",), categories=("all",),
       subresources=("scale", "status")),
    _t("apps", "v1", "replicasets", "ReplicaSet", short_names=("rs",), categories=("all",),
       subresources=("scale", "status")),
    _t("batch", "v1", "jobs", "Job", categories=("all",), subresources=("status",)),
    _t("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice"),
    _t("coordination.k8s.io", "v1", "leases", "Lease"),
    _t("events.k8s.io", "v1", "events", "Event", short_names=("ev",)),
    _t("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
       namespaced=False, short_names=("crd", "crds"), subresources=("status",)),
    _t("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    _t("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    _t("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", namespaced=False),
    _t("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding",
       namespaced=False),
]

SERVER_VERSION = {
    "major": "1", "minor": "32", "gitVersion": "v1.32.0-splitdnn-devcluster",
    "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23", "compiler": "gc",
    "platform": "linux/amd64",
}


def group_versions(types: list[ResourceType]) -> dict[str, list[str]]:
    """Group -> served versions (first preferred), core group excluded."""
    groups: dict[str, list[str]] = {}
    for rt in types:
        if rt.group and rt.version not in groups.setdefault(rt.group, []):
            groups[rt.group].append(rt.version)
    return groups


def api_group(name: str, versions: list[str]) -> dict[str, Any]:
    entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": entries, "preferredVersion": entries[0]}


def api_group_list(types: list[ResourceType]) -> dict[str, Any]:
    return {
        "kind": "APIGroupList", "apiVersion": "v1",
        "groups": [api_group(name, vs) for name, vs in sorted(group_versions(types).items())],
    }


def api_resource_list(types: list[ResourceType], group: str, version: str) -> dict[str, Any]:
    resources: list[dict[str, Any]] = []
    for rt in types:
        if rt.group != group or rt.version != version:
            continue
        resources.append({
            "name": rt.plural, "singularName": rt.singular, "namespaced": rt.namespaced,
            "kind": rt.kind, "verbs": VERBS, "shortNames": list(rt.short_names),
            "categories": list(rt.categories),
        })
        for sub in rt.subresources:
            verbs = ["get"] if sub == "log" else ["get", "patch", "update"]
            kind = "Scale" if sub == "scale" else rt.kind
            resources.append({"name": f"{rt.plural}/{sub}", "singularName": "",
                              "namespaced": rt.namespaced, "kind": kind, "verbs": verbs})
    gv = version if not group else f"{group}/{version}"
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
            "resources": resources}


def openapi_v3_root(types: list[ResourceType]) -> dict[str, Any]:
    paths = {}
    for gv in sorted({_gv_path(rt) for rt in types}):
        doc_hash = hashlib.sha256(json.dumps(openapi_v3_doc(types, gv)).encode()).hexdigest()
        paths[gv] = {"serverRelativeURL": f"/openapi/v3/{gv}?hash={doc_hash[:32].upper()}"}
    return {"paths": paths}


def _gv_path(rt: ResourceType) -> str:
    return "api/v1" if not rt.group else f"apis/{rt.group}/{rt.version}"


def openapi_v3_doc(types: list[ResourceType], gv_path: str) -> dict[str, Any]:
    """One group-version's document: a PATCH operation per kind, no schemas."""
    paths: dict[str, Any] = {}
    for rt in types:
        if _gv_path(rt) != gv_path:
            continue
        scope = "/namespaces/{namespace}" if rt.namespaced else ""
        gvk = {"group": rt.group, "version": rt.version, "kind": rt.kind}
        params = [{"name": name, "in": "query", "schema": {"type": "string"}}
                  for name in ("dryRun", "fieldManager", "fieldValidation", "force")]
        paths[f"/{gv_path}{scope}/{rt.plural}/{{name}}"] = {
            "patch": {"operationId": f"patch{rt.kind}", "parameters": params,
                      "x-kubernetes-group-version-kind": gvk,
                      "x-kubernetes-action": "patch", "responses": {}},
        }
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"},
            "paths": paths, "components": {"schemas": {}}}
