"""Child objects of DNNServices and SplitPlans, built by pure functions (no API calls).

Each builder returns a plain manifest dict; ``kube.adopt`` sets the owner and ``kube.Kube.apply``
applies it. Stage objects carry a *revision* (a digest of what the stage runs), so a changed
plan gets new Deployments and Services beside the old ones: make-before-break.

Stage pods share a working directory between the init container (``splitdnn fetch-block``
writes ``block/block.onnx``) and the worker: an ``emptyDir`` mounted at ``/work`` as
``workingDir`` on a real cluster; the devcluster runs every container of a pod in the pod's
own directory, which gives the same sharing.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from splitdnn.controller.config import OperatorConfig

Obj = dict[str, Any]
MANAGED_BY = {"app.kubernetes.io/managed-by": "splitdnn-operator"}
WORKDIR = "/work"
PVC_ROOT = "/mnt/pvc"  # runtime.artifacts.DEFAULT_PVC_ROOT
GATEWAY_MANIFEST_ENV = "SPLITDNN_GATEWAY_MANIFEST"
BLOCK_DIR = "block"
EXIT_HEAD_FILE = "exit.onnx"  # runtime.artifacts.EXIT_HEAD_FILE
SWITCHED_AT_ANNOTATION = "splitdnn.io/switched-at"
JOB_POD_FAILURE_POLICY = {"rules": [
    # exit code 2 is bad input (unknown model, bad shape): retrying cannot help
    {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In",
                                           "values": [2]}},
    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
]}


def digest(*parts: Any, length: int = 8) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def pod_security() -> Obj:
    """Pod-level half of Pod Security "restricted"."""
    return {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"}}


def container_security() -> Obj:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}


def workdir_volume() -> tuple[list[Obj], list[Obj]]:
    return [{"name": "work", "emptyDir": {}}], [{"name": "work", "mountPath": WORKDIR}]


def model_args(model: Obj) -> list[str]:
    """``--input-shape`` (and nothing else) as the graph commands take it."""
    shape = model.get("inputShape")
    return ["--input-shape", ",".join(str(d) for d in shape)] if shape else []


def model_source_args(model: Obj) -> list[str]:
    """``--sha256`` of the model file and ``--weights``/``--weights-sha256`` of a torchvision
    model's state dict, as the commands that fetch the model take them."""
    args = ["--sha256", model["sha256"]] if model.get("sha256") else []
    weights = model.get("weights")
    if weights:
        args += ["--weights", weights["source"]]
        args += ["--weights-sha256", weights["sha256"]] if weights.get("sha256") else []
    return args


def with_model_claim(pod: Obj, model: Obj, others: list[Obj] | None = None) -> Obj:
    """For a ``pvc://CLAIM/PATH`` model or weights and ``others`` (exit heads, datasets:
    anything with a ``source``), mount each claim once, read-only, where
    ``splitdnn.runtime.artifacts`` looks for it (``/mnt/pvc/CLAIM``) in every container."""
    artifacts = [model, *([model["weights"]] if model.get("weights") else []), *(others or [])]
    sources = [str(artifact.get("source", "")) for artifact in artifacts]
    claims = dict.fromkeys(source.removeprefix("pvc://").split("/", 1)[0]
                           for source in sources if source.startswith("pvc://"))
    for number, claim in enumerate(claims):
        volume = "model" if number == 0 else f"model-{number}"
        pod["volumes"] = [*pod.get("volumes", []), {
            "name": volume, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}]
        for item in [*pod.get("initContainers", []), *pod.get("containers", [])]:
            item["volumeMounts"] = [*item.get("volumeMounts", []), {
                "name": volume, "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": True}]
    return pod


def exit_heads(service_spec: Obj) -> list[Obj]:
    """The ``head`` artifact of each of the service's early exits."""
    return [exit_["head"] for exit_ in service_spec.get("exits") or []]


def container(name: str, image: str, args: list[str], **extra: Any) -> Obj:
    _, mounts = workdir_volume()
    return {"name": name, "image": image, "args": args, "workingDir": WORKDIR,
            "volumeMounts": mounts, "securityContext": container_security(), **extra}


