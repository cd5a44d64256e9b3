"""Child objects of a CrossLink, built by pure functions (no API calls).

- the training Job: ``splitdnn code-train`` (or a search first), printing the path, its
  scores and the links as ONNX with sha256 digests in one JSON line;
- the links ConfigMap: the links as ``binaryData`` (``entry.onnx``, ``exit.onnx``) plus
  ``links.json`` (digests and scores), bounded in size;
- the cross path: three stages, each a Deployment made by ``children.build_stage_deployment``
  with a ``splitdnn code-block`` init container (it builds the stage's blocks and checks the
  links' digests) and a headless Service: ``head`` (local blocks ``0..lout``) and ``tail``
  (local ``lin..``) on the local service's source nodes, ``cross`` (entry link, host blocks
  ``hin..hout``, exit link) on the host service's nodes; and a headless entry Service the
  local gateway sends its offloaded requests to;
- the local gateway's cross-path options (``gateway_cross_args``).
"""

from __future__ import annotations

import base64
import json
from typing import Any

from splitdnn.controller import children
from splitdnn.controller.config import OperatorConfig
from splitdnn.coordination.data import DATASETS, FILE_SCHEMES  # no torch: data imports it lazily
from splitdnn.coordination.paths import N_F  # no torch: paths and errors only

Obj = dict[str, Any]
CROSSLINK_LABEL = "splitdnn.io/crosslink"
KEY_LABEL = "splitdnn.io/training-key"
STAGES = ("head", "cross", "tail")
LINKS_DIR = "links"
MAX_LINK_BYTES = 900_000  # base64 of every link together, below the API's 1 MiB object limit
TORCHVISION = "torchvision:"


class CrossLinkSpecError(ValueError):
    """A spec the operator cannot honour: ``field`` names what the user would change."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def shape_text(service: Obj) -> str | None:
    shape = service["spec"]["model"].get("inputShape")
    return ",".join(str(d) for d in shape) if shape else None


def model_source(service: Obj, field: str) -> str:
    """A service's model as code-train takes it: torchvision models with their random weights
    only (links are trained through torch modules built here)."""
    source = str(service["spec"]["model"]["source"])
    if not source.startswith(TORCHVISION):
        raise CrossLinkSpecError(field, f"DNNService {service['metadata']['name']} serves "
                                        f"{source}; CoDE trains links through torch modules, "
                                        "so only torchvision:NAME models can be linked")
    if service["spec"]["model"].get("weights"):
        raise CrossLinkSpecError(field, f"DNNService {service['metadata']['name']} serves "
                                        "its own spec.model.weights; CoDE trains links through "
                                        "the model's random weights, so it cannot be linked")
    return source


def data_args(spec: Obj) -> list[str]:
    """``--data`` (and ``--data-sha256``) for code-train: a packaged dataset, or a dataset
    file from https:// (sha256 required) or pvc://CLAIM/PATH (claim mounted in the Job)."""
    data = spec["training"]["data"]
    source, digest = str(data["source"]), data.get("sha256")
    if source not in DATASETS and not source.startswith(FILE_SCHEMES):
        raise CrossLinkSpecError("spec.training.data.source",
                                 f"{source}: expected one of {', '.join(DATASETS)}, "
                                 "https://URL (with sha256) or pvc://CLAIM/PATH")
    if source.startswith("https://") and not digest:
        raise CrossLinkSpecError("spec.training.data.sha256",
                                 f"{source}: an https:// dataset needs its sha256")
    if source.startswith("pvc://") and "/" not in source.removeprefix("pvc://").strip("/"):
        raise CrossLinkSpecError("spec.training.data.source",
                                 f"{source}: expected pvc://CLAIM/PATH (a file on the claim)")
    return ["--data", source, *(["--data-sha256", str(digest)] if digest else [])]


def model_args(spec: Obj, local: Obj, host: Obj) -> list[str]:
    """Models, block counts and input shapes: what code-train and code-block share."""
    args = ["--local", model_source(local, "spec.localService"),
            "--host", model_source(host, "spec.hostService"),
            "--blocks-local", str(spec.get("localBlocks", 4)),
            "--blocks-host", str(spec.get("hostBlocks", 4))]
    for option, service in (("--local-input-shape", local), ("--host-input-shape", host)):
        shape = shape_text(service)
        if shape:
            args += [option, shape]
    return args


