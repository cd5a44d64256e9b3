"""The CrossLink controller's pure parts: Job arguments, the links ConfigMap, the cross-path
stages, the local gateway's options, cycles, and errors naming the field."""

from __future__ import annotations

import base64
import copy
import hashlib
from typing import Any

import pytest

from splitdnn.controller import children
from splitdnn.controller import crosslink_children as xc
from splitdnn.controller.config import OperatorConfig
from splitdnn.controller.crosslink import failed_field

CONFIG = OperatorConfig()


def service(name: str, source: str = "torchvision:resnet18",
            selector: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "splitdnn.io/v1alpha1", "kind": "DNNService",
            "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}"},
            "spec": {"model": {"source": source, "inputShape": [1, 3, 32, 32]},
                     "source": {"tier": "edge", "nodeSelector": selector or {"n": name}}}}


def crosslink(name: str = "xl", local: str = "small", host: str = "big",
              **spec: Any) -> dict[str, Any]:
    body = {"apiVersion": "splitdnn.io/v1alpha1", "kind": "CrossLink",
            "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}"},
            "spec": {"localService": local, "hostService": host, "path": [0, 1, 2, 1],
                     "training": {"data": {"source": "sklearn:digits"}},
                     "offloadedSamples": 8, "localBatch": 32, "offloadThresholdInFlight": 4}}
    body["spec"].update(spec)
    return body


def result(*sizes: int) -> dict[str, Any]:
    links = {}
    for name, size in zip(("entry", "exit"), sizes, strict=False):
        data = bytes(size)
        links[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": size,
                       "base64": base64.b64encode(data).decode()}
    return {"path": [0, 1, 2, 1], "accuracy": 0.8, "avg_accuracy": 0.85,
            "throughput_gain": 12.5, "reward": 10.0, "main_accuracy": 0.9, "trainings": 1,
            "links": links}


def test_training_job_trains_the_given_path_on_both_models() -> None:
    job = xc.build_training_job(crosslink(), service("small"), service("big",
                                "torchvision:mobilenet_v2"), "img")
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "code-train" and args[args.index("--path") + 1] == "0,1,2,1"
    assert args[args.index("--host") + 1] == "torchvision:mobilenet_v2"
    assert args[args.index("--local-input-shape") + 1] == "1,3,32,32"
    assert args[args.index("--learning-rate") + 1] == "0.01"
    assert job["metadata"]["labels"][xc.CROSSLINK_LABEL] == "xl"
    assert job["spec"]["podFailurePolicy"] == children.JOB_POD_FAILURE_POLICY


def test_a_search_request_runs_the_search_with_its_parameters() -> None:
    body = crosslink(path=None, search={"aMin": 0.8, "exhaustive": True})
    args = xc.training_args(body["spec"], service("small"), service("big"))
    assert "--path" not in args and "--exhaustive" in args
    assert args[args.index("--a-min") + 1] == "0.8"
    assert xc.build_training_job(body, service("small"), service("big"), "i")["metadata"][
        "name"].startswith("xl-search-")


def test_the_training_key_follows_the_spec_and_the_models() -> None:
    small, big = service("small"), service("big")
    key = xc.training_key(crosslink()["spec"], small, big)
    assert key == xc.training_key(crosslink(offloadThresholdInFlight=9)["spec"], small, big)
    assert key != xc.training_key(crosslink(path=[0, 1, 1, 1])["spec"], small, big)
    assert key != xc.training_key(crosslink()["spec"], small,
                                  service("big", "torchvision:alexnet"))


