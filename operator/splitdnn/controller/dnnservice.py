"""DNNService handler: validate, analyse, profile, plan, write the SplitPlan, report status.

Every step is idempotent and keyed by what it depends on, so the handler can run again at
any time (a timer does, to follow node and profile changes) and an operator restarted
mid-way picks up the same Jobs and ConfigMaps by name instead of creating duplicates.
Waiting on a Job raises ``kopf.TemporaryError``; a spec that cannot work raises
``kopf.PermanentError``; both are mirrored into the conditions first.
"""

from __future__ import annotations

import json
import logging
import time

import kopf

from splitdnn.api import PINNED_ANNOTATION, validate_manifest
from splitdnn.controller import children, conditions
from splitdnn.controller.config import OperatorConfig
from splitdnn.controller.discovery import HardwareClass, discover_classes, matches, node_class
from splitdnn.controller.kube import Kube, Obj, adopt
from splitdnn.controller.metrics import PLAN_SECONDS
from splitdnn.controller.planner import (
    Link,
    PlanTier,
    build_problem,
    link_from_profile,
    placement,
    plan_spec,
    segment_costs,
)
from splitdnn.planning import InfeasibleError, solve
from splitdnn.profiling import Profile, ProfileError, merge_profiles

log = logging.getLogger("splitdnn.operator")
PROFILE_LABEL = "splitdnn.io/profile"
CLASS_LABEL = "splitdnn.io/hardware-class"
LINK_LABEL = "splitdnn.io/link"
PROBLEM_ANNOTATION = "splitdnn.io/problem-hash"
GENERATION_ANNOTATION = "splitdnn.io/service-generation"
MAX_CONFIGMAP_BYTES = 900_000  # below the API's 1 MiB object limit


