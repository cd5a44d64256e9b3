"""DNNService handler: validate, analyse, profile, plan, write the SplitPlan, report status.

Every step is idempotent and keyed by what it depends on, so the handler can run again at
any time (a timer does, to follow node and profile changes) and an operator restarted
mid-way picks up the same Jobs and ConfigMaps by name instead of creating duplicates.
Waiting on a Job raises ``events.Waiting``; a spec that cannot work raises
``events.Stalled``; both are mirrored into the conditions first. Once a plan serves, the
measured latency is compared with its prediction on every pass (``drift``), and a lasting
drift plans again with the measured costs.
"""

from __future__ import annotations

import itertools
import json
import logging
import time

import kopf
from kubernetes.client.exceptions import ApiException

from splitdnn.api import PINNED_ANNOTATION, validate_manifest
from splitdnn.controller import children, conditions, drift
from splitdnn.controller.config import OperatorConfig
from splitdnn.controller.discovery import HardwareClass, discover_classes, matches, node_class
from splitdnn.controller.events import warn_once
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
from splitdnn.controller.status_pass import StatusPass
from splitdnn.planning import (
    InfeasibleError,
    PlanningError,
    PlanResult,
    Problem,
    Stage,
    evaluate,
    solve,
)
from splitdnn.profiling import Profile, ProfileError, merge_profiles

log = logging.getLogger("splitdnn.operator")
PROFILE_LABEL = "splitdnn.io/profile"
CLASS_LABEL = "splitdnn.io/hardware-class"
LINK_LABEL = "splitdnn.io/link"
LINK_DIRECTED_LABEL = "splitdnn.io/link-directed"  # from = the sending class
LINK_SERVER_LISTENING = "serving link measurements on"  # what `netprofile --serve` logs
PROBLEM_ANNOTATION = "splitdnn.io/problem-hash"
GENERATION_ANNOTATION = "splitdnn.io/service-generation"
PLANNED_AT_ANNOTATION = "splitdnn.io/planned-at"
SCALE_ANNOTATION = "splitdnn.io/latency-scale"
PLAN_ANNOTATIONS = (PROBLEM_ANNOTATION, GENERATION_ANNOTATION, PLANNED_AT_ANNOTATION,
                    SCALE_ANNOTATION)  # the operator's own, on the plans it writes
MAX_CONFIGMAP_BYTES = 900_000  # below the API's 1 MiB object limit


