"""kopf runs against the devcluster: watch, status patching and finalizers work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.integration.conftest import Api
from tests.integration.operators import log_tracebacks

WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.test.splitdnn.io"},
    "spec": {
        "group": "test.splitdnn.io", "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [{"name": "v1", "served": True, "storage": True,
                      "subresources": {"status": {}},
                      "schema": {"openAPIV3Schema": {
                          "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}],
    },
}


def test_kopf_operator_handles_create_status_and_finalizer(
        api: Api, devcluster: dict[str, Any], namespace: str, tmp_path: Path) -> None:
    if api.request("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
                          "widgets.test.splitdnn.io").status_code == 404:
        api.ok("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", WIDGET_CRD)
    operator = Path(__file__).with_name("kopf_operator.py")
    log = (tmp_path / "kopf.log").open("w")
    env = dict(os.environ, KUBECONFIG=devcluster["kubeconfig"])
    process = subprocess.Popen(
        [sys.executable, "-m", "kopf", "run", "--standalone", "--namespace", namespace,
         str(operator)], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"/apis/test.splitdnn.io/v1/namespaces/{namespace}/widgets"
    try:
        api.ok("POST", base, {"apiVersion": "test.splitdnn.io/v1", "kind": "Widget",
                              "metadata": {"name": "w"}, "spec": {"size": 21}})
        done = api.wait_for(f"{base}/w", lambda w: (w.get("status") or {}).get("seen") == 42,
                            timeout=30, what="kopf to patch status")
        assert any(f.startswith("kopf.zalando.org/") for f in done["metadata"]["finalizers"])
        api.ok("DELETE", f"{base}/w")
        api.wait_for(f"{base}/w", lambda r: r == 404, timeout=30, what="kopf to release")
        assert api.request("GET", f"/api/v1/namespaces/{namespace}/configmaps/w-deleted"
                           ).status_code == 200
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
    tracebacks = log_tracebacks((tmp_path / "kopf.log").read_text())
    assert not tracebacks, "".join(tracebacks)[-3000:]