def training_args(spec: Obj, local: Obj, host: Obj) -> list[str]:
    link = spec.get("link") or {}
    training = spec["training"]
    args = ["code-train", *model_args(spec, local, host), *data_args(spec),
            "--out", LINKS_DIR, "--link", link.get("architecture", "conv"),
            "--epochs", str(training.get("epochs", 5)),
            "--learning-rate", str(training.get("learningRate", 1e-2)),
            "--s", str(max(1, spec.get("offloadedSamples", 1))),
            "--local-batch", str(spec.get("localBatch", 32)),
            "--host-batch", str(spec.get("hostBatch", 32))]
    if link.get("width"):
        args += ["--width", str(link["width"])]
    if spec.get("path"):
        return [*args, "--path", ",".join(str(v) for v in spec["path"])]
    search = spec.get("search") or {}
    args += ["--a-min", str(search.get("aMin", 0.9)), "--k", str(search.get("k", 50.0)),
             "--c-stop", str(search.get("cStop", 3)), "--epsilon", str(search.get("epsilon", 0.0))]
    return [*args, "--exhaustive"] if search.get("exhaustive") else args


def training_key(spec: Obj, local: Obj, host: Obj) -> str:
    """What the trained links depend on; a change means a new Job and ConfigMap."""
    relevant = {k: spec.get(k) for k in ("localBlocks", "hostBlocks", "path", "search", "link",
                                         "training", "offloadedSamples", "localBatch",
                                         "hostBatch")}
    return children.digest(relevant, local["spec"]["model"], host["spec"]["model"])


def build_training_job(crosslink: Obj, local: Obj, host: Obj, image: str) -> Obj:
    meta, spec = crosslink["metadata"], crosslink["spec"]
    key = training_key(spec, local, host)
    what = "train" if spec.get("path") else "search"
    job = children.job(f"{meta['name'][:40]}-{what}-{key}", meta["namespace"],
                       {CROSSLINK_LABEL: meta["name"], "splitdnn.io/job": what, KEY_LABEL: key},
                       image, training_args(spec, local, host))
    # a pvc:// dataset's claim, read-only where runtime.artifacts looks (as for pvc models)
    children.with_model_claim(job["spec"]["template"]["spec"], spec["training"]["data"])
    return job


def readable_path(path: list[int]) -> list[int]:
    """A path as the API writes it: ``[lout, lin]`` for a skip path (the library and
    code-train keep the paper's ``N_f`` sentinel in the host positions)."""
    if len(path) == 4 and path[1] == path[2] == N_F:
        return [path[0], path[3]]
    return list(path)


def links_name(crosslink: str, key: str) -> str:
    """One ConfigMap per training key: stages of an earlier path keep the links they check
    (a restarted pod of the old path still starts) until they are removed with it."""
    return f"{crosslink[:40]}-links-{key}"


def links_size(result: Obj) -> int:
    return sum(len(link["base64"]) for link in result["links"].values())


def build_links_configmap(crosslink: Obj, result: Obj, key: str) -> Obj:
    """The trained links (ONNX, ``binaryData``) and ``links.json``: the path, its scores and
    each link's sha256. Raises CrossLinkSpecError when the links do not fit a ConfigMap."""
    size = links_size(result)
    if size > MAX_LINK_BYTES:
        sizes = ", ".join(f"{name} {link['bytes']} B" for name, link in result["links"].items())
        raise CrossLinkSpecError(
            "spec.link", f"the trained links ({sizes}; {size} B in base64) exceed the "
                         f"{MAX_LINK_BYTES} B a ConfigMap can hold: use architecture reduced "
                         "with a small width, or a path between narrower blocks")
    meta = crosslink["metadata"]
    summary = {k: v for k, v in result.items() if k != "links"}
    summary["sha256"] = {name: link["sha256"] for name, link in result["links"].items()}
    cm = children.build_configmap(links_name(meta["name"], key), meta["namespace"],
                                  {CROSSLINK_LABEL: meta["name"], KEY_LABEL: key},
                                  {"links.json": json.dumps(summary, sort_keys=True)})
    cm["binaryData"] = {f"{name}.onnx": link["base64"] for name, link in result["links"].items()}
    return cm