class Reconcile(StatusPass):
    """One pass over one DNNService; ``status`` collects what to write."""

    kind = "DNNService"

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
        messages = [str(e) for e in errors]
        if messages:
            raise self.stall("InvalidSpec", "; ".join(messages))

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
            message = (f"{field}: {what} job {job['metadata']['name']} failed: "
                       f"{' | '.join(tail) or 'no output'}")
            if self.failed_temporarily(existing):
                raise self.retry_later(existing, "DownloadFailed", message)
            raise self.stall(f"{what.title().replace(' ', '')}Failed", message)
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
        key = children.service_analysis_key(self.spec)
        name = f"{self.name[:50]}-analysis"
        stored = self.kube.get("ConfigMap", self.namespace, name)
        if stored and stored["metadata"].get("labels", {}).get("splitdnn.io/analysis") == key:
            analysis: Obj = json.loads(stored["data"]["analysis.json"])
        else:
            image = (self.spec.get("runtime") or {}).get("image") or self.config.image_cpu
            inputs = {"spec.model.weights": model.get("weights"),
                      "spec.exits": self.spec.get("exits"),
                      "spec.validation": self.spec.get("validation")}
            field = " or ".join(["spec.model.source", *(name for name, given in inputs.items()
                                                        if given)])
            result = self.run_job(children.build_analysis_job(self.body, image), "analysis",
                                  field)
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
        self.step("ModelAnalyzed", True, "Analysed", analysis_summary(analysis))
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
            raise self.wait("NoReadyNodes", f"spec.source.tier: no Ready node in tier {source!r}")
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
                                         self.config, self.config.gpu_class(
                                             tier.hardware_class, tier.node_selector))
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
        """Measured links between the classes in use, each direction on its own (uplinks and
        downlinks differ); netprofile Jobs for the rest, one measurement at a time so that
        they do not disturb each other (nor share a port on a host-network node)."""
        by_class = {t.hardware_class: t for t in tiers}
        stored = {(cm["metadata"]["labels"]["splitdnn.io/link-from"],
                   cm["metadata"]["labels"]["splitdnn.io/link-to"]): cm
                  for cm in self.kube.list("ConfigMap", self.namespace,
                                           f"{LINK_LABEL}=true,{LINK_DIRECTED_LABEL}=true")}
        links: dict[tuple[str, str], Link] = {}
        waiting = ""
        for pair in itertools.permutations(sorted(by_class), 2):
            cm = stored.get(pair)
            if cm is not None:
                links[pair] = link_from_profile(json.loads(cm["data"]["link.json"]))
                continue
            measured = self.measure_link(by_class[pair[0]], by_class[pair[1]])
            if measured is None:
                waiting = f"{pair[0]} -> {pair[1]}"
                break
            links[pair] = measured
        if waiting:
            self.step("Profiled", None, "ProfilingLinks", f"measuring the link {waiting}")
            raise self.wait("ProfilingLinks", f"netprofile jobs running for {waiting}")
        return links

    def measure_link(self, sender: PlanTier, receiver: PlanTier) -> Link | None:
        """The link from ``sender`` to ``receiver``: a ``netprofile --serve`` Job on a node
        of the receiver, then a client Job on a node of the sender sending it the large
        transfers (the replies are small); their result once done."""
        pair = (sender.hardware_class, receiver.hardware_class)
        nodes = (self.classes[receiver.hardware_class].ready_nodes[0],
                 self.classes[sender.hardware_class].ready_nodes[0])
        images = (self.config.image_for(receiver.hardware_class, receiver.node_selector),
                  self.config.image_for(sender.hardware_class, sender.node_selector))
        tolerations = (receiver.tolerations, sender.tolerations)
        serve_job = children.build_netprofile_jobs(self.body, pair, *nodes, None, images,
                                                   tolerations)[0]
        probe_name = children.build_netprofile_jobs(self.body, pair, *nodes, "-", images,
                                                    tolerations)[1]["metadata"]["name"]
        client_job = self.kube.get("Job", self.namespace, probe_name)
        if client_job is None:
            pods = self.kube.list("Pod", self.namespace,
                                  f"job-name={serve_job['metadata']['name']}")
            ip = next((p["status"]["podIP"] for p in pods if self.link_server_ready(p)), None)
            if ip is None:
                if self.kube.get("Job", self.namespace, serve_job["metadata"]["name"]) is None:
                    self.kube.apply(adopt(serve_job, self.body))
                return None
            client_job = children.build_netprofile_jobs(self.body, pair, *nodes, ip, images,
                                                        tolerations)[1]
        existing = self.kube.get("Job", self.namespace, client_job["metadata"]["name"])
        state, output = self.job_output(existing) if existing else (None, "")
        if state == "Failed":  # not fatal: plan with the configured link, say so (once)
            message = (f"{pair[0]} -> {pair[1]}: link measurement failed ("
                       f"{' | '.join(output.strip().splitlines()[-1:])[:300]}); using the "
                       f"configured {self.config.link_bandwidth_mbps} Mbit/s")
            warn_once(self.body, "LinkProfileFailed", message,
                      cause=client_job["metadata"]["name"])
            return self.config.link_bandwidth_mbps, self.config.link_latency_ms
        result = self.run_job(client_job, "link profile", "spec.tiers")
        if result is None:
            return None
        self.kube.apply(children.build_configmap(
            f"splitdnn-link-{children.digest('directed', *pair)}", self.namespace,
            {LINK_LABEL: "true", LINK_DIRECTED_LABEL: "true", "splitdnn.io/link-from": pair[0],
             "splitdnn.io/link-to": pair[1]}, {"link.json": json.dumps(result)}))
        link = link_from_profile(result)
        kopf.info(self.event_target, reason="LinkProfiled",
                  message=f"{pair[0]} -> {pair[1]}: {link[0]:.1f} Mbit/s, {link[1]:.2f} ms")
        return link

    def link_server_ready(self, pod: Obj) -> bool:
        """The netprofile server pod runs, has an IP and listens (its log says so: the
        client must not spend its reply timeout on a server still importing)."""
        status = pod.get("status") or {}
        if status.get("phase") != "Running" or not status.get("podIP"):
            return False
        try:
            text = self.kube.pod_log(self.namespace, pod["metadata"]["name"])
        except ApiException:
            return False
        return LINK_SERVER_LISTENING in text

    def pinned_plan(self) -> Obj | None:
        plans = self.kube.list("SplitPlan", self.namespace)
        pinned = [p for p in plans if (p["metadata"].get("annotations") or {}).get(
            PINNED_ANNOTATION) == "true" and p["spec"]["serviceRef"]["name"] == self.name]
        return min(pinned, key=lambda p: p["metadata"]["name"]) if pinned else None

    def plan(self, analysis: Obj, tiers: list[PlanTier], profiles: dict[str, Profile],
             links: dict[tuple[str, str], Link]) -> str:
        """Write the SplitPlan when the planning problem changed; else follow latency drift.

        The problem carries the latency factors (``splitdnn.io/latency-scale``) of the current
        plan, so a plan made for drift stays as long as nothing else changes.
        """
        started = time.perf_counter()
        costs = segment_costs(analysis, profiles, sorted({t.hardware_class for t in tiers}))
        current = self.kube.get("SplitPlan", self.namespace, self.name)
        scale = stored_scale(current, children.analysis_key(self.spec["model"]))
        problem = self.problem(analysis, tiers, costs, links, scale)
        annotations = (current or {}).get("metadata", {}).get("annotations") or {}
        manual = (self.spec.get("replan") or {}).get("mode") == "Manual"
        same_generation = annotations.get(GENERATION_ANNOTATION) == str(self.generation)
        if current and (annotations.get(PROBLEM_ANNOTATION) == problem_hash(problem, analysis)
                        or (manual and same_generation)):
            self.follow_drift(current, analysis, tiers, costs, links, scale)
            return self.name
        result = self.solve(problem)
        PLAN_SECONDS.observe(time.perf_counter() - started)
        if current and same_generation and runnable(current, tiers) and self.keep_plan(
                current, problem, analysis, result):
            return self.name
        self.write_plan(result, problem, analysis, tiers, scale, "Planned")
        self.status["drift"] = {"since": None, "checkedAt": None, "percent": None,
                                "message": "new plan"}
        return self.name

    def keep_plan(self, current: Obj, problem: Problem, analysis: Obj,
                  result: PlanResult) -> bool:
        """Hysteresis for replans not caused by a spec change, while the current plan can
        still run (profiles, links or nodes changed): not within ``minIntervalSeconds`` of
        the last plan, and only for a plan ``minImprovementPercent`` better than the current
        one under the new problem; a plan ending at another exit (another accuracy) is
        written at once. A plan kept for good takes the new problem's hash."""
        policy = drift.Policy.from_spec(self.spec.get("replan"))
        if plan_exit(current["spec"]["stages"]) != result.best.exit_index:
            return False  # another accuracy: the best feasible one is planned at once
        age = time.time() - planned_at(current)
        if age < policy.min_interval_seconds:
            self.step("Planned", True, "Holding",
                      f"the planning problem changed (profiles, links or nodes); the plan is "
                      f"{age:.0f} s old and replans are at least "
                      f"{policy.min_interval_seconds:g} s apart")
            return True
        objective = self.objective()
        now_figure = plan_figure(problem, analysis, current["spec"]["stages"], objective)
        best_figure = float(result.best.figures()[OBJECTIVE_FIGURES[objective]] or 0)
        if drift.improves(objective, now_figure, best_figure, policy.min_improvement_percent):
            return False
        annotations = current["metadata"].get("annotations") or {}
        self.kube.apply(adopt({
            "apiVersion": "splitdnn.io/v1alpha1", "kind": "SplitPlan",
            "metadata": {"name": self.name, "namespace": self.namespace,
                         "labels": {**children.MANAGED_BY, "splitdnn.io/service": self.name},
                         "annotations": {**{k: v for k, v in annotations.items()
                                            if k in PLAN_ANNOTATIONS},
                                         PROBLEM_ANNOTATION: problem_hash(problem, analysis)}},
            "spec": current["spec"]}, self.body))
        self.step("Planned", True, "Kept",
                  f"the planning problem changed; the best new plan ({objective} "
                  f"{best_figure:.4g}) is not {policy.min_improvement_percent:g}% better than "
                  f"the current one ({now_figure:.4g})")
        return True

    def problem(self, analysis: Obj, tiers: list[PlanTier], costs: dict[str, list[Obj]],
                links: dict[tuple[str, str], Link], scale: dict[str, float]) -> Problem:
        link = (self.config.link_bandwidth_mbps, self.config.link_latency_ms)
        return build_problem(analysis, tiers, drift.scaled_costs(costs, scale), self.spec,
                             link, links)

    def solve(self, problem: Problem) -> PlanResult:
        try:
            return solve(problem, self.objective())
        except InfeasibleError as error:
            raise self.stall("Infeasible", f"spec.slo: {error}") from error

    def objective(self) -> str:
        return str((self.spec.get("objective") or {}).get("kind", "latency"))

    def write_plan(self, result: PlanResult, problem: Problem, analysis: Obj,
                   tiers: list[PlanTier], scale: dict[str, float], reason: str,
                   why: str = "") -> None:
        """Apply the owned SplitPlan for ``result``, each stage with its block's digest."""
        spec = plan_spec(self.name, result, problem, analysis, tiers, self.spec.get("exits"))
        digests = self.block_digests(analysis, [stage["layers"] for stage in spec["stages"]])
        for stage in spec["stages"]:
            stage["blockSha256"] = digests[range_key(stage["layers"])]
        annotations = {PROBLEM_ANNOTATION: problem_hash(problem, analysis),
                       GENERATION_ANNOTATION: str(self.generation),
                       PLANNED_AT_ANNOTATION: f"{time.time():.0f}"}
        if scale:
            annotations[SCALE_ANNOTATION] = json.dumps(
                {"model": children.analysis_key(self.spec["model"]), "classes": scale},
                sort_keys=True)
        self.kube.apply(adopt({
            "apiVersion": "splitdnn.io/v1alpha1", "kind": "SplitPlan",
            "metadata": {"name": self.name, "namespace": self.namespace,
                         "labels": {**children.MANAGED_BY, "splitdnn.io/service": self.name},
                         "annotations": annotations},
            "spec": spec}, self.body))
        message = f"{placement(spec['stages'])}, predicted {spec['predicted']['latencyMs']} ms"
        kopf.info(self.event_target, reason=reason, message=f"{why}{message}")
        self.step("Planned", True, reason, f"{why}{message}")

    def block_digests(self, analysis: Obj, ranges: list[list[int]]) -> dict[str, str]:
        """sha256 of each stage's block (``FIRST-LAST`` -> digest), from the service's
        ``<service>-blocks`` ConfigMap, computed by a Job for the ranges it lacks."""
        key = children.analysis_key(self.spec["model"])
        name = f"{self.name[:50]}-blocks"
        stored = self.kube.get("ConfigMap", self.namespace, name)
        known: dict[str, str] = dict((stored or {}).get("data") or {}) if stored and stored[
            "metadata"].get("labels", {}).get("splitdnn.io/analysis") == key else {}
        missing = [r for r in dict.fromkeys(range_key(layers) for layers in ranges)
                   if r not in known]
        if not missing:
            return known
        image = (self.spec.get("runtime") or {}).get("image") or self.config.image_cpu
        result = self.run_job(children.build_digest_job(self.body, image, missing),
                              "block digests")
        if result is None:
            self.step("Planned", None, "DigestingBlocks", f"block digests of {missing}")
            raise self.wait("DigestingBlocks", f"computing the digests of blocks "
                                               f"{', '.join(missing)} in a job")
        known.update({k: str(v) for k, v in result["blocks"].items()})
        self.kube.apply(adopt(children.build_configmap(
            name, self.namespace, {"splitdnn.io/service": self.name,
                                   "splitdnn.io/analysis": key}, known), self.body))
        return known

    # ---- latency drift ---------------------------------------------------------------------
    def follow_drift(self, current: Obj, analysis: Obj, tiers: list[PlanTier],
                     costs: dict[str, list[Obj]], links: dict[tuple[str, str], Link],
                     scale: dict[str, float]) -> None:
        """Compare the measured latency with the plan's prediction (``drift.decide``) and,
        once a drift has lasted, plan with the measured costs; status ``drift`` says what
        was decided."""
        policy = drift.Policy.from_spec(self.spec.get("replan"))
        plan_status = current.get("status") or {}
        previous = (self.body.get("status") or {}).get("drift") or {}
        serving = plan_status.get("phase") == "Serving"
        seen = drift.Observation(
            now=time.time(), predicted_ms=(current["spec"].get("predicted") or {}).get(
                "latencyMs"),
            measured_ms=(plan_status.get("measured") or {}).get("latencyMs") if serving
            else None,
            planned_at=planned_at(current),
            since=conditions.parse_time(previous.get("since")),
            checked_at=conditions.parse_time(previous.get("checkedAt")))
        decision = drift.decide(policy, seen)
        since, checked, message = decision.since, seen.checked_at, decision.message
        if decision.action is drift.Action.EVALUATE:
            replanned, message = self.replan_for_drift(current, analysis, tiers, costs, links,
                                                       scale, seen, decision, policy)
            since, checked = (None, None) if replanned else (since, seen.now)
        self.status["drift"] = {
            "percent": None if decision.percent is None else round(decision.percent, 1),
            "since": conditions.format_time(since), "checkedAt": conditions.format_time(checked),
            "message": message[:1024]}

    def replan_for_drift(self, current: Obj, analysis: Obj, tiers: list[PlanTier],
                         costs: dict[str, list[Obj]], links: dict[tuple[str, str], Link],
                         scale: dict[str, float], seen: drift.Observation,
                         decision: drift.Decision, policy: drift.Policy) -> tuple[bool, str]:
        """Plan with the costs scaled by the measurements; write it only if it beats the
        current plan (under the same costs) by ``minImprovementPercent``."""
        stages = current["spec"]["stages"]
        new_scale = drift.class_scale(
            stages, (current.get("status") or {}).get("stages") or [],
            {t.name: t.hardware_class for t in tiers}, analysis, costs, scale,
            seen.predicted_ms, seen.measured_ms)
        problem = self.problem(analysis, tiers, costs, links, new_scale)
        objective = self.objective()
        try:
            result = solve(problem, objective)
        except InfeasibleError as error:
            return False, f"{decision.message}; no feasible plan with the measured costs: {error}"
        now_figure = plan_figure(problem, analysis, stages, objective)
        best = result.best.figures()
        best_figure = float(best[f"{OBJECTIVE_FIGURES[objective]}"] or 0)
        scales = ", ".join(f"{cls} x{value:g}" for cls, value in new_scale.items())
        same_exit = plan_exit(stages) == result.best.exit_index
        if same_exit and not drift.improves(objective, now_figure, best_figure,
                                            policy.min_improvement_percent):
            return False, (f"{decision.message}; kept the plan: with the measured costs "
                           f"({scales}) it has {objective} {now_figure:.4g}, the best plan "
                           f"{best_figure:.4g} (needs {policy.min_improvement_percent:g}% "
                           f"better)")
        why = f"latency drift {decision.percent:+.0f}%, measured costs {scales}: "
        self.write_plan(result, problem, analysis, tiers, new_scale, "LatencyDrift", why)
        return True, f"replanned: {objective} {now_figure:.4g} -> {best_figure:.4g}"

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


