"""The splitdnn operator the integration tests run against: started here, or installed.

``LocalOperator`` runs ``splitdnn operator --all-namespaces`` on this machine against the
kubeconfig (the devcluster's, or the ``--cluster`` one); ``InstalledOperator`` is the one the
Helm chart runs in the cluster (``pytest --cluster --operator=installed``), killed by
deleting its pod with no grace period and "restarted" by its Deployment. Both collect the
operator's log so the fixture can check it for tracebacks (``log_tracebacks``).
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

if TYPE_CHECKING:
    from tests.integration.conftest import Api

# A log record starts with logging's asctime: "2026-11-23 18:36:54,928 ERROR ..." (ours),
# "[2026-11-23 18:36:54,928] kopf..." (``kopf run``'s).
RECORD_START = re.compile(r"^\[?\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\]? ", re.MULTILINE)
SHUTDOWN_SIGNAL = "Operator is stopping."
# kopf (1.44) sometimes leaves its watch stream's async generator suspended when it stops;
# asyncio then closes it in shutdown_asyncgens and logs this, with a traceback, as an error.
KOPF_SHUTDOWN_NOISE = ("an error occurred during closing of asynchronous generator "
                       "<async_generator object infinite_watch")


def log_tracebacks(text: str) -> list[str]:
    """The log records of an operator's log that hold a traceback, but for kopf's known
    shutdown noise once the operator is stopping."""
    bounds = [0, *(match.start() for match in RECORD_START.finditer(text)), len(text)]
    records = [text[a:b] for a, b in itertools.pairwise(bounds) if a < b]
    stopping = False
    found: list[str] = []
    for record in records:
        if "Traceback" in record and not (stopping and KOPF_SHUTDOWN_NOISE in record):
            found.append(record)
        stopping = stopping or SHUTDOWN_SIGNAL in record
    return found


ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
CHART_SELECTOR = "app.kubernetes.io/name=splitdnn"
# The nodes the operator tests place stages on (tests/integration/conftest.py's TEST_CONFIG):
# a real cluster needs exactly these, labelled so, untainted.
TEST_NODES = {
    "jetson-0": {"splitdnn.io/device-class": "jetson-nano"},
    "v100-0": {"splitdnn.io/device-class": "v100-server",
               "nvidia.com/gpu.product": "Tesla-V100-SXM2-16GB"},
}


def install_crds(api: Api) -> list[str]:
    """Create the project's CRDs (``crds/``) that the cluster lacks; returns their names."""
    created = []
    for crd in sorted((ROOT / "crds").glob("*.yaml")):
        body = yaml.safe_load(crd.read_text())
        name = body["metadata"]["name"]
        if api.request("GET", f"{CRD_PATH}/{name}").status_code == 404:
            api.ok("POST", CRD_PATH, body)
            created.append(name)
    for name in created:
        api.wait_for(f"{CRD_PATH}/{name}", lambda crd: any(
            c["type"] == "Established" and c["status"] == "True"
            for c in (crd.get("status") or {}).get("conditions") or []),
            timeout=30, what=f"CRD {name} established")
    return created


def topology_problems(api: Api) -> list[str]:
    """How the cluster's nodes differ from what the operator tests expect (TEST_NODES)."""
    nodes = api.ok("GET", "/api/v1/nodes")["items"]
    problems = []
    for name, labels in TEST_NODES.items():
        node = next((n for n in nodes if n["metadata"]["name"] == name), None)
        if node is None:
            problems.append(f"no node {name}")
            continue
        have = node["metadata"].get("labels", {})
        missing = {k: v for k, v in labels.items() if have.get(k) != v}
        if missing:
            problems.append(f"node {name} lacks labels {missing}")
        if node["spec"].get("taints"):
            problems.append(f"node {name} has taints {node['spec']['taints']}")
    key = "splitdnn.io/device-class"
    for node in nodes:
        name, labels = node["metadata"]["name"], node["metadata"].get("labels", {})
        twin = next((n for n, want in TEST_NODES.items()
                     if n != name and labels.get(key) == want[key]), None)
        if twin is not None:
            problems.append(f"node {name} is also {key}={labels[key]} (stages could land on "
                            f"it instead of {twin})")
    return problems


