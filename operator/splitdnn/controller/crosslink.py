"""CrossLink handler: validate, train the links in a Job, deploy the cross path, route.

One pass (run on every change and by a 3 s timer, each step idempotent and keyed by what it
depends on):

1. **Validate**: the CRD schema and CEL rules; both DNNServices exist in the namespace and
   serve torchvision models (links are trained through torch modules); the data source is
   one the training Job reads; no service reaches itself through a cycle of CrossLinks.
   → ``Stalled`` naming the field.
2. **Train** (``LinksTrained``): a Job runs ``splitdnn code-train`` (with ``--path``, or the
   search of paper 000 when the spec asks for one); the controller reads the JSON line from
   the Job pod's log, as the DNNService analysis does, and stores the links in the
   ConfigMap ``<crosslink>-links-<key>`` (binaryData, size-bounded). The path's block counts are
   checked against the models there: a Job that fails on bad input stalls naming the field.
3. **Deploy** (``PathDeployed``): head, cross and tail stage Deployments + headless Services
   (``crosslink_children``), the entry Service the local gateway sends to. A new path (new
   training key or placement) comes up beside the deployed one; the entry moves to it once
   its stages are ready, and the old stages go after the SplitPlan rollout's drain time.
4. **Route** (``Routed``): the SplitPlan rollout gives the local service's gateway the
   cross-path options (``crosslink_children.gateway_cross_args``) once ``PathDeployed`` is
   True; Ready when that gateway runs them.

Waiting raises ``events.Waiting``, an impossible spec ``events.Stalled`` (a Warning Event once
per cause); both are written into the conditions first, and the handlers in ``operator.py``
log them once per change instead of as errors. Events per step.
"""

from __future__ import annotations

import json
import time

import kopf

from splitdnn.api import validate_manifest
from splitdnn.controller import children, conditions
from splitdnn.controller import crosslink_children as xc
from splitdnn.controller.config import OperatorConfig
from splitdnn.controller.kube import Kube, Obj, adopt
from splitdnn.controller.splitplan import DRAIN_SECONDS, active_plan, deployment_ready
from splitdnn.controller.status_pass import StatusPass


def failed_field(log: str, local_model: str) -> str:
    """The spec field a failed training Job's error is about (``local_model``: the local
    service's model source, named by a block-count error about it)."""
    text = log.lower()
    if "--data-sha256" in text:
        return "spec.training.data.sha256"
    if "--data" in text:
        return "spec.training.data.source"
    if "--path" in text or "path [" in text:
        return "spec.path"
    if "blocks:" in text:
        return "spec.localBlocks" if f"blocks: {local_model.lower()} " in text \
            else "spec.hostBlocks"
    if "--link" in text or "--width" in text or "link " in text:
        return "spec.link"
    return "spec.training"