OBJECTIVE_FIGURES = {"latency": "latency_ms", "energy": "energy_mj",
                     "throughput": "throughput_rps"}


def analysis_summary(analysis: Obj) -> str:
    """``122 layers, 51 segments, 2 exit heads; accuracy 0.71 (exits 0.52, 0.64) on 300
    samples``: the ModelAnalyzed message."""
    text = f"{len(analysis['layers'])} layers, {len(analysis['segments'])} segments"
    if analysis.get("exits"):
        text += f", {len(analysis['exits'])} exit heads"
    accuracy = analysis.get("accuracy")
    if accuracy:
        exits = ", ".join(f"{value:.3g}" for value in accuracy["exits"])
        text += (f"; accuracy {accuracy['model']:.3g}{f' (exits {exits})' if exits else ''}"
                 f" on {accuracy['samples']} samples of {accuracy['source']}")
    return text


def problem_hash(problem: Problem, analysis: Obj) -> str:
    """The planning problem and the model file it was made for: a plan's block digests are
    that file's, so another file of the same shapes (new weights) is another problem."""
    return children.digest(problem.model_dump(mode="json"), analysis.get("model_digest"),
                           length=16)


def range_key(layers: list[int]) -> str:
    return f"{layers[0]}-{layers[1]}"


def stored_scale(plan: Obj | None, model_key: str) -> dict[str, float]:
    """The latency factors per class a plan was made with (none for another model)."""
    text = ((plan or {}).get("metadata", {}).get("annotations") or {}).get(SCALE_ANNOTATION)
    try:
        stored = json.loads(text) if text else {}
        if stored.get("model") != model_key:
            return {}
        return {str(cls): float(value) for cls, value in stored.get("classes", {}).items()}
    except (ValueError, AttributeError, TypeError):
        return {}


