"""Server-side ``Table`` rendering for ``kubectl get`` (columns per kind, CRD printer columns)."""

from __future__ import annotations

import datetime
import re
from typing import Any

from splitdnn.devcluster.resources import ResourceType

Obj = dict[str, Any]


def age(timestamp: Any) -> str:
    if not isinstance(timestamp, str) or not timestamp:
        return "<unknown>"
    then = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.timezone.utc)
    seconds = int((datetime.datetime.now(datetime.timezone.utc) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def json_path(obj: Any, path: str) -> Any:
    """The subset of JSONPath printer columns use: ``.a.b``, ``[0]``, ``[?(@.k=="v")]``."""
    tokens = re.findall(r'\.([\w-]+)|\[(\d+)\]|\[\?\(@\.([\w-]+)\s*==\s*["\']([^"\']*)["\']\)\]',
                        path)
    value = obj
    for key, index, filter_key, filter_value in tokens:
        if key:
            value = value.get(key) if isinstance(value, dict) else None
        elif index:
            in_range = isinstance(value, list) and len(value) > int(index)
            value = value[int(index)] if in_range else None
        else:
            items = value if isinstance(value, list) else []
            matches = [item for item in items if isinstance(item, dict)
                       and str(item.get(filter_key)) == filter_value]
            value = matches[0] if matches else None
        if value is None:
            return None
    return value


def _pod_cells(pod: Obj) -> list[Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    containers = (pod.get("spec") or {}).get("containers") or []
    ready = sum(1 for s in statuses if s.get("ready"))
    phase = (pod.get("status") or {}).get("phase", "Pending")
    reason = phase
    for status in statuses:
        waiting = (status.get("state") or {}).get("waiting")
        terminated = (status.get("state") or {}).get("terminated")
        if waiting and waiting.get("reason"):
            reason = waiting["reason"]
        elif terminated and terminated.get("reason") and phase != "Running":
            reason = terminated["reason"]
    if pod["metadata"].get("deletionTimestamp"):
        reason = "Terminating"
    restarts = sum(int(s.get("restartCount", 0)) for s in statuses)
    return [f"{ready}/{len(containers)}", reason, restarts]


def _columns(rt: ResourceType) -> list[tuple[str, Any]]:
    if rt.printer_columns:
        return [(name, lambda o, p=path, t=kind: age(json_path(o, p)) if t == "date"
                 else json_path(o, p)) for name, path, kind in rt.printer_columns]
    if rt.kind == "Pod":
        return [("Ready", lambda o: _pod_cells(o)[0]), ("Status", lambda o: _pod_cells(o)[1]),
                ("Restarts", lambda o: _pod_cells(o)[2]),
                ("IP", lambda o: json_path(o, ".status.podIP") or "<none>"),
                ("Node", lambda o: json_path(o, ".spec.nodeName") or "<none>")]
    if rt.kind == "Deployment":
        return [("Ready", lambda o: f"{json_path(o, '.status.readyReplicas') or 0}/"
                                    f"{json_path(o, '.spec.replicas')}"),
                ("Up-to-date", lambda o: json_path(o, ".status.updatedReplicas") or 0),
                ("Available", lambda o: json_path(o, ".status.availableReplicas") or 0)]
    if rt.kind == "Job":
        return [("Status", _job_status),
                ("Completions", lambda o: f"{json_path(o, '.status.succeeded') or 0}/"
                                          f"{json_path(o, '.spec.completions')}")]
    if rt.kind == "Event":
        return [("Type", lambda o: o.get("type")), ("Reason", lambda o: o.get("reason")),
                ("Object", lambda o: f"{json_path(o, '.involvedObject.kind')}/"
                                     f"{json_path(o, '.involvedObject.name')}".lower()),
                ("Message", lambda o: o.get("message"))]
    if rt.kind == "Node":
        return [("Status", lambda o: "Ready" if json_path(
                    o, '.status.conditions[?(@.type=="Ready")].status') == "True" else "NotReady"),
                ("Version", lambda o: json_path(o, ".status.nodeInfo.kubeletVersion"))]
    return []


def _job_status(job: Obj) -> str:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed"):
            return str(cond["type"])
    return "Running"


def table(rt: ResourceType, objs: list[Obj], resource_version: str, full: bool) -> Obj:
    """A ``meta.k8s.io/v1`` Table of ``objs``."""
    columns = _columns(rt)
    definitions = [{"name": "Name", "type": "string", "format": "name", "description": "",
                    "priority": 0}]
    definitions += [{"name": name, "type": "string", "format": "", "description": "",
                     "priority": 0} for name, _ in columns]
    with_age = not rt.printer_columns
    if with_age:
        definitions.append({"name": "Age", "type": "date", "format": "", "description": "",
                            "priority": 0})
    rows = []
    for obj in objs:
        cells = [obj["metadata"]["name"]]
        cells += [_cell(fn(obj)) for _, fn in columns]
        if with_age:
            cells.append(age(obj["metadata"].get("creationTimestamp")))
        row_obj = obj if full else {"kind": "PartialObjectMetadata",
                                    "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}
        rows.append({"cells": cells, "object": row_obj})
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": resource_version},
            "columnDefinitions": definitions, "rows": rows}


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return str(value)
    return value