class Reconcile:
    """One pass over one DNNService; ``status`` collects what to write."""

    def __init__(self, body: Obj, kube: Kube, config: OperatorConfig) -> None:
        self.body, self.kube, self.config = body, kube, config
        self.event_target = kopf.Body(body)  # type: ignore[arg-type]  # Events attach to it
        self.meta = body["metadata"]
        self.name, self.namespace = self.meta["name"], self.meta["namespace"]
        self.spec: Obj = body["spec"]
        self.generation = self.meta.get("generation")
        self.conditions: list[Obj] = list((body.get("status") or {}).get("conditions") or [])
        self.status: Obj = {}

    # ---- status ----------------------------------------------------------------------------
    def step(self, type_: str, ok: bool | None, reason: str, message: str = "") -> None:
        self.conditions = conditions.set_condition(self.conditions, type_, ok, reason, message,
                                                   self.generation)

    def write(self) -> None:
        self.kube.patch_status("DNNService", self.namespace, self.name, {
            **self.status, "observedGeneration": self.generation,
            "conditions": self.conditions})

    def wait(self, reason: str, message: str, delay: float = 3) -> kopf.TemporaryError:
        self.conditions = conditions.progressing(self.conditions, reason, message,
                                                 self.generation)
        self.write()
        return kopf.TemporaryError(message, delay=delay)

    def stall(self, reason: str, message: str) -> kopf.PermanentError:
        self.conditions = conditions.stalled(self.conditions, reason, message, self.generation)
        self.write()
        kopf.warn(self.event_target, reason=reason, message=message)
        return kopf.PermanentError(message)

    # ---- the pass --------------------------------------------------------------------------
    def run(self) -> None:
        self.validate()
        analysis = self.analysis()
        tiers = self.tiers()
        self.status["hardwareClasses"] = sorted({t.hardware_class for t in tiers})
        pinned = self.pinned_plan()
        if pinned is not None:  # rolled out as written: nothing to profile or plan
            self.step("Planned", True, "Pinned",
                      f"SplitPlan {pinned['metadata']['name']} is pinned; not replanning")
            self.report(str(pinned["metadata"]["name"]))
            return
        profiles = self.profiles(analysis, tiers)
        links = self.links(tiers)
        plan_name = self.plan(analysis, tiers, profiles, links)
        self.report(plan_name)

    def validate(self) -> None:
        errors = validate_manifest(dict(self.body))
        unsupported = [("spec.model.weights", "weights are not fetched by the operator yet; "
                        "use random weights or an ONNX file")] if self.spec["model"].get(
                        "weights") else []
        if self.spec.get("exits"):
            unsupported.append(("spec.exits", "early exits are not rolled out by the operator "
                                              "yet"))
        messages = [str(e) for e in errors] + [f"{path}: {text}" for path, text in unsupported]
        if messages:
            raise self.stall("InvalidSpec", "; ".join(messages))

    def job_output(self, job: Obj) -> tuple[str | None, str]:
        """(state, log): state Complete, Failed or None while running."""
        conds = (job.get("status") or {}).get("conditions") or []
        state = next((c["type"] for c in conds if c.get("type") in ("Complete", "Failed")
                      and c.get("status") == "True"), None)
        if state is None:
            return None, ""
        pods = self.kube.list("Pod", self.namespace, f"job-name={job['metadata']['name']}")
        pods.sort(key=lambda p: (p.get("status") or {}).get("phase") == "Succeeded")
        return state, self.kube.pod_log(self.namespace, pods[-1]["metadata"]["name"]) \
            if pods else ""

    def run_job(self, job: Obj, what: str, field: str = "spec.model.source") -> Obj | None:
        """Start ``job`` (once) and return its JSON output once it completed; a failed Job
        stalls the service with ``field`` (what the user would change) and the log's end."""
        adopt(job, self.body)
        existing = self.kube.get("Job", self.namespace, job["metadata"]["name"])
        if existing is None:
            self.kube.apply(job)
            kopf.info(self.event_target, reason="JobStarted",
                      message=f"{what}: {job['metadata']['name']}")
            return None
        state, output = self.job_output(existing)
        if state == "Failed":
            tail = output.strip().splitlines()[-3:]
            raise self.stall(f"{what.title().replace(' ', '')}Failed",
                             f"{field}: {what} job {job['metadata']['name']} "
                             f"failed: {' | '.join(tail) or 'no output'}")
        if state is None:
            return None
        line = next((ln for ln in reversed(output.splitlines()) if ln.startswith("{")), None)
        if line is None:
            raise self.stall(f"{what.title().replace(' ', '')}Failed",
                             f"{what} job printed no JSON result")
        result: Obj = json.loads(line)
        return result

    def analysis(self) -> Obj:
        model = self.spec["model"]
        key = children.analysis_key(model)
        name = f"{self.name[:50]}-analysis"
        stored = self.kube.get("ConfigMap", self.namespace, name)
        if stored and stored["metadata"].get("labels", {}).get("splitdnn.io/analysis") == key:
            analysis: Obj = json.loads(stored["data"]["analysis.json"])
        else:
            image = (self.spec.get("runtime") or {}).get("image") or self.config.image_cpu
            result = self.run_job(children.build_analysis_job(self.body, image), "analysis")
            if result is None:
                self.step("ModelAnalyzed", None, "Analysing", "analysis job running")
                raise self.wait("Analysing", f"analysing {model['source']} in a job")
            analysis = result
            self.kube.apply(adopt(children.build_configmap(
                name, self.namespace, {"splitdnn.io/service": self.name,
                                       "splitdnn.io/analysis": key},
                {"analysis.json": json.dumps(analysis)}), self.body))
            kopf.info(self.event_target, reason="ModelAnalyzed",
                      message=f"{len(analysis['segments'])} segments")
        self.step("ModelAnalyzed", True, "Analysed",
                  f"{len(analysis['layers'])} layers, {len(analysis['segments'])} segments")
        self.status.update(segments=len(analysis["segments"]),
                           modelDigest=analysis.get("model_digest"))
        return analysis

    def tiers(self) -> list[PlanTier]:
        """The spec's tiers (or every discovered class) that have a Ready node now."""
        nodes = self.kube.list("Node", None)
        classes = discover_classes(nodes, self.config.class_labels)
        spec_tiers = self.spec.get("tiers") or [
            {"name": c.name, "nodeSelector": c.selector} for c in classes.values()]
        tiers = []
        for tier in spec_tiers:
            selector = tier.get("nodeSelector") or {}
            picked = [n for n in nodes if matches(n, selector)]
            ready = [n for n in picked if n["metadata"]["name"] in
                     {r for c in classes.values() for r in c.ready_nodes}]
            if not ready:
                continue
            hardware_class = node_class(ready[0], self.config.class_labels)[0]
            tiers.append(PlanTier(tier["name"], hardware_class, selector,
                                  tier.get("tolerations") or [], tier.get("maxReplicas", 1)))
        source = self.spec["source"]["tier"]
        if source not in {t.name for t in tiers}:
            known = ", ".join(t["name"] for t in spec_tiers)
            if not self.spec.get("tiers") and source not in {c for c in classes}:
                raise self.stall("UnknownTier", f"spec.source.tier: {source!r} is not a hardware "
                                                f"class of any node (classes: {known})")
            raise self.wait("NoReadyNodes", f"spec.source.tier: no Ready node in tier {source!r}",
                            delay=5)
        self.classes = classes
        return tiers

    def profiles(self, analysis: Obj, tiers: list[PlanTier]) -> dict[str, Profile]:
        """Merged profile per class; profiling Jobs for the classes lacking this model's data."""
        stored = self.kube.list("ConfigMap", self.namespace, f"{PROFILE_LABEL}=true")
        by_class: dict[str, list[Profile]] = {}
        for cm in stored:
            try:
                profile = Profile.from_dict(json.loads(cm["data"]["profile.json"]))
            except (KeyError, ValueError, ProfileError):
                continue
            by_class.setdefault(profile.hardware_class, []).append(profile)
        keys = {s["key"] for s in analysis["signatures"]}
        # a class has data for this model once a sampled profile's worth of its signatures
        # is measured there (other models' profiles may cover some of them)
        enough = max(1, int(self.config.profile_fraction * len(keys)))
        waiting: list[str] = []
        for tier in {t.hardware_class: t for t in tiers}.values():
            covered = set().union(*(p.entries for p in by_class.get(tier.hardware_class, [])))
            if len(keys & covered) >= enough:
                continue
            measured = self.profile_class(tier, self.classes[tier.hardware_class])
            if measured is None:
                waiting.append(tier.hardware_class)
            else:
                by_class.setdefault(tier.hardware_class, []).append(measured)
        if waiting:
            self.step("Profiled", None, "Profiling", f"profiling {', '.join(waiting)}")
            raise self.wait("Profiling", f"profiling jobs running for {', '.join(waiting)}")
        self.step("Profiled", True, "Profiled",
                  f"profiles for {', '.join(sorted(by_class))}; the rest predicted by CF")
        return {cls: merge_profiles(profiles) for cls, profiles in by_class.items()}

    def profile_class(self, tier: PlanTier, hardware_class: HardwareClass) -> Profile | None:
        image = (self.spec.get("runtime") or {}).get("image") or self.config.image_for(
            tier.hardware_class, tier.node_selector)
        job = children.build_profile_job(self.body, tier.hardware_class,
                                         hardware_class.ready_nodes[0], image, tier.tolerations,
                                         self.config)
        result = self.run_job(job, "profile")
        if result is None:
            return None
        text = bounded_profile(result)
        name = f"splitdnn-profile-{tier.hardware_class[:30]}-{children.digest(text)}"
        self.kube.apply(children.build_configmap(
            name, self.namespace, {PROFILE_LABEL: "true", CLASS_LABEL: tier.hardware_class},
            {"profile.json": text}))
        kopf.info(self.event_target, reason="Profiled",
                  message=f"{tier.hardware_class}: {len(result['entries'])} signatures")
        return Profile.from_dict(json.loads(text))

    def links(self, tiers: list[PlanTier]) -> dict[tuple[str, str], Link]:
        """Measured links between every two classes in use; netprofile Jobs for the rest."""
        by_class = {t.hardware_class: t for t in tiers}
        classes = sorted(by_class)
        stored = {(cm["metadata"]["labels"]["splitdnn.io/link-from"],
                   cm["metadata"]["labels"]["splitdnn.io/link-to"]): cm
                  for cm in self.kube.list("ConfigMap", self.namespace, f"{LINK_LABEL}=true")}
        links: dict[tuple[str, str], Link] = {}
        waiting = []
        for index, first in enumerate(classes):
            for second in classes[index + 1:]:
                cm = stored.get((first, second))
                if cm is not None:
                    links[(first, second)] = link_from_profile(json.loads(cm["data"]["link.json"]))
                    continue
                measured = self.measure_link(by_class[first], by_class[second])
                if measured is None:
                    waiting.append(f"{first}-{second}")
                else:
                    links[(first, second)] = measured
        if waiting:
            self.step("Profiled", None, "ProfilingLinks", f"measuring links {', '.join(waiting)}")
            raise self.wait("ProfilingLinks", f"netprofile jobs running for {', '.join(waiting)}")
        return links

    def measure_link(self, server: PlanTier, client: PlanTier) -> Link | None:
        """Start (once) the server and then the client netprofile Job; their result once done."""
        nodes = (self.classes[server.hardware_class].ready_nodes[0],
                 self.classes[client.hardware_class].ready_nodes[0])
        images = (self.config.image_for(server.hardware_class, server.node_selector),
                  self.config.image_for(client.hardware_class, client.node_selector))
        pair = (server.hardware_class, client.hardware_class)
        serve_job = children.build_netprofile_jobs(self.body, pair, *nodes, None, images,
                                                   (server.tolerations, client.tolerations))[0]
        tolerations = (server.tolerations, client.tolerations)
        probe_name = children.build_netprofile_jobs(self.body, pair, *nodes, "-", images,
                                                    tolerations)[1]["metadata"]["name"]
        client_job = self.kube.get("Job", self.namespace, probe_name)
        if client_job is None:
            pods = self.kube.list("Pod", self.namespace,
                                  f"job-name={serve_job['metadata']['name']}")
            ip = next((p["status"]["podIP"] for p in pods if (p.get("status") or {}).get(
                "phase") == "Running" and p["status"].get("podIP")), None)
            if ip is None:
                if self.kube.get("Job", self.namespace, serve_job["metadata"]["name"]) is None:
                    self.kube.apply(adopt(serve_job, self.body))
                return None
            client_job = children.build_netprofile_jobs(self.body, pair, *nodes, ip, images,
                                                        tolerations)[1]
        existing = self.kube.get("Job", self.namespace, client_job["metadata"]["name"])
        state, output = self.job_output(existing) if existing else (None, "")
        if state == "Failed":  # not fatal: plan with the configured link, say so
            message = (f"{pair[0]} <-> {pair[1]}: link measurement failed ("
                       f"{' | '.join(output.strip().splitlines()[-1:])[:300]}); using the "
                       f"configured {self.config.link_bandwidth_mbps} Mbit/s")
            kopf.warn(self.event_target, reason="LinkProfileFailed", message=message)
            return self.config.link_bandwidth_mbps, self.config.link_latency_ms
        result = self.run_job(client_job, "link profile", "spec.tiers")
        if result is None:
            return None
        self.kube.apply(children.build_configmap(
            f"splitdnn-link-{children.digest(*pair)}", self.namespace,
            {LINK_LABEL: "true", "splitdnn.io/link-from": pair[0],
             "splitdnn.io/link-to": pair[1]}, {"link.json": json.dumps(result)}))
        link = link_from_profile(result)
        kopf.info(self.event_target, reason="LinkProfiled",
                  message=f"{pair[0]} <-> {pair[1]}: {link[0]:.1f} Mbit/s, {link[1]:.2f} ms")
        return link

    def pinned_plan(self) -> Obj | None:
        plans = self.kube.list("SplitPlan", self.namespace)
        pinned = [p for p in plans if (p["metadata"].get("annotations") or {}).get(
            PINNED_ANNOTATION) == "true" and p["spec"]["serviceRef"]["name"] == self.name]
        return min(pinned, key=lambda p: p["metadata"]["name"]) if pinned else None

    def plan(self, analysis: Obj, tiers: list[PlanTier], profiles: dict[str, Profile],
             links: dict[tuple[str, str], Link]) -> str:
        started = time.perf_counter()
        costs = segment_costs(analysis, profiles, sorted({t.hardware_class for t in tiers}))
        link = (self.config.link_bandwidth_mbps, self.config.link_latency_ms)
        problem = build_problem(analysis, tiers, costs, self.spec, link, links)
        problem_hash = children.digest(problem.model_dump(mode="json"), length=16)
        current = self.kube.get("SplitPlan", self.namespace, self.name)
        annotations = (current or {}).get("metadata", {}).get("annotations") or {}
        manual = (self.spec.get("replan") or {}).get("mode") == "Manual"
        same_generation = annotations.get(GENERATION_ANNOTATION) == str(self.generation)
        if current and (annotations.get(PROBLEM_ANNOTATION) == problem_hash
                        or (manual and same_generation)):
            return self.name
        objective = (self.spec.get("objective") or {}).get("kind", "latency")
        try:
            result = solve(problem, objective)
        except InfeasibleError as error:
            raise self.stall("Infeasible", f"spec.slo: {error}") from error
        PLAN_SECONDS.observe(time.perf_counter() - started)
        spec = plan_spec(self.name, result, problem, analysis, tiers)
        self.kube.apply(adopt({
            "apiVersion": "splitdnn.io/v1alpha1", "kind": "SplitPlan",
            "metadata": {"name": self.name, "namespace": self.namespace,
                         "labels": {**children.MANAGED_BY, "splitdnn.io/service": self.name},
                         "annotations": {PROBLEM_ANNOTATION: problem_hash,
                                         GENERATION_ANNOTATION: str(self.generation)}},
            "spec": spec}, self.body))
        message = f"{placement(spec['stages'])}, predicted {spec['predicted']['latencyMs']} ms"
        kopf.info(self.event_target, reason="Planned", message=message)
        self.step("Planned", True, "Planned", message)
        return self.name

    def report(self, plan_name: str) -> None:
        plan = self.kube.get("SplitPlan", self.namespace, plan_name)
        if plan is None:
            raise self.wait("Planning", f"waiting for SplitPlan {plan_name}")
        plan_status = plan.get("status") or {}
        self.status.update(
            splitPlan=plan_name, stages=len(plan["spec"]["stages"]),
            url=children.gateway_url(self.name, self.namespace, self.config),
            predictedLatencyMs=(plan["spec"].get("predicted") or {}).get("latencyMs"),
            measuredLatencyMs=(plan_status.get("measured") or {}).get("latencyMs"))
        self.status = {k: v for k, v in self.status.items() if v is not None}
        rolled = conditions.get_condition(plan_status.get("conditions"), "RolledOut")
        if rolled and rolled["status"] == "True":
            self.step("RolledOut", True, rolled["reason"], rolled.get("message", ""))
            self.conditions = conditions.ready(self.conditions, "Serving",
                                               f"serving at {self.status['url']}",
                                               self.generation)
            self.write()
            return
        message = rolled.get("message", "") if rolled else "rollout not started"
        self.step("RolledOut", False, "RollingOut", message)
        raise self.wait("RollingOut", f"SplitPlan {plan_name}: {message}")


def bounded_profile(profile: Obj) -> str:
    """Compact JSON of a profile, dropping the least-sampled entries beyond the size bound."""
    text = json.dumps(profile, separators=(",", ":"))
    entries = dict(profile["entries"])
    while len(text) > MAX_CONFIGMAP_BYTES and entries:
        del entries[min(entries, key=lambda key: entries[key].get("samples", 0))]
        text = json.dumps({**profile, "entries": entries}, separators=(",", ":"))
    return text


def reconcile_service(body: Obj, kube: Kube, config: OperatorConfig) -> None:
    Reconcile(body, kube, config).run()


def delete_service(body: Obj, kube: Kube) -> None:
    """Remove children not owned by the service (stages of pinned plans); GC does the rest."""
    meta = body["metadata"]
    selector = f"splitdnn.io/service={meta['name']}"
    for kind in ("Deployment", "Service", "Job", "ConfigMap"):
        for obj in kube.list(kind, meta["namespace"], selector):
            kube.delete(kind, meta["namespace"], obj["metadata"]["name"])
