"""What one reconcile pass over a DNNService or CrossLink shares: the object, its conditions,
the status fields it collects, how a wait or a stall is written before it is raised, and
reading a finished Job's result from its pod's log."""

from __future__ import annotations

from typing import ClassVar

import kopf

from splitdnn.controller import conditions
from splitdnn.controller.config import OperatorConfig
from splitdnn.controller.events import Stalled, Waiting, warn_once
from splitdnn.controller.kube import Kube, Obj


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
        pods = self.kube.list("Pod", self.namespace, f"job-name={job['metadata']['name']}")
        pods.sort(key=lambda p: (p.get("status") or {}).get("phase") == "Succeeded")
        return state, self.kube.pod_log(self.namespace, pods[-1]["metadata"]["name"]) \
            if pods else ""
