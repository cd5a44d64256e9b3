"""What one reconcile pass over a DNNService or CrossLink shares: the object, its conditions,
the status fields it collects, how a wait or a stall is written before it is raised, reading
a finished Job's result from its pod's log, and running again, after a pause, a Job that
failed only because a download failed on the network."""

from __future__ import annotations

import time
from typing import ClassVar

import kopf

from splitdnn.controller import conditions
from splitdnn.controller.config import OperatorConfig
from splitdnn.controller.events import Stalled, Waiting, warn_once
from splitdnn.controller.kube import Kube, Obj

# What a Job's container exits with when a download failed on the network (sysexits'
# EX_TEMPFAIL; twin of splitdnn.cli.common.TEMPORARY_FAILURE): the input may be right.
TEMPORARY_FAILURE_EXIT = 75
JOB_RETRY_SECONDS = 60.0  # after such a failure, before the Job runs again


class StatusPass:
    """One pass over one object of ``kind``; ``status`` collects what to write."""

    kind: ClassVar[str]

    def __init__(self, body: Obj, kube: Kube, config: OperatorConfig) -> None:
        self.body, self.kube, self.config = body, kube, config
        self.event_target = kopf.Body(body)  # type: ignore[arg-type]  # Events attach to it
        self.meta = body["metadata"]
        self.name, self.namespace = self.meta["name"], self.meta["namespace"]
        self.spec: Obj = body["spec"]
        self.generation = self.meta.get("generation")
        self.conditions: list[Obj] = list((body.get("status") or {}).get("conditions") or [])
        self.status: Obj = {}

    def step(self, type_: str, ok: bool | None, reason: str, message: str = "") -> None:
        self.conditions = conditions.set_condition(self.conditions, type_, ok, reason, message,
                                                   self.generation)

    def write(self) -> None:
        self.kube.patch_status(self.kind, self.namespace, self.name, {
            **self.status, "observedGeneration": self.generation,
            "conditions": self.conditions})

    def wait(self, reason: str, message: str) -> Waiting:
        """Reconciling with ``reason``, written now; the caller raises what this returns."""
        self.conditions = conditions.progressing(self.conditions, reason, message,
                                                 self.generation)
        self.write()
        return Waiting(message)

    def stall(self, reason: str, message: str) -> Stalled:
        """Stalled with ``reason``, written now, one Warning per cause; the caller raises it."""
        self.conditions = conditions.stalled(self.conditions, reason, message, self.generation)
        self.write()
        warn_once(self.body, reason, message)
        return Stalled(message)

    def job_output(self, job: Obj) -> tuple[str | None, str]:
        """(state, log): state Complete, Failed or None while running."""
        conds = (job.get("status") or {}).get("conditions") or []
        state = next((c["type"] for c in conds if c.get("type") in ("Complete", "Failed")
                      and c.get("status") == "True"), None)
        if state is None:
            return None, ""
        pods = self.job_pods(job)
        return state, self.kube.pod_log(self.namespace, pods[-1]["metadata"]["name"]) \
            if pods else ""

    def job_pods(self, job: Obj) -> list[Obj]:
        """The Job's pods, the newest last, a succeeded one after all."""
        pods = self.kube.list("Pod", self.namespace, f"job-name={job['metadata']['name']}")
        return sorted(pods, key=lambda p: ((p.get("status") or {}).get("phase") == "Succeeded",
                                           p["metadata"].get("creationTimestamp") or ""))

    def failed_temporarily(self, job: Obj) -> bool:
        """Whether the failed Job's last pod exited with ``TEMPORARY_FAILURE_EXIT``."""
        pods = self.job_pods(job)
        statuses = (pods[-1].get("status") or {}).get("containerStatuses") or [] if pods else []
        return any(((status.get("state") or {}).get("terminated") or {}).get("exitCode")
                   == TEMPORARY_FAILURE_EXIT for status in statuses)

    def retry_later(self, job: Obj, reason: str, message: str) -> Waiting:
        """Reconciling with ``reason`` while a Job that failed temporarily waits
        ``JOB_RETRY_SECONDS`` from its failure; then it is deleted so the pass starts it
        again. The caller raises what this returns."""
        failed = conditions.get_condition((job.get("status") or {}).get("conditions"),
                                          "Failed") or {}
        now = time.time()
        since = now - (conditions.parse_time(failed.get("lastTransitionTime")) or now)
        if since < JOB_RETRY_SECONDS:
            return self.wait(reason, f"{message}; running it again in "
                                     f"{JOB_RETRY_SECONDS - since:.0f} s")
        self.kube.delete("Job", self.namespace, job["metadata"]["name"])
        kopf.info(self.event_target, reason="JobRetried",
                  message=f"{job['metadata']['name']}: running it again")
        return self.wait(reason, f"{message}; running it again")
