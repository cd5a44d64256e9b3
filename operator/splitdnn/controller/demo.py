"""The operator demo: devcluster up, CRDs, operator, the ResNet-50 example, requests, teardown.

What ``make demo`` runs (``splitdnn cluster-demo``). The example DNNService is adapted to the
emulated cluster in two places, printed as it goes: the camera board's hostname selector is
dropped (the emulated Jetson is ``jetson-0``) and so is the 50 ms SLO (emulated CPUs are not
a V100).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

from splitdnn.api.crdgen import render_crds
from splitdnn.controller import conditions
from splitdnn.controller.kube import Kube, Obj

GROUP_PATH = "/apis/splitdnn.io/v1alpha1"


def adapt_example(service: Obj, say: Callable[[str], None]) -> Obj:
    """The example as the emulated cluster can serve it."""
    spec = service["spec"]
    if (spec.get("source") or {}).pop("nodeSelector", None) is not None:
        say("  example adapted: spec.source.nodeSelector dropped (no camera-board-1 here)")
    if spec.pop("slo", None) is not None:
        say("  example adapted: spec.slo dropped (emulated CPUs cannot meet the V100's 50 ms)")
    service["metadata"]["namespace"] = "default"
    return service


def install_crds(kube: Kube) -> None:
    for crd in render_crds().values():
        existing = kube.call("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
        if crd["metadata"]["name"] not in {c["metadata"]["name"] for c in existing["items"]}:
            kube.call("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)


def wait_ready(kube: Kube, namespace: str, name: str, timeout: float,
               say: Callable[[str], None]) -> Obj:
    """Poll the service, printing each new reason, until Ready (or Stalled, or timeout)."""
    deadline, last = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        service = kube.get("DNNService", namespace, name) or {}
        conds = (service.get("status") or {}).get("conditions")
        ready = conditions.get_condition(conds, "Ready") or {}
        line = f"  {ready.get('reason', 'Pending')}: {ready.get('message', '')}"
        if line != last:
            say(line)
            last = line
        if ready.get("status") == "True":
            return service
        if conditions.is_true(conds, "Stalled"):
            raise RuntimeError(f"DNNService {name} stalled: {ready.get('message')}")
        time.sleep(1)
    raise RuntimeError(f"DNNService {name} not Ready after {timeout:.0f} s")


def gateway_address(kube: Kube, namespace: str, service: str) -> str:
    endpoints = kube.call("GET", f"/api/v1/namespaces/{namespace}/endpoints/{service}-gateway")
    return f"http://{endpoints['subsets'][0]['addresses'][0]['ip']}:8000"


def send_requests(url: str, shape: list[int], count: int) -> list[float]:
    from splitdnn.runtime.client import Client

    batch = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    times = []
    with Client(url) as client:
        for _ in range(count):
            started = time.perf_counter()
            client.infer(batch)
            times.append(1000 * (time.perf_counter() - started))
    return times


def server_table(kube: Kube, path: str) -> Table:
    """``kubectl get -o wide`` from the API server's own Table rendering."""
    body = kube.call("GET", path, accept="application/json;as=Table;v=v1;g=meta.k8s.io")
    table = Table()
    for column in body.get("columnDefinitions", []):
        table.add_column(column["name"].upper())
    for row in body.get("rows", []):
        table.add_row(*[str(cell) for cell in row["cells"]])
    return table


def plan_table(plan: Obj) -> Table:
    table = Table(title=f"SplitPlan {plan['metadata']['name']} ({plan['spec'].get('algorithm')})")
    for column in ("stage", "tier", "layers", "nodes", "ready", "measured ms"):
        table.add_column(column)
    statuses = {s["name"]: s for s in (plan.get("status") or {}).get("stages") or []}
    for stage in plan["spec"]["stages"]:
        status = statuses.get(stage["name"], {})
        table.add_row(stage["name"], stage["tier"], f"{stage['layers'][0]}-{stage['layers'][1]}",
                      ", ".join(status.get("nodes") or []),
                      f"{status.get('readyReplicas', 0)}/{stage.get('replicas', 1)}",
                      str(status.get("latencyMs", "-")))
    return table


def run_demo(example: Path, requests: int, console: Console) -> None:
    """The whole demo; everything it started is torn down, also on failure."""
    from splitdnn.devcluster import start, stop

    state_dir = Path(tempfile.mkdtemp(prefix="splitdnn-demo-"))
    say = console.print
    say(f"[bold]1/6[/] devcluster up (state in {state_dir}) ...")
    state = start(state_dir, exit_with=os.getpid())
    operator: subprocess.Popen[bytes] | None = None
    try:
        os.environ["KUBECONFIG"] = state["kubeconfig"]
        from splitdnn.controller.kube import load_config

        load_config(state["kubeconfig"])
        kube = Kube()
        say("[bold]2/6[/] installing the CRDs")
        install_crds(kube)
        say("[bold]3/6[/] starting the operator (log: operator.log in the state dir)")
        with (state_dir / "operator.log").open("w") as log:
            operator = subprocess.Popen(
                [sys.executable, "-m", "splitdnn", "operator", "--all-namespaces",
                 "--standalone", "--log-level=info"], stdout=log, stderr=subprocess.STDOUT)
        service = adapt_example(yaml.safe_load(example.read_text()), say)
        name = service["metadata"]["name"]
        say(f"[bold]4/6[/] applying {example} and waiting for Ready")
        kube.apply(service)
        started = time.monotonic()
        ready = wait_ready(kube, "default", name, 900, say)
        say(f"  Ready after {time.monotonic() - started:.0f} s: {ready['status']['url']}")
        say(f"[bold]5/6[/] {requests} requests through the gateway (OIP v2 client)")
        shape = service["spec"]["model"].get("inputShape") or [1, 3, 224, 224]
        times = send_requests(gateway_address(kube, "default", name), shape, requests)
        say(f"  median {np.median(times):.1f} ms, min {min(times):.1f} ms (client side)")
        time.sleep(4)  # one status pass scrapes the measurements
        say("[bold]6/6[/] what the operator reports")
        say(server_table(kube, f"{GROUP_PATH}/namespaces/default/dnnservices"))
        say(server_table(kube, f"{GROUP_PATH}/namespaces/default/splitplans"))
        plan = kube.get("SplitPlan", "default", ready["status"]["splitPlan"]) or {}
        say(plan_table(plan))
        predicted = (plan["spec"].get("predicted") or {}).get("latencyMs")
        measured = ((plan.get("status") or {}).get("measured") or {}).get("latencyMs")
        say(f"predicted {predicted} ms end to end, measured {measured} ms at the gateway")
    finally:
        say("tearing down ...")
        if operator is not None:
            operator.terminate()
            operator.wait(timeout=20)
        stop(state_dir)
        say("done")