class Reconcile(StatusPass):
    """One pass over one CrossLink; ``status`` collects what to write."""

    kind = "CrossLink"

    # ---- the pass --------------------------------------------------------------------------
    def run(self) -> None:
        local, host = self.validate()
        summary, key = self.links(local, host)
        self.status.update(path=xc.readable_path(summary["path"]), accuracy=summary["accuracy"],
                           avgAccuracy=summary["avg_accuracy"],
                           throughputGain=summary["throughput_gain"], reward=summary["reward"],
                           trainings=summary["trainings"], links=xc.links_name(self.name, key))
        self.deploy(summary, key, local, host)
        self.route(local)

    def validate(self) -> tuple[Obj, Obj]:
        errors = validate_manifest(dict(self.body))
        if errors:
            raise self.stall("InvalidSpec", "; ".join(str(e) for e in errors))
        services = {}
        for field in ("localService", "hostService"):
            name = self.spec[field]
            service = self.kube.get("DNNService", self.namespace, name)
            if service is None:
                raise self.wait("ServiceMissing", f"spec.{field}: no DNNService {name!r} in "
                                                  f"namespace {self.namespace}")
            services[field] = service
        local, host = services["localService"], services["hostService"]
        cycle = xc.link_cycle(self.kube.list("CrossLink", self.namespace), self.body)
        if cycle:
            raise self.stall("LinkCycle", f"spec.hostService: the CrossLinks form a cycle "
                                          f"{' -> '.join(cycle)}; a service cannot borrow its "
                                          "own blocks")
        try:
            xc.training_args(self.spec, local, host)
        except xc.CrossLinkSpecError as error:
            raise self.stall("InvalidSpec", str(error)) from error
        return local, host

    def links(self, local: Obj, host: Obj) -> tuple[Obj, str]:
        """The trained links' summary (from the ConfigMap, or from the Job once it is done)."""
        key = xc.training_key(self.spec, local, host)
        stored = self.kube.get("ConfigMap", self.namespace, xc.links_name(self.name, key))
        if stored and stored["metadata"].get("labels", {}).get(xc.KEY_LABEL) == key:
            try:
                summary = xc.stored_links(stored)
            except xc.CrossLinkSpecError as error:
                raise self.stall("LinksCorrupt", str(error)) from error
            self.step("LinksTrained", True, "Trained",
                      f"path {summary['path']}: accuracy {summary['accuracy']:.4f}")
            return summary, key
        image = (local["spec"].get("runtime") or {}).get("image") or self.config.image_cpu
        job = adopt(xc.build_training_job(self.body, local, host, image), self.body)
        result = self.run_job(job, str(local["spec"]["model"]["source"]))
        try:
            configmap = xc.build_links_configmap(self.body, result, key)
        except xc.CrossLinkSpecError as error:
            self.step("LinksTrained", False, "LinksTooLarge", str(error))
            raise self.stall("LinksTooLarge", str(error)) from error
        self.kube.apply(adopt(configmap, self.body))
        summary = xc.stored_links(configmap)
        kopf.info(self.event_target, reason="LinksTrained",
                  message=f"path {summary['path']}: accuracy {summary['accuracy']:.4f}, "
                          f"reward {summary['reward']:.1f}, {summary['trainings']} trained")
        self.step("LinksTrained", True, "Trained",
                  f"path {summary['path']}: accuracy {summary['accuracy']:.4f}")
        return summary, key

    def run_job(self, job: Obj, local_model: str) -> Obj:
        """Start the training Job (once); its JSON result once it completed."""
        name = job["metadata"]["name"]
        existing = self.kube.get("Job", self.namespace, name)
        if existing is None:
            self.kube.apply(job)
            kopf.info(self.event_target, reason="JobStarted", message=f"training: {name}")
            existing = job
        state, output = self.job_output(existing)
        if state == "Failed":
            tail = output.strip().splitlines()[-3:]
            message = f"training job {name} failed: {' | '.join(tail) or 'no output'}"
            if self.failed_temporarily(existing):
                self.step("LinksTrained", None, "DownloadFailed", message)
                raise self.retry_later(existing, "DownloadFailed", message)
            self.step("LinksTrained", False, "TrainingFailed", message)
            raise self.stall("TrainingFailed", f"{failed_field(output, local_model)}: {message}")
        if state is None:
            self.step("LinksTrained", None, "Training", f"training job {name} running")
            raise self.wait("Training", f"training the links in job {name}")
        line = next((ln for ln in reversed(output.splitlines()) if ln.startswith("{")), None)
        if line is None:
            raise self.stall("TrainingFailed", f"spec.training: job {name} printed no JSON "
                                               "result")
        result: Obj = json.loads(line)
        return result

    def image(self, service: Obj) -> str:
        return str((service["spec"].get("runtime") or {}).get("image") or self.config.image_cpu)

    def deploy(self, summary: Obj, key: str, local: Obj, host: Obj) -> None:
        """Apply the three stages (tail first: each needs the next one's name) and the entry."""
        plan_name = active_plan(self.kube, host)
        host_plan = self.kube.get("SplitPlan", self.namespace, plan_name)
        placements = xc.stage_placements(summary["path"], local, host, host_plan)
        on_host = len(xc.readable_path(summary["path"])) == 4
        deployments: dict[str, Obj] = {}
        next_host = None
        for stage in reversed(xc.STAGES):
            service = host if stage == "cross" and on_host else local  # whose runtime image
            deployment = adopt(xc.build_cross_deployment(
                self.body, stage, summary, key, local, host, placements[stage], next_host,
                self.image(service), self.config), self.body)
            self.kube.apply(adopt(xc.build_cross_service(deployment, self.config), self.body))
            deployments[stage] = self.kube.apply(deployment)
            next_host = children.stage_host(deployment["metadata"]["name"], self.namespace)
        names = [deployments[s]["metadata"]["name"] for s in xc.STAGES]
        current = {*names, xc.links_name(self.name, key)}
        ready = [s for s in xc.STAGES if deployment_ready(deployments[s])]
        if len(ready) < len(xc.STAGES):
            self.stages_starting(len(ready))
        switched = self.apply_entry(deployments["head"])
        self.status["stages"] = names
        old = self.old_stages(current)
        if old and time.time() - switched < DRAIN_SECONDS:
            raise self.wait("Draining", "the gateway moves to the new cross path; the old "
                                        "stages drain")
        for kind, name in old:
            self.kube.delete(kind, self.namespace, name)
            kopf.info(self.event_target, reason="StageRemoved", message=f"{kind} {name} "
                                                                        "(replaced)")
        if not conditions.is_true(self.conditions, "PathDeployed"):
            kopf.info(self.event_target, reason="PathDeployed",
                      message=f"cross path {' -> '.join(names)}")
        self.step("PathDeployed", True, "Deployed", " -> ".join(names))

    def stages_starting(self, ready: int) -> None:
        """Wait for new stages; a path already deployed keeps serving (make-before-break)."""
        message = f"cross path: {ready}/{len(xc.STAGES)} new stages ready"
        if conditions.is_true(self.conditions, "PathDeployed"):
            self.step("PathDeployed", True, "Replacing", f"the deployed path serves; {message}")
        else:
            self.step("PathDeployed", False, "StagesStarting", message)
        raise self.wait("StagesStarting", message)

    def apply_entry(self, head: Obj) -> float:
        """Point the entry Service at the ready head; when it was switched (unix time)."""
        name = xc.entry_name(self.name)
        current = self.kube.get("Service", self.namespace, name)
        labels = head["spec"]["selector"]["matchLabels"]
        switched = ((current or {}).get("metadata", {}).get("annotations") or {}).get(
            children.SWITCHED_AT_ANNOTATION)
        if current is None or current["spec"].get("selector") != labels or switched is None:
            switched = f"{time.time():.3f}"
        entry = xc.build_entry_service(self.body, head, self.config)
        entry["metadata"]["annotations"] = {children.SWITCHED_AT_ANNOTATION: switched}
        self.kube.apply(adopt(entry, self.body))
        return float(switched)

    def old_stages(self, current: set[str]) -> list[tuple[str, str]]:
        """Stages and links of an earlier path or placement (a new training key makes new
        names)."""
        stage = f"{xc.CROSSLINK_LABEL}={self.name},splitdnn.io/cross-stage"
        links = f"{xc.CROSSLINK_LABEL}={self.name},{xc.KEY_LABEL}"
        return [(kind, obj["metadata"]["name"])
                for kind, selector in (("Deployment", stage), ("Service", stage),
                                       ("ConfigMap", links))
                for obj in self.kube.list(kind, self.namespace, selector)
                if obj["metadata"]["name"] not in current
                and not obj["metadata"].get("deletionTimestamp")]

    def route(self, local: Obj) -> None:
        """Ready once the local gateway runs with this cross path's options."""
        local_name = local["metadata"]["name"]
        wanted = xc.gateway_cross_args([{**self.body, "status": {"conditions": self.conditions}}],
                                       local_name, self.namespace, self.config)
        gateway = self.kube.get("Deployment", self.namespace, children.gateway_name(local_name))
        args = [] if gateway is None else \
            gateway["spec"]["template"]["spec"]["containers"][0].get("args") or []
        if args[-len(wanted):] != wanted or not deployment_ready(gateway):
            self.step("Routed", False, "GatewayUpdating",
                      f"waiting for the gateway of {local_name} to route through the path")
            raise self.wait("GatewayUpdating", f"cross path deployed; gateway of {local_name} "
                                               "rolling out with it")
        share = xc.offload_share(self.spec)
        threshold = self.spec.get("offloadThresholdInFlight", 0)
        message = (f"gateway of {local_name} sends {share:.0%} of its requests through the "
                   f"cross path while more than {threshold} are in flight")
        if not conditions.is_true(self.conditions, "Routed"):
            kopf.info(self.event_target, reason="Routing", message=message)
        self.step("Routed", True, "Routing", message)
        self.conditions = conditions.ready(self.conditions, "Offloading", message,
                                           self.generation)
        self.write()


def reconcile_crosslink(body: Obj, kube: Kube, config: OperatorConfig) -> None:
    Reconcile(body, kube, config).run()