# ---- Jobs of a DNNService ------------------------------------------------------------------
def job(name: str, namespace: str, labels: dict[str, str], image: str, args: list[str],
        node_selector: dict[str, str] | None = None,
        tolerations: list[Obj] | None = None) -> Obj:
    volumes, _ = workdir_volume()
    pod: Obj = {"restartPolicy": "Never", "securityContext": pod_security(),
                "volumes": volumes, "containers": [container("main", image, args)]}
    if node_selector:
        pod["nodeSelector"] = node_selector
    if tolerations:
        pod["tolerations"] = tolerations
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": {**MANAGED_BY, **labels}},
        "spec": {"backoffLimit": 2, "podFailurePolicy": JOB_POD_FAILURE_POLICY,
                 "template": {"metadata": {"labels": {**MANAGED_BY, **labels}}, "spec": pod}},
    }


def analysis_key(model: Obj) -> str:
    weights = model.get("weights")  # only when set: keys of models without stay as they were
    return digest(model.get("source"), model.get("sha256"), model.get("inputShape"),
                  model.get("dtype"), *([weights] if weights else []))


def exits_json(service_spec: Obj) -> str | None:
    """What the analysis reads of the service's exits (layer and head), as JSON."""
    exits = [{"afterLayer": e["afterLayer"], "head": e["head"]}
             for e in service_spec.get("exits") or []]
    return json.dumps(exits, sort_keys=True, separators=(",", ":")) if exits else None


def service_analysis_key(service_spec: Obj) -> str:
    """The analysis of a service: its model's, and its exit heads' and validation data's
    when it has them."""
    key = analysis_key(service_spec["model"])
    exits, validation = exits_json(service_spec), service_spec.get("validation")
    if exits is None and not validation:
        return key
    return digest(key, exits, validation)


def validation_args(service_spec: Obj) -> list[str]:
    """``model-facts`` options measuring accuracy on the service's validation data."""
    validation = service_spec.get("validation")
    if not validation:
        return []
    data = validation["data"]
    args = ["--validation-data", data["source"],
            "--validation-samples", str(validation.get("samples", 500))]
    return args + (["--validation-sha256", data["sha256"]] if data.get("sha256") else [])


def build_analysis_job(service: Obj, image: str) -> Obj:
    """``splitdnn model-facts``: layers, segments, signatures and the model digest as JSON
    (and the facts of each exit head)."""
    spec = service["spec"]
    model = spec["model"]
    meta = service["metadata"]
    args = ["model-facts", model["source"], *model_args(model), *model_source_args(model)]
    exits = exits_json(spec)
    if exits:
        args += ["--exits", exits]
    args += validation_args(spec)
    built = job(f"{meta['name'][:40]}-analyse-{service_analysis_key(spec)}", meta["namespace"],
                {"splitdnn.io/service": meta["name"], "splitdnn.io/job": "analyse"},
                image, args)
    data = [spec["validation"]["data"]] if spec.get("validation") else []
    with_model_claim(built["spec"]["template"]["spec"], model, [*exit_heads(spec), *data])
    return built


def build_digest_job(service: Obj, image: str, ranges: list[str]) -> Obj:
    """``splitdnn block-digests``: the sha256 of the blocks a plan's stages run (``FIRST-LAST``
    layer ranges), cut exactly as a stage's ``fetch-block`` cuts them."""
    model = service["spec"]["model"]
    meta = service["metadata"]
    args = ["block-digests", model["source"], "--layers", ",".join(ranges), *model_args(model),
            *model_source_args(model)]
    built = job(f"{meta['name'][:36]}-digests-{digest(analysis_key(model), ranges)}",
                meta["namespace"], {"splitdnn.io/service": meta["name"],
                                    "splitdnn.io/job": "digests"}, image, args)
    with_model_claim(built["spec"]["template"]["spec"], model)
    return built


def build_profile_job(service: Obj, hardware_class: str, node: str, image: str,
                      tolerations: list[Obj], config: OperatorConfig, gpu: bool = False) -> Obj:
    """A sampled segment profile (paper 004) of the model, pinned to one node of the class,
    on the provider a stage there would use (with GPU access on a GPU class)."""
    model = service["spec"]["model"]
    meta = service["metadata"]
    key = digest(analysis_key(model), hardware_class)
    threads = (service["spec"].get("runtime") or {}).get("threads")
    args = ["profile", model["source"], "--out", "profile.json", "--json",
            "--sample-fraction", str(config.profile_fraction), "--seed", "0",
            "--hardware-class", hardware_class, "--provider", "auto",
            "--repeats", str(config.profile_repeats),
            "--warmup", "1", "--min-sample-ms", str(config.profile_min_sample_ms),
            *model_args(model)]
    if threads:
        args += ["--threads", str(threads)]
    if model.get("sha256"):  # https:// and pvc:// models are fetched and checked first
        args += ["--sha256", model["sha256"]]
    built = job(f"{meta['name'][:30]}-profile-{hardware_class[:16]}-{key[:6]}",
                meta["namespace"],
                {"splitdnn.io/service": meta["name"], "splitdnn.io/job": "profile",
                 "splitdnn.io/hardware-class": hardware_class},
                image, args, {"kubernetes.io/hostname": node}, tolerations)
    # random weights: a segment's time does not depend on their values
    with_model_claim(built["spec"]["template"]["spec"], {"source": model["source"]})
    if gpu:
        with_gpu_access(built["spec"]["template"]["spec"], config)
    return built


