"""Real isolation of emulated nodes (network namespaces, shaped links, CPU quotas), faults,
and a clean machine after ``down``."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from splitdnn.devcluster import running, set_node, start, stop
from splitdnn.devcluster.daemon import cluster_id
from tests.integration.conftest import Api

PY = "python"
RECEIVER = """
import os, socket, time
server = socket.socket(); server.bind((os.environ['POD_IP'], 5201)); server.listen(1)
conn, _ = server.accept(); total, first = 0, None
while True:
    chunk = conn.recv(1 << 16)
    if not chunk: break
    first = first or time.monotonic(); total += len(chunk)
print(total, time.monotonic() - first, flush=True)
"""
SENDER = """
import os, socket
sock = socket.create_connection((os.environ['TARGET'], 5201))
sock.sendall(b'x' * (8 << 20)); sock.close()
"""
BUSY = """
import time
wall, cpu = time.monotonic(), time.process_time()
while time.monotonic() - wall < 2.0: pass
print((time.process_time() - cpu) / (time.monotonic() - wall), flush=True)
"""


def _pod(name: str, code: str, node_class: str, **container: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {
        "restartPolicy": "Never", "nodeSelector": {"splitdnn.io/device-class": node_class},
        "containers": [{"name": "main", "image": PY, "command": [PY, "-c", code],
                        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {
                            "fieldPath": "status.podIP"}}}], **container}]}}


def _phase(pod: Any) -> str:
    return str((pod.get("status") or {}).get("phase")) if isinstance(pod, dict) else ""


def _require_isolation(devcluster: dict[str, Any], what: str) -> None:
    if not devcluster[what]:
        pytest.skip("needs real isolation (root, ip, tc, cgroup v1): "
                    + "; ".join(devcluster["warnings"]))


def test_link_throughput_matches_configured_bandwidth(api: Api, devcluster: dict[str, Any],
                                                      namespace: str) -> None:
    _require_isolation(devcluster, "networkIsolated")
    mbit = _send_jetson_to_v100(api, namespace, "first")
    assert 40 * 0.8 <= mbit <= 40 * 1.2, f"{mbit:.1f} Mbit/s over a 40 Mbit/s link"


def _send_jetson_to_v100(api: Api, namespace: str, name: str) -> float:
    """Mbit/s of 8 MiB sent from a pod on jetson-0 to a pod on v100-0."""
    base = f"/api/v1/namespaces/{namespace}/pods"
    api.ok("POST", base, _pod(f"{name}-receiver", RECEIVER, "v100-server"))
    receiver = api.wait_for(f"{base}/{name}-receiver", lambda p: _phase(p) == "Running")
    time.sleep(0.5)  # let it bind
    sender = _pod(f"{name}-sender", SENDER, "jetson-nano")
    sender["spec"]["containers"][0]["env"].append(
        {"name": "TARGET", "value": receiver["status"]["podIP"]})
    api.ok("POST", base, sender)
    api.wait_for(f"{base}/{name}-receiver", lambda p: _phase(p) == "Succeeded", timeout=30)
    total, seconds = api.request("GET", f"{base}/{name}-receiver/log").text.split()
    assert int(total) == 8 << 20
    return int(total) * 8 / float(seconds) / 1e6


def test_node_cpu_quota_limits_its_pods(api: Api, devcluster: dict[str, Any],
                                        namespace: str) -> None:
    _require_isolation(devcluster, "cpuLimited")
    base = f"/api/v1/namespaces/{namespace}/pods"
    api.ok("POST", base, _pod("busy", BUSY, "jetson-nano"))
    api.ok("POST", base, _pod("limited", BUSY, "v100-server",
                              resources={"limits": {"cpu": "100m"}}))
    for name in ("busy", "limited"):
        api.wait_for(f"{base}/{name}", lambda p: _phase(p) == "Succeeded", timeout=30)
    share = float(api.request("GET", f"{base}/busy/log").text)
    assert share < 0.25 * 1.3, f"a 0.25-core node gave one process {share:.2f} of a core"
    limited = float(api.request("GET", f"{base}/limited/log").text)
    assert limited < 0.1 * 1.3, f"a pod limited to 100m got {limited:.2f} of a core"
    root = Path(f"/sys/fs/cgroup/cpu/splitdnn-{devcluster['clusterId']}/v100-0")
    assert not [child for child in root.iterdir() if child.is_dir()]


def test_node_down_kills_marks_and_evicts_then_node_up(api: Api, devcluster: dict[str, Any],
                                                       namespace: str) -> None:
    state_dir = Path(devcluster["stateDir"])
    base = f"/apis/apps/v1/namespaces/{namespace}/deployments"
    api.ok("POST", base, {"metadata": {"name": "edge"}, "spec": {
        "replicas": 1, "selector": {"matchLabels": {"app": "edge"}},
        "template": {"metadata": {"labels": {"app": "edge"}}, "spec": {
            "nodeSelector": {"splitdnn.io/device-class": "jetson-nano"},
            "containers": [{"name": "main", "image": PY,
                            "command": [PY, "-c", "import time; time.sleep(600)"]}]}}}})
    pods = f"/api/v1/namespaces/{namespace}/pods?labelSelector=app%3Dedge"
    running_pod = api.wait_for(pods, lambda r: [_phase(p) for p in r["items"]] == ["Running"]
                               )["items"][0]
    pid = int(running_pod["status"]["containerStatuses"][0]["containerID"].split("//")[1])
    set_node(state_dir, "jetson-0", up=False)
    try:
        node = api.ok("GET", "/api/v1/nodes/jetson-0")
        ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "Unknown"
        assert {t["key"] for t in node["spec"]["taints"]} == {"node.kubernetes.io/unreachable"}
        time.sleep(0.5)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        # evicted after podEvictionSeconds; the replacement has nowhere to go
        replacement = api.wait_for(pods, lambda r: len(r["items"]) == 1 and r["items"][0][
            "metadata"]["name"] != running_pod["metadata"]["name"] and not r["items"][0][
            "spec"].get("nodeName"), what="eviction and an unschedulable replacement")
        assert "untolerated taint" in str(replacement["items"][0]["status"]["conditions"])
    finally:
        set_node(state_dir, "jetson-0", up=True)
    api.wait_for(pods, lambda r: [_phase(p) for p in r["items"]] == ["Running"],
                 what="the replacement to run after node-up")
    if devcluster["networkIsolated"]:  # node-up restores the routes to the other nodes' pods
        assert _send_jetson_to_v100(api, namespace, "after-up") > 0


def _machine_snapshot(cluster: str) -> dict[str, set[str]]:
    """Everything on this machine named after one cluster (other clusters may run alongside:
    their names differ)."""
    def lines(*argv: str) -> set[str]:
        out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
        return {line.split()[0].split("@")[0] for line in out.splitlines() if line.strip()}

    etc, cgroups = Path("/etc/netns"), Path("/sys/fs/cgroup/cpu")
    found = {"netns": lines("ip", "netns", "list"), "links": lines("ip", "-br", "link"),
             "etc-netns": {p.name for p in etc.iterdir()} if etc.is_dir() else set(),
             "cgroups": {p.name for p in cgroups.iterdir()} if cgroups.is_dir() else set()}
    return {kind: {name for name in names if cluster in name} for kind, names in found.items()}


def test_up_then_down_leaves_the_machine_as_it_was(tmp_path: Path) -> None:
    state_dir = tmp_path / "cluster"
    before = _machine_snapshot(cluster_id(state_dir))
    assert before == {"netns": set(), "links": set(), "etc-netns": set(), "cgroups": set()}
    state = start(state_dir, exit_with=os.getpid())
    try:
        api = Api(state["server"], state_dir)
        api.ok("POST", "/api/v1/namespaces/default/pods", _pod(
            "sleeper", "import time; time.sleep(600)", "jetson-nano"))
        pod = api.wait_for("/api/v1/namespaces/default/pods/sleeper",
                           lambda p: _phase(p) == "Running")
        pid = int(pod["status"]["containerStatuses"][0]["containerID"].split("//")[1])
        during = _machine_snapshot(state["clusterId"])
        if state["networkIsolated"]:  # two nodes and one pod, with its resolv.conf and hosts
            assert len(during["netns"]) == 3 and len(during["etc-netns"]) == 1
            assert len(during["links"]) == 3  # the bridge and the nodes' host-side veths
        if state["cpuLimited"]:
            assert len(during["cgroups"]) == 1
    finally:
        assert stop(state_dir)
    assert _machine_snapshot(state["clusterId"]) == before
    assert not state_dir.exists() and running(state_dir) is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(ProcessLookupError):
        os.kill(int(state["pid"]), 0)
