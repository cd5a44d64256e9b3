"""The process kubelet: runs the pods bound to emulated nodes as local processes.

A container's ``command`` + ``args`` run with its ``env`` (plus the downward-API fields the
pod asks for) inside its own network namespace and its node's CPU cgroup, ``$(VAR)`` in them
expanded from the container's env as Kubernetes does; the image stands
for the local Python environment (``python`` and ``splitdnn`` are those of the interpreter
running the devcluster), and the config's ``images`` give an image's ENTRYPOINT and CMD.
Exits are restarted per ``restartPolicy`` with a doubling back-off (CrashLoopBackOff).
Volumes are not emulated, except configMap volumes mounted below the container's workingDir:
their files are written at the same place below the pod's directory (where its containers
run) before each start; and persistentVolumeClaims, which are directories ``pvc/CLAIM`` of
the state dir that every pod can read, found through ``$SPLITDNN_PVC_ROOT`` (as the
runtime finds a claim mounted at ``/mnt/pvc/CLAIM`` on a real cluster).
HTTP, TCP and exec probes run as the kubelet runs them: startup gates the others, readiness decides
Ready, liveness failures restart the container. stdout/stderr go to a log file per
container that ``kubectl logs`` reads. Pod status (phase, conditions, podIP, container
states, restart counts) is written through the status subresource. Deleting a pod runs each
container's ``lifecycle.preStop`` (sleep, exec or httpGet) before SIGTERM, all within the
grace period (capped at 10 s here)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fnmatch
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import aiohttp

from splitdnn.devcluster import isolation
from splitdnn.devcluster.config import ClusterConfig, NodeSpec
from splitdnn.devcluster.controllers import condition, pods, quantity, record_event, set_status
from splitdnn.devcluster.store import Obj, Store, now_rfc3339

PVC_DIR = "pvc"  # below the state dir: one directory per claim


@dataclass
class ProbeState:
    """Consecutive results of one probe of one container, and when it runs next."""

    ok: int = 0
    failed: int = 0
    next_at: float | None = None


@dataclass
class Container:
    """One container's process and history."""

    name: str
    spec: dict[str, Any]
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: str | None = None
    exit_code: int | None = None
    finished_at: str | None = None
    last_terminated: dict[str, Any] | None = None
    next_start: float = 0.0
    ready: bool = False
    probes: dict[str, ProbeState] = field(default_factory=dict)
    started_ok: bool = False
    error: str | None = None


@dataclass
class PodRun:
    """What the kubelet knows about one pod it runs."""

    uid: str
    namespace: str
    name: str
    node: str
    ip: str
    restart_policy: str
    host_ip: str
    netns: str | None = None
    cgroup: str | None = None
    hostname: str = ""
    init: dict[str, Container] = field(default_factory=dict)  # run one by one, to success
    containers: dict[str, Container] = field(default_factory=dict)
    start_time: str = field(default_factory=now_rfc3339)
    probe_task: asyncio.Task[None] | None = None
    stopping: bool = False