NETPROFILE_PORT = 5557


def build_netprofile_jobs(service: Obj, pair: tuple[str, str], server_node: str,
                          client_node: str, server_ip: str | None, images: tuple[str, str],
                          tolerations: tuple[list[Obj], list[Obj]]) -> list[Obj]:
    """The link measurement between two classes: a ``netprofile --serve`` Job on a node of
    the first, then (once its pod has an IP) a ``netprofile --peer`` Job on the second."""
    meta = service["metadata"]
    key = digest(*pair)
    labels = {"splitdnn.io/service": meta["name"], "splitdnn.io/link-from": pair[0],
              "splitdnn.io/link-to": pair[1]}
    jobs = [job(f"{meta['name'][:40]}-netserve-{key}", meta["namespace"],
                {**labels, "splitdnn.io/job": "netserve"}, images[0],
                ["netprofile", "--serve", f"tcp://*:{NETPROFILE_PORT}", "--once"],
                {"kubernetes.io/hostname": server_node}, tolerations[0])]
    if server_ip:
        jobs.append(job(f"{meta['name'][:40]}-netprobe-{key}", meta["namespace"],
                        {**labels, "splitdnn.io/job": "netprobe"}, images[1],
                        ["netprofile", "--peer", f"tcp://{server_ip}:{NETPROFILE_PORT}",
                         "--out", "link.json", "--json", "--sizes", "1KB,64KB,1MB,4MB",
                         "--repeats", "5"],
                        {"kubernetes.io/hostname": client_node}, tolerations[1]))
    return jobs


def build_configmap(name: str, namespace: str, labels: dict[str, str],
                    data: dict[str, str]) -> Obj:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {**MANAGED_BY, **labels}},
            "data": data}


# ---- stages of a SplitPlan -----------------------------------------------------------------
def stage_revision(service_spec: Obj, stage: Obj) -> str:
    """What a stage pod runs; a change means a new Deployment (make-before-break)."""
    runtime = service_spec.get("runtime") or {}
    return digest(service_spec["model"], stage["layers"], stage["tier"],
                  stage.get("nodeSelector"), stage.get("blockSha256"), stage.get("exit"),
                  runtime.get("image"), runtime.get("threads"), runtime.get("batching"),
                  *([stage_exit_head(stage, service_spec)] if stage.get("exit") else []),
                  length=6)


def stage_object_name(plan_name: str, stage: Obj, revision: str) -> str:
    return f"{plan_name[:40]}-{stage['name'][:14]}-{revision}"


def stage_host(name: str, namespace: str) -> str:
    return f"{name}.{namespace}.svc.cluster.local"


def stage_labels(service: str, plan: str, stage: str, revision: str) -> dict[str, str]:
    return {**MANAGED_BY, "splitdnn.io/service": service, "splitdnn.io/plan": plan,
            "splitdnn.io/stage": stage, "splitdnn.io/revision": revision}


def worker_args(stage: Obj, next_host: str | None, service_spec: Obj,
                config: OperatorConfig) -> list[str]:
    runtime = service_spec.get("runtime") or {}
    batching = runtime.get("batching") or {}
    args = ["worker", "--block", f"{BLOCK_DIR}/block.onnx",
            "--listen", f"tcp://0.0.0.0:{config.worker_port}", "--stage", stage["name"],
            "--metrics-port", str(config.metrics_port),
            "--max-batch", str(batching.get("maxBatch", 1)),
            "--max-delay-ms", str(batching.get("maxDelayMs", 0))]
    if next_host:
        args += ["--next", f"dns+tcp://{next_host}:{config.worker_port}"]
    if runtime.get("threads"):
        args += ["--threads", str(runtime["threads"])]
    exit_ = stage.get("exit")
    if exit_:
        args += ["--exit-head", f"{BLOCK_DIR}/{EXIT_HEAD_FILE}",
                 "--exit-threshold", str(exit_["threshold"]), "--exit-index", str(exit_["index"])]
    return args


