"""Workload controllers and the scheduler of the emulated cluster, run in the daemon.

Each ``reconcile_*`` function looks at the store and makes one step toward the desired
state, as kube-controller-manager does: Deployments own ReplicaSets (one per pod template,
rolling updates honour maxSurge/maxUnavailable), ReplicaSets and Jobs own Pods (Jobs count
succeeded/failed pods against ``completions`` and ``backoffLimit``), Services get Endpoints
and EndpointSlices listing their pods' IPs, and the scheduler binds Pending pods to nodes by
nodeSelector, required/preferred node affinity, taints/tolerations and resource requests.
Writes are no-ops when nothing changes, so running them repeatedly converges.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import time
from typing import Any

from splitdnn.devcluster.resources import ResourceType
from splitdnn.devcluster.selectors import expression_matches, labels_match_selector
from splitdnn.devcluster.store import ApiError, Obj, Store, now_rfc3339

MERGE = "application/merge-patch+json"
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"


def _t(store: Store, group: str, plural: str) -> ResourceType:
    """Built-in types are all served at v1."""
    return store.type_for(group, "v1", plural)


def pods(store: Store) -> ResourceType:
    return _t(store, "", "pods")


def owned_by(store: Store, plural: str, group: str, owner: Obj) -> list[Obj]:
    uid = owner["metadata"]["uid"]
    return [obj for obj in store.list_objects(_t(store, group, plural),
                                              owner["metadata"].get("namespace"))
            if any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])]


def owner_ref(owner: Obj) -> dict[str, Any]:
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"],
            "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": True}


def random_suffix(length: int = 5) -> str:
    return "".join(random.choice(_NAME_CHARS) for _ in range(length))


def pod_ready(pod: Obj) -> bool:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def pod_phase(pod: Obj) -> str:
    return str((pod.get("status") or {}).get("phase", "Pending"))


def terminal(pod: Obj) -> bool:
    return pod_phase(pod) in ("Succeeded", "Failed")


def set_status(store: Store, obj: Obj, status: dict[str, Any]) -> None:
    rt = store.type_of(obj)
    if (obj.get("status") or {}) != status:
        store.update(rt, obj["metadata"].get("namespace", ""), obj["metadata"]["name"],
                     dict(obj, status=status), subresource="status")


def condition(kind: str, status: bool, reason: str, message: str = "",
              previous: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A condition keeping its lastTransitionTime while its status does not change."""
    text = "True" if status else "False"
    for old in previous or []:
        if old.get("type") == kind and old.get("status") == text and old.get("reason") == reason:
            return old if old.get("message", "") == message else dict(old, message=message)
    return {"type": kind, "status": text, "reason": reason, "message": message,
            "lastTransitionTime": now_rfc3339(), "lastUpdateTime": now_rfc3339()}


def record_event(store: Store, obj: Obj, reason: str, message: str, component: str,
                 warning: bool = False) -> None:
    """A core/v1 Event about ``obj`` (what ``kubectl describe`` lists). Best effort, as
    Kubernetes' event recorders are: one the API refuses (in a namespace being deleted) is
    dropped, so that the action it reports (stopping a pod, say) still happens."""
    meta = obj["metadata"]
    namespace = meta.get("namespace") or "default"
    now = now_rfc3339()
    event = {
        "metadata": {"name": f"{meta['name']}.{random_suffix(10)}"},
        "involvedObject": {"kind": obj.get("kind"), "apiVersion": obj.get("apiVersion"),
                           "name": meta["name"], "namespace": meta.get("namespace", ""),
                           "uid": meta.get("uid"), "resourceVersion": meta.get(
                               "resourceVersion")},
        "reason": reason, "message": message, "type": "Warning" if warning else "Normal",
        "source": {"component": component}, "reportingComponent": component,
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    }
    with contextlib.suppress(ApiError):
        store.create(store.type_for("", "v1", "events"), namespace, event)


