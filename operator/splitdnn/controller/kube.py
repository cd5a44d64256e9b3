"""The one place the controller writes to the API: server-side apply with one field manager.

Children are adopted (an ownerReference to their owner, controller=true) before they are
applied, so deleting a DNNService or SplitPlan lets the garbage collector remove them. Reads
(get, list, pod logs) and deletes are here too, as raw JSON over the ``kubernetes`` client's
connection (in-cluster config, else the kubeconfig).
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import quote

import kubernetes
from kubernetes.client.exceptions import ApiException

FIELD_MANAGER = "splitdnn-operator"
Obj = dict[str, Any]

# plural and API path prefix of every kind the controller touches
KIND_PATHS: dict[str, tuple[str, str]] = {
    "ConfigMap": ("/api/v1", "configmaps"),
    "Service": ("/api/v1", "services"),
    "Pod": ("/api/v1", "pods"),
    "Node": ("/api/v1", "nodes"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "Job": ("/apis/batch/v1", "jobs"),
    "DNNService": ("/apis/splitdnn.io/v1alpha1", "dnnservices"),
    "SplitPlan": ("/apis/splitdnn.io/v1alpha1", "splitplans"),
    "CrossLink": ("/apis/splitdnn.io/v1alpha1", "crosslinks"),
}


def load_config(kubeconfig: str | None = None) -> None:
    """In-cluster service account first, then the kubeconfig (given, KUBECONFIG or ~/.kube)."""
    if kubeconfig is None:
        try:
            kubernetes.config.load_incluster_config()
            return
        except kubernetes.config.ConfigException:
            kubeconfig = os.environ.get("KUBECONFIG")
    kubernetes.config.load_kube_config(config_file=kubeconfig)


def path(kind: str, namespace: str | None, name: str | None = None, sub: str = "") -> str:
    prefix, plural = KIND_PATHS[kind]
    where = f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"
    if name:
        where += f"/{name}"
    return where + (f"/{sub}" if sub else "")


def adopt(child: Obj, owner: Obj) -> Obj:
    """Set ``owner`` as the controller of ``child`` (same namespace)."""
    meta = owner["metadata"]
    child.setdefault("metadata", {})["ownerReferences"] = [{
        "apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta["name"],
        "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True,
    }]
    child["metadata"].setdefault("namespace", meta.get("namespace"))
    return child


class Kube:
    """Raw JSON access to the API server."""

    def __init__(self, client: kubernetes.client.ApiClient | None = None) -> None:
        self.client = client or kubernetes.client.ApiClient()

    def call(self, method: str, url: str, body: Any = None, content_type: str =
             "application/json", query: list[tuple[str, str]] | None = None,
             raw: bool = False, accept: str = "application/json") -> Any:
        method, url, headers, payload, _ = self.client.param_serialize(
            method, url, query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": accept},
            body=body, auth_settings=["BearerToken"])
        response = self.client.call_api(method, url, headers, payload, _request_timeout=30)
        data = response.read() or b""
        if response.status >= 300:
            error = ApiException(status=response.status, reason=response.reason)
            error.body = data.decode(errors="replace")
            raise error
        if raw or not data:
            return data.decode(errors="replace")
        return json.loads(data)

    def get(self, kind: str, namespace: str | None, name: str) -> Obj | None:
        try:
            result: Obj = self.call("GET", path(kind, namespace, name))
            return result
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def list(self, kind: str, namespace: str | None, selector: str = "") -> list[Obj]:
        query = [("labelSelector", selector)] if selector else []
        return list(self.call("GET", path(kind, namespace), query=query).get("items") or [])

    def apply(self, obj: Obj) -> Obj:
        """Server-side apply ``obj`` (create or update) with the operator's field manager."""
        meta = obj["metadata"]
        result: Obj = self.call(
            "PATCH", path(obj["kind"], meta.get("namespace"), meta["name"]), obj,
            "application/apply-patch+yaml", [("fieldManager", FIELD_MANAGER), ("force", "true")])
        return result

    def patch_status(self, kind: str, namespace: str, name: str, status: Obj) -> None:
        self.call("PATCH", path(kind, namespace, name, "status"), {"status": status},
                  "application/merge-patch+json")

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete in the background (dependents too); False when it was already gone."""
        try:
            self.call("DELETE", path(kind, namespace, name),
                      {"kind": "DeleteOptions", "apiVersion": "v1",
                       "propagationPolicy": "Background"})
            return True
        except ApiException as error:
            if error.status == 404:
                return False
            raise

    def pod_log(self, namespace: str, pod: str, container: str | None = None) -> str:
        query = [("container", container)] if container else []
        text: str = self.call("GET", path("Pod", namespace, quote(pod), "log"), query=query,
                              raw=True)
        return text