def stored_links(configmap: Obj) -> Obj:
    """``links.json`` of a links ConfigMap, checked against its binaryData's digests."""
    import hashlib

    summary: Obj = json.loads(configmap["data"]["links.json"])
    for name, digest in summary["sha256"].items():
        data = base64.b64decode(configmap.get("binaryData", {}).get(f"{name}.onnx", ""))
        if hashlib.sha256(data).hexdigest() != digest:
            raise CrossLinkSpecError("spec.link", f"ConfigMap {configmap['metadata']['name']}: "
                                                  f"link {name} does not match its sha256")
    return summary


# ---- the cross path ------------------------------------------------------------------------
def stage_name(crosslink: str, stage: str, revision: str) -> str:
    return f"{crosslink[:40]}-{stage}-{revision}"


def stage_labels(crosslink: str, stage: str, revision: str) -> dict[str, str]:
    # no splitdnn.io/service label: the SplitPlan rollout removes that service's stages it
    # does not know as old ones
    return {**children.MANAGED_BY, CROSSLINK_LABEL: crosslink, "splitdnn.io/cross-stage": stage,
            "splitdnn.io/revision": revision}


def code_block_args(stage: str, summary: Obj, spec: Obj, local: Obj, host: Obj) -> list[str]:
    args = ["code-block", *model_args(spec, local, host),
            "--path", ",".join(str(v) for v in summary["path"]), "--stage", stage,
            "--out", children.BLOCK_DIR]
    if stage == "cross":
        args += ["--links", LINKS_DIR]
        for name, digest in sorted(summary["sha256"].items()):
            args += ["--link-sha256", f"{name}={digest}"]
    return args


def stage_revision(key: str, stage: str, placement: Obj, image: str, local: Obj) -> str:
    runtime = local["spec"].get("runtime") or {}
    return children.digest(key, stage, placement, image, runtime.get("threads"),
                           runtime.get("batching"), length=6)


def build_cross_deployment(crosslink: Obj, stage: str, summary: Obj, key: str, local: Obj,
                           host: Obj, placement: Obj, next_host: str | None, image: str,
                           config: OperatorConfig) -> Obj:
    """One stage of the cross path: the SplitPlan stage Deployment with a ``code-block``
    init container (and the links ConfigMap mounted below the working directory)."""
    meta, spec = crosslink["metadata"], crosslink["spec"]
    revision = stage_revision(key, stage, placement, image, local)
    owner = {"metadata": meta, "spec": {"serviceRef": {"name": spec["localService"]}}}
    stage_spec = {"name": stage, "layers": [0, 0], **placement}
    deployment = children.build_stage_deployment(owner, stage_spec, local["spec"], revision,
                                                 next_host, image, config)
    labels = stage_labels(meta["name"], stage, revision)
    deployment["metadata"].update(name=stage_name(meta["name"], stage, revision), labels=labels)
    deployment["spec"]["selector"] = {"matchLabels": labels}
    template = deployment["spec"]["template"]
    template["metadata"]["labels"] = labels
    pod = template["spec"]
    init = children.container("code-block", image,
                              code_block_args(stage, summary, spec, local, host))
    if stage == "cross":
        init["volumeMounts"].append({"name": "links", "readOnly": True,
                                     "mountPath": f"{children.WORKDIR}/{LINKS_DIR}"})
        pod["volumes"].append({"name": "links",
                               "configMap": {"name": links_name(meta["name"], key)}})
    pod["initContainers"] = [init]
    return deployment


def build_cross_service(deployment: Obj, config: OperatorConfig) -> Obj:
    """Headless Service of a cross-path stage (``dns+tcp://`` resolves it to its pods)."""
    meta = deployment["metadata"]
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                         "labels": meta["labels"]},
            "spec": {"clusterIP": "None", "selector": meta["labels"],
                     "ports": [{"name": "zmq", "port": config.worker_port,
                                "targetPort": config.worker_port}]}}


def entry_name(crosslink: str) -> str:
    return f"{crosslink[:52]}-cross"


