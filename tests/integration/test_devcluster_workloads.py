"""Scheduling, the process kubelet and the workload controllers of the devcluster."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from tests.integration.conftest import Api

PY = "python"


def _job(name: str, code: str, backoff: int = 6, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"backoffLimit": backoff, **spec, "template": {
        "spec": {"restartPolicy": "Never",
                 "containers": [{"name": "main", "image": PY, "command": [PY, "-c", code]}]}}}}


def _condition(obj: Any, kind: str) -> str | None:
    if not isinstance(obj, dict):
        return None
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond["type"] == kind:
            return str(cond["status"])
    return None


def _pods(api: Api, namespace: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = api.ok("GET", f"/api/v1/namespaces/{namespace}/pods",
                                         labelSelector=selector)["items"]
    return items


def test_job_runs_to_completion(api: Api, namespace: str) -> None:
    base = f"/apis/batch/v1/namespaces/{namespace}/jobs"
    api.ok("POST", base, _job("ok", "import os; print('done on', os.environ['HOSTNAME'])",
                              completions=2))
    job = api.wait_for(f"{base}/ok", lambda j: _condition(j, "Complete") == "True",
                       what="the job to complete")
    assert job["status"]["succeeded"] == 2 and "failed" not in job["status"]
    pods = _pods(api, namespace, "job-name=ok")
    assert [p["status"]["phase"] for p in pods] == ["Succeeded", "Succeeded"]
    name = pods[0]["metadata"]["name"]
    log = api.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}/log").text
    assert log == f"done on {name}\n"


def test_failing_job_honours_backoff_limit(api: Api, namespace: str) -> None:
    base = f"/apis/batch/v1/namespaces/{namespace}/jobs"
    api.ok("POST", base, _job("bad", "raise SystemExit(3)", backoff=1))
    job = api.wait_for(f"{base}/bad", lambda j: _condition(j, "Failed") == "True",
                       what="the job to fail")
    reason = next(c["reason"] for c in job["status"]["conditions"] if c["type"] == "Failed")
    assert reason == "BackoffLimitExceeded"
    assert job["status"]["failed"] == 2  # backoffLimit 1: one retry, then give up
    time.sleep(1.0)
    pods = _pods(api, namespace, "job-name=bad")
    assert len(pods) == 2
    assert all(p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3
               for p in pods)


def _deployment(name: str, code: str, replicas: int = 1, **pod_spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {
        "replicas": replicas, "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}}, "spec": {
            "containers": [{"name": "main", "image": PY, "command": [PY, "-c", code]}],
            **pod_spec}}}}


def test_crashing_deployment_pod_is_restarted(api: Api, namespace: str) -> None:
    api.ok("POST", f"/apis/apps/v1/namespaces/{namespace}/deployments",
           _deployment("crash", "print('starting'); raise SystemExit(1)"))

    def restarted(pods: Any) -> bool:
        return any(s["restartCount"] >= 2 for p in pods["items"]
                   for s in (p.get("status") or {}).get("containerStatuses") or [])

    pods = api.wait_for(f"/api/v1/namespaces/{namespace}/pods?labelSelector=app%3Dcrash",
                        restarted, what="two restarts")["items"]
    status = pods[0]["status"]["containerStatuses"][0]
    assert status["lastState"]["terminated"]["exitCode"] == 1
    assert len(pods) == 1  # restarted in place, not replaced
    name = pods[0]["metadata"]["name"]
    previous = api.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}/log",
                           previous="true")
    assert "starting" in previous.text


def test_unsatisfiable_node_selector_stays_pending(api: Api, namespace: str) -> None:
    api.ok("POST", f"/api/v1/namespaces/{namespace}/pods", {
        "metadata": {"name": "nowhere"}, "spec": {
            "nodeSelector": {"splitdnn.io/device-class": "tpu-pod"},
            "containers": [{"name": "main", "image": PY, "command": [PY, "-c", "pass"]}]}})
    pod = api.wait_for(f"/api/v1/namespaces/{namespace}/pods/nowhere",
                       lambda p: _condition(p, "PodScheduled") == "False", what="unschedulable")
    cond = next(c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled")
    assert cond["reason"] == "Unschedulable"
    assert "didn't match Pod's node affinity/selector" in cond["message"]
    time.sleep(1.0)
    pod = api.ok("GET", f"/api/v1/namespaces/{namespace}/pods/nowhere")
    assert pod["status"]["phase"] == "Pending" and "nodeName" not in pod["spec"]


def test_scheduling_by_labels_affinity_and_resources(api: Api, namespace: str) -> None:
    base = f"/api/v1/namespaces/{namespace}/pods"
    sleep = [PY, "-c", "import time; time.sleep(60)"]
    api.ok("POST", base, {"metadata": {"name": "on-jetson"}, "spec": {
        "nodeSelector": {"splitdnn.io/device-class": "jetson-nano"},
        "containers": [{"name": "main", "image": PY, "command": sleep}]}})
    gpu = {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "nvidia.com/gpu.count", "operator": "Gt",
                               "values": ["0"]}]}]}}
    api.ok("POST", base, {"metadata": {"name": "on-gpu"}, "spec": {
        "affinity": {"nodeAffinity": gpu},
        "containers": [{"name": "main", "image": PY, "command": sleep,
                        "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}})
    api.ok("POST", base, {"metadata": {"name": "second-gpu"}, "spec": {
        "containers": [{"name": "main", "image": PY, "command": sleep,
                        "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}})
    jetson = api.wait_for(f"{base}/on-jetson", lambda p: p["spec"].get("nodeName"))
    assert jetson["spec"]["nodeName"] == "jetson-0"
    on_gpu = api.wait_for(f"{base}/on-gpu", lambda p: (p.get("status") or {}).get("phase")
                          == "Running", what="the GPU pod to run")
    assert on_gpu["spec"]["nodeName"] == "v100-0"
    assert on_gpu["status"]["podIP"].rsplit(".", 1)[0] != \
        jetson["status"].get("podIP", "x.x.x.x").rsplit(".", 1)[0]
    second = api.wait_for(f"{base}/second-gpu", lambda p: _condition(p, "PodScheduled")
                          == "False")
    assert "Insufficient nvidia.com/gpu" in str(second["status"]["conditions"])


SERVER = """
import http.server, os
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ready = os.path.exists('ready')
        self.send_response(200 if ready else 503); self.end_headers()
        self.wfile.write(os.environ['HOSTNAME'].encode())
    def log_message(self, *args): pass