def fetch_args(stage: Obj, service_spec: Obj) -> list[str]:
    model = service_spec["model"]
    first, last = stage["layers"]
    args = ["fetch-block", "--model", model["source"], "--layers", f"{first},{last}",
            "--out", BLOCK_DIR, *model_source_args(model), *model_args(model)]
    if stage.get("blockSha256"):
        args += ["--block-sha256", stage["blockSha256"]]
    head = stage_exit_head(stage, service_spec)
    if head:
        args += ["--exit-head", head["source"]]
        if head.get("sha256"):
            args += ["--exit-sha256", head["sha256"]]
    return args


def stage_exit_head(stage: Obj, service_spec: Obj) -> Obj | None:
    """The head artifact of the stage's early exit, with the plan's digest when it states
    one (the service's ``sha256`` otherwise)."""
    exit_ = stage.get("exit")
    if not exit_:
        return None
    head = dict(exit_heads(service_spec)[exit_["index"]])
    if exit_.get("headSha256"):
        head["sha256"] = exit_["headSha256"]
    return head


def with_gpu_access(pod: Obj, config: OperatorConfig) -> Obj:
    """``pod`` (its first container runs ONNX Runtime) with the GPU access the operator is
    configured for: the NVIDIA runtime class and/or ``nvidia.com/gpu`` in its limits (a limit
    the user's resources already set is kept)."""
    if config.gpu_runtime_class:
        pod["runtimeClassName"] = config.gpu_runtime_class
    if config.gpus_per_pod:
        main = pod["containers"][0]
        resources = main.get("resources") or {}
        main["resources"] = {**resources, "limits": {
            "nvidia.com/gpu": config.gpus_per_pod, **(resources.get("limits") or {})}}
    return pod


def build_stage_deployment(plan: Obj, stage: Obj, service_spec: Obj, revision: str,
                           next_host: str | None, image: str, config: OperatorConfig,
                           gpu: bool = False) -> Obj:
    """One stage: init container cuts out the block (digest checked), worker serves it; on a
    GPU node (``gpu``) with the configured GPU access."""
    meta = plan["metadata"]
    name = stage_object_name(meta["name"], stage, revision)
    labels = stage_labels(plan["spec"]["serviceRef"]["name"], meta["name"], stage["name"],
                          revision)
    runtime = service_spec.get("runtime") or {}
    volumes, _ = workdir_volume()
    worker = container(
        "worker", image, worker_args(stage, next_host, service_spec, config),
        ports=[{"name": "zmq", "containerPort": config.worker_port},
               {"name": "metrics", "containerPort": config.metrics_port}],
        readinessProbe={"httpGet": {"path": "/readyz", "port": config.metrics_port},
                        "periodSeconds": 1, "failureThreshold": 3},
        # the endpoint leaves the headless Service before SIGTERM starts the drain
        lifecycle={"preStop": {"sleep": {"seconds": 2}}},
        resources=runtime.get("resources") or {})
    pod: Obj = {
        "securityContext": pod_security(), "volumes": volumes,
        "terminationGracePeriodSeconds": 10,
        "nodeSelector": stage.get("nodeSelector") or {},
        "initContainers": [container("fetch-block", image, fetch_args(stage, service_spec))],
        "containers": [worker],
    }
    if stage.get("tolerations"):
        pod["tolerations"] = stage["tolerations"]
    head = stage_exit_head(stage, service_spec)
    with_model_claim(pod, service_spec["model"], [head] if head else [])
    if gpu:
        with_gpu_access(pod, config)
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": meta["namespace"], "labels": labels},
        "spec": {"replicas": stage.get("replicas", 1),
                 "selector": {"matchLabels": labels},
                 "strategy": {"type": "RollingUpdate",
                              "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                 "template": {"metadata": {"labels": labels}, "spec": pod}},
    }


def build_stage_service(plan: Obj, stage: Obj, revision: str, config: OperatorConfig) -> Obj:
    """Headless: ``dns+tcp://`` resolves it to every ready replica."""
    meta = plan["metadata"]
    labels = stage_labels(plan["spec"]["serviceRef"]["name"], meta["name"], stage["name"],
                          revision)
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": stage_object_name(meta["name"], stage, revision),
                     "namespace": meta["namespace"], "labels": labels},
        "spec": {"clusterIP": "None", "selector": labels,
                 "ports": [{"name": "zmq", "port": config.worker_port,
                            "targetPort": config.worker_port}]},
    }


