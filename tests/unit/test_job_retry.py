"""A Job that failed only because a download failed on the network (its container exited
with ``TEMPORARY_FAILURE_EXIT``, sysexits' EX_TEMPFAIL) is run again after a pause instead of
stalling the service; any other failure still stalls it, naming the field. The passes run on
the devcluster's store (CRD schemas, server-side apply, label selectors)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from splitdnn.controller import children, status_pass
from splitdnn.controller.conditions import get_condition
from splitdnn.controller.config import OperatorConfig
from splitdnn.controller.dnnservice import Reconcile
from splitdnn.controller.events import Stalled, Waiting
from tests.unit.test_crosslink_reconcile import NS, StoreKube, new_store_kube, service

Obj = dict[str, Any]


def failed_analysis(exit_code: int, failed_seconds_ago: float) -> tuple[StoreKube, Obj, Obj]:
    """The store with a service, its analysis Job failed that long ago and the Job's pod
    (exit code, log)."""
    kube = new_store_kube()
    manifest = service("svc", "https://models.example/m.onnx", {"a": "b"})
    manifest["spec"]["model"]["sha256"] = "ab" * 32
    body = kube.apply(manifest)
    job = kube.apply(children.build_analysis_job(body, "img"))
    failed_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - failed_seconds_ago))
    kube.patch_status("Job", NS, job["metadata"]["name"], {"conditions": [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
         "lastTransitionTime": failed_at}]})
    pod = kube.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "analyse-1", "namespace": NS,
        "labels": {"job-name": job["metadata"]["name"]}},
        "spec": {"containers": [{"name": "main", "image": "img"}]}})
    kube.patch_status("Pod", NS, "analyse-1", {"phase": "Failed", "containerStatuses": [
        {"name": "main", "state": {"terminated": {"exitCode": exit_code}}}]})
    kube.logs[pod["metadata"]["name"]] = "cannot download https://models.example/m.onnx\n"
    return kube, body, job


def analyse(kube: StoreKube, body: Obj) -> Reconcile:
    """One analysis step of the service's pass; the pass, for its conditions."""
    reconcile = Reconcile(kube.get("DNNService", NS, body["metadata"]["name"]) or body, kube,
                          OperatorConfig())
    reconcile.analysis()
    return reconcile


def test_a_network_failure_is_retried_after_a_pause_not_stalled(
        posted: Callable[[], list[tuple[str, str]]]) -> None:
    kube, body, job = failed_analysis(status_pass.TEMPORARY_FAILURE_EXIT, 5)
    with pytest.raises(Waiting, match=r"cannot download .*running it again in 5\d s"):
        analyse(kube, body)
    assert kube.get("Job", NS, job["metadata"]["name"]) is not None, "deleted before the pause"
    stored = kube.get("DNNService", NS, "svc") or {}
    conditions = stored["status"]["conditions"]
    assert (get_condition(conditions, "Stalled") or {}).get("status") == "False"
    assert (get_condition(conditions, "Reconciling") or {}).get("reason") == "DownloadFailed"


def test_after_the_pause_the_job_runs_again(posted: Callable[[], list[tuple[str, str]]]) -> None:
    kube, body, job = failed_analysis(status_pass.TEMPORARY_FAILURE_EXIT,
                                      status_pass.JOB_RETRY_SECONDS + 1)
    with pytest.raises(Waiting, match=r"running it again$"):
        analyse(kube, body)
    assert kube.get("Job", NS, job["metadata"]["name"]) is None
    assert ("JobRetried", f"{job['metadata']['name']}: running it again") in posted()
    with pytest.raises(Waiting, match="analysing"):  # the next pass starts it anew
        analyse(kube, body)
    again = kube.get("Job", NS, job["metadata"]["name"]) or {}
    assert not (again.get("status") or {}).get("conditions")


def test_bad_input_still_stalls_naming_the_field(
        posted: Callable[[], list[tuple[str, str]]]) -> None:
    kube, body, job = failed_analysis(2, status_pass.JOB_RETRY_SECONDS + 1)
    with pytest.raises(Stalled, match=r"^spec\.model\.source: analysis job .* failed: cannot"):
        analyse(kube, body)
    assert kube.get("Job", NS, job["metadata"]["name"]) is not None