def build_entry_service(crosslink: Obj, head: Obj, config: OperatorConfig) -> Obj:
    """Stable name for the head of the current cross path (the local gateway sends to it)."""
    meta = crosslink["metadata"]
    service = build_cross_service(head, config)
    service["metadata"] = {"name": entry_name(meta["name"]), "namespace": meta["namespace"],
                           "labels": {**children.MANAGED_BY, CROSSLINK_LABEL: meta["name"],
                                      "splitdnn.io/component": "cross-entry"}}
    return service


def source_placement(service: Obj) -> Obj:
    """Node selector and tolerations of a service's source tier (where its gateway runs)."""
    spec = service["spec"]
    tier = next((t for t in spec.get("tiers") or [] if t["name"] == spec["source"]["tier"]),
                None) or {}
    placement: Obj = {"nodeSelector": spec["source"].get("nodeSelector")
                      or tier.get("nodeSelector") or {}}
    if tier.get("tolerations"):
        placement["tolerations"] = tier["tolerations"]
    return placement


def host_placement(plan: Obj | None, host: Obj) -> Obj:
    """Where the host's blocks run: the stage of its active plan with the most layers (its
    heavy part), else its source tier."""
    stages = (plan or {}).get("spec", {}).get("stages") or []
    if not stages:
        return source_placement(host)
    heavy = max(stages, key=lambda s: s["layers"][1] - s["layers"][0])
    placement: Obj = {"nodeSelector": heavy.get("nodeSelector") or {}}
    if heavy.get("tolerations"):
        placement["tolerations"] = heavy["tolerations"]
    return placement


def stage_placements(path: list[int], local: Obj, host: Obj, host_plan: Obj | None
                     ) -> dict[str, Obj]:
    """Head and tail on the local service's source nodes; the cross stage with the host's
    blocks (a skip path's one link belongs to the local service, so it stays local too)."""
    local_nodes = source_placement(local)
    skip = len(readable_path(path)) == 2
    return {"head": local_nodes, "tail": local_nodes,
            "cross": local_nodes if skip else host_placement(host_plan, host)}


# ---- the local gateway ---------------------------------------------------------------------
def offload_share(spec: Obj) -> float:
    """The share of requests the local gateway offloads: ``s / b_l``."""
    return float(spec.get("offloadedSamples", 1)) / float(spec.get("localBatch", 32))


def gateway_cross_args(crosslinks: list[Obj], service: str, namespace: str,
                       config: OperatorConfig) -> list[str]:
    """The local gateway's cross-path options from the first CrossLink (by name) of
    ``service`` whose path is deployed; none without one."""
    deployed = sorted((x for x in crosslinks if x["spec"].get("localService") == service
                       and not x["metadata"].get("deletionTimestamp")
                       and any(c.get("type") == "PathDeployed" and c.get("status") == "True"
                               for c in (x.get("status") or {}).get("conditions") or [])),
                      key=lambda x: str(x["metadata"]["name"]))
    if not deployed:
        return []
    chosen = deployed[0]
    host = children.stage_host(entry_name(chosen["metadata"]["name"]), namespace)
    return ["--cross-endpoint", f"dns+tcp://{host}:{config.worker_port}",
            "--cross-share", f"{offload_share(chosen['spec']):g}",
            "--cross-load-threshold", str(chosen["spec"].get("offloadThresholdInFlight", 0))]


def link_cycle(crosslinks: list[Obj], crosslink: Obj) -> list[str] | None:
    """Services on a cycle of CrossLinks (local → host edges) through ``crosslink``, if any."""
    edges: dict[str, set[str]] = {}
    for item in [*crosslinks, crosslink]:
        if item is not crosslink and item["metadata"].get("deletionTimestamp"):
            continue  # going away: no longer a link
        spec = item["spec"]
        edges.setdefault(spec["localService"], set()).add(spec["hostService"])
    start, first = crosslink["spec"]["localService"], crosslink["spec"]["hostService"]
    trail: dict[str, str | None] = {first: None}
    queue = [first]
    while queue:
        current = queue.pop(0)
        if current == start:
            cycle = [current]
            step = trail[current]
            while step is not None:
                cycle.append(step)
                step = trail[step]
            return [start, *reversed(cycle)]
        for following in sorted(edges.get(current, ())):
            if following not in trail:
                trail[following] = current
                queue.append(following)
    return None
