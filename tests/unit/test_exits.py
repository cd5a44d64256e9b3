"""Early exits through the operator's pieces: the analysis facts of a head, the planning
problem and SplitPlan with an exit, the stage pod that fetches and runs the head, and the
commands behind them (``exit-head``, ``model-facts --exits``, ``fetch-block --exit-head``)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from splitdnn.cli import app
from splitdnn.cli.common import TEMPORARY_FAILURE
from splitdnn.controller import children
from splitdnn.controller.config import OperatorConfig
from splitdnn.controller.planner import PlanTier, build_problem, placement, plan_spec
from splitdnn.planning import InfeasibleError, solve
from tests.unit.test_controller import ANALYSIS as CONTROLLER_ANALYSIS
from tests.unit.test_controller import costs  # segment costs, then the heads'
from tests.unit.test_crosslink_reconcile import NS, StoreKube, new_store_kube

HEAD_SHA = "a" * 64
ANALYSIS: dict[str, Any] = {**CONTROLLER_ANALYSIS, "exits": [
    {"after_layer": 1, "after_segment": 0, "sha256": HEAD_SHA, "output_bytes": 40,
     "output": {"name": "logits", "shape": [1, 10], "dtype": "float32"}, "signatures": []}]}
EXITS = [{"afterLayer": 1, "threshold": 0.8, "accuracy": 0.6,
          "head": {"source": "pvc://heads/exit0.onnx"}}]
TIERS = [PlanTier("edge", "jetson", {"e": "1"})]


def plan_for(slo: dict[str, Any]) -> dict[str, Any]:
    spec = {"source": {"tier": "edge"}, "objective": {"maxStages": 3}, "exits": EXITS,
            "slo": slo}
    problem = build_problem(ANALYSIS, TIERS, {"jetson": costs(2.0, 50.0, 1.0, 0.5)}, spec,
                            (100.0, 1.0))
    assert problem.exits is not None and problem.exits[0].latency_ms == {"edge": 0.5}
    return plan_spec("svc", solve(problem, "latency"), problem, ANALYSIS, TIERS, EXITS)


def test_a_tight_slo_plans_to_the_exit_and_its_head_runs_on_the_last_stage() -> None:
    full = plan_for({"latencyMs": 100})  # the whole model fits: no exit
    assert placement(full["stages"]) == "edge[0-5]" and "exit" not in full["stages"][-1]
    early = plan_for({"latencyMs": 10})  # only the exit after layer 1 fits
    assert placement(early["stages"]) == "edge[0-1]"
    assert early["stages"][-1]["exit"] == {"index": 0, "threshold": 0.8, "headSha256": HEAD_SHA}
    assert early["predicted"]["latencyMs"] == pytest.approx(2.5)
    assert early["predicted"]["accuracy"] == 0.6
    with pytest.raises(InfeasibleError, match=r"constraints\.latency_ms"):
        plan_for({"latencyMs": 10, "minAccuracy": 0.7})  # the exit is not accurate enough


def test_a_plan_ending_at_an_exit_is_weighed_with_its_head() -> None:
    """Hysteresis compares the current plan under the new problem: an exit plan counts its
    head, and a plan that does not fit the problem any more counts as infinitely bad."""
    from splitdnn.controller.dnnservice import plan_exit, plan_figure

    spec = {"source": {"tier": "edge"}, "exits": EXITS}
    problem = build_problem(ANALYSIS, TIERS, {"jetson": costs(2.0, 50.0, 1.0, 0.5)}, spec,
                            (100.0, 1.0))
    stage = {"tier": "edge", "layers": [0, 1], "exit": {"index": 0, "threshold": 0.8}}
    assert plan_exit([stage]) == 0 and plan_exit([{**stage, "exit": None}]) is None
    assert plan_figure(problem, ANALYSIS, [stage], "latency") == pytest.approx(2.5)
    assert plan_figure(problem, ANALYSIS, [{**stage, "exit": None}], "latency") == float("inf")
    assert plan_figure(problem, ANALYSIS, [{**stage, "exit": {"index": 3}}], "latency") == \
        float("inf")


SERVICE: dict[str, Any] = {
    "apiVersion": "splitdnn.io/v1alpha1", "kind": "DNNService",
    "metadata": {"name": "mn", "namespace": "ns", "uid": "u1"},
    "spec": {"model": {"source": "pvc://models/mn.onnx", "sha256": "b" * 64},
             "source": {"tier": "edge"}, "exits": EXITS},
}
PLAN: dict[str, Any] = {
    "apiVersion": "splitdnn.io/v1alpha1", "kind": "SplitPlan",
    "metadata": {"name": "mn", "namespace": "ns", "uid": "u2"},
    "spec": {"serviceRef": {"name": "mn"}, "stages": [
        {"name": "stage0", "tier": "edge", "layers": [0, 1], "blockSha256": "c" * 64,
         "exit": {"index": 0, "threshold": 0.8, "headSha256": HEAD_SHA}}]},
}


def test_a_stage_with_an_exit_fetches_its_head_checked_and_runs_it() -> None:
    stage = PLAN["spec"]["stages"][0]
    pod = children.build_stage_deployment(PLAN, stage, SERVICE["spec"], "r1", None, "img",
                                          OperatorConfig())["spec"]["template"]["spec"]
    fetch, worker = pod["initContainers"][0]["args"], pod["containers"][0]["args"]
    assert fetch[fetch.index("--exit-head") + 1] == "pvc://heads/exit0.onnx"
    assert fetch[fetch.index("--exit-sha256") + 1] == HEAD_SHA  # the plan's digest
    assert worker[worker.index("--exit-head") + 1] == "block/exit.onnx"
    assert worker[worker.index("--exit-threshold") + 1] == "0.8"
    assert worker[worker.index("--exit-index") + 1] == "0"
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
              if "persistentVolumeClaim" in v}
    assert claims == {"models", "heads"}  # the model's claim and the head's
    without = {**stage, "exit": None}
    assert children.stage_revision(SERVICE["spec"], stage) != children.stage_revision(
        SERVICE["spec"], without)


def test_the_analysis_job_reads_the_exits_and_is_keyed_by_them() -> None:
    job = children.build_analysis_job(SERVICE, "img")
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert json.loads(args[args.index("--exits") + 1]) == [
        {"afterLayer": 1, "head": {"source": "pvc://heads/exit0.onnx"}}]
    moved = {**SERVICE["spec"], "exits": [{**EXITS[0], "afterLayer": 4}]}
    renamed = {**SERVICE["spec"], "exits": [{**EXITS[0], "threshold": 0.9}]}
    key = children.service_analysis_key(SERVICE["spec"])
    assert children.service_analysis_key(moved) != key
    assert children.service_analysis_key(renamed) == key  # the threshold is the plan's
    plain = {**SERVICE["spec"], "exits": None}
    assert children.service_analysis_key(plain) == children.analysis_key(plain["model"])
    validated = {**SERVICE, "spec": {**SERVICE["spec"], "validation": {
        "data": {"source": "pvc://data/val.npz"}, "samples": 100}}}
    assert children.service_analysis_key(validated["spec"]) != key
    pod = children.build_analysis_job(validated, "img")["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args[args.index("--validation-data") + 1] == "pvc://data/val.npz"
    assert args[args.index("--validation-samples") + 1] == "100"
    assert {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
            if "persistentVolumeClaim" in v} == {"models", "heads", "data"}


def run(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pooled head after ResNet-18's layer 17 (its first residual stage)."""
    path = tmp_path_factory.mktemp("heads") / "exit17.onnx"
    result = run("exit-head", "torchvision:resnet18", "--after-layer", "17", "--classes", "10",
                 "--out", str(path))
    assert result.exit_code == 0, result.output
    return path


