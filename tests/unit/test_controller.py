"""Pure parts of the operator: conditions, hardware classes, child builders, planning glue."""

from __future__ import annotations

from typing import Any

import pytest

from splitdnn.controller import children, conditions
from splitdnn.controller.config import OperatorConfig
from splitdnn.controller.discovery import discover_classes, node_class, tier_class
from splitdnn.controller.planner import PlanTier, build_problem, placement, plan_spec
from splitdnn.planning import solve


def node(name: str, labels: dict[str, str], kernel: str = "6.1.0", ready: bool = True
         ) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels},
            "status": {"nodeInfo": {"kernelVersion": kernel},
                       "conditions": [{"type": "Ready", "status": "True" if ready else "Unknown"}]}}


def test_conditions_keep_transition_time_until_status_changes() -> None:
    first = conditions.set_condition([], "Ready", False, "Analysing", "job running", 1)
    first[0]["lastTransitionTime"] = "2000-01-01T00:00:00Z"
    same = conditions.set_condition(first, "Ready", False, "Profiling", "other", 2)
    assert same[0]["lastTransitionTime"] == "2000-01-01T00:00:00Z"
    assert same[0]["reason"] == "Profiling" and same[0]["observedGeneration"] == 2
    flipped = conditions.set_condition(same, "Ready", True, "Serving")
    assert flipped[0]["lastTransitionTime"] != "2000-01-01T00:00:00Z"


def test_stalled_and_ready_summaries_are_exclusive() -> None:
    stalled = conditions.stalled([], "InvalidSpec", "spec.model.source: bad", 3)
    assert conditions.is_true(stalled, "Stalled")
    assert not conditions.is_true(stalled, "Ready")
    assert not conditions.is_true(stalled, "Reconciling")
    ready = conditions.ready(stalled, "Serving", "ok", 3)
    assert conditions.is_true(ready, "Ready") and not conditions.is_true(ready, "Stalled")
    waiting = conditions.progressing(ready, "Profiling", "jobs", 4)
    assert conditions.is_true(waiting, "Reconciling") and not conditions.is_true(waiting, "Ready")


def test_hardware_classes_from_the_label_map() -> None:
    nodes = [
        node("gpu-1", {"nvidia.com/gpu.product": "Tesla-V100-SXM2-16GB"}),
        node("gpu-2", {"nvidia.com/gpu.product": "Tesla-V100-SXM2-16GB"}, ready=False),
        node("board", {"kubernetes.io/arch": "arm64"}, kernel="4.9.337-tegra"),
        node("pi", {"kubernetes.io/arch": "arm64"}),
        node("labelled", {"splitdnn.io/device-class": "Jetson Nano",
                          "nvidia.com/gpu.product": "x"}),
    ]
    classes = discover_classes(nodes)
    assert set(classes) == {"tesla-v100-sxm2-16gb", "jetson", "cpu-arm64", "jetson-nano"}
    assert classes["tesla-v100-sxm2-16gb"].nodes == ["gpu-1", "gpu-2"]
    assert classes["tesla-v100-sxm2-16gb"].ready_nodes == ["gpu-1"]
    assert classes["jetson-nano"].selector == {"splitdnn.io/device-class": "Jetson Nano"}
    assert node_class(nodes[4], ("nvidia.com/gpu.product",))[0] == "x"
    assert tier_class(nodes, {"kubernetes.io/arch": "arm64"}) == "jetson"
    assert tier_class(nodes, {"missing": "label"}) is None