class OperatorProcess:
    """An operator under test: ``start``, ``kill`` (as a crash: no clean-up), ``stop``."""

    log_path: Path

    def start(self) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class LocalOperator(OperatorProcess):
    """``splitdnn operator --all-namespaces`` here, against the cluster's kubeconfig."""

    def __init__(self, cluster: dict[str, Any], log_path: Path) -> None:
        self.cluster, self.log_path = cluster, log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ, KUBECONFIG=self.cluster["kubeconfig"],
                   SPLITDNN_PROFILE_REPEATS="3", **self.cluster.get("operatorEnv", {}))
        with self.log_path.open("a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "splitdnn", "operator", "--all-namespaces",
                 "--standalone", "--watch-timeout=60", "--log-level=info"], env=env,
                stdout=log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class InstalledOperator(OperatorProcess):
    """The chart's operator pod in ``namespace`` (found by the chart's selector labels)."""

    def __init__(self, api: Api, namespace: str, log_path: Path,
                 ready_timeout: float = 300) -> None:
        self.api, self.namespace, self.log_path = api, namespace, log_path
        self.ready_timeout = ready_timeout
        self.killed: set[str] = set()
        log_path.touch()

    def pods(self) -> list[dict[str, Any]]:
        return [p for p in self.api.ok("GET", f"/api/v1/namespaces/{self.namespace}/pods",
                                       labelSelector=CHART_SELECTOR)["items"]
                if not p["metadata"].get("deletionTimestamp")
                and p["metadata"]["uid"] not in self.killed]

    def ready_pod(self) -> dict[str, Any] | None:
        return next((p for p in self.pods() if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in (p.get("status") or {}).get("conditions") or [])), None)

    def start(self) -> None:
        """Wait for a Ready operator pod other than the ones killed."""
        deadline = time.monotonic() + self.ready_timeout
        while self.ready_pod() is None:
            if time.monotonic() > deadline:
                pytest.fail(f"--operator=installed: no Ready pod labelled {CHART_SELECTOR} in "
                            f"namespace {self.namespace} after {self.ready_timeout:.0f} s "
                            f"(is the chart installed there? --operator-namespace)",
                            pytrace=False)
            time.sleep(1)

    def kill(self) -> None:
        """Delete the pod with no grace period: no clean-up, as a crashed operator."""
        pod = self.ready_pod()
        assert pod is not None, "no operator pod to kill"
        self.save_log(pod)
        self.api.ok("DELETE", f"/api/v1/namespaces/{self.namespace}/pods/"
                              f"{pod['metadata']['name']}", {"gracePeriodSeconds": 0})
        self.killed.add(pod["metadata"]["uid"])

    def stop(self) -> None:
        """The operator keeps running (it is the cluster's); its log is kept for the checks."""
        pod = self.ready_pod()
        if pod is not None:
            self.save_log(pod)

    def save_log(self, pod: dict[str, Any]) -> None:
        response = self.api.request(
            "GET", f"/api/v1/namespaces/{self.namespace}/pods/{pod['metadata']['name']}/log",
            container="operator")
        with self.log_path.open("a") as log:
            log.write(response.text if response.status_code == 200 else
                      f"(no log from {pod['metadata']['name']}: {response.status_code})\n")


def running_chart_operators(api: Api) -> list[str]:
    """``namespace/pod`` of every chart-installed operator pod in the cluster."""
    response = api.request("GET", "/api/v1/pods", labelSelector=CHART_SELECTOR)
    if response.status_code != 200:
        return []
    return [f"{p['metadata']['namespace']}/{p['metadata']['name']}"
            for p in response.json()["items"] if not p["metadata"].get("deletionTimestamp")]