def planned_at(plan: Obj) -> float:
    """When a plan was written: its annotation, else its creation."""
    meta = plan.get("metadata") or {}
    stamp = (meta.get("annotations") or {}).get(PLANNED_AT_ANNOTATION)
    if stamp:
        try:
            return float(stamp)
        except ValueError:
            pass
    return conditions.parse_time(meta.get("creationTimestamp")) or 0.0


def runnable(plan: Obj, tiers: list[PlanTier]) -> bool:
    """Every stage of the plan is on a tier that has a Ready node now."""
    names = {tier.name for tier in tiers}
    return all(stage["tier"] in names for stage in plan["spec"]["stages"])


def plan_exit(stages: list[Obj]) -> int | None:
    """The early exit a plan ends at (None: the whole model)."""
    exit_ = stages[-1].get("exit") if stages else None
    return int(exit_["index"]) if exit_ else None


def plan_figure(problem: Problem, analysis: Obj, stages: list[Obj], objective: str) -> float:
    """The objective's figure for a plan's stages under ``problem`` (inf when the plan does
    not fit the problem any more, e.g. its tier is gone)."""
    first_of = {s["first_layer"]: s["index"] for s in analysis["segments"]}
    last_of = {s["last_layer"]: s["index"] for s in analysis["segments"]}
    try:
        planned = [Stage(s["tier"], first_of[s["layers"][0]], last_of[s["layers"][1]])
                   for s in stages]
        evaluation = evaluate(problem, planned, plan_exit(stages))
    except (KeyError, IndexError, ValueError, PlanningError):  # ValueError: unknown tier
        return float("inf")
    figure = {"latency": evaluation.latency_ms, "energy": evaluation.energy_mj,
              "throughput": evaluation.throughput_rps}[objective]
    return float(figure)


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
