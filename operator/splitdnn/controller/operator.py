"""Every kopf decorator of the operator, its settings, and ``run_operator``.

Handlers here only wire kopf to the plain functions of ``dnnservice``, ``splitplan`` and
``crosslink``, count reconciles and errors, and return None. Finalizers and kopf's progress
annotations use the ``splitdnn.io`` prefix. A timer re-runs each DNNService and SplitPlan
reconcile, so node changes (replan), rollout progress and measurements are followed without
any event on the object itself.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from prometheus_client import start_http_server

from splitdnn.api import GROUP, VERSION
from splitdnn.controller import crosslink, dnnservice, events, splitplan
from splitdnn.controller.config import OperatorConfig
from splitdnn.controller.kube import Kube, load_config
from splitdnn.controller.metrics import ERRORS, RECONCILES

log = logging.getLogger("splitdnn.operator")
FINALIZER = "splitdnn.io/finalizer"
TIMER_SECONDS = 3.0
STATE: dict[str, Any] = {"watch_timeout": 300}


@functools.cache
def kube() -> Kube:
    load_config()
    return Kube()


@functools.cache
def config() -> OperatorConfig:
    return OperatorConfig.from_env()


def counted(kind: str, body: kopf.Body, action: Callable[[], None]) -> None:
    """Run one reconcile, counting it and its errors for /metrics.

    Waiting and Stalled are states already written into the conditions: logged once per
    change (INFO, WARNING), not raised to kopf, which would log them at ERROR on every run;
    the 3 s timer runs the next pass. API and other errors stay errors.
    """
    RECONCILES.labels(kind).inc()
    try:
        action()
        events.forget(dict(body))
    except (events.Waiting, events.Stalled) as state:
        events.log_state(dict(body), kind, state)
    except kopf.TemporaryError:
        raise
    except ApiException as error:  # a conflict, a terminating namespace, an API hiccup
        ERRORS.labels(kind, f"Api{error.status}").inc()
        raise kopf.TemporaryError(f"API error {error.status}: {error.reason}", delay=5) from error
    except Exception as error:
        ERRORS.labels(kind, type(error).__name__).inc()
        raise


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    settings.watching.server_timeout = STATE["watch_timeout"]
    settings.watching.client_timeout = STATE["watch_timeout"] + 30
    settings.posting.level = logging.INFO
    settings.execution.max_workers = 8
    logging.getLogger("kopf.objects").addFilter(events.TimerSuccessFilter())
    kube()


# ---- DNNService -------------------------------------------------------------------------------
@kopf.on.resume(GROUP, VERSION, "dnnservices")
@kopf.on.create(GROUP, VERSION, "dnnservices")
@kopf.on.update(GROUP, VERSION, "dnnservices", field="spec")
def service_changed(body: kopf.Body, **_: Any) -> None:
    counted("DNNService", body, lambda: dnnservice.reconcile_service(dict(body), kube(), config()))


@kopf.timer(GROUP, VERSION, "dnnservices", interval=TIMER_SECONDS, initial_delay=TIMER_SECONDS)
def service_timer(body: kopf.Body, **_: Any) -> None:
    if body.get("metadata", {}).get("deletionTimestamp"):
        return
    counted("DNNService", body, lambda: dnnservice.reconcile_service(dict(body), kube(), config()))


@kopf.on.delete(GROUP, VERSION, "dnnservices")
def service_deleted(body: kopf.Body, **_: Any) -> None:
    dnnservice.delete_service(dict(body), kube())


# ---- SplitPlan --------------------------------------------------------------------------------
@kopf.on.resume(GROUP, VERSION, "splitplans")
@kopf.on.create(GROUP, VERSION, "splitplans")
@kopf.on.update(GROUP, VERSION, "splitplans", field="spec")
def plan_changed(body: kopf.Body, **_: Any) -> None:
    counted("SplitPlan", body, lambda: splitplan.reconcile_plan(dict(body), kube(), config()))


@kopf.timer(GROUP, VERSION, "splitplans", interval=TIMER_SECONDS, initial_delay=TIMER_SECONDS)
def plan_timer(body: kopf.Body, **_: Any) -> None:
    if body.get("metadata", {}).get("deletionTimestamp"):
        return
    counted("SplitPlan", body, lambda: splitplan.reconcile_plan(dict(body), kube(), config()))


@kopf.on.delete(GROUP, VERSION, "splitplans")
def plan_deleted(body: kopf.Body, **_: Any) -> None:
    """Children are owned by the plan; the garbage collector removes them."""
    kopf.info(body, reason="Deleted", message="stage Deployments and Services go with the plan")


# ---- CrossLink --------------------------------------------------------------------------------
@kopf.on.resume(GROUP, VERSION, "crosslinks")
@kopf.on.create(GROUP, VERSION, "crosslinks")
@kopf.on.update(GROUP, VERSION, "crosslinks", field="spec")
def crosslink_changed(body: kopf.Body, **_: Any) -> None:
    counted("CrossLink", body, lambda: crosslink.reconcile_crosslink(dict(body), kube(), config()))


@kopf.timer(GROUP, VERSION, "crosslinks", interval=TIMER_SECONDS, initial_delay=TIMER_SECONDS)
def crosslink_timer(body: kopf.Body, **_: Any) -> None:
    if body.get("metadata", {}).get("deletionTimestamp"):
        return
    counted("CrossLink", body, lambda: crosslink.reconcile_crosslink(dict(body), kube(), config()))


@kopf.on.delete(GROUP, VERSION, "crosslinks")
def crosslink_deleted(body: kopf.Body, **_: Any) -> None:
    """Children are owned by the CrossLink; the local gateway drops the cross path when the
    SplitPlan rollout next applies it."""
    kopf.info(body, reason="Deleted", message="training Job, links and cross-path stages go "
                                              "with the CrossLink")


@kopf.on.probe(id="reconciles")
def reconciles_probe(**_: Any) -> float:
    return sum(sample.value for metric in RECONCILES.collect() for sample in metric.samples
               if sample.name.endswith("_total"))


def run_operator(namespaces: list[str], peering: str | None, priority: int,
                 liveness_port: int | None, watch_timeout: int,
                 metrics_port: int | None) -> None:
    """Run kopf until interrupted (cluster-wide when ``namespaces`` is empty)."""
    STATE["watch_timeout"] = watch_timeout
    if metrics_port:
        start_http_server(metrics_port)
    kopf.run(
        clusterwide=not namespaces, namespaces=namespaces, standalone=peering is None,
        peering_name=peering, priority=priority,
        liveness_endpoint=f"http://0.0.0.0:{liveness_port}/healthz" if liveness_port else None,
    )
