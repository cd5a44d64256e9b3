"""The operator demo: devcluster up, CRDs, operator, the ResNet-50 example, requests, teardown.

What ``make demo`` runs (``splitdnn cluster-demo``), on the devcluster of
``splitdnn/devcluster/demo.yaml``: the example's camera board ``camera-board-1`` (Jetson
class, where the gateway runs and requests arrive) and a V100-class server on a gigabit link.
The example is changed in its objective and SLO only, each change printed with its reason
(``DEMO_OVERRIDES``): a latency plan keeps ResNet-50 whole (every tensor before layer4 is
larger than the 602 KB input, so no cut beats running it all on one node), so the demo
plans for throughput, where pipelining the two nodes pays; and an SLO that emulated CPUs can
meet instead of the V100's 50 ms. (The example's ``maxStages: 3`` stays: the planner counts
stages that come back to a node as sharing it.)
The operator profiles with 3 repeats (as the integration tests do) to keep the demo short.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

from splitdnn.api.crdgen import render_crds
from splitdnn.controller import conditions
from splitdnn.controller.kube import Kube, Obj

GROUP_PATH = "/apis/splitdnn.io/v1alpha1"


DEMO_CONFIG = Path(__file__).resolve().parents[1] / "devcluster" / "demo.yaml"
DEMO_OVERRIDES: list[tuple[str, Any, str]] = [
    ("objective.kind", "throughput", "a latency plan keeps ResNet-50 whole here: every "
     "tensor before layer4 outgrows the 602 KB input; a pipeline splits"),
    ("slo.latencyMs", 250, "emulated CPUs are no V100"),
]


def adapt_example(service: Obj, node_names: set[str], say: Callable[[str], None]) -> Obj:
    """The example as the demo cluster serves it; every change is printed with its reason."""
    spec = service["spec"]
    selector = (spec.get("source") or {}).get("nodeSelector") or {}
    host = selector.get("kubernetes.io/hostname")
    if host is not None and host not in node_names:
        spec["source"].pop("nodeSelector")
        say(f"  example adapted: spec.source.nodeSelector dropped (no node {host} here)")
    for path, value, reason in DEMO_OVERRIDES:
        parent, key = path.split(".")
        section = spec.setdefault(parent, {})
        if section.get(key) != value:
            say(f"  example adapted: spec.{path} {section.get(key)} -> {value}\n    ({reason})")
            section[key] = value
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
    started, last = time.monotonic(), ""
    while time.monotonic() < started + timeout:
        service = kube.get("DNNService", namespace, name) or {}
        conds = (service.get("status") or {}).get("conditions")
        ready = conditions.get_condition(conds, "Ready") or {}
        line = f"{ready.get('reason', 'Pending')}: {ready.get('message', '')}"
        if line != last:
            say(f"  {time.monotonic() - started:5.1f} s  {line}")
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


def measured_latency(plan: Obj) -> float | None:
    value = ((plan.get("status") or {}).get("measured") or {}).get("latencyMs")
    return float(value) if value is not None else None


def requests_until_measured(kube: Kube, url: str, shape: list[int], plan_name: str,
                            minimum: int, timeout: float) -> tuple[list[float], Obj]:
    """Requests one after another, at least ``minimum``, until the operator's status of the
    plan holds a measured latency (it counts requests from a drain period after the switch,
    between two of its scrapes); client-side latencies in ms and the plan as measured."""
    from splitdnn.runtime.client import Client

    batch = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    times: list[float] = []
    plan: Obj = {}
    deadline = time.monotonic() + timeout
    with Client(url) as client:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            client.infer(batch)
            times.append(1000 * (time.perf_counter() - started))
            if len(times) >= minimum and len(times) % 5 == 0:
                plan = kube.get("SplitPlan", "default", plan_name) or {}
                if measured_latency(plan) is not None:
                    break
    return times, plan or kube.get("SplitPlan", "default", plan_name) or {}


def measure_throughput(url: str, shape: list[int], count: int, in_flight: int) -> float:
    """Requests per second with ``in_flight`` clients sending ``count`` requests in all."""
    from splitdnn.runtime.client import Client

    batch = np.random.default_rng(1).standard_normal(shape).astype(np.float32)

    def client_loop(share: int) -> None:
        with Client(url) as client:
            for _ in range(share):
                client.infer(batch)

    shares = [count // in_flight + (i < count % in_flight) for i in range(in_flight)]
    started = time.perf_counter()
    with ThreadPoolExecutor(in_flight) as pool:
        list(pool.map(client_loop, shares))
    return count / (time.perf_counter() - started)


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


def gateway_nodes(kube: Kube, namespace: str, service: str) -> str:
    pods = kube.call("GET", f"/api/v1/namespaces/{namespace}/pods",
                     query=[("labelSelector", f"splitdnn.io/service={service},"
                                              "splitdnn.io/component=gateway")])
    return ", ".join(sorted({p["spec"].get("nodeName", "?") for p in pods["items"]})) or "-"


def report(kube: Kube, plan: Obj, name: str, say: Callable[..., None]) -> None:
    """kubectl-style tables, the plan, where requests arrive, predicted vs measured latency."""
    say(server_table(kube, f"{GROUP_PATH}/namespaces/default/dnnservices"))
    say(server_table(kube, f"{GROUP_PATH}/namespaces/default/splitplans"))
    say(plan_table(plan))
    say(f"requests arrive at the gateway on {gateway_nodes(kube, 'default', name)}")
    predicted = (plan["spec"].get("predicted") or {}).get("latencyMs")
    measured = measured_latency(plan)
    say(f"latency: predicted {predicted} ms end to end, measured "
        f"{'-' if measured is None else measured} ms at the gateway")


def run_demo(example: Path, requests: int, console: Console,
             config: Path = DEMO_CONFIG) -> None:
    """The whole demo; everything it started is torn down, also on failure."""
    from splitdnn.devcluster import start, stop

    state_dir = Path(tempfile.mkdtemp(prefix="splitdnn-demo-"))
    say = console.print
    say(f"[bold]1/7[/] devcluster up from {config.name} (state in {state_dir}) ...")
    state = start(state_dir, config, exit_with=os.getpid())
    operator: subprocess.Popen[bytes] | None = None
    try:
        os.environ["KUBECONFIG"] = state["kubeconfig"]
        from splitdnn.controller.kube import load_config

        load_config(state["kubeconfig"])
        kube = Kube()
        say("[bold]2/7[/] installing the CRDs")
        install_crds(kube)
        say("[bold]3/7[/] starting the operator (log: operator.log in the state dir, kept "
            "on failure)")
        with (state_dir / "operator.log").open("w") as log:
            operator = subprocess.Popen(
                [sys.executable, "-m", "splitdnn", "operator", "--all-namespaces",
                 "--standalone", "--log-level=info"], stdout=log, stderr=subprocess.STDOUT,
                env=dict(os.environ, SPLITDNN_PROFILE_REPEATS="3"))
        nodes = {n["metadata"]["name"] for n in kube.call("GET", "/api/v1/nodes")["items"]}
        service = adapt_example(yaml.safe_load(example.read_text()), nodes, say)
        name = service["metadata"]["name"]
        say(f"[bold]4/7[/] applying {example} and waiting for Ready")
        kube.apply(service)
        started = time.monotonic()
        ready = wait_ready(kube, "default", name, 900, say)
        say(f"  Ready after {time.monotonic() - started:.0f} s: {ready['status']['url']}")
        say(f"[bold]5/7[/] requests through the gateway one at a time (OIP v2 client), at "
            f"least {requests}, until the operator has measured them")
        shape = service["spec"]["model"].get("inputShape") or [1, 3, 224, 224]
        url = gateway_address(kube, "default", name)
        times, plan = requests_until_measured(kube, url, shape, ready["status"]["splitPlan"],
                                              requests, timeout=60)
        say(f"  {len(times)} requests: median {np.median(times):.1f} ms, min {min(times):.1f} "
            f"ms (client side)")
        say("[bold]6/7[/] what the operator reports")
        report(kube, plan, name, say)
        in_flight, count = 4, 3 * requests
        say(f"[bold]7/7[/] throughput: {count} requests, {in_flight} in flight")
        rps = measure_throughput(url, shape, count, in_flight)
        predicted_rps = (plan["spec"].get("predicted") or {}).get("throughputRps")
        say(f"  predicted {predicted_rps} requests/s, measured {rps:.1f} requests/s")
    except BaseException:
        kept = Path(tempfile.gettempdir()) / "splitdnn-demo-operator.log"
        shutil.copyfile(state_dir / "operator.log", kept)
        say(f"the operator's log is kept in {kept}")
        raise
    finally:
        say("tearing down ...")
        if operator is not None:
            operator.terminate()
            operator.wait(timeout=20)
        stop(state_dir)
        say("done")
