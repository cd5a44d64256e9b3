"""A tiny kopf operator the integration tests run against the devcluster (or any cluster).

It handles ``Widget`` objects (a test CRD): on create it writes ``status.seen`` through
kopf's status patching; its delete handler makes kopf hold a finalizer, and on delete it
records a ConfigMap ``<name>-deleted`` so the test can see that the handler ran. Its client
is configured as the operator's (in-cluster service account, else ``$KUBECONFIG``).
"""

from __future__ import annotations

from typing import Any

import kopf
import kubernetes

from splitdnn.controller.kube import load_config


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.enabled = False
    settings.watching.server_timeout = 30
    load_config()


@kopf.on.create("test.splitdnn.io", "v1", "widgets")
def created(spec: dict[str, Any], patch: kopf.Patch, **_: Any) -> None:
    patch.status["seen"] = spec.get("size", 0) * 2


@kopf.on.delete("test.splitdnn.io", "v1", "widgets")
def deleted(name: str, namespace: str, **_: Any) -> None:
    kubernetes.client.CoreV1Api().create_namespaced_config_map(
        namespace, {"metadata": {"name": f"{name}-deleted"}})