def _new_pod(store: Store, owner: Obj, template: dict[str, Any], name: str,
             extra_labels: dict[str, str]) -> None:
    meta = template.get("metadata") or {}
    body = {
        "metadata": {"name": name, "labels": {**(meta.get("labels") or {}), **extra_labels},
                     "annotations": dict(meta.get("annotations") or {}),
                     "ownerReferences": [owner_ref(owner)]},
        "spec": json.loads(json.dumps(template.get("spec") or {})),
    }
    try:
        store.create(pods(store), owner["metadata"]["namespace"], body)
    except ApiError as exc:
        if exc.code != 409:
            raise
        return
    controller = "job-controller" if owner.get("kind") == "Job" else "replicaset-controller"
    record_event(store, owner, "SuccessfulCreate", f"Created pod: {name}", controller)


# ---- ReplicaSets ------------------------------------------------------------------------
def reconcile_replicaset(store: Store, rs: Obj) -> None:
    if rs["metadata"].get("deletionTimestamp"):
        return
    spec = rs.get("spec") or {}
    wanted = int(spec.get("replicas", 1))
    children = [p for p in owned_by(store, "pods", "", rs)
                if not p["metadata"].get("deletionTimestamp")]
    for pod in children:
        if pod_phase(pod) == "Failed":
            store.delete(pods(store), pod["metadata"]["namespace"], pod["metadata"]["name"])
    active = [p for p in children if pod_phase(p) != "Failed"]
    if len(active) < wanted:
        for _ in range(wanted - len(active)):
            _new_pod(store, rs, spec.get("template") or {},
                     f"{rs['metadata']['name']}-{random_suffix()}", {})
    elif len(active) > wanted:
        doomed = sorted(active, key=lambda p: (pod_ready(p), p["metadata"]["creationTimestamp"]))
        for pod in doomed[: len(active) - wanted]:
            store.delete(pods(store), pod["metadata"]["namespace"], pod["metadata"]["name"])
    children = [p for p in owned_by(store, "pods", "", rs)
                if not p["metadata"].get("deletionTimestamp") and pod_phase(p) != "Failed"]
    ready = sum(1 for p in children if pod_ready(p))
    set_status(store, rs, {"replicas": len(children), "fullyLabeledReplicas": len(children),
                           "readyReplicas": ready, "availableReplicas": ready,
                           "observedGeneration": rs["metadata"]["generation"]})