def test_a_pvc_dataset_mounts_its_claim_read_only_in_the_training_job() -> None:
    body = crosslink(training={"data": {"source": "pvc://datasets/cifar/train.npz"}})
    job = xc.build_training_job(body, service("small"), service("big"), "img")
    pod = job["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args[args.index("--data") + 1] == "pvc://datasets/cifar/train.npz"
    assert "--data-sha256" not in args
    assert {"name": "model", "persistentVolumeClaim": {"claimName": "datasets",
                                                       "readOnly": True}} in pod["volumes"]
    assert {"name": "model", "mountPath": "/mnt/pvc/datasets", "readOnly": True} in \
        pod["containers"][0]["volumeMounts"]


def test_an_https_dataset_is_fetched_with_its_sha256() -> None:
    digest = "ab" * 32
    body = crosslink(training={"data": {"source": "https://data.example/d.npz",
                                        "sha256": digest}})
    job = xc.build_training_job(body, service("small"), service("big"), "img")
    pod = job["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args[args.index("--data") + 1: args.index("--data") + 4] == \
        ["https://data.example/d.npz", "--data-sha256", digest]
    assert all("persistentVolumeClaim" not in v for v in pod["volumes"])
    other = crosslink(training={"data": {"source": "https://data.example/d.npz",
                                         "sha256": "cd" * 32}})
    assert xc.training_key(body["spec"], service("small"), service("big")) != \
        xc.training_key(other["spec"], service("small"), service("big"))  # new data: retrain


@pytest.mark.parametrize(("spec", "local", "field"), [
    ({}, "pvc://models/m.onnx", "spec.localService"),
    ({"training": {"data": {"source": "sklearn:iris"}}}, "torchvision:resnet18",
     "spec.training.data.source"),
    ({"training": {"data": {"source": "pvc://datasets"}}}, "torchvision:resnet18",
     "spec.training.data.source"),
    ({"training": {"data": {"source": "https://data.example/d.npz"}}}, "torchvision:resnet18",
     "spec.training.data.sha256"),
])
def test_what_the_job_cannot_do_is_refused_naming_the_field(spec: dict[str, Any], local: str,
                                                             field: str) -> None:
    with pytest.raises(xc.CrossLinkSpecError) as error:
        xc.training_args(crosslink(**spec)["spec"], service("small", local), service("big"))
    assert error.value.field == field and str(error.value).startswith(field)


def test_a_service_with_its_own_weights_cannot_be_linked() -> None:
    weighted = service("big")
    weighted["spec"]["model"]["weights"] = {"source": "pvc://weights/r18.pt"}
    with pytest.raises(xc.CrossLinkSpecError, match=r"spec\.model\.weights") as error:
        xc.training_args(crosslink()["spec"], service("small"), weighted)
    assert error.value.field == "spec.hostService"


def test_links_configmap_holds_the_onnx_bytes_and_their_digests() -> None:
    cm = xc.build_links_configmap(crosslink(), result(100, 200), "k1")
    assert set(cm["binaryData"]) == {"entry.onnx", "exit.onnx"}
    summary = xc.stored_links(cm)
    assert summary["path"] == [0, 1, 2, 1] and set(summary["sha256"]) == {"entry", "exit"}
    assert "links" not in summary and cm["metadata"]["labels"][xc.KEY_LABEL] == "k1"
    tampered = copy.deepcopy(cm)
    tampered["binaryData"]["exit.onnx"] = base64.b64encode(b"other").decode()
    with pytest.raises(xc.CrossLinkSpecError, match="link exit does not match"):
        xc.stored_links(tampered)


def test_links_too_large_for_a_configmap_name_spec_link() -> None:
    with pytest.raises(xc.CrossLinkSpecError) as error:
        xc.build_links_configmap(crosslink(), result(400_000, 400_000), "k")
    assert error.value.field == "spec.link" and "reduced" in str(error.value)


def cross_stage(stage: str, next_host: str | None = None) -> dict[str, Any]:
    summary = xc.stored_links(xc.build_links_configmap(crosslink(), result(10, 20), "k"))
    return xc.build_cross_deployment(crosslink(), stage, summary, "k", service("small"),
                                     service("big"), {"nodeSelector": {"gpu": "yes"}},
                                     next_host, "img", CONFIG)


def test_the_cross_stage_builds_its_block_checking_the_link_digests() -> None:
    deployment = cross_stage("cross", "xl-tail-abc.ns.svc.cluster.local")
    pod = deployment["spec"]["template"]["spec"]
    init = pod["initContainers"][0]
    assert init["args"][:1] == ["code-block"]
    assert init["args"][init["args"].index("--stage") + 1] == "cross"
    assert sum(a.startswith("entry=") or a.startswith("exit=") for a in init["args"]) == 2
    assert {"name": "links", "readOnly": True, "mountPath": "/work/links"} in \
        init["volumeMounts"]
    assert {"name": "links", "configMap": {"name": "xl-links-k"}} in pod["volumes"]
    assert pod["nodeSelector"] == {"gpu": "yes"}
    worker = pod["containers"][0]["args"]
    assert worker[worker.index("--next") + 1] == "dns+tcp://xl-tail-abc.ns.svc.cluster.local:5555"
    labels = deployment["metadata"]["labels"]
    assert "splitdnn.io/service" not in labels  # else the local plan's rollout removes it
    assert deployment["spec"]["selector"]["matchLabels"] == labels == \
        deployment["spec"]["template"]["metadata"]["labels"]


def test_head_and_tail_need_no_links_and_the_tail_answers_the_gateway() -> None:
    for stage in ("head", "tail"):
        pod = cross_stage(stage)["spec"]["template"]["spec"]
        assert "--links" not in pod["initContainers"][0]["args"]
        assert all("configMap" not in v for v in pod["volumes"])
    assert "--next" not in cross_stage("tail")["spec"]["template"]["spec"]["containers"][0][
        "args"]


def test_the_host_stage_goes_where_the_host_plan_runs_most_layers() -> None:
    plan = {"spec": {"stages": [{"layers": [0, 10], "nodeSelector": {"tier": "edge"}},
                                {"layers": [11, 60], "nodeSelector": {"tier": "gpu"},
                                 "tolerations": [{"key": "gpu"}]}]}}
    assert xc.host_placement(plan, service("big")) == {"nodeSelector": {"tier": "gpu"},
                                                       "tolerations": [{"key": "gpu"}]}
    assert xc.host_placement(None, service("big")) == {"nodeSelector": {"n": "big"}}


def deployed(body: dict[str, Any]) -> dict[str, Any]:
    body["status"] = {"conditions": [{"type": "PathDeployed", "status": "True"}]}
    return body


def test_gateway_options_only_once_the_path_is_deployed() -> None:
    assert xc.gateway_cross_args([crosslink()], "small", "ns", CONFIG) == []
    args = xc.gateway_cross_args([deployed(crosslink())], "small", "ns", CONFIG)
    assert args == ["--cross-endpoint", "dns+tcp://xl-cross.ns.svc.cluster.local:5555",
                    "--cross-share", "0.25", "--cross-load-threshold", "4"]
    assert xc.gateway_cross_args([deployed(crosslink())], "big", "ns", CONFIG) == []
    gateway = children.build_gateway_deployment(service("small"), "small", "e", {}, "img",
                                                CONFIG, {}, [], args)
    assert gateway["spec"]["template"]["spec"]["containers"][0]["args"][-6:] == args


def test_cycles_of_crosslinks_are_found() -> None:
    existing = [crosslink("a", "s1", "s2"), crosslink("b", "s2", "s3")]
    assert xc.link_cycle(existing, crosslink("c", "s3", "s1")) == ["s3", "s1", "s2", "s3"]
    assert xc.link_cycle(existing, crosslink("d", "s1", "s3")) is None
    assert xc.link_cycle([], crosslink("e", "s1", "s2")) is None
    going = crosslink("b", "s2", "s3")
    going["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert xc.link_cycle([existing[0], going], crosslink("c", "s3", "s1")) is None


@pytest.mark.parametrize(("log", "field"), [
    ("error: --path: path [0, 1, 5, 1]: need 0 <= hin <= hout < N_h=4", "spec.path"),
    ("error: blocks: torchvision:resnet18 has 10 compute units, so", "spec.localBlocks"),
    ("error: blocks: torchvision:alexnet has 8 compute units, so it divides", "spec.hostBlocks"),
    ("Killed", "spec.training"),
    ("error: --data-sha256: https://d.example/x.npz: sha256 00 does not match the expected ab",
     "spec.training.data.sha256"),
    ("error: --data: pvc://c/x.npz: x holds samples of shape [1, 8, 8], the local model takes "
     "[3, 32, 32]", "spec.training.data.source"),
])
def test_a_failed_training_job_names_the_field(log: str, field: str) -> None:
    assert failed_field(log, "torchvision:resnet18") == field


def test_status_writes_a_skip_path_as_the_api_does() -> None:
    from splitdnn.coordination.paths import N_F

    assert xc.readable_path([1, N_F, N_F, 3]) == [1, 3]
    assert xc.readable_path([1, 0, 2, 3]) == [1, 0, 2, 3]


def test_a_skip_path_keeps_its_link_stage_on_the_local_nodes() -> None:
    plan = {"spec": {"stages": [{"layers": [0, 60], "nodeSelector": {"tier": "gpu"}}]}}
    small, big = service("small"), service("big")
    cross = xc.stage_placements([0, 1, 2, 3], small, big, plan)
    assert cross["cross"] == {"nodeSelector": {"tier": "gpu"}}
    assert cross["head"] == cross["tail"] == {"nodeSelector": {"n": "small"}}
    skip = xc.stage_placements([1, 1000, 1000, 3], small, big, plan)
    assert skip["cross"] == {"nodeSelector": {"n": "small"}}