def test_model_facts_describe_each_exit_head(head: Path) -> None:
    from splitdnn.graph.sources import file_sha256

    exits = json.dumps([{"afterLayer": 17, "head": {"source": str(head)}}])
    result = run("model-facts", "torchvision:resnet18", "--exits", exits)
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output.strip().splitlines()[-1])
    (exit_,) = facts["exits"]
    segment = facts["segments"][exit_["after_segment"]]
    assert segment["last_layer"] == 17
    assert exit_["sha256"] == file_sha256(head)
    assert exit_["output"]["shape"] == [1, 10] and exit_["output_bytes"] == 40
    assert {s["features"]["dominant_op"] for s in exit_["signatures"]} >= {"Gemm"}


@pytest.mark.parametrize(("after_layer", "message"), [
    (16, "spec.exits[0].afterLayer: layer 16 does not end a segment"),
    (33, "spec.exits[0].head: the head reads"),  # a later activation of another shape
])
def test_model_facts_refuse_an_exit_that_does_not_fit(head: Path, after_layer: int,
                                                      message: str) -> None:
    exits = json.dumps([{"afterLayer": after_layer, "head": {"source": str(head)}}])
    result = run("model-facts", "torchvision:resnet18", "--exits", exits)
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output


def test_fetch_block_writes_the_head_beside_the_block_and_checks_it(head: Path,
                                                                    tmp_path: Path) -> None:
    import onnxruntime

    from splitdnn.graph.sources import file_sha256

    common = ["fetch-block", "--model", "torchvision:resnet18", "--layers", "0,17",
              "--exit-head", str(head)]
    wrong = run(*common, "--out", str(tmp_path / "a"), "--exit-sha256", "0" * 64)
    assert wrong.exit_code == 2 and "exit head" in wrong.output and "does not match" in \
        " ".join(wrong.output.split())
    right = run(*common, "--out", str(tmp_path / "b"), "--exit-sha256", file_sha256(head))
    assert right.exit_code == 0, right.output
    block = onnxruntime.InferenceSession(str(tmp_path / "b" / "block.onnx"))
    exit_ = onnxruntime.InferenceSession(str(tmp_path / "b" / "exit.onnx"))
    features = block.run(None, {block.get_inputs()[0].name: np.zeros((1, 3, 224, 224),
                                                                      np.float32)})[0]
    assert exit_.run(None, {exit_.get_inputs()[0].name: features})[0].shape == (1, 10)