# ---- Deployments ------------------------------------------------------------------------
def template_hash(template: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()
    return "".join(_NAME_CHARS[int(c, 16) % len(_NAME_CHARS)] for c in digest[:10])


def _percent(value: Any, total: int, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        amount = total * float(value[:-1]) / 100
        return math.ceil(amount) if round_up else math.floor(amount)
    return int(value)


def reconcile_deployment(store: Store, deploy: Obj) -> None:
    if deploy["metadata"].get("deletionTimestamp"):
        return
    spec = deploy.get("spec") or {}
    replicas = int(spec.get("replicas", 1))
    template = spec.get("template") or {}
    thash = template_hash(template)
    rs_type = _t(store, "apps", "replicasets")
    all_rs = owned_by(store, "replicasets", "apps", deploy)
    new_rs = next((rs for rs in all_rs if rs["metadata"].get("labels", {}).get(
        "pod-template-hash") == thash), None)
    old_rs = [rs for rs in all_rs if rs is not new_rs]
    if new_rs is None:
        new_rs = _create_rs(store, deploy, template, thash)
    strategy = spec.get("strategy") or {}
    rolling = strategy.get("rollingUpdate") or {}
    if strategy.get("type") == "Recreate":
        surge, unavailable = 0, replicas
    else:
        surge = _percent(rolling.get("maxSurge", "25%"), replicas, True)
        unavailable = _percent(rolling.get("maxUnavailable", "25%"), replicas, False)
        if surge == 0 and unavailable == 0:
            unavailable = 1
    old_total = sum(int((rs.get("spec") or {}).get("replicas", 0)) for rs in old_rs)
    new_count = int((new_rs.get("spec") or {}).get("replicas", 0))
    old_pods_alive = sum(len(owned_by(store, "pods", "", rs)) for rs in old_rs)
    if strategy.get("type") == "Recreate" and old_pods_alive:
        target_new = 0
    else:
        target_new = max(new_count, min(replicas, replicas + surge - old_total))
        target_new = min(target_new, replicas)
    if target_new != new_count:
        _scale(store, rs_type, new_rs, target_new, deploy)
    new_ready = int(((new_rs.get("status") or {}).get("readyReplicas")) or 0)
    old_ready = sum(int((rs.get("status") or {}).get("readyReplicas") or 0) for rs in old_rs)
    can_remove = max(0, old_ready + new_ready - (replicas - unavailable))
    can_remove += sum(max(0, int((rs.get("spec") or {}).get("replicas", 0)) -
                          int((rs.get("status") or {}).get("readyReplicas") or 0))
                      for rs in old_rs)  # not-ready old pods count against nothing
    for rs in old_rs:
        current = int((rs.get("spec") or {}).get("replicas", 0))
        cut = min(current, can_remove)
        if cut:
            _scale(store, rs_type, rs, current - cut, deploy)
            can_remove -= cut
    _deployment_status(store, deploy, replicas, unavailable)


def _create_rs(store: Store, deploy: Obj, template: dict[str, Any], thash: str) -> Obj:
    labels = {**((template.get("metadata") or {}).get("labels") or {}), "pod-template-hash": thash}
    selector = json.loads(json.dumps((deploy.get("spec") or {}).get("selector") or {}))
    selector.setdefault("matchLabels", {})["pod-template-hash"] = thash
    tmpl = json.loads(json.dumps(template))
    tmpl.setdefault("metadata", {})["labels"] = labels
    body = {"metadata": {"name": f"{deploy['metadata']['name']}-{thash}", "labels": labels,
                         "ownerReferences": [owner_ref(deploy)]},
            "spec": {"replicas": 0, "selector": selector, "template": tmpl}}
    rs_type = _t(store, "apps", "replicasets")
    try:
        return store.create(rs_type, deploy["metadata"]["namespace"], body)
    except ApiError:
        return store.get(rs_type, deploy["metadata"]["namespace"], body["metadata"]["name"])


def _scale(store: Store, rs_type: ResourceType, rs: Obj, replicas: int, deploy: Obj) -> None:
    current = int((rs.get("spec") or {}).get("replicas", 0))
    store.patch(rs_type, rs["metadata"]["namespace"], rs["metadata"]["name"], MERGE,
                {"spec": {"replicas": replicas}})
    verb = "up" if replicas > current else "down"
    record_event(store, deploy, "ScalingReplicaSet", f"Scaled {verb} replica set "
                 f"{rs['metadata']['name']} from {current} to {replicas}", "deployment-controller")


def _deployment_status(store: Store, deploy: Obj, replicas: int, unavailable: int) -> None:
    thash = template_hash((deploy.get("spec") or {}).get("template") or {})
    children = [p for rs in owned_by(store, "replicasets", "apps", deploy)
                for p in owned_by(store, "pods", "", rs)
                if not p["metadata"].get("deletionTimestamp")]
    updated = [p for p in children if p["metadata"].get("labels", {}).get(
        "pod-template-hash") == thash]
    ready = sum(1 for p in children if pod_ready(p))
    previous = (deploy.get("status") or {}).get("conditions") or []
    available = ready >= replicas - unavailable
    complete = len(updated) == replicas == len(children) and ready >= replicas
    status: dict[str, Any] = {
        "observedGeneration": deploy["metadata"]["generation"], "replicas": len(children),
        "updatedReplicas": len(updated), "readyReplicas": ready, "availableReplicas": ready,
        "unavailableReplicas": max(0, replicas - ready),
        "conditions": [
            condition("Available", available,
                      "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                      "Deployment has minimum availability." if available else
                      "Deployment does not have minimum availability.", previous),
            condition("Progressing", True,
                      "NewReplicaSetAvailable" if complete else "ReplicaSetUpdated",
                      "ReplicaSet has successfully progressed." if complete else
                      "ReplicaSet is progressing.", previous),
        ],
    }
    for key in ("readyReplicas", "availableReplicas", "unavailableReplicas", "updatedReplicas"):
        if not status[key]:
            del status[key]
    set_status(store, deploy, status)


# ---- Jobs -------------------------------------------------------------------------------
def reconcile_job(store: Store, job: Obj, backoff_s: float) -> None:
    status = dict(job.get("status") or {})
    if job["metadata"].get("deletionTimestamp") or any(
            c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
            for c in status.get("conditions") or []):
        return
    spec = job.get("spec") or {}
    completions, parallelism = int(spec.get("completions", 1)), int(spec.get("parallelism", 1))
    backoff_limit = int(spec.get("backoffLimit", 6))
    children = owned_by(store, "pods", "", job)
    succeeded = sum(1 for p in children if pod_phase(p) == "Succeeded")
    restarts = sum(int(s.get("restartCount", 0)) for p in children
                   for s in (p.get("status") or {}).get("containerStatuses") or [])
    failed = sum(1 for p in children if pod_phase(p) == "Failed") + restarts
    active = [p for p in children if not terminal(p) and not p["metadata"].get(
        "deletionTimestamp")]
    status.setdefault("startTime", now_rfc3339())
    conditions: list[dict[str, Any]] = list(status.get("conditions") or [])
    if failed > backoff_limit:
        for pod in active:
            store.delete(pods(store), pod["metadata"]["namespace"], pod["metadata"]["name"])
        active = []
        conditions += [condition("FailureTarget", True, "BackoffLimitExceeded",
                                 "Job has reached the specified backoff limit"),
                       condition("Failed", True, "BackoffLimitExceeded",
                                 "Job has reached the specified backoff limit")]
    elif succeeded >= completions:
        status["completionTime"] = now_rfc3339()
        conditions += [condition("SuccessCriteriaMet", True, "CompletionsReached",
                                 "Reached expected number of succeeded pods"),
                       condition("Complete", True, "CompletionsReached",
                                 "Reached expected number of succeeded pods")]
    elif len(active) < min(parallelism, completions - succeeded) and \
            _backoff_over(children, failed, backoff_s):
        template = spec.get("template") or {}
        labels = {"job-name": job["metadata"]["name"],
                  "batch.kubernetes.io/job-name": job["metadata"]["name"],
                  "controller-uid": job["metadata"]["uid"],
                  "batch.kubernetes.io/controller-uid": job["metadata"]["uid"]}
        _new_pod(store, job, template, f"{job['metadata']['name']}-{random_suffix()}", labels)
        active = [p for p in owned_by(store, "pods", "", job) if not terminal(p)]
    status.update({"active": len(active), "succeeded": succeeded, "failed": failed,
                   "ready": sum(1 for p in active if pod_ready(p)),
                   "conditions": conditions})
    for key in ("active", "succeeded", "failed", "conditions"):
        if not status[key]:
            del status[key]
    set_status(store, store.get(store.type_of(job), job["metadata"]["namespace"],
                                job["metadata"]["name"]), status)


def _backoff_over(children: list[Obj], failed: int, backoff_s: float) -> bool:
    """Failed pods are replaced after base * 2^(failures-1) seconds, capped at 10 s."""
    if not failed:
        return True
    finished = [s.get("state", {}).get("terminated", {}).get("finishedAt")
                for p in children for s in (p.get("status") or {}).get("containerStatuses") or []]
    finished_at = max((f for f in finished if f), default=None)
    if finished_at is None:
        return True
    then = time.mktime(time.strptime(finished_at, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    return time.time() - then >= min(10.0, backoff_s * 2 ** (failed - 1))


# ---- Services -----------------------------------------------------------------------------
def reconcile_service(store: Store, svc: Obj) -> None:
    """Endpoints and one EndpointSlice listing the selected pods' IPs."""
    selector = (svc.get("spec") or {}).get("selector")
    if not selector or svc["metadata"].get("deletionTimestamp"):
        return
    ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
    members = [p for p in store.list_objects(pods(store), ns)
               if labels_match_selector(p["metadata"].get("labels") or {},
                                        {"matchLabels": selector})
               and (p.get("status") or {}).get("podIP") and not terminal(p)]
    ready = [p for p in members if pod_ready(p) and not p["metadata"].get("deletionTimestamp")]
    not_ready = [p for p in members if p not in ready]
    first = members[0] if members else None
    ports = [_endpoint_port(port, first) for port in (svc.get("spec") or {}).get("ports") or []]

    def address(pod: Obj) -> dict[str, Any]:
        return {"ip": pod["status"]["podIP"], "nodeName": pod["spec"].get("nodeName"),
                "targetRef": {"kind": "Pod", "namespace": ns, "name": pod["metadata"]["name"],
                              "uid": pod["metadata"]["uid"]}}

    subset: dict[str, Any] = {"ports": ports}
    if ready:
        subset["addresses"] = [address(p) for p in ready]
    if not_ready:
        subset["notReadyAddresses"] = [address(p) for p in not_ready]
    meta = {"name": name, "labels": dict(svc["metadata"].get("labels") or {}),
            "ownerReferences": [owner_ref(svc) | {"controller": False}]}
    _put(store, _t(store, "", "endpoints"), ns,
         {"metadata": meta, "subsets": [subset] if members else []})
    slice_meta = {"name": f"{name}-{svc['metadata']['uid'][:5]}", "ownerReferences":
                  [owner_ref(svc)], "labels": {
                      **(svc["metadata"].get("labels") or {}),
                      "kubernetes.io/service-name": name,
                      "endpointslice.kubernetes.io/managed-by": "devcluster"}}
    endpoints = [{"addresses": [p["status"]["podIP"]], "nodeName": p["spec"].get("nodeName"),
                  "conditions": {"ready": p in ready, "serving": pod_ready(p),
                                 "terminating": bool(p["metadata"].get("deletionTimestamp"))},
                  "targetRef": address(p)["targetRef"]} for p in members]
    _put(store, store.type_for("discovery.k8s.io", "v1", "endpointslices"), ns,
         {"metadata": slice_meta, "addressType": "IPv4", "endpoints": endpoints,
          "ports": ports})


def _endpoint_port(port: dict[str, Any], pod: Obj | None) -> dict[str, Any]:
    target = port.get("targetPort", port.get("port"))
    if isinstance(target, str) and pod is not None:
        for container in pod["spec"].get("containers") or []:
            for cport in container.get("ports") or []:
                if cport.get("name") == target:
                    target = cport.get("containerPort")
    result = {"port": target, "protocol": port.get("protocol", "TCP")}
    if port.get("name"):
        result["name"] = port["name"]
    return result


def _put(store: Store, rt: ResourceType, ns: str, body: Obj) -> None:
    existing = store.find(rt, ns, body["metadata"]["name"])
    if existing is None:
        store.create(rt, ns, body)
        return
    merged = dict(existing)
    merged.update({k: v for k, v in body.items() if k != "metadata"})
    merged["metadata"] = dict(existing["metadata"], **body["metadata"])
    if merged != existing:
        store.update(rt, ns, body["metadata"]["name"], merged)


# ---- scheduling ----------------------------------------------------------------------------
def quantity(text: Any) -> float:
    """Kubernetes quantities: ``500m``, ``2``, ``128Mi``, ``1G``."""
    value = str(text)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
             "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    for suffix in sorted(units, key=len, reverse=True):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * units[suffix]
    return float(value)


def pod_requests(pod: Obj) -> dict[str, float]:
    total: dict[str, float] = {}
    for container in (pod.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        wanted = resources.get("requests") or resources.get("limits") or {}
        for name, amount in wanted.items():
            total[name] = total.get(name, 0.0) + quantity(amount)
    return total


def tolerates(pod: Obj, taint: dict[str, Any]) -> bool:
    for tol in (pod.get("spec") or {}).get("tolerations") or []:
        if tol.get("effect") and tol.get("effect") != taint.get("effect"):
            continue
        if tol.get("operator") == "Exists" and (not tol.get("key") or
                                                tol.get("key") == taint.get("key")):
            return True
        if tol.get("key") == taint.get("key") and tol.get("value", "") == taint.get("value", ""):
            return True
    return False


def _affinity_ok(pod: Obj, node: Obj) -> bool:
    labels = node["metadata"].get("labels") or {}
    spec = pod.get("spec") or {}
    if any(labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
        return False
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution")
    if not required:
        return True
    fields = {"metadata.name": node["metadata"]["name"]}
    return any(
        all(expression_matches(labels, e) for e in term.get("matchExpressions") or []) and
        all(expression_matches(fields, e) for e in term.get("matchFields") or [])
        for term in required.get("nodeSelectorTerms") or [])


def _preference(pod: Obj, node: Obj) -> int:
    labels = node["metadata"].get("labels") or {}
    preferred = (((pod.get("spec") or {}).get("affinity") or {}).get("nodeAffinity") or {}).get(
        "preferredDuringSchedulingIgnoredDuringExecution") or []
    return sum(int(p.get("weight", 1)) for p in preferred
               if all(expression_matches(labels, e) for e in
                      (p.get("preference") or {}).get("matchExpressions") or []))


def schedule(store: Store, pod: Obj) -> None:
    """Bind one unscheduled pod, or record why nothing fits."""
    nodes = store.list_objects(_t(store, "", "nodes"))
    bound = [p for p in store.list_objects(pods(store)) if p["spec"].get("nodeName")
             and not terminal(p)]
    reasons: dict[str, int] = {}
    fits = []
    for node in nodes:
        why = _unfit(pod, node, [p for p in bound
                                 if p["spec"]["nodeName"] == node["metadata"]["name"]])
        if why:
            reasons[why] = reasons.get(why, 0) + 1
        else:
            fits.append(node)
    ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    if fits:
        load = {n["metadata"]["name"]: sum(1 for p in bound if p["spec"]["nodeName"] ==
                                           n["metadata"]["name"]) for n in fits}
        best = max(fits, key=lambda n: (_preference(pod, n), -load[n["metadata"]["name"]]))
        node_name = best["metadata"]["name"]
        store.patch(pods(store), ns, name, MERGE, {"spec": {"nodeName": node_name}})
        record_event(store, pod, "Scheduled", f"Successfully assigned {ns}/{name} to "
                     f"{node_name}", "default-scheduler")
        return
    message = f"0/{len(nodes)} nodes are available: " + ", ".join(
        f"{count} {why}" for why, count in sorted(reasons.items())) + "."
    status = dict(pod.get("status") or {})
    status["phase"] = "Pending"
    previous = status.get("conditions")
    status["conditions"] = [condition("PodScheduled", False, "Unschedulable", message, previous)]
    if status["conditions"][0]["message"] != next(
            (c.get("message") for c in previous or [] if c.get("type") == "PodScheduled"), None):
        record_event(store, pod, "FailedScheduling", message, "default-scheduler", warning=True)
    set_status(store, pod, status)


def _unfit(pod: Obj, node: Obj, on_node: list[Obj]) -> str | None:
    if node["spec"].get("unschedulable"):
        return "node(s) were unschedulable"
    if not _affinity_ok(pod, node):
        return "node(s) didn't match Pod's node affinity/selector"
    for taint in node["spec"].get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(pod, taint):
            return f"node(s) had untolerated taint {{{taint.get('key')}: {taint.get('value', '')}}}"
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    used: dict[str, float] = {}
    for other in on_node:
        for res, amount in pod_requests(other).items():
            used[res] = used.get(res, 0.0) + amount
    for res, amount in pod_requests(pod).items():
        if amount and used.get(res, 0.0) + amount > quantity(allocatable.get(res, 0)):
            return f"Insufficient {res}"
    if len(on_node) + 1 > quantity(allocatable.get("pods", 110)):
        return "Too many pods"
    return None