class Kubelet:
    """All emulated nodes' kubelets (one process, one event loop)."""

    def __init__(self, store: Store, config: ClusterConfig, layout: isolation.Layout,
                 state_dir: Path, api_port: int, wake: asyncio.Event) -> None:
        self.store, self.config, self.layout = store, config, layout
        self.state_dir, self.api_port, self.wake = state_dir, api_port, wake
        self.runs: dict[str, PodRun] = {}
        self.down: dict[str, float] = {}  # node -> time it went down
        self.next_ip: dict[str, int] = {n.name: 2 for n in config.nodes}
        (state_dir / "pids").mkdir(parents=True, exist_ok=True)
        store.graceful_deletion[("", "pods")] = lambda pod: pod["metadata"]["uid"] in self.runs

    # ---- nodes ---------------------------------------------------------------------
    def register_nodes(self) -> None:
        for index, spec in enumerate(self.config.nodes):
            self.store.create(self.store.type_for("", "v1", "nodes"), "", self._node(index, spec))

    def _node(self, index: int, spec: NodeSpec) -> Obj:
        labels = {"kubernetes.io/hostname": spec.name, "kubernetes.io/os": "linux",
                  "kubernetes.io/arch": "amd64", "splitdnn.io/devcluster": "true", **spec.labels}
        arch = labels["kubernetes.io/arch"]
        capacity = {"pods": "110", **spec.capacity}
        return {
            "metadata": {"name": spec.name, "labels": labels},
            "spec": {"taints": spec.taints} if spec.taints else {},
            "status": {
                "capacity": capacity, "allocatable": capacity,
                "addresses": [{"type": "InternalIP", "address": self.layout.node_ip(index)},
                              {"type": "Hostname", "address": spec.name}],
                "nodeInfo": {"kernelVersion": spec.kernel_version, "osImage": spec.os_image,
                             "architecture": arch, "operatingSystem": "linux",
                             "kubeletVersion": "v1.32.0-devcluster",
                             "containerRuntimeVersion": "process://splitdnn-devcluster",
                             "machineID": "", "systemUUID": "", "bootID": ""},
                "conditions": [self._ready_condition(True)],
            },
        }

    def _ready_condition(self, ready: bool, previous: list[dict[str, Any]] | None = None
                         ) -> dict[str, Any]:
        cond = condition("Ready", ready, "KubeletReady" if ready else "NodeStatusUnknown",
                         "kubelet is posting ready status" if ready else
                         "Kubelet stopped posting node status.", previous)
        if not ready:
            cond["status"] = "Unknown"
        cond.pop("lastUpdateTime", None)
        cond.setdefault("lastHeartbeatTime", cond["lastTransitionTime"])
        return cond

    def set_node_up(self, name: str, up: bool) -> None:
        """node-up / node-down: Ready condition, unreachable taints, processes, network."""
        node_type = self.store.type_for("", "v1", "nodes")
        node = self.store.get(node_type, "", name)
        taints = [t for t in node["spec"].get("taints") or []
                  if t.get("key") != "node.kubernetes.io/unreachable"]
        if not up:
            taints += [{"key": "node.kubernetes.io/unreachable", "effect": effect,
                        "timeAdded": now_rfc3339()} for effect in ("NoSchedule", "NoExecute")]
            self.down[name] = time.monotonic()
            for run in [r for r in self.runs.values() if r.node == name]:
                self._kill_run(run, signal.SIGKILL)
        else:
            self.down.pop(name, None)
        isolation.set_link(self.layout, name, up)
        self.store.patch(node_type, "", name, "application/merge-patch+json",
                         {"spec": {"taints": taints or None}})
        node = self.store.get(node_type, "", name)
        record_event(self.store, node, "NodeReady" if up else "NodeNotReady",
                     f"Node {name} status is now: {'NodeReady' if up else 'NodeNotReady'}",
                     "node-controller", warning=not up)
        status = dict(node["status"])
        status["conditions"] = [self._ready_condition(up, status.get("conditions"))]
        set_status(self.store, node, status)
        self.wake.set()

    # ---- sync ----------------------------------------------------------------------
    async def sync(self) -> None:
        """One pass over all pods bound to our nodes."""
        seen = set()
        for pod in self.store.list_objects(pods(self.store)):
            node = pod["spec"].get("nodeName")
            if not node or node not in self.next_ip:
                continue
            uid = pod["metadata"]["uid"]
            seen.add(uid)
            if node in self.down:
                self._sync_down_pod(pod, node)
                continue
            run = self.runs.get(uid)
            if pod["metadata"].get("deletionTimestamp"):
                if run is not None and not run.stopping:
                    run.stopping = True
                    asyncio.get_running_loop().create_task(self._stop_pod(run, pod))
                elif run is None:
                    self.store.remove_now(pods(self.store), pod["metadata"]["namespace"],
                                          pod["metadata"]["name"])
                continue
            if run is None and (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            if run is None:
                run = self._admit(pod)
            await self._start_due(run, pod)
            self._write_status(run, pod)
        for uid in [u for u in self.runs if u not in seen]:
            self._kill_run(self.runs[uid], signal.SIGKILL)
            self._finish(self.runs[uid])

    def _sync_down_pod(self, pod: Obj, node: str) -> None:
        """Pods on a down node lose Ready, and are evicted after podEvictionSeconds."""
        if time.monotonic() - self.down[node] >= self.config.pod_eviction_s or \
                pod["metadata"].get("deletionTimestamp"):
            run = self.runs.get(pod["metadata"]["uid"])
            if run is not None:
                self._finish(run)
            ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
            if pod["metadata"].get("deletionTimestamp"):
                self.store.remove_now(pods(self.store), ns, name)
            else:
                self.store.delete(pods(self.store), ns, name)
            return
        status = dict(pod.get("status") or {})
        conditions = [c for c in status.get("conditions") or []
                      if c.get("type") not in ("Ready", "ContainersReady")]
        conditions += [condition("Ready", False, "NodeNotReady", "node is not ready",
                                 status.get("conditions")),
                       condition("ContainersReady", False, "NodeNotReady", "node is not ready",
                                 status.get("conditions"))]
        status["conditions"] = conditions
        set_status(self.store, pod, status)

    def _admit(self, pod: Obj) -> PodRun:
        node = pod["spec"]["nodeName"]
        index = [n.name for n in self.config.nodes].index(node)
        ip = self._free_ip(node, index)
        policy = pod["spec"].get("restartPolicy", "Always")
        run = PodRun(uid=pod["metadata"]["uid"], namespace=pod["metadata"]["namespace"],
                     name=pod["metadata"]["name"], node=node, ip=ip, restart_policy=policy,
                     host_ip=self.layout.node_ip(index))
        run.hostname = pod["spec"].get("hostname") or run.name
        run.netns = isolation.add_pod(self.layout, node, index, ip, run.namespace, run.hostname)
        run.cgroup = isolation.add_pod_cgroup(self.layout, node, run.uid, _cpu_limit(pod))
        for spec in pod["spec"].get("initContainers") or []:
            run.init[spec["name"]] = Container(name=spec["name"], spec=spec)
        for spec in pod["spec"].get("containers") or []:
            run.containers[spec["name"]] = Container(name=spec["name"], spec=spec)
        self.log_dir(run.namespace, run.name).mkdir(parents=True, exist_ok=True)
        self.runs[run.uid] = run
        run.probe_task = asyncio.get_running_loop().create_task(self._probe_loop(run))
        return run

    def _free_ip(self, node: str, index: int) -> str:
        used = {run.ip for run in self.runs.values()}
        for _ in range(250):
            ip = f"{self.layout.pod_subnet_base(index)}.{self.next_ip[node]}"
            self.next_ip[node] = self.next_ip[node] % 250 + 2
            if ip not in used:
                return ip
        raise RuntimeError(f"node {node} has no free pod address")

    def log_dir(self, namespace: str, pod: str) -> Path:
        return self.state_dir / "pods" / f"{namespace}_{pod}"

    async def _start_due(self, run: PodRun, pod: Obj) -> None:
        for init in run.init.values():  # in order; each must succeed before the next
            if init.exit_code == 0:
                continue
            if _running(init) or (init.exit_code is not None and (
                    run.restart_policy == "Never" or time.monotonic() < init.next_start)):
                return
            await self._relaunch(run, pod, init)
            return
        for container in run.containers.values():
            if _running(container):
                continue
            if container.exit_code is not None and not self._restarts(run, container):
                continue
            if time.monotonic() < container.next_start:
                continue
            await self._relaunch(run, pod, container)

    async def _relaunch(self, run: PodRun, pod: Obj, container: Container) -> None:
        if container.exit_code is not None:
            container.restarts += 1
            container.last_terminated = self._terminated(container)
            previous = self.log_dir(run.namespace, run.name) / f"{container.name}.log"
            if previous.exists():
                previous.replace(previous.with_suffix(".previous.log"))
        await self._launch(run, pod, container)

    def _initialized(self, run: PodRun) -> bool:
        return all(init.exit_code == 0 for init in run.init.values())

    def _restarts(self, run: PodRun, container: Container) -> bool:
        if run.restart_policy == "Always":
            return True
        return run.restart_policy == "OnFailure" and container.exit_code != 0

    async def _launch(self, run: PodRun, pod: Obj, container: Container) -> None:
        spec_env = self._spec_env(run, pod, container.spec)
        argv = [expand_vars(part, spec_env) for part in self._argv(container.spec)]
        container.exit_code = container.finished_at = None
        container.ready = False
        container.probes = {}
        container.started_ok = not container.spec.get("startupProbe")
        if not argv:
            container.error = (f"image {container.spec.get('image')!r} has no entrypoint in "
                               "the devcluster config: set command")
            container.exit_code, container.finished_at = 128, now_rfc3339()
            container.next_start = float("inf")
            return
        log_path = self.log_dir(run.namespace, run.name) / f"{container.name}.log"
        missing = self._project_configmaps(pod, container.spec, log_path.parent)
        if missing:
            container.error = f"configmap {missing!r} not found"
            container.exit_code, container.finished_at = 1, now_rfc3339()
            container.next_start = time.monotonic() + self.config.restart_backoff_s
            return
        with open(log_path, "ab") as log_file:
            container.process = await asyncio.create_subprocess_exec(
                *isolation.launch_prefix(self.layout, run.node, run.netns, run.cgroup,
                                         run.hostname), *argv,
                stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=asyncio.subprocess.STDOUT,
                env=self._env(run, spec_env), cwd=str(log_path.parent),
                start_new_session=True)
        container.started_at = now_rfc3339()
        record_event(self.store, pod, "Started", f"Started container {container.name}",
                     "kubelet")
        pid_file = self.state_dir / "pids" / str(container.process.pid)
        pid_file.write_text(f"{run.namespace}/{run.name}/{container.name}\n")
        asyncio.get_running_loop().create_task(self._wait(run, container, pid_file))

    def _project_configmaps(self, pod: Obj, spec: dict[str, Any], pod_dir: Path) -> str | None:
        """Write the configMap volumes the container mounts (below its workingDir) into the
        pod's directory; the name of a missing, non-optional ConfigMap, else None."""
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or [] if "configMap" in v}
        for mount in spec.get("volumeMounts") or []:
            volume = volumes.get(mount.get("name"))
            where = mount_below_workdir(mount.get("mountPath", ""), spec.get("workingDir"))
            if volume is None or where is None:
                continue
            source = volume["configMap"]
            cm = self.store.find(self.store.type_for("", "v1", "configmaps"),
                                 pod["metadata"]["namespace"], source.get("name", ""))
            if cm is None:
                if source.get("optional"):
                    continue
                return str(source.get("name", ""))
            for relative, content in configmap_files(source, cm).items():
                target = pod_dir / where / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
        return None

    async def _wait(self, run: PodRun, container: Container, pid_file: Path) -> None:
        process = container.process
        assert process is not None
        code = await process.wait()
        pid_file.unlink(missing_ok=True)
        if container.process is not process:
            return
        # killed by a signal: the exit status a shell (and Kubernetes) reports, 128 + signal
        container.exit_code = 128 - code if code < 0 else code
        container.finished_at = now_rfc3339()
        container.ready = False
        delay = self.config.restart_backoff_s * 2 ** min(container.restarts, 5)
        container.next_start = time.monotonic() + min(delay, 10.0)
        self.wake.set()

    def _argv(self, spec: dict[str, Any]) -> list[str]:
        """Kubernetes' rule: ``command`` replaces the image's ENTRYPOINT, ``args`` its CMD."""
        image = next((i for i in self.config.images
                      if fnmatch.fnmatch(str(spec.get("image", "")), i.match)), None)
        command = spec.get("command") or (image.entrypoint if image else [])
        args = spec.get("args") or ([] if spec.get("command") or image is None else image.cmd)
        return [str(part) for part in [*command, *args]]

    def _env(self, run: PodRun, spec_env: dict[str, str]) -> dict[str, str]:
        """The process environment: the kubelet's own variables, then the container's."""
        bin_dir = str(Path(sys.executable).parent)
        env = {"PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
               "HOME": os.environ.get("HOME", "/root"), "HOSTNAME": run.name,
               "KUBERNETES_SERVICE_HOST": self.layout.gateway_ip,
               "KUBERNETES_SERVICE_PORT": str(self.api_port), "PYTHONUNBUFFERED": "1",
               # no service-account token files here: in-cluster clients (kopf, the
               # kubernetes client) fall back to this kubeconfig
               "KUBECONFIG": str(self.state_dir / "kubeconfig-pods"),
               # persistentVolumeClaim volumes: claim C is the directory pvc/C of the state
               # dir on every node; the runtime looks for claims there
               "SPLITDNN_PVC_ROOT": str(self.state_dir / PVC_DIR)}
        for key in ("SPLITDNN_CACHE_DIR", "PYTHONPATH", "LANG"):
            if key in os.environ:
                env[key] = os.environ[key]
        return {**env, **spec_env}

    def _spec_env(self, run: PodRun, pod: Obj, spec: dict[str, Any]) -> dict[str, str]:
        """The container's ``env`` in order, each value's ``$(VAR)`` expanded from the ones
        before it (as Kubernetes expands dependent variables)."""
        fields = {"metadata.name": run.name, "metadata.namespace": run.namespace,
                  "metadata.uid": run.uid, "spec.nodeName": run.node, "status.podIP": run.ip,
                  "status.hostIP": run.host_ip,
                  "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default")}
        env: dict[str, str] = {}
        for var in spec.get("env") or []:
            value_from = var.get("valueFrom") or {}
            if "value" in var:
                env[var["name"]] = expand_vars(str(var["value"]), env)
            elif "fieldRef" in value_from:
                env[var["name"]] = fields.get(value_from["fieldRef"].get("fieldPath", ""), "")
            elif "configMapKeyRef" in value_from:
                ref = value_from["configMapKeyRef"]
                cm = self.store.find(self.store.type_for("", "v1", "configmaps"),
                                     run.namespace, ref.get("name", ""))
                env[var["name"]] = str(((cm or {}).get("data") or {}).get(ref.get("key"), ""))
        return env

    # ---- probes ---------------------------------------------------------------------
    async def _probe_loop(self, run: PodRun) -> None:
        async with aiohttp.ClientSession() as session:
            while run.uid in self.runs and not run.stopping:
                await asyncio.sleep(0.2)
                for container in run.containers.values():
                    await self._probe(session, run, container)

    async def _probe(self, session: aiohttp.ClientSession, run: PodRun,
                     container: Container) -> None:
        """Startup gates the others; readiness decides Ready; liveness failures restart."""
        if container.process is None or container.process.returncode is not None:
            return
        spec = container.spec
        if not container.started_ok:
            verdict = await self._run_probe(session, run, container, "startupProbe")
            if verdict is True:
                container.started_ok = True
            elif verdict is False:
                await self._unhealthy(run, container, "startup")
            return
        verdict = await self._run_probe(session, run, container, "livenessProbe")
        if verdict is False:
            await self._unhealthy(run, container, "liveness")
            return
        if not spec.get("readinessProbe"):
            verdict = True
        else:
            verdict = await self._run_probe(session, run, container, "readinessProbe")
        if verdict is not None and verdict != container.ready:
            container.ready = verdict
            self.wake.set()

    async def _run_probe(self, session: aiohttp.ClientSession, run: PodRun,
                         container: Container, kind: str) -> bool | None:
        """Run a probe if it is due: True/False once a threshold is reached, else None."""
        probe = container.spec.get(kind)
        if not probe:
            return None
        state = container.probes.setdefault(kind, ProbeState())
        now = time.monotonic()
        if state.next_at is None:
            state.next_at = now + float(probe.get("initialDelaySeconds", 0))
        if now < state.next_at:
            return None
        state.next_at = now + float(probe.get("periodSeconds", 10))
        if await self._check(session, run, probe):
            state.ok, state.failed = state.ok + 1, 0
        else:
            state.failed, state.ok = state.failed + 1, 0
        if state.ok >= int(probe.get("successThreshold", 1)):
            return True
        if state.failed >= int(probe.get("failureThreshold", 3)):
            return False
        return None

    async def _unhealthy(self, run: PodRun, container: Container, kind: str) -> None:
        pod = self.store.find(pods(self.store), run.namespace, run.name)
        if pod is not None:
            record_event(self.store, pod, "Unhealthy", f"{kind.capitalize()} probe failed; "
                         f"container {container.name} will be restarted", "kubelet",
                         warning=True)
        container.ready = False
        process = container.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)

    async def _check(self, session: aiohttp.ClientSession, run: PodRun,
                     probe: dict[str, Any]) -> bool:
        timeout = float(probe.get("timeoutSeconds", 1))
        if "httpGet" in probe:
            http = probe["httpGet"]
            port = self._port(run, http.get("port"))
            url = f"http://{run.ip}:{port}{http.get('path', '/')}"
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                    return 200 <= resp.status < 400
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                return False
        if "tcpSocket" in probe:
            port = self._port(run, probe["tcpSocket"].get("port"))
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(run.ip, port), timeout)
                writer.close()
                return True
            except (OSError, asyncio.TimeoutError):
                return False
        if "exec" in probe:
            return await self._exec_probe(run, list(probe["exec"].get("command") or []), timeout)
        return True

    async def _exec_probe(self, run: PodRun, argv: list[str], timeout: float) -> bool:
        """An exec probe: the command, in the pod's namespace, exits 0 within the timeout."""
        if not argv:
            return False
        try:
            process = await asyncio.create_subprocess_exec(
                *isolation.launch_prefix(self.layout, run.node, run.netns, run.cgroup), *argv,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL, cwd=str(self.log_dir(run.namespace, run.name)),
                start_new_session=True)
        except OSError:
            return False
        try:
            return await asyncio.wait_for(process.wait(), timeout) == 0
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            return False

    def _port(self, run: PodRun, port: Any) -> int:
        if isinstance(port, str) and not port.isdigit():
            for container in run.containers.values():
                for cport in container.spec.get("ports") or []:
                    if cport.get("name") == port:
                        return int(cport["containerPort"])
        return int(port)

    # ---- status ---------------------------------------------------------------------
    def _terminated(self, container: Container) -> dict[str, Any]:
        code = container.exit_code or 0
        return {"terminated": {"exitCode": code,
                               "reason": "Completed" if code == 0 else "Error",
                               "message": container.error or "",
                               "startedAt": container.started_at,
                               "finishedAt": container.finished_at}}

    def _container_status(self, run: PodRun, container: Container, initialized: bool,
                          init: bool = False) -> dict[str, Any]:
        running = _running(container)
        restarts = self._restarts(run, container) and not (init and container.exit_code == 0)
        if running:
            state: dict[str, Any] = {"running": {"startedAt": container.started_at}}
        elif not initialized:
            state = {"waiting": {"reason": "PodInitializing"}}
        elif container.exit_code is not None and restarts:
            state = {"waiting": {"reason": "CrashLoopBackOff", "message":
                                 f"back-off restarting failed container {container.name}"}}
            if container.error:
                state = {"waiting": {"reason": "CreateContainerConfigError",
                                     "message": container.error}}
        elif container.exit_code is not None:
            state = self._terminated(container)
        else:
            state = {"waiting": {"reason": "ContainerCreating"}}
        status = {"name": container.name, "ready": container.ready and running,
                  "started": running, "restartCount": container.restarts, "state": state,
                  "image": container.spec.get("image", ""), "imageID": "",
                  "containerID": f"process://{container.process.pid}"
                  if container.process else ""}
        if container.last_terminated:
            status["lastState"] = container.last_terminated
        return status

    def _phase(self, run: PodRun) -> str:
        if not self._initialized(run):
            failed = any(i.exit_code not in (None, 0) for i in run.init.values())
            return "Failed" if failed and run.restart_policy == "Never" else "Pending"
        containers = list(run.containers.values())
        if any(_running(c) for c in containers):
            return "Running"
        if containers and all(c.exit_code is not None and not self._restarts(run, c)
                              for c in containers):
            return "Succeeded" if all(c.exit_code == 0 for c in containers) else "Failed"
        if any(c.exit_code is not None for c in containers):
            return "Running"
        return "Pending"

    def _write_status(self, run: PodRun, pod: Obj) -> None:
        previous = (pod.get("status") or {}).get("conditions")
        initialized = self._initialized(run)
        statuses = [self._container_status(run, c, initialized) for c in run.containers.values()]
        phase = self._phase(run)
        ready = phase == "Running" and all(s["ready"] for s in statuses)
        reason = "" if ready else ("PodCompleted" if phase in ("Succeeded", "Failed")
                                   else "ContainersNotReady")
        status: dict[str, Any] = {
            "phase": phase, "podIP": run.ip, "podIPs": [{"ip": run.ip}],
            "hostIP": run.host_ip, "startTime": run.start_time,
            "qosClass": "BestEffort", "containerStatuses": statuses,
            "conditions": [
                condition("PodScheduled", True, "", "", previous),
                condition("Initialized", initialized,
                          "" if initialized else "ContainersNotInitialized", "", previous),
                condition("ContainersReady", ready, reason, "", previous),
                condition("Ready", ready, reason, "", previous),
            ],
        }
        if run.init:
            status["initContainerStatuses"] = [self._container_status(run, c, True, init=True)
                                               for c in run.init.values()]
        for cond in status["conditions"]:
            cond.pop("lastUpdateTime", None)
        set_status(self.store, pod, status)
        if phase in ("Succeeded", "Failed"):
            self._finish(run)

    def _finish(self, run: PodRun) -> None:
        if run.probe_task is not None:
            run.probe_task.cancel()
        self.runs.pop(run.uid, None)
        isolation.remove_pod(run.netns)
        isolation.remove_pod_cgroup(run.cgroup)

    # ---- stopping -------------------------------------------------------------------
    async def _stop_pod(self, run: PodRun, pod: Obj) -> None:
        grace = float(pod["metadata"].get("deletionGracePeriodSeconds") or 30)
        deadline = time.monotonic() + min(grace, 10.0)
        for name in run.containers:
            record_event(self.store, pod, "Killing", f"Stopping container {name}", "kubelet")
        await self._pre_stop(run, pod, deadline)
        self._kill_run(run, signal.SIGTERM)
        while time.monotonic() < deadline and any(
                _running(c) for c in [*run.init.values(), *run.containers.values()]):
            await asyncio.sleep(0.05)
        self._kill_run(run, signal.SIGKILL)
        self._finish(run)
        self.store.remove_now(pods(self.store), run.namespace, run.name)
        self.wake.set()

    async def _pre_stop(self, run: PodRun, pod: Obj, deadline: float) -> None:
        """The running containers' preStop hooks, side by side, until done or the deadline; a
        failed hook is a Warning event and the stop goes on (as the kubelet does)."""
        hooks = {c.name: c.spec["lifecycle"]["preStop"] for c in run.containers.values()
                 if _running(c) and (c.spec.get("lifecycle") or {}).get("preStop")}
        if not hooks:
            return
        errors = await asyncio.gather(*(self._hook(run, hook, deadline)
                                        for hook in hooks.values()))
        for name, error in zip(hooks, errors, strict=True):
            if error:
                record_event(self.store, pod, "FailedPreStopHook",
                             f"PreStopHook failed for container {name}: {error}", "kubelet",
                             warning=True)

    async def _hook(self, run: PodRun, handler: dict[str, Any], deadline: float) -> str | None:
        """Run one lifecycle handler; None when it succeeded, else what went wrong."""
        timeout = max(0.0, deadline - time.monotonic())
        if "sleep" in handler:
            await asyncio.sleep(min(float(handler["sleep"].get("seconds", 0)), timeout))
            return None
        if "exec" in handler:
            ok = await self._exec_probe(run, list(handler["exec"].get("command") or []),
                                        timeout)
            return None if ok else "exec command failed or timed out"
        if "httpGet" in handler:
            get = handler["httpGet"]
            url = (f"{str(get.get('scheme', 'HTTP')).lower()}://{get.get('host') or run.ip}:"
                   f"{self._port(run, get.get('port', 80))}{get.get('path', '/')}")
            try:
                async with aiohttp.ClientSession() as session, session.get(
                        url, timeout=aiohttp.ClientTimeout(total=max(timeout, 0.1))) as reply:
                    return None if reply.status < 400 else f"GET {url}: HTTP {reply.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                return f"GET {url}: {error!r}"
        return f"unsupported handler {sorted(handler)}"

    def _kill_run(self, run: PodRun, sig: signal.Signals) -> None:
        for container in [*run.init.values(), *run.containers.values()]:
            process = container.process
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, sig)

    def shutdown(self) -> None:
        for run in list(self.runs.values()):
            self._kill_run(run, signal.SIGKILL)

    # ---- logs -----------------------------------------------------------------------
    async def logs(self, namespace: str, pod: str, container: str | None, previous: bool,
                   tail: int | None, follow: bool) -> AsyncIterator[bytes]:
        name = f"{container}.previous.log" if previous else f"{container}.log"
        path = self.log_dir(namespace, pod) / name
        if not path.exists():
            return
        data = path.read_bytes()
        if tail is not None:
            data = b"".join(data.splitlines(keepends=True)[-tail:]) if tail else b""
        yield data
        offset = path.stat().st_size
        while follow and self._alive(namespace, pod):
            await asyncio.sleep(0.2)
            with open(path, "rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
            offset += len(chunk)
            if chunk:
                yield chunk

    def _alive(self, namespace: str, pod: str) -> bool:
        return any(r.namespace == namespace and r.name == pod for r in self.runs.values())


VAR_REFERENCE = re.compile(r"\$\$|\$\(([^)]*)\)")


def expand_vars(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion in command, args and env values: a defined variable is
    replaced, an undefined reference stays as written, ``$$`` is a literal ``$``."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return VAR_REFERENCE.sub(replace, text)


def mount_below_workdir(mount_path: str, working_dir: str | None) -> str | None:
    """A mount's path relative to the container's workingDir (the pod's directory here), or
    None for a mount elsewhere, which the devcluster cannot place."""
    if not working_dir or not mount_path:
        return None
    base, target = PurePosixPath(working_dir), PurePosixPath(mount_path)
    if target == base or base not in target.parents:
        return None
    return str(target.relative_to(base))


def configmap_files(source: dict[str, Any], configmap: Obj) -> dict[str, bytes]:
    """The files a configMap volume shows: every key (``data`` as UTF-8, ``binaryData``
    decoded), or only the ``items`` listed, at their ``path``."""
    contents = {key: value.encode() for key, value in (configmap.get("data") or {}).items()}
    contents.update({key: base64.b64decode(value)
                     for key, value in (configmap.get("binaryData") or {}).items()})
    items = source.get("items")
    if not items:
        return {key: value for key, value in contents.items() if "/" not in key}
    return {item["path"]: contents[item["key"]] for item in items if item["key"] in contents}


def _cpu_limit(pod: Obj) -> float | None:
    """The pod's CPU limit in cores: the sum of its containers' ``limits.cpu``, if all set."""
    limits = [((c.get("resources") or {}).get("limits") or {}).get("cpu")
              for c in (pod.get("spec") or {}).get("containers") or []]
    if not limits or any(limit is None for limit in limits):
        return None
    return sum(quantity(limit) for limit in limits)


def _running(container: Container) -> bool:
    """Started and its exit not yet recorded. Not ``returncode is None``: asyncio sets the
    return code a moment before ``_wait`` records the exit, and a sync in between took the
    container for one that was never started and launched it a second time."""
    return container.process is not None and container.exit_code is None