def test_exit_head_refuses_a_layer_that_is_no_cut_point(tmp_path: Path) -> None:
    result = run("exit-head", "torchvision:resnet18", "--after-layer", "16", "--out",
                 str(tmp_path / "h.onnx"))
    assert result.exit_code == 2 and "--after-layer" in result.output
    assert not (tmp_path / "h.onnx").exists()


def test_the_example_exits_fit_mobilenet_v2(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The early-exit example's layers are cut points and heads written by ``exit-head``
    for them pass the analysis."""
    import yaml

    example = Path(__file__).resolve().parents[2] / "manifests" / "examples" / \
        "dnnservice-early-exits.yaml"
    spec = yaml.safe_load(example.read_text())["spec"]
    monkeypatch.setenv("SPLITDNN_PVC_ROOT", str(tmp_path))
    for exit_ in spec["exits"]:
        path = tmp_path / exit_["head"]["source"].removeprefix("pvc://")
        result = run("exit-head", spec["model"]["source"], "--after-layer",
                     str(exit_["afterLayer"]), "--out", str(path))
        assert result.exit_code == 0, result.output
    exits = children.exits_json(spec)
    assert exits is not None
    result = run("model-facts", spec["model"]["source"], "--exits", exits)
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output.strip().splitlines()[-1])
    assert [facts["segments"][e["after_segment"]]["last_layer"] for e in facts["exits"]] == \
        [e["afterLayer"] for e in spec["exits"]]
    assert all(e["output"]["shape"] == [1, 1000] for e in facts["exits"])


def rollout(store: StoreKube, stages: list[dict[str, Any]]) -> str:
    """One SplitPlan pass over ``stages`` of the exit service: the Stalled or Waiting text."""
    from splitdnn.controller.events import Stalled, Waiting
    from splitdnn.controller.splitplan import PlanRollout

    plan = store.apply({**PLAN, "metadata": {"name": "mn", "namespace": NS},
                        "spec": {"serviceRef": {"name": "mn"}, "stages": stages}})
    try:
        PlanRollout(plan, store, OperatorConfig()).run()  # type: ignore[arg-type]
    except (Stalled, Waiting) as outcome:
        return f"{type(outcome).__name__}: {outcome}"
    raise AssertionError("the pass neither waited nor stalled")


@pytest.fixture
def exit_kube() -> StoreKube:
    """The store with the exit service and its analysis."""
    kube = new_store_kube()
    kube.apply({**SERVICE, "metadata": {"name": "mn", "namespace": NS}})
    kube.apply(children.build_configmap("mn-analysis", NS, {},
                                        {"analysis.json": json.dumps(ANALYSIS)}))
    return kube


@pytest.mark.parametrize(("change", "message"), [
    ({"exit": None}, "spec.stages[0].layers: the last stage must end at layer 5 or at an exit"),
    ({"exit": {"index": 1, "threshold": 0.8}}, "spec.stages[0].exit.index: the service has 1"),
    ({"layers": [0, 4], "exit": {"index": 0, "threshold": 0.8}},
     "exit 0 follows layer 1, the stage ends at 4"),
])
def test_a_plan_whose_exit_does_not_fit_stalls(exit_kube: StoreKube, change: dict[str, Any],
                                               message: str) -> None:
    stage = {**PLAN["spec"]["stages"][0], **change}
    if stage["exit"] is None:
        del stage["exit"]
    outcome = rollout(exit_kube, [stage])
    assert outcome.startswith("Stalled: ") and message in outcome, outcome


def test_a_plan_ending_at_its_exit_rolls_out_the_head(exit_kube: StoreKube) -> None:
    assert rollout(exit_kube, PLAN["spec"]["stages"]).startswith("Waiting: 0/1 stages ready")
    (deployment,) = exit_kube.list("Deployment", NS, "splitdnn.io/plan=mn")
    worker = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert worker[worker.index("--exit-index") + 1] == "0"


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, float]:
    """A small CNN trained here on the digits 0-4 (ONNX, input 1x1x8x8), a random exit head
    after its first ReLU, and the model's test accuracy as torch computes it."""
    import torch
    from torch import nn

    from splitdnn.coordination.data import load_dataset

    task = load_dataset("sklearn:digits").local
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1),
                        nn.ReLU(), nn.Flatten(), nn.Linear(16 * 8 * 8, 5))
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(60):
        optimiser.zero_grad()
        nn.functional.cross_entropy(net(task.x_train), task.y_train).backward()
        optimiser.step()
    net.eval()
    with torch.no_grad():
        accuracy = float((net(task.x_test).argmax(1) == task.y_test).float().mean())
    root = tmp_path_factory.mktemp("digits")
    torch.onnx.export(net, (torch.zeros(1, 1, 8, 8),), str(root / "net.onnx"), dynamo=False,
                      opset_version=17)
    result = run("exit-head", str(root / "net.onnx"), "--after-layer", "1", "--out",
                 str(root / "head.onnx"))
    assert result.exit_code == 0, result.output
    return root / "net.onnx", root / "head.onnx", accuracy