http.server.HTTPServer((os.environ['POD_IP'], 8080), Handler).serve_forever()
"""


def test_readiness_probe_and_headless_service_endpoints(api: Api, namespace: str,
                                                        devcluster: dict[str, Any]) -> None:
    body = _deployment("web", SERVER, replicas=2)
    container = body["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [{"name": "POD_IP", "valueFrom": {"fieldRef": {
        "fieldPath": "status.podIP"}}}]
    container["ports"] = [{"name": "http", "containerPort": 8080}]
    container["readinessProbe"] = {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1,
                                   "failureThreshold": 1}
    container["startupProbe"] = {"exec": {"command": ["test", "-e", "ready"]},
                                 "periodSeconds": 1, "failureThreshold": 600}
    api.ok("POST", f"/apis/apps/v1/namespaces/{namespace}/deployments", body)
    api.ok("POST", f"/api/v1/namespaces/{namespace}/services", {
        "metadata": {"name": "web"}, "spec": {"clusterIP": "None", "selector": {"app": "web"},
                                             "ports": [{"port": 80, "targetPort": "http"}]}})
    eps = f"/api/v1/namespaces/{namespace}/endpoints/web"
    pending = api.wait_for(eps, lambda e: isinstance(e, dict) and len(
        (e.get("subsets") or [{}])[0].get("notReadyAddresses") or []) == 2,
                           what="two not-ready endpoints")
    assert "addresses" not in pending["subsets"][0]
    assert pending["subsets"][0]["ports"] == [{"port": 8080, "protocol": "TCP"}]
    pods = _pods(api, namespace, "app=web")
    assert all(_condition(p, "Ready") == "False" for p in pods)
    for pod in pods:  # make the probes pass: the files sit in each pod's working directory
        name = pod["metadata"]["name"]
        (_pod_dir(api, namespace, name) / "ready").write_text("")
    ready = api.wait_for(eps, lambda e: len(e["subsets"][0].get("addresses") or []) == 2,
                         what="two ready endpoints")
    ips = sorted(a["ip"] for a in ready["subsets"][0]["addresses"])
    assert ips == sorted(p["status"]["podIP"] for p in pods)
    slices = api.ok("GET", f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
                    labelSelector="kubernetes.io/service-name=web")["items"]
    assert sorted(e["addresses"][0] for e in slices[0]["endpoints"]) == ips
    assert all(e["conditions"]["ready"] for e in slices[0]["endpoints"])
    deploy = api.wait_for(f"/apis/apps/v1/namespaces/{namespace}/deployments/web",
                          lambda d: d["status"].get("readyReplicas") == 2)
    assert deploy["status"]["observedGeneration"] == deploy["metadata"]["generation"]
    if devcluster["networkIsolated"]:  # cluster DNS and the pod's own hostname
        api.ok("POST", f"/api/v1/namespaces/{namespace}/pods", {
            "metadata": {"name": "lookup"}, "spec": {"restartPolicy": "Never", "containers": [
                {"name": "main", "image": PY, "command": [PY, "-c", LOOKUP],
                 "env": [{"name": "NS", "value": namespace}]}]}})
        api.wait_for(f"/api/v1/namespaces/{namespace}/pods/lookup",
                     lambda p: _phase_of(p) == "Succeeded", what="the DNS lookup pod")
        log = api.request("GET", f"/api/v1/namespaces/{namespace}/pods/lookup/log").text
        assert log == f"{ips} lookup\nNone\n"  # the API too, from inside the pod


LOOKUP = """
import os, socket, kubernetes
print(sorted(socket.gethostbyname_ex('web')[2]), socket.gethostname())
kubernetes.config.load_kube_config()
core = kubernetes.client.CoreV1Api()
print(core.read_namespaced_service('web', os.environ['NS']).spec.cluster_ip)
"""


def _pod_dir(api: Api, namespace: str, pod: str) -> Path:
    """A pod's working directory (where the kubelet runs its containers)."""
    return api.state_dir / "pods" / f"{namespace}_{pod}"