# ---- the gateway of a DNNService -----------------------------------------------------------
def gateway_name(service: str) -> str:
    return f"{service[:52]}-gateway"


def gateway_url(service: str, namespace: str, config: OperatorConfig) -> str:
    return f"http://{gateway_name(service)}.{namespace}.svc.cluster.local:{config.gateway_port}"


def gateway_manifest(analysis: Obj) -> Obj:
    """The split manifest the gateway reads: model name, input and output. It does not
    depend on the plan, so a replan does not restart the gateway; the one block entry only
    says requests are sent one by one (``batch_free`` false)."""
    return {"model": analysis["model"], "input": analysis["input"],
            "output": analysis["output"], "blocks": [{"batch_free": False}]}


def build_gateway_deployment(service: Obj, plan_name: str, first_host: str, manifest: Obj,
                             image: str, config: OperatorConfig, node_selector: dict[str, str],
                             tolerations: list[Obj], extra_args: list[str] | None = None) -> Obj:
    """The OIP v2 gateway on the source tier, sending to the plan's first stage
    (``extra_args``: a CrossLink's cross-path options)."""
    meta = service["metadata"]
    name = gateway_name(meta["name"])
    selector = {**MANAGED_BY, "splitdnn.io/service": meta["name"],
                "splitdnn.io/component": "gateway"}
    volumes, _ = workdir_volume()
    gateway = container(
        "gateway", image,
        ["plan-gateway", "--first", f"dns+tcp://{first_host}:{config.worker_port}",
         "--http", f"0.0.0.0:{config.gateway_port}",
         "--results-port", str(config.results_port), "--name", meta["name"],
         *(extra_args or [])],
        env=[{"name": GATEWAY_MANIFEST_ENV, "value": json.dumps(manifest)},
             {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        ports=[{"name": "http", "containerPort": config.gateway_port},
               {"name": "results", "containerPort": config.results_port}],
        readinessProbe={"httpGet": {"path": "/v2/health/ready", "port": config.gateway_port},
                        "periodSeconds": 1, "failureThreshold": 3},
        lifecycle={"preStop": {"sleep": {"seconds": 2}}})
    pod: Obj = {"securityContext": pod_security(), "volumes": volumes,
                "terminationGracePeriodSeconds": 15, "nodeSelector": node_selector,
                "containers": [gateway]}
    if tolerations:
        pod["tolerations"] = tolerations
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": meta["namespace"],
                     "labels": {**selector, "splitdnn.io/plan": plan_name}},
        "spec": {"replicas": 1, "selector": {"matchLabels": selector},
                 "strategy": {"type": "RollingUpdate",
                              "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                 "template": {"metadata": {"labels": selector},
                              "spec": pod}},
    }


def entry_name(service: str) -> str:
    return f"{service[:54]}-entry"


def build_entry_service(service: Obj, first_stage_labels: dict[str, str],
                        config: OperatorConfig, switched_at: str) -> Obj:
    """Headless Service the gateway sends to: it selects the current plan's first stage.

    Switching a plan re-points this selector; the gateway re-resolves ``dns+tcp://`` names
    every few seconds, so it moves to the new pipeline without a restart.
    """
    meta = service["metadata"]
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": entry_name(meta["name"]), "namespace": meta["namespace"],
                     "labels": {**MANAGED_BY, "splitdnn.io/service": meta["name"],
                                "splitdnn.io/component": "entry"},
                     "annotations": {SWITCHED_AT_ANNOTATION: switched_at}},
        "spec": {"clusterIP": "None", "selector": first_stage_labels,
                 "ports": [{"name": "zmq", "port": config.worker_port,
                            "targetPort": config.worker_port}]},
    }


def build_gateway_service(service: Obj, config: OperatorConfig) -> Obj:
    meta = service["metadata"]
    selector = {**MANAGED_BY, "splitdnn.io/service": meta["name"],
                "splitdnn.io/component": "gateway"}
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": gateway_name(meta["name"]), "namespace": meta["namespace"],
                     "labels": selector},
        "spec": {"selector": selector,
                 "ports": [{"name": "http", "port": config.gateway_port,
                            "targetPort": config.gateway_port}]},
    }
