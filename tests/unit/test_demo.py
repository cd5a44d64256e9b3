"""The operator demo's cluster and its changes to the example (``splitdnn cluster-demo``)."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from splitdnn.controller.demo import DEMO_CONFIG, DEMO_OVERRIDES, adapt_example
from splitdnn.devcluster.config import load_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = yaml.safe_load((ROOT / "manifests" / "examples" / "dnnservice.yaml").read_text())


def node_labels() -> dict[str, dict[str, str]]:
    """Each demo node's labels as the devcluster's kubelet sets them."""
    return {node.name: {"kubernetes.io/hostname": node.name, **node.labels}
            for node in load_config(DEMO_CONFIG).nodes}


def matching(selector: dict[str, str]) -> list[str]:
    return [name for name, labels in node_labels().items()
            if all(labels.get(k) == v for k, v in selector.items())]


def test_demo_cluster_has_the_examples_camera_board_and_one_node_per_tier() -> None:
    spec = EXAMPLE["spec"]
    assert matching(spec["source"]["nodeSelector"]) == ["camera-board-1"]
    source_tier = next(t for t in spec["tiers"] if t["name"] == spec["source"]["tier"])
    assert matching(source_tier["nodeSelector"]) == ["camera-board-1"]
    others = [t for t in spec["tiers"] if t is not source_tier]
    assert [matching(t["nodeSelector"]) for t in others] == [["v100-0"]]


def test_example_keeps_its_camera_selector_and_gets_the_stated_overrides() -> None:
    said: list[str] = []
    service = adapt_example(copy.deepcopy(EXAMPLE), set(node_labels()), said.append)
    spec = service["spec"]
    assert spec["source"]["nodeSelector"] == {"kubernetes.io/hostname": "camera-board-1"}
    assert spec["objective"] == {"kind": "throughput", "maxStages": 3}
    assert spec["slo"] == {"latencyMs": 250}
    assert service["metadata"]["namespace"] == "default"
    assert len(said) == len(DEMO_OVERRIDES)
    assert "spec.objective.kind latency -> throughput" in said[0]
    assert spec["model"] == EXAMPLE["spec"]["model"] and spec["tiers"] == EXAMPLE["spec"]["tiers"]


def test_camera_selector_is_dropped_with_a_message_where_no_such_node_is() -> None:
    said: list[str] = []
    service = adapt_example(copy.deepcopy(EXAMPLE), {"jetson-0", "v100-0"}, said.append)
    assert "nodeSelector" not in service["spec"]["source"]
    assert said[0] == ("  example adapted: spec.source.nodeSelector dropped (no node "
                       "camera-board-1 here)")
