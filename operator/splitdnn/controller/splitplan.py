"""SplitPlan handler: per-stage Deployments and headless Services, the gateway, status.

Make-before-break: a stage's objects are named by a revision of what it runs, so a new
plan's stages come up beside the old ones. The gateway (one per DNNService, its URL stable)
sends to a headless *entry* Service; only once every new stage is ready does the entry
selector move to the new first stage, and the old stages are deleted after the gateway has
re-resolved the entry and the requests in flight have finished (the workers also drain on
SIGTERM).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import kopf

from splitdnn.api import PINNED_ANNOTATION
from splitdnn.controller import children, conditions, crosslink_children
from splitdnn.controller.config import OperatorConfig
from splitdnn.controller.discovery import matches, node_class
from splitdnn.controller.events import Stalled, Waiting
from splitdnn.controller.kube import Kube, Obj, adopt
from splitdnn.controller.metrics import measure
from splitdnn.controller.planner import placement

log = logging.getLogger("splitdnn.operator")
# after the entry Service switched: the gateway re-resolves it within 5 s, then in-flight
# requests finish on the old stages before those are removed
DRAIN_SECONDS = 12.0


def deployment_ready(deployment: Obj | None) -> bool:
    if deployment is None:
        return False
    status = deployment.get("status") or {}
    wanted = deployment["spec"].get("replicas", 1)
    return (status.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 1)
            and status.get("updatedReplicas", 0) == wanted
            and status.get("readyReplicas", 0) >= wanted
            and status.get("replicas", 0) == wanted)


def active_plan(kube: Kube, service: Obj) -> str:
    """The plan a service serves: its pinned plan if any, else its own."""
    meta = service["metadata"]
    pinned = sorted(p["metadata"]["name"] for p in kube.list("SplitPlan", meta["namespace"])
                    if (p["metadata"].get("annotations") or {}).get(PINNED_ANNOTATION) == "true"
                    and p["spec"]["serviceRef"]["name"] == meta["name"])
    return pinned[0] if pinned else str(meta["name"])


class PlanRollout:
    """One pass over one SplitPlan."""

    def __init__(self, body: Obj, kube: Kube, config: OperatorConfig) -> None:
        self.body, self.kube, self.config = body, kube, config
        self.event_target = kopf.Body(body)  # type: ignore[arg-type]  # Events attach to it
        self.meta = body["metadata"]
        self.name, self.namespace = self.meta["name"], self.meta["namespace"]
        self.generation = self.meta.get("generation")
        self.conditions: list[Obj] = list((body.get("status") or {}).get("conditions") or [])
        self.stages: list[Obj] = body["spec"]["stages"]

    def write(self, **fields: Any) -> None:
        self.kube.patch_status("SplitPlan", self.namespace, self.name, {
            **fields, "observedGeneration": self.generation, "conditions": self.conditions,
            "placement": placement(self.stages)})

    def wait(self, reason: str, message: str, phase: str = "Pending",
             **fields: Any) -> Waiting:
        self.conditions = conditions.set_condition(self.conditions, "RolledOut", False, reason,
                                                   message, self.generation)
        self.conditions = conditions.progressing(self.conditions, reason, message,
                                                 self.generation)
        self.write(phase=phase, **fields)
        return Waiting(message)

    def stall(self, reason: str, message: str) -> Stalled:
        self.conditions = conditions.set_condition(self.conditions, "RolledOut", False, reason,
                                                   message, self.generation)
        self.conditions = conditions.stalled(self.conditions, reason, message, self.generation)
        self.write(phase="Failed")
        return Stalled(message)

    def run(self) -> None:
        service_name = self.body["spec"]["serviceRef"]["name"]
        service = self.kube.get("DNNService", self.namespace, service_name)
        if service is None:
            raise self.wait("ServiceMissing", f"spec.serviceRef.name: no DNNService "
                                              f"{service_name!r} in {self.namespace}")
        if active_plan(self.kube, service) != self.name:
            raise self.wait("Superseded", "a pinned SplitPlan serves this DNNService")
        analysis_cm = self.kube.get("ConfigMap", self.namespace, f"{service_name[:50]}-analysis")
        if analysis_cm is None:
            raise self.wait("WaitingForAnalysis", "the model analysis is not ready yet")
        analysis = json.loads(analysis_cm["data"]["analysis.json"])
        self.check_layers(analysis, service["spec"].get("exits") or [])
        revisions = [children.stage_revision(service["spec"], s) for s in self.stages]
        names = [children.stage_object_name(self.name, s, r)
                 for s, r in zip(self.stages, revisions, strict=True)]
        deployments = self.apply_stages(service, revisions, names)
        statuses = self.stage_statuses(deployments)
        if not all(deployment_ready(d) for d in deployments):
            ready = sum(deployment_ready(d) for d in deployments)
            raise self.wait("StagesStarting", f"{ready}/{len(deployments)} stages ready",
                            "RollingOut", stages=statuses)
        switched = self.apply_entry(service, deployments[0])
        gateway = self.apply_gateway(service, analysis)
        if not deployment_ready(gateway):
            raise self.wait("GatewaySwitching", "stages ready; gateway rolling out",
                            "RollingOut", stages=statuses)
        old = self.old_stage_objects(service_name, set(names))
        if old and time.time() - switched < DRAIN_SECONDS:
            raise self.wait("Draining", "gateway switched to the new stages; old stages drain",
                            "RollingOut", stages=statuses)
        for kind, name in old:
            self.kube.delete(kind, self.namespace, name)
            kopf.info(self.event_target, reason="StageRemoved", message=f"{kind} {name} (replaced)")
        measured = self.gateway_latency(service_name, switched)
        self.conditions = conditions.set_condition(
            self.conditions, "RolledOut", True, "Serving",
            f"{len(self.stages)} stages serving: {placement(self.stages)}", self.generation)
        self.conditions = conditions.ready(self.conditions, "Serving", "all stages ready",
                                           self.generation)
        # null removes a stale figure (merge patch) when no request was measured lately
        self.write(phase="Serving", stages=statuses,
                   measured={"latencyMs": round(measured, 3) if measured else None})

    def check_layers(self, analysis: Obj, exits: list[Obj]) -> None:
        """Stages end at cut points, the last at the model's last layer or at its exit; an
        exit is one of the service's, after the stage's last layer."""
        last = len(analysis["layers"]) - 1
        ends = {s["last_layer"] for s in analysis["segments"]}
        for index, stage in enumerate(self.stages):
            if stage["layers"][1] not in ends:
                raise self.stall("InvalidStage", f"spec.stages[{index}].layers: layer "
                                                 f"{stage['layers'][1]} does not end a segment")
            exit_ = stage.get("exit")
            if exit_ is None:
                continue
            if exit_["index"] >= len(exits):
                raise self.stall("InvalidStage", f"spec.stages[{index}].exit.index: the service "
                                                 f"has {len(exits)} exits (spec.exits)")
            if exits[exit_["index"]]["afterLayer"] != stage["layers"][1]:
                raise self.stall("InvalidStage", f"spec.stages[{index}].exit.index: exit "
                                 f"{exit_['index']} follows layer "
                                 f"{exits[exit_['index']]['afterLayer']}, the stage ends at "
                                 f"{stage['layers'][1]}")
        final = self.stages[-1]
        if final["layers"][1] != last and final.get("exit") is None:
            raise self.stall("InvalidStage", f"spec.stages[{len(self.stages) - 1}].layers: the "
                                             f"last stage must end at layer {last} or at an exit")

    def image(self, service: Obj, stage: Obj) -> tuple[str, bool]:
        """The stage's runtime image, and whether its nodes have a GPU."""
        nodes = [n for n in self.kube.list("Node", None)
                 if matches(n, stage.get("nodeSelector") or {})]
        cls, selector = node_class(nodes[0], self.config.class_labels) if nodes else ("", {})
        gpu = bool(nodes) and self.config.gpu_class(cls, selector)
        runtime_image = (service["spec"].get("runtime") or {}).get("image")
        if runtime_image:
            return str(runtime_image), gpu
        return (self.config.image_for(cls, selector) if nodes else self.config.image_cpu), gpu

    def apply_stages(self, service: Obj, revisions: list[str], names: list[str]) -> list[Obj]:
        deployments = []
        for index, (stage, revision) in enumerate(zip(self.stages, revisions, strict=True)):
            next_host = (children.stage_host(names[index + 1], self.namespace)
                         if index + 1 < len(self.stages) else None)
            self.kube.apply(adopt(children.build_stage_service(
                self.body, stage, revision, self.config), self.body))
            image, gpu = self.image(service, stage)
            deployments.append(self.kube.apply(adopt(children.build_stage_deployment(
                self.body, stage, service["spec"], revision, next_host, image, self.config,
                gpu), self.body)))
        return deployments

    def apply_entry(self, service: Obj, first: Obj) -> float:
        """Point the entry Service at the first stage; when that was switched (unix time)."""
        labels = first["spec"]["selector"]["matchLabels"]
        name = children.entry_name(service["metadata"]["name"])
        current = self.kube.get("Service", self.namespace, name)
        annotations = (current or {}).get("metadata", {}).get("annotations") or {}
        switched = annotations.get(children.SWITCHED_AT_ANNOTATION)
        if current is None or current["spec"].get("selector") != labels or switched is None:
            switched = f"{time.time():.3f}"
            kopf.info(self.event_target, reason="Switched",
                      message=f"gateway entry -> {first['metadata']['name']}")
        self.kube.apply(adopt(children.build_entry_service(service, labels, self.config,
                                                           switched), service))
        return float(switched)

    def apply_gateway(self, service: Obj, analysis: Obj) -> Obj:
        source = service["spec"]["source"]
        tier = next((t for t in service["spec"].get("tiers") or []
                     if t["name"] == source["tier"]), None)
        selector = source.get("nodeSelector") or (tier or {}).get("nodeSelector") or {}
        gateway = children.build_gateway_deployment(
            service, self.name,
            children.stage_host(children.entry_name(service["metadata"]["name"]), self.namespace),
            children.gateway_manifest(analysis),
            (service["spec"].get("runtime") or {}).get("image") or self.config.image_cpu,
            self.config, selector, (tier or {}).get("tolerations") or [],
            crosslink_children.gateway_cross_args(self.kube.list("CrossLink", self.namespace),
                                                  service["metadata"]["name"], self.namespace,
                                                  self.config))
        self.kube.apply(adopt(children.build_gateway_service(service, self.config), service))
        return self.kube.apply(adopt(gateway, service))

    def old_stage_objects(self, service_name: str, current: set[str]) -> list[tuple[str, str]]:
        """Stage Deployments and Services of this service that the plan no longer has."""
        selector = f"splitdnn.io/service={service_name},splitdnn.io/stage"
        return [(kind, obj["metadata"]["name"]) for kind in ("Deployment", "Service")
                for obj in self.kube.list(kind, self.namespace, selector)
                if obj["metadata"]["name"] not in current
                and not obj["metadata"].get("deletionTimestamp")]

    def stage_statuses(self, deployments: list[Obj]) -> list[Obj]:
        """Readiness, nodes and the recent measurements of each stage (its pods are the
        stage revision's own, so no other plan's requests are in them)."""
        statuses = []
        for stage, deployment in zip(self.stages, deployments, strict=True):
            labels = deployment["spec"]["selector"]["matchLabels"]
            selector = ",".join(f"{k}={v}" for k, v in labels.items())
            pods = [p for p in self.kube.list("Pod", self.namespace, selector)
                    if (p.get("status") or {}).get("podIP")]
            urls = {p["metadata"]["name"]:
                    f"http://{p['status']['podIP']}:{self.config.metrics_port}/metrics"
                    for p in pods}
            latency, rate = measure(urls)
            entry: Obj = {"name": stage["name"], "replicas": stage.get("replicas", 1),
                          "readyReplicas": (deployment.get("status") or {}).get(
                              "readyReplicas", 0),
                          "nodes": sorted({p["spec"].get("nodeName", "") for p in pods} - {""})}
            if latency is not None:
                entry["latencyMs"] = round(latency, 3)
            if rate is not None:
                entry["bytesPerSecond"] = round(rate, 1)
            statuses.append(entry)
        return statuses

    def gateway_latency(self, service_name: str, since: float) -> float | None:
        """Mean end-to-end latency (ms) of the gateway's recent requests, those since
        ``since`` (the last switch) only: the gateway outlives plans."""
        selector = f"splitdnn.io/service={service_name},splitdnn.io/component=gateway"
        urls = {pod["metadata"]["name"]:
                f"http://{pod['status']['podIP']}:{self.config.gateway_port}/metrics"
                for pod in self.kube.list("Pod", self.namespace, selector)
                if (pod.get("status") or {}).get("podIP")}
        return measure(urls, since)[0]


def reconcile_plan(body: Obj, kube: Kube, config: OperatorConfig) -> None:
    PlanRollout(body, kube, config).run()
