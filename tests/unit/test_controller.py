"""Pure parts of the operator: conditions, hardware classes, child builders, planning glue."""

from __future__ import annotations

import json
from typing import Any

import pytest

from splitdnn.controller import children, conditions, drift, events
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


def test_gpu_stages_and_profiles_get_the_configured_gpu_access(
        monkeypatch: pytest.MonkeyPatch) -> None:
    stage = PLAN["spec"]["stages"][1]
    limits = {"cpu": "2"}
    service = {**SERVICE["spec"], "runtime": {"resources": {"limits": limits}}}

    def worker_pod(config: OperatorConfig, gpu: bool) -> Any:
        return children.build_stage_deployment(PLAN, stage, service, "r", None, "img", config,
                                               gpu)["spec"]["template"]["spec"]

    plain = worker_pod(OperatorConfig(), gpu=True)  # nothing configured: nothing added
    assert "runtimeClassName" not in plain and plain["containers"][0]["resources"] == {
        "limits": limits}
    monkeypatch.setenv("SPLITDNN_GPU_RUNTIME_CLASS", "nvidia")
    monkeypatch.setenv("SPLITDNN_GPUS_PER_POD", "1")
    config = OperatorConfig.from_env()
    pod = worker_pod(config, gpu=True)
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": 1, "cpu": "2"}
    assert "resources" not in pod["initContainers"][0]  # fetching a block needs no GPU
    assert limits == {"cpu": "2"}  # the service's spec is not changed
    cpu_pod = worker_pod(config, gpu=False)
    assert "runtimeClassName" not in cpu_pod
    assert cpu_pod["containers"][0]["resources"] == {"limits": limits}
    profile = children.build_profile_job(SERVICE, "v100", "gpu-1", "img", [], config, gpu=True)
    spec = profile["spec"]["template"]["spec"]
    assert spec["runtimeClassName"] == "nvidia"
    args = spec["containers"][0]["args"]
    assert args[args.index("--provider") + 1] == "auto"
    assert config.gpu_class("v100", {"nvidia.com/gpu.product": "V100"})
    assert config.gpu_class("jetson-nano", {"splitdnn.io/device-class": "jetson-nano"})
    assert not config.gpu_class("x86", {"kubernetes.io/arch": "amd64"})


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
    (["block-digests", "torchvision:resnet18", "--layers", "9-2"], "--layers"),
    (["block-digests", "torchvision:resnet18", "--layers", ","], "--layers"),
    (["block-digests", "torchvision:no_such_net", "--layers", "0-1"], "no_such_net"),
])
def test_operator_commands_refuse_bad_input_with_exit_2(args: list[str], message: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from splitdnn.cli import app

    monkeypatch.delenv("SPLITDNN_GATEWAY_MANIFEST", raising=False)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output


# ---- latency drift ---------------------------------------------------------------------------
POLICY = drift.Policy(auto=True, drift_percent=25, persist_seconds=30, min_interval_seconds=60,
                      min_improvement_percent=10)


def seen(measured: float | None, since: float | None = None, planned_at: float = 0.0,
         checked_at: float | None = None, now: float = 1000.0,
         predicted: float | None = 100.0) -> drift.Observation:
    return drift.Observation(now=now, predicted_ms=predicted, measured_ms=measured,
                             planned_at=planned_at, since=since, checked_at=checked_at)


@pytest.mark.parametrize(("policy", "observation", "action", "since"), [
    # Manual mode never replans for drift, however large
    (drift.Policy(auto=False), seen(500.0, since=0.0), drift.Action.STEADY, None),
    # nothing measured lately (no requests) or nothing predicted: no evidence, forget the drift
    (POLICY, seen(None, since=900.0), drift.Action.STEADY, None),
    (POLICY, seen(150.0, since=900.0, predicted=None), drift.Action.STEADY, None),
    # within the threshold, either way, the boundary included: steady, drift forgotten
    (POLICY, seen(125.0, since=900.0), drift.Action.STEADY, None),
    (POLICY, seen(75.0, since=900.0), drift.Action.STEADY, None),
    # beyond it: remembered from now, then kept while it lasts
    (POLICY, seen(126.0), drift.Action.DRIFTING, 1000.0),
    (POLICY, seen(60.0), drift.Action.DRIFTING, 1000.0),
    (POLICY, seen(200.0, since=980.0), drift.Action.DRIFTING, 980.0),
    # a remembered start in the future (clock skew) starts again now
    (POLICY, seen(200.0, since=5000.0), drift.Action.DRIFTING, 1000.0),
    # lasted long enough, but the plan is younger than the minimum interval
    (POLICY, seen(200.0, since=970.0, planned_at=950.0), drift.Action.HOLD, 970.0),
    # lasted, plan old enough, but a check found no better plan less than 60 s ago
    (POLICY, seen(200.0, since=900.0, checked_at=950.0), drift.Action.HOLD, 900.0),
    # lasted, plan old enough, last check long ago (or never): plan with the measured costs
    (POLICY, seen(200.0, since=970.0), drift.Action.EVALUATE, 970.0),
    (POLICY, seen(40.0, since=900.0, planned_at=900.0, checked_at=900.0),
     drift.Action.EVALUATE, 900.0),
    # no persistence asked for: at once
    (drift.Policy(persist_seconds=0, min_interval_seconds=0), seen(200.0),
     drift.Action.EVALUATE, 1000.0),
])
def test_drift_decision(policy: drift.Policy, observation: drift.Observation,
                        action: drift.Action, since: float | None) -> None:
    decision = drift.decide(policy, observation)
    assert decision.action is action, decision.message
    assert decision.since == since
    if observation.measured_ms and observation.predicted_ms:
        assert decision.percent == pytest.approx(observation.measured_ms - 100.0)


def test_drift_policy_from_the_spec_and_its_defaults() -> None:
    assert drift.Policy.from_spec(None) == drift.Policy()
    policy = drift.Policy.from_spec({"mode": "Manual", "latencyDriftPercent": 5,
                                     "driftPersistSeconds": 1, "minIntervalSeconds": 2,
                                     "minImprovementPercent": 3})
    assert policy == drift.Policy(False, 5, 1, 2, 3)


@pytest.mark.parametrize(("objective", "current", "candidate", "better"), [
    ("latency", 100.0, 90.0, True), ("latency", 100.0, 90.1, False),
    ("latency", 100.0, 100.0, False), ("energy", 50.0, 40.0, True),
    ("throughput", 10.0, 11.0, True), ("throughput", 10.0, 10.9, False),
    ("latency", float("inf"), 500.0, True),  # the current plan no longer fits the cluster
])
def test_a_new_plan_must_be_better_by_the_minimum(objective: str, current: float,
                                                  candidate: float, better: bool) -> None:
    assert drift.improves(objective, current, candidate, 10) is better
    assert not drift.improves(objective, current, current, 0)  # the same is never better


def test_class_scale_from_stage_measurements() -> None:
    base = {"jetson": costs(1.0, 4.0, 1.0), "v100": costs(0.5, 1.0, 0.5)}
    stages = [{"name": "stage0", "tier": "edge", "layers": [0, 4]},
              {"name": "stage1", "tier": "gpu", "layers": [5, 5]}]
    tier_class = {"edge": "jetson", "gpu": "v100"}
    measured = [{"name": "stage0", "latencyMs": 15.0}, {"name": "stage1", "latencyMs": 0.5}]
    # jetson: 15 ms measured for 1 + 4 predicted; v100 as predicted; a factor of a class not
    # in the plan is kept
    assert drift.class_scale(stages, measured, tier_class, ANALYSIS, base, {"tpu": 2.0},
                             100.0, 150.0) == {"jetson": 3.0, "tpu": 2.0, "v100": 1.0}
    # no stage measured: the end-to-end ratio on every class the plan uses, on top of the old
    assert drift.class_scale(stages, [], tier_class, ANALYSIS, base, {"jetson": 2.0},
                             100.0, 150.0) == {"jetson": 3.0, "v100": 1.5}
    # absurd measurements are bounded
    assert drift.class_scale(stages, [{"name": "stage0", "latencyMs": 1e6}], tier_class,
                             ANALYSIS, base, {}, None, None) == {"jetson": 10.0}
    scaled = drift.scaled_costs(base, {"jetson": 3.0})
    assert [c["latency_ms"] for c in scaled["jetson"]] == [3.0, 12.0, 3.0]
    assert scaled["v100"] == base["v100"]


def test_a_drift_replan_moves_work_off_the_slow_class() -> None:
    """The measured factor feeds the problem: the plan made with it differs, and it beats the
    current plan evaluated under the same corrected costs."""
    from splitdnn.controller.dnnservice import plan_figure

    tiers = [PlanTier("edge", "jetson", {}), PlanTier("gpu", "v100", {})]
    spec = {"source": {"tier": "edge"}, "objective": {"maxStages": 3}}
    base = {"jetson": costs(1.0, 5.0, 1.0), "v100": costs(1.0, 4.0, 1.0)}
    before = solve(build_problem(ANALYSIS, tiers, base, spec, (100.0, 1.0)), "latency")
    stages = plan_spec("svc", before, build_problem(ANALYSIS, tiers, base, spec, (100.0, 1.0)),
                       ANALYSIS, tiers)["stages"]
    assert placement(stages) == "edge[0-5]"
    scale = drift.class_scale(stages, [{"name": "stage0", "latencyMs": 70.0}],
                              {"edge": "jetson", "gpu": "v100"}, ANALYSIS, base, {}, 7.0, 70.0)
    problem = build_problem(ANALYSIS, tiers, drift.scaled_costs(base, scale), spec, (100.0, 1.0))
    after = solve(problem, "latency")
    assert placement(plan_spec("svc", after, problem, ANALYSIS, tiers)["stages"]) != "edge[0-5]"
    current = plan_figure(problem, ANALYSIS, stages, "latency")
    assert current == pytest.approx(70.0)
    assert drift.improves("latency", current, after.best.latency_ms, 10)
    gone = [{"name": "stage0", "tier": "tpu", "layers": [0, 5]}]
    assert plan_figure(problem, ANALYSIS, gone, "latency") == float("inf")


def test_plan_annotations_round_trip() -> None:
    from splitdnn.controller.conditions import format_time, parse_time
    from splitdnn.controller.dnnservice import SCALE_ANNOTATION, planned_at, stored_scale

    plan = {"metadata": {"annotations": {SCALE_ANNOTATION: json.dumps(
        {"model": "k1", "classes": {"jetson": 2.5}})}, "creationTimestamp": format_time(100.0)}}
    assert stored_scale(plan, "k1") == {"jetson": 2.5}
    assert stored_scale(plan, "another model") == {} and stored_scale(None, "k1") == {}
    assert planned_at(plan) == 100.0 and parse_time("not a time") is None
    plan["metadata"]["annotations"]["splitdnn.io/planned-at"] = "250"
    assert planned_at(plan) == 250.0


# ---- measurements ------------------------------------------------------------------------
def test_latency_window_uses_only_recent_requests() -> None:
    from splitdnn.controller import metrics

    def values(seconds: float, count: float, sent: float) -> dict[str, float]:
        return {"splitdnn_stage_latency_seconds_sum": seconds,
                "splitdnn_stage_latency_seconds_count": count, "splitdnn_sent_bytes_total": sent}

    metrics.remember("pod-a", values(100.0, 1000, 0.0), 0.0)  # old, slow requests
    metrics.remember("pod-a", values(100.0, 1000, 0.0), 30.0)
    samples = metrics.remember("pod-a", values(101.0, 1100, 500.0), 70.0)
    assert len(samples) == 2  # the scrape at 0 s left the 60 s window
    assert metrics.window_totals(samples, since=0.0) == (pytest.approx(1.0), 100)
    assert metrics.sent_rate(samples) == pytest.approx(500 / 40)
    assert metrics.window_totals(samples, since=40.0) == (0.0, 0.0)  # one scrape after since
    restarted = metrics.remember("pod-a", values(0.1, 10, 0.0), 75.0)
    assert metrics.window_totals(restarted[-2:], since=0.0) == (0.0, 0.0)
    assert metrics.remember("pod-a", {}, 200.0) == []  # unreachable: nothing recorded


# ---- events ------------------------------------------------------------------------------
def test_warnings_are_posted_once_per_cause(monkeypatch: pytest.MonkeyPatch) -> None:
    posted: list[tuple[str, str]] = []
    monkeypatch.setattr(events.kopf, "warn",
                        lambda body, reason, message: posted.append((reason, message)))
    body = {"metadata": {"uid": "u-1", "name": "svc", "namespace": "ns"}}
    assert events.warn_once(body, "LinkProfileFailed", "a -> b failed (timeout)", cause="job-1")
    assert not events.warn_once(body, "LinkProfileFailed", "a -> b failed (other text)",
                                cause="job-1")
    assert events.warn_once(body, "LinkProfileFailed", "b -> a failed", cause="job-2")
    assert events.warn_once({"metadata": {"uid": "u-2"}}, "LinkProfileFailed", "x", "job-1")
    assert [reason for reason, _ in posted] == ["LinkProfileFailed"] * 3


def test_waits_are_logged_once_at_info_and_timer_successes_only_for_debug(
        caplog: pytest.LogCaptureFixture) -> None:
    import logging

    body = {"metadata": {"uid": "u-3", "name": "svc", "namespace": "ns"}}
    with caplog.at_level(logging.INFO, logger="splitdnn.operator"):
        for _ in range(3):
            events.log_state(body, "DNNService", events.Waiting("profiling jobs running"))
        events.log_state(body, "DNNService", events.Stalled("spec.slo: infeasible"))
        events.forget(body)
        events.log_state(body, "DNNService", events.Stalled("spec.slo: infeasible"))
    assert [(r.levelname, r.getMessage().split(": ", 1)[1]) for r in caplog.records] == [
        ("INFO", "Waiting: profiling jobs running"), ("WARNING", "Stalled: spec.slo: infeasible"),
        ("WARNING", "Stalled: spec.slo: infeasible")]
    timer = logging.LogRecord("kopf.objects", logging.INFO, "", 0,
                              "Timer 'service_timer' succeeded.", None, None)
    error = logging.LogRecord("kopf.objects", logging.ERROR, "", 0,
                              "Timer 'service_timer' failed permanently: x", None, None)
    logging.getLogger("kopf").setLevel(logging.INFO)
    assert not events.TimerSuccessFilter().filter(timer)
    assert events.TimerSuccessFilter().filter(error)
    logging.getLogger("kopf").setLevel(logging.DEBUG)
    assert events.TimerSuccessFilter().filter(timer)
    logging.getLogger("kopf").setLevel(logging.NOTSET)


def test_digest_job_lists_the_ranges_and_the_model_digest() -> None:
    job = children.build_digest_job(
        {**SERVICE, "spec": {**SERVICE["spec"], "model": {
            "source": "https://example.org/m.onnx", "sha256": "a" * 64, "inputShape": [1, 3]}}},
        "img", ["0-12", "13-48"])
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == ["block-digests", "https://example.org/m.onnx", "--layers", "0-12,13-48",
                    "--input-shape", "1,3", "--sha256", "a" * 64]
    assert job["spec"]["podFailurePolicy"] == children.JOB_POD_FAILURE_POLICY


@pytest.mark.slow
def test_block_digests_are_those_fetch_block_checks(tmp_path: Any) -> None:
    from splitdnn.graph import analyse_model, resolve_model, split_model
    from splitdnn.runtime.artifacts import block_sha256s, extract_block

    resolved = resolve_model("torchvision:resnet18")
    digests = block_sha256s(resolved.onnx_path, "torchvision:resnet18", [(0, 17), (18, 33)],
                            resolved.input_shape)
    graph = analyse_model(resolved.onnx_path, resolved.input_shape, source="x")
    blocks = split_model(graph, [17, 33], tmp_path / "split").blocks
    assert digests == {(0, 17): blocks[0]["sha256"], (18, 33): blocks[1]["sha256"]}
    extract_block(resolved.onnx_path, "torchvision:resnet18", (18, 33), tmp_path / "out",
                  resolved.input_shape, expected_sha256=digests[(18, 33)])


def test_profile_command_fetches_pvc_models_and_checks_their_digest(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from typer.testing import CliRunner

    from splitdnn.cli import app
    from splitdnn.graph import resolve_model
    from splitdnn.graph.sources import file_sha256

    claim = tmp_path / "models"
    claim.mkdir()
    shutil.copy(resolve_model("torchvision:resnet18").onnx_path, claim / "rn.onnx")
    monkeypatch.setenv("SPLITDNN_PVC_ROOT", str(tmp_path))
    common = ["profile", "pvc://models/rn.onnx", "--sample-fraction", "0.05", "--repeats", "1",
              "--warmup", "0", "--hardware-class", "test", "--json", "--no-energy",
              "--input-shape", "1,3,224,224"]
    wrong = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "p0.json"),
                                     "--sha256", "0" * 64])
    assert wrong.exit_code == 2 and "does not match" in wrong.output
    right = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "p.json"),
                                     "--sha256", file_sha256(claim / "rn.onnx")])
    assert right.exit_code == 0, right.output
    assert json.loads(right.output.strip().splitlines()[-1])["entries"]