SERVICE: dict[str, Any] = {
    "apiVersion": "splitdnn.io/v1alpha1", "kind": "DNNService",
    "metadata": {"name": "rn", "namespace": "ns", "uid": "u1"},
    "spec": {"model": {"source": "torchvision:resnet18", "inputShape": [1, 3, 224, 224]},
             "source": {"tier": "edge"}, "runtime": {"threads": 2}},
}
PLAN: dict[str, Any] = {
    "apiVersion": "splitdnn.io/v1alpha1", "kind": "SplitPlan",
    "metadata": {"name": "rn", "namespace": "ns", "uid": "u2"},
    "spec": {"serviceRef": {"name": "rn"}, "stages": [
        {"name": "stage0", "tier": "edge", "layers": [0, 12], "nodeSelector": {"a": "b"}},
        {"name": "stage1", "tier": "gpu", "layers": [13, 48], "blockSha256": "f" * 64,
         "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]}]},
}


def test_stage_deployment_is_wired_checked_and_restricted() -> None:
    config = OperatorConfig()
    stage = PLAN["spec"]["stages"][1]
    revision = children.stage_revision(SERVICE["spec"], stage)
    deployment = children.build_stage_deployment(PLAN, stage, SERVICE["spec"], revision, None,
                                                 "img", config)
    pod = deployment["spec"]["template"]["spec"]
    init, worker = pod["initContainers"][0], pod["containers"][0]
    assert init["args"][:2] == ["fetch-block", "--model"]
    assert init["args"][init["args"].index("--layers") + 1] == "13,48"
    assert init["args"][init["args"].index("--block-sha256") + 1] == "f" * 64
    assert "--next" not in worker["args"]  # the last stage replies to the gateway
    assert worker["args"][worker["args"].index("--threads") + 1] == "2"
    assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert worker["lifecycle"]["preStop"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert worker["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert worker["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["tolerations"] == stage["tolerations"]
    assert deployment["spec"]["selector"]["matchLabels"] == \
        deployment["spec"]["template"]["metadata"]["labels"]
    first = children.build_stage_deployment(PLAN, PLAN["spec"]["stages"][0], SERVICE["spec"],
                                            "abc", "rn-stage1-x.ns.svc.cluster.local", "img",
                                            config)
    args = first["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--next") + 1] == "dns+tcp://rn-stage1-x.ns.svc.cluster.local:5555"
    assert first["spec"]["template"]["spec"]["nodeSelector"] == {"a": "b"}


def test_stage_revision_changes_with_what_the_stage_runs_only() -> None:
    stage = dict(PLAN["spec"]["stages"][0])
    base = children.stage_revision(SERVICE["spec"], stage)
    assert children.stage_revision(SERVICE["spec"], {**stage, "replicas": 3}) == base
    assert children.stage_revision(SERVICE["spec"], {**stage, "layers": [0, 17]}) != base
    service = {**SERVICE["spec"], "model": {"source": "torchvision:resnet34"}}
    assert children.stage_revision(service, stage) != base


def test_stage_service_is_headless_and_selects_its_revision() -> None:
    svc = children.build_stage_service(PLAN, PLAN["spec"]["stages"][0], "r1", OperatorConfig())
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"]["splitdnn.io/revision"] == "r1"
    assert svc["metadata"]["name"] == "rn-stage0-r1"


def test_jobs_fail_fast_on_bad_input_and_pin_profiling_to_a_node() -> None:
    analysis = children.build_analysis_job(SERVICE, "img")
    assert analysis["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [2]
    assert analysis["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert analysis["spec"]["template"]["spec"]["containers"][0]["args"][:2] == [
        "model-facts", "torchvision:resnet18"]
    profile = children.build_profile_job(SERVICE, "jetson-nano", "board-1", "img", [],
                                         OperatorConfig())
    spec = profile["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"kubernetes.io/hostname": "board-1"}
    args = spec["containers"][0]["args"]
    assert args[args.index("--hardware-class") + 1] == "jetson-nano"
    assert args[args.index("--sample-fraction") + 1] == "0.5"


def test_gateway_sends_to_the_first_stage_from_the_source_tier() -> None:
    manifest = children.gateway_manifest(
        {"model": "torchvision:resnet18", "input": {"name": "x"}, "output": {"name": "y"}})
    gateway = children.build_gateway_deployment(SERVICE, "rn", "rn-stage0-r.ns.svc.cluster.local",
                                                manifest, "img", OperatorConfig(), {"a": "b"}, [])
    pod = gateway["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args[args.index("--first") + 1] == "dns+tcp://rn-stage0-r.ns.svc.cluster.local:5555"
    assert pod["nodeSelector"] == {"a": "b"}
    assert gateway["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    other = children.build_gateway_deployment(SERVICE, "pinned", "rn-stage0-r.ns.svc.cluster.local",
                                              manifest, "img", OperatorConfig(), {"a": "b"}, [])
    assert other["spec"]["template"] == gateway["spec"]["template"]  # a replan: no restart
    assert children.gateway_url("rn", "ns", OperatorConfig()) == \
        "http://rn-gateway.ns.svc.cluster.local:8000"


def test_entry_service_selects_the_first_stage() -> None:
    labels = children.stage_labels("rn", "rn", "stage0", "r1")
    entry = children.build_entry_service(SERVICE, labels, OperatorConfig(), "12.5")
    assert entry["metadata"]["name"] == "rn-entry"
    assert entry["spec"] == {"clusterIP": "None", "selector": labels, "ports": [
        {"name": "zmq", "port": 5555, "targetPort": 5555}]}
    assert entry["metadata"]["annotations"] == {"splitdnn.io/switched-at": "12.5"}


def test_image_per_hardware_class() -> None:
    config = OperatorConfig(image_cpu="cpu", image_cuda="cuda", image_l4t="l4t")
    assert config.image_for("jetson-nano", {"splitdnn.io/device-class": "jetson-nano"}) == "l4t"
    assert config.image_for("v100", {"nvidia.com/gpu.product": "V100"}) == "cuda"
    assert config.image_for("cpu-amd64", {"kubernetes.io/arch": "amd64"}) == "cpu"


ANALYSIS: dict[str, Any] = {
    "model": "m", "input": {"name": "x", "shape": [1, 3, 8, 8], "dtype": "float32"},
    "output": {"name": "y", "shape": [1, 10], "dtype": "float32"},
    "layers": [{}] * 6,
    "segments": [{"index": 0, "first_layer": 0, "last_layer": 1, "output_bytes": 100,
                  "params_bytes": 10},
                 {"index": 1, "first_layer": 2, "last_layer": 4, "output_bytes": 1_000_000,
                  "params_bytes": 10},
                 {"index": 2, "first_layer": 5, "last_layer": 5, "output_bytes": 40,
                  "params_bytes": 10}],
}


def costs(*latencies: float) -> list[dict[str, Any]]:
    return [{"latency_ms": value, "energy_mj": None} for value in latencies]


@pytest.mark.parametrize(("edge", "server", "expected"), [
    # a slow server: everything stays on the edge
    ((1.0, 1.0, 1.0), (50.0, 50.0, 50.0), "edge[0-5]"),
    # a fast server for the heavy middle, but its 1 MB output is costly to send back: cut
    # after the small first segment and stay on the server
    ((1.0, 100.0, 100.0), (5.0, 1.0, 1.0), "edge[0-1] gpu[2-5]"),
])
def test_plan_from_costs_and_back_to_layers(edge: tuple[float, ...], server: tuple[float, ...],
                                            expected: str) -> None:
    tiers = [PlanTier("edge", "jetson", {"e": "1"}),
             PlanTier("gpu", "v100", {"g": "1"}, [{"key": "k", "operator": "Exists"}])]
    spec = {"source": {"tier": "edge"}, "objective": {"maxStages": 3}}
    problem = build_problem(ANALYSIS, tiers, {"jetson": costs(*edge), "v100": costs(*server)},
                            spec, (100.0, 1.0))
    assert problem.input_bytes == 3 * 8 * 8 * 4
    plan = plan_spec("svc", solve(problem, "latency"), problem, ANALYSIS, tiers)
    assert placement(plan["stages"]) == expected
    assert plan["serviceRef"] == {"name": "svc"} and plan["predicted"]["latencyMs"] > 0
    for stage in plan["stages"]:
        tier = next(t for t in tiers if t.name == stage["tier"])
        assert stage["nodeSelector"] == tier.node_selector
        assert stage.get("tolerations", []) == tier.tolerations


def test_demo_adapts_the_example_to_the_emulated_cluster() -> None:
    from pathlib import Path

    import yaml

    from splitdnn.controller.demo import adapt_example

    said: list[str] = []
    example = yaml.safe_load((Path(__file__).parents[2] / "manifests/examples/dnnservice.yaml")
                             .read_text())
    adapted = adapt_example(example, said.append)
    assert "nodeSelector" not in adapted["spec"]["source"] and "slo" not in adapted["spec"]
    assert len(said) == 2 and adapted["spec"]["tiers"] == example["spec"]["tiers"]


def test_link_profile_gives_bandwidth_from_the_large_transfers() -> None:
    from splitdnn.controller.planner import link_from_profile

    # 40 Mbit/s with 1 ms each way: rtt = 2 + bytes * 8 / 40_000 ms
    sizes = [1024, 65536, 1 << 20, 4 << 20]
    profile = {"sizes_bytes": sizes, "rtt_ms": [2 + size * 8 / 40_000 for size in sizes],
               "fits": {"linear": {"latency_ms": 0.0, "bandwidth_mb_s": 7.6}}}
    bandwidth, latency = link_from_profile(profile)
    assert bandwidth == pytest.approx(40.0) and latency == pytest.approx(1.0)
    tiers = [PlanTier("edge", "jetson", {}), PlanTier("gpu", "v100", {})]
    problem = build_problem(ANALYSIS, tiers, {"jetson": costs(1, 1, 1), "v100": costs(1, 1, 1)},
                            {"source": {"tier": "edge"}}, (100.0, 2.0),
                            {("v100", "jetson"): (bandwidth, latency)})
    assert sorted((link.from_, round(link.bandwidth_mbps, 6)) for link in problem.links) == [
        ("edge", 40.0), ("gpu", 40.0)]


def test_netprofile_client_waits_for_the_server_ip() -> None:
    jobs = children.build_netprofile_jobs(SERVICE, ("a", "b"), "n1", "n2", None, ("i", "j"),
                                          ([], []))
    assert len(jobs) == 1 and jobs[0]["spec"]["template"]["spec"]["nodeSelector"] == {
        "kubernetes.io/hostname": "n1"}
    _, client = children.build_netprofile_jobs(SERVICE, ("a", "b"), "n1", "n2", "10.0.0.5",
                                               ("i", "j"), ([], []))
    args = client["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:3] == ["netprofile", "--peer", "tcp://10.0.0.5:5557"]
    assert client["spec"]["template"]["spec"]["nodeSelector"] == {"kubernetes.io/hostname": "n2"}


@pytest.mark.parametrize(("args", "message"), [
    (["operator", "--standalone"], "--all-namespaces or --namespace"),
    (["operator", "--all-namespaces"], "--standalone or --peering"),
    (["operator", "--all-namespaces", "--standalone", "--log-level=loud"], "--log-level"),
    (["plan-gateway", "--first", "tcp://x:1"], "--manifest-env"),
    (["model-facts", "torchvision:no_such_net"], "no_such_net"),
])
def test_operator_commands_refuse_bad_input_with_exit_2(args: list[str], message: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from splitdnn.cli import app

    monkeypatch.delenv("SPLITDNN_GATEWAY_MANIFEST", raising=False)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
