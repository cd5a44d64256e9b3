"""Property tests: on random DAGs the cut points match the definition, and every split verifies."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitdnn.graph import analyse_model, split_model, verify_blocks
from tests.unit import onnx_graphs

# Each node: (op, first input, second input); inputs index earlier tensors (0 is X).
Spec = list[tuple[str, int, int]]


@st.composite
def random_dags(draw: st.DrawFn) -> Spec:
    size = draw(st.integers(min_value=2, max_value=12))
    spec: Spec = []
    for index in range(size):
        available = index + 1  # X plus the outputs of earlier nodes
        op = draw(st.sampled_from(["Relu", "Tanh", "Add", "Mul"]))
        first = draw(st.integers(min_value=max(0, available - 4), max_value=available - 1))
        second = draw(st.integers(min_value=0, max_value=available - 1))
        spec.append((op, first, second))
    return spec


def tensor_name(index: int, size: int) -> str:
    if index == 0:
        return "X"
    return "Y" if index == size else f"t{index}"


def build(spec: Spec, path: Path) -> Path:
    size = len(spec)
    nodes = []
    for index, (op, first, second) in enumerate(spec, start=1):
        inputs = [tensor_name(first, size)]
        if op in ("Add", "Mul"):
            inputs.append(tensor_name(second, size))
        nodes.append(onnx_graphs.node(op, inputs, tensor_name(index, size)))
    return onnx_graphs.save(nodes, path)


def brute_force_cut_points(spec: Spec) -> list[int]:
    """Cut after layer i: count tensors made at or before i that are needed after i."""
    size = len(spec)
    consumers: dict[int, list[int]] = {tensor: [] for tensor in range(size + 1)}
    for layer, (op, first, second) in enumerate(spec):
        consumers[first].append(layer)
        if op in ("Add", "Mul"):
            consumers[second].append(layer)
    consumers[size].append(size)  # the model output is needed "after" everything
    points = []
    for cut in range(size - 1):
        crossing = [tensor for tensor in range(size + 1)
                    if tensor - 1 <= cut and any(user > cut for user in consumers[tensor])]
        if len(crossing) == 1:
            points.append(cut)
    return points


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_dags())
def test_cut_points_match_the_definition(spec: Spec) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        graph = analyse_model(build(spec, Path(scratch) / "model.onnx"))
    assert graph.cut_points == brute_force_cut_points(spec)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_dags(), st.data())
def test_any_set_of_cut_points_verifies(spec: Spec, data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        graph = analyse_model(build(spec, Path(scratch) / "model.onnx"))
        cuts = data.draw(st.lists(st.sampled_from(graph.cut_points), unique=True)
                         if graph.cut_points else st.just([]))
        split_model(graph, cuts, Path(scratch) / "blocks")
        report = verify_blocks(Path(scratch) / "blocks", samples=2)
    assert report.passed, (spec, cuts, report)