def test_a_plan_runs_while_each_stage_tier_has_a_ready_node() -> None:
    from splitdnn.controller.dnnservice import runnable

    plan = {"spec": {"stages": [{"tier": "edge"}, {"tier": "gpu"}]}}
    both = [PlanTier("edge", "jetson", {}), PlanTier("gpu", "v100", {})]
    assert runnable(plan, both)
    assert not runnable(plan, both[:1])  # the GPU tier lost its last Ready node


def test_a_pvc_model_mounts_its_claim_read_only_where_fetch_looks() -> None:
    from splitdnn.runtime.artifacts import DEFAULT_PVC_ROOT

    service = {**SERVICE, "spec": {**SERVICE["spec"], "model": {
        "source": "pvc://models/nets/rn.onnx", "sha256": "b" * 64}}}
    config = OperatorConfig()
    pods = [children.build_analysis_job(service, "img")["spec"]["template"]["spec"],
            children.build_digest_job(service, "img", ["0-3"])["spec"]["template"]["spec"],
            children.build_profile_job(service, "cpu", "n1", "img", [], config)["spec"][
                "template"]["spec"],
            children.build_stage_deployment(PLAN, PLAN["spec"]["stages"][0], service["spec"],
                                            "r1", None, "img", config)["spec"]["template"][
                "spec"]]
    for pod in pods:
        assert {"name": "model", "persistentVolumeClaim": {
            "claimName": "models", "readOnly": True}} in pod["volumes"]
        for item in [*pod.get("initContainers", []), *pod["containers"]]:
            assert {"name": "model", "mountPath": f"{DEFAULT_PVC_ROOT}/models",
                    "readOnly": True} in item["volumeMounts"]
    plain = children.build_analysis_job(SERVICE, "img")["spec"]["template"]["spec"]
    assert [v["name"] for v in plain["volumes"]] == ["work"]