def test_image_entrypoint_from_config_and_args(api: Api, namespace: str) -> None:
    base = f"/api/v1/namespaces/{namespace}/pods"
    image = "ghcr.io/splitdnn/runtime-cuda:0.1.0"
    for name, container in (("entrypoint", {"args": ["devcluster", "--help"]}),
                            ("no-entrypoint", {"image": "busybox"})):
        api.ok("POST", base, {"metadata": {"name": name}, "spec": {
            "restartPolicy": "Never", "containers": [{"name": "main", "image": image,
                                                      **container}]}})
    done = api.wait_for(f"{base}/entrypoint", lambda p: (p.get("status") or {}).get("phase")
                        == "Succeeded", timeout=30, what="`splitdnn devcluster --help`")
    assert done["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    assert "node-down" in api.request("GET", f"{base}/entrypoint/log").text
    failed = api.wait_for(f"{base}/no-entrypoint", lambda p: (p.get("status") or {}).get(
        "phase") == "Failed")
    terminated = failed["status"]["containerStatuses"][0]["state"]["terminated"]
    assert "busybox" in terminated["message"] and "set command" in terminated["message"]


def test_failing_liveness_probe_restarts_the_container(api: Api, namespace: str) -> None:
    base = f"/api/v1/namespaces/{namespace}/pods"
    api.ok("POST", base, {"metadata": {"name": "unhealthy"}, "spec": {"containers": [{
        "name": "main", "image": PY, "command": [PY, "-c", "import time; time.sleep(600)"],
        "livenessProbe": {"tcpSocket": {"port": 9}, "periodSeconds": 1,
                          "failureThreshold": 2}}]}})
    pod = api.wait_for(f"{base}/unhealthy", lambda p: any(
        s["restartCount"] >= 1 for s in (p.get("status") or {}).get("containerStatuses") or []),
                       what="a liveness restart")
    assert pod["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"] == 137
    events = api.ok("GET", f"/api/v1/namespaces/{namespace}/events",
                    fieldSelector="involvedObject.name=unhealthy")["items"]
    assert any(e["reason"] == "Unhealthy" and e["type"] == "Warning" for e in events)


def test_init_containers_run_first_in_order(api: Api, namespace: str) -> None:
    base = f"/api/v1/namespaces/{namespace}/pods"

    def step(name: str, code: str) -> dict[str, Any]:
        return {"name": name, "image": PY, "command": [PY, "-c", code]}

    api.ok("POST", base, {"metadata": {"name": "staged"}, "spec": {
        "restartPolicy": "Never",
        "initContainers": [step("fetch", "open('model', 'w').write('weights')"),
                           step("check", "assert open('model').read() == 'weights'")],
        "containers": [step("main", "print('serving', open('model').read())")]}})
    pod = api.wait_for(f"{base}/staged", lambda p: _phase_of(p) == "Succeeded", timeout=30)
    assert [s["state"]["terminated"]["reason"] for s in pod["status"]["initContainerStatuses"]
            ] == ["Completed", "Completed"]
    assert api.request("GET", f"{base}/staged/log").text == "serving weights\n"
    api.ok("POST", base, {"metadata": {"name": "blocked"}, "spec": {
        "restartPolicy": "Never", "initContainers": [step("fail", "raise SystemExit(2)")],
        "containers": [step("main", "print('never')")]}})
    blocked = api.wait_for(f"{base}/blocked", lambda p: _phase_of(p) == "Failed", timeout=30)
    assert _condition(blocked, "Initialized") == "False"
    main = blocked["status"]["containerStatuses"][0]
    assert main["state"] == {"waiting": {"reason": "PodInitializing"}}


def _phase_of(pod: Any) -> str:
    return str((pod.get("status") or {}).get("phase")) if isinstance(pod, dict) else ""


def test_args_expand_env_references_and_prestop_runs_before_sigterm(api: Api,
                                                                     namespace: str) -> None:
    base = f"/api/v1/namespaces/{namespace}/pods"
    # the main process records SIGTERM in a file; the preStop hook writes its mark first
    code = ("import pathlib, signal, sys, time\n"
            "def stop(*_):\n"
            "    marks = pathlib.Path('marks')\n"
            "    before = marks.read_text() if marks.exists() else ''\n"
            "    marks.write_text(before + 'sigterm\\n'); sys.exit(0)\n"
            "signal.signal(signal.SIGTERM, stop)\n"
            "print('args:', sys.argv[1:], flush=True)\n"
            "time.sleep(600)\n")
    hook = [PY, "-c", "open('marks', 'a').write('prestop $(GREETING)\\n')"]
    api.ok("POST", base, {"metadata": {"name": "hooked"}, "spec": {
        "terminationGracePeriodSeconds": 5, "containers": [{
            "name": "main", "image": PY, "command": [PY, "-c", code],
            "args": ["$(GREETING)-$(POD_IP)", "$$(GREETING)", "$(MISSING)"],
            "env": [{"name": "NAME", "value": "world"},
                    {"name": "GREETING", "value": "hello-$(NAME)"},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "lifecycle": {"preStop": {"exec": {"command": hook}}}}]}})
    pod = api.wait_for(f"{base}/hooked", lambda p: bool((p.get("status") or {}).get("podIP"))
                       and "args:" in api.request("GET", f"{base}/hooked/log").text,
                       timeout=30, what="the pod to print its args")
    log = api.request("GET", f"{base}/hooked/log").text
    assert f"['hello-world-{pod['status']['podIP']}', '$(GREETING)', '$(MISSING)']" in log, log
    pod_dir = _pod_dir(api, namespace, "hooked")
    api.ok("DELETE", f"{base}/hooked")
    api.wait_for(f"{base}/hooked", lambda p: p == 404, timeout=30, what="the pod to go")
    # exec commands are not expanded (no shell), so the hook's text is as written
    assert (pod_dir / "marks").read_text() == "prestop $(GREETING)\nsigterm\n"


def test_deleting_a_namespace_stops_its_pods_processes(api: Api) -> None:
    name = "t-gone-" + str(int(time.time() * 1000) % 100000)
    api.ok("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    api.ok("POST", f"/apis/apps/v1/namespaces/{name}/deployments",
           _deployment("sleeper", "import time; time.sleep(600)"))
    pods = f"/api/v1/namespaces/{name}/pods"
    running = api.wait_for(pods, lambda r: [_phase_of(p) for p in r["items"]] == ["Running"],
                           what="the sleeper to run")["items"][0]
    pid = int(running["status"]["containerStatuses"][0]["containerID"].split("//")[1])
    api.request("DELETE", f"/api/v1/namespaces/{name}")
    api.wait_for(f"/api/v1/namespaces/{name}", lambda r: r == 404, timeout=30,
                 what="the namespace to go")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    assert not _alive(pid), "the pod's process outlived its namespace"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"