def test_model_facts_measure_the_accuracy_of_the_model_and_its_exits(
        digits_model: tuple[Path, Path, float], tmp_path: Path) -> None:
    import onnxruntime

    from splitdnn.coordination.data import load_dataset
    from splitdnn.runtime.artifacts import extract_block

    net, head, expected = digits_model
    exits = json.dumps([{"afterLayer": 1, "head": {"source": str(head)}}])
    result = run("model-facts", str(net), "--exits", exits, "--validation-data",
                 "sklearn:digits")
    assert result.exit_code == 0, result.output
    accuracy = json.loads(result.output.strip().splitlines()[-1])["accuracy"]
    task = load_dataset("sklearn:digits").local
    assert accuracy["samples"] == len(task.y_test)
    assert accuracy["model"] == pytest.approx(expected, abs=1e-6) and expected > 0.8
    block = onnxruntime.InferenceSession(str(extract_block(net, "net", (0, 1), tmp_path)))
    exit_ = onnxruntime.InferenceSession(str(head))
    hits = 0
    for image, label in zip(task.x_test.numpy(), task.y_test.numpy(), strict=True):
        features = block.run(None, {block.get_inputs()[0].name: image[None]})[0]
        hits += int(exit_.run(None, {exit_.get_inputs()[0].name: features})[0].argmax()) == label
    assert accuracy["exits"] == [pytest.approx(hits / len(task.y_test), abs=1e-9)]
    few = run("model-facts", str(net), "--validation-data", "sklearn:digits",
              "--validation-samples", "20")
    assert json.loads(few.output.strip().splitlines()[-1])["accuracy"]["samples"] == 20


def test_validation_data_that_does_not_fit_the_model_is_refused(
        digits_model: tuple[Path, Path, float], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "wide.npz", x=np.zeros((10, 1, 16, 16), np.float32),
             y=np.arange(10) % 5)
    monkeypatch.setenv("SPLITDNN_PVC_ROOT", str(tmp_path))
    result = run("model-facts", str(digits_model[0]), "--validation-data",
                 "pvc://data/wide.npz")
    assert result.exit_code == 2
    assert "spec.validation.data: pvc://data/wide.npz: x holds samples of shape [1, 16, 16]" \
        in " ".join(result.output.split()), result.output


def test_measured_accuracies_fill_in_what_the_spec_leaves_unset() -> None:
    measured = {**ANALYSIS, "accuracy": {"source": "sklearn:digits", "samples": 50,
                                         "model": 0.9, "exits": [0.55]}}
    spec = {"source": {"tier": "edge"}, "exits": [{**EXITS[0], "accuracy": None}]}
    problem = build_problem(measured, TIERS, {"jetson": costs(2.0, 50.0, 1.0, 0.5)}, spec,
                            (100.0, 1.0))
    assert problem.final_accuracy == 0.9 and problem.exits is not None
    assert problem.exits[0].accuracy == 0.55
    stated = build_problem(measured, TIERS, {"jetson": costs(2.0, 50.0, 1.0, 0.5)},
                           {**spec, "exits": EXITS}, (100.0, 1.0))
    assert stated.exits is not None and stated.exits[0].accuracy == 0.6
    from splitdnn.controller.dnnservice import analysis_summary

    assert analysis_summary(measured).endswith(
        "1 exit heads; accuracy 0.9 (exits 0.55) on 50 samples of sklearn:digits")


@pytest.fixture
def unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An https base URL on a port nothing listens on (and an empty download cache)."""
    monkeypatch.setenv("SPLITDNN_CACHE_DIR", str(tmp_path))
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        return f"https://127.0.0.1:{closed.getsockname()[1]}"


@pytest.mark.parametrize(("what", "field"), [
    ("model", "cannot download"), ("head", "spec.exits[0].head: cannot download"),
    ("dataset", "spec.validation.data: cannot download")])
def test_model_facts_exit_75_when_the_network_fails_a_download(
        digits_model: tuple[Path, Path, float], unreachable: str, what: str,
        field: str) -> None:
    """Exit 75 (EX_TEMPFAIL) is retried by the analysis Job and then by the operator (its
    podFailurePolicy fails exit 2 at once)."""
    net, head, _ = digits_model
    url = f"{unreachable}/{what}"
    model = [url, "--sha256", "ab" * 32] if what == "model" else [str(net)]
    exits = {"source": url, "sha256": "ab" * 32} if what == "head" else {"source": str(head)}
    dataset = ["--validation-data", url, "--validation-sha256", "ab" * 32] \
        if what == "dataset" else []
    result = run("model-facts", *model, "--exits",
                 json.dumps([{"afterLayer": 1, "head": exits}]), *dataset)
    assert result.exit_code == TEMPORARY_FAILURE, result.output
    assert field in " ".join(result.output.split()), result.output


@pytest.mark.parametrize("command", [["block-digests", "--layers", "0-1"],
                                     ["profile", "--out", "p.json"]])
def test_the_other_jobs_exit_75_when_the_network_fails_the_model(
        unreachable: str, command: list[str]) -> None:
    result = run(command[0], f"{unreachable}/model.onnx", *command[1:], "--sha256", "ab" * 32)
    assert result.exit_code == TEMPORARY_FAILURE, result.output
    assert "cannot download" in result.output, result.output


def test_model_facts_exit_2_on_a_digest_that_does_not_match(
        digits_model: tuple[Path, Path, float]) -> None:
    result = run("model-facts", str(digits_model[0]), "--sha256", "ab" * 32)
    assert result.exit_code == 2 and "does not match" in result.output, result.output
