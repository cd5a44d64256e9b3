"""Segment signatures, the segment profiler, profile files and energy meters."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from splitdnn.cli import app
from splitdnn.graph import ModelGraph, analyse_model, resolve_model
from splitdnn.profiling import Profile, ProfileError, merge_profiles, model_signatures
from splitdnn.profiling.meters import detect_meter, ina3221_meter, nvml_meter, rapl_meter
from splitdnn.profiling.profiler import cpu_quota, profile_model

runner = CliRunner()


def conv_model(path: Path, *, before: int = 0, stride: int = 1, channels: int = 8,
               kernel: int = 3, side: int = 16, dtype: int = TensorProto.FLOAT,
               seed: int = 0) -> ModelGraph:
    """``before`` Relu layers, then Conv + Relu, then a Sigmoid: a chain of cut points."""
    rng = np.random.default_rng(seed)
    numpy_type = helper.tensor_dtype_to_np_dtype(dtype)
    weight = numpy_helper.from_array(
        rng.standard_normal((channels, 4, kernel, kernel)).astype(numpy_type), f"w{seed}")
    nodes = [helper.make_node("Relu", ["X" if i == 0 else f"p{i - 1}"], [f"p{i}"],
                              name=f"pre{i}") for i in range(before)]
    source = f"p{before - 1}" if before else "X"
    nodes += [
        helper.make_node("Conv", [source, weight.name], ["c"], name=f"conv_{seed}",
                         kernel_shape=[kernel, kernel], strides=[stride, stride],
                         pads=[kernel // 2] * 4),
        helper.make_node("Relu", ["c"], ["r"], name=f"relu_{seed}"),
        helper.make_node("Sigmoid", ["r"], ["Y"]),
    ]
    out_side = (side + 2 * (kernel // 2) - kernel) // stride + 1
    graph = helper.make_graph(
        nodes, "conv", [helper.make_tensor_value_info("X", dtype, [1, 4, side, side])],
        [helper.make_tensor_value_info("Y", dtype, [1, channels, out_side, out_side])],
        initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return analyse_model(path)


def conv_signature(graph: ModelGraph) -> str:
    """The signature of the segment that holds the Conv."""
    conv = next(layer.index for layer in graph.layers if layer.op_type == "Conv")
    signatures = model_signatures(graph)
    return next(sig.key for segment, sig in zip(graph.segments, signatures, strict=True)
                if segment.first_layer <= conv <= segment.last_layer)


def test_identical_layers_share_a_signature_across_models_and_positions(tmp_path: Path) -> None:
    first = conv_model(tmp_path / "a.onnx", before=0, seed=1)
    second = conv_model(tmp_path / "b.onnx", before=3, seed=2)  # other weights, names, position
    assert conv_signature(first) == conv_signature(second)
    assert conv_signature(first).startswith("Conv[1x4x16x16>1x8x16x16]f32#")


@pytest.mark.parametrize("change", [
    {"stride": 2}, {"channels": 16}, {"kernel": 5}, {"side": 32},
    {"dtype": TensorProto.DOUBLE},
])
def test_a_cost_relevant_parameter_changes_the_signature(
        tmp_path: Path, change: dict[str, int]) -> None:
    reference = conv_signature(conv_model(tmp_path / "ref.onnx"))
    changed = conv_signature(conv_model(tmp_path / "changed.onnx", **change))  # type: ignore[arg-type]
    assert changed != reference


def test_resnet18_and_resnet34_share_their_basic_blocks() -> None:
    graphs = {}
    for name in ("resnet18", "resnet34"):
        resolved = resolve_model(f"torchvision:{name}")
        graphs[name] = analyse_model(resolved.onnx_path, resolved.input_shape)
    keys = {name: [sig.key for sig in model_signatures(graph)] for name, graph in graphs.items()}
    # identical layers: the stem, every stage's first and repeated blocks, the classifier
    assert set(keys["resnet18"]) <= set(keys["resnet34"])
    # repeated blocks at different positions share a column
    assert len(set(keys["resnet34"])) < len(keys["resnet34"])
    assert keys["resnet18"][3] == keys["resnet18"][5] == keys["resnet34"][7]


def test_profile_times_the_sampled_fraction_and_round_trips(tmp_path: Path) -> None:
    graph = analyse_model(_chain_model(tmp_path / "chain.onnx", 8))
    unique = {sig.key for sig in model_signatures(graph)}
    profile = profile_model(graph, sample_fraction=0.5, repeats=3, warmup=1, threads=1,
                            hardware_class="test-1t", seed=3)
    assert len(profile.entries) == math.ceil(0.5 * len(unique))
    assert set(profile.entries) <= unique
    for entry in profile.entries.values():
        assert entry.latency_ms > 0
        assert entry.samples == 3
        assert entry.energy_mj is None  # no meter given: null, never invented
        assert entry.features is not None
    path = tmp_path / "profile.json"
    profile.save(path)
    loaded = Profile.load(path)
    assert loaded.to_dict() == profile.to_dict()
    data = json.loads(path.read_text())
    assert {"hardware_class", "node", "runtime", "entries", "created"} <= set(data)
    assert {"provider", "threads", "versions"} <= set(data["runtime"])
    assert data["runtime"]["threads"] == 1
    assert all({"latency_ms", "energy_mj", "samples"} <= set(entry)
               for entry in data["entries"].values())


def _chain_model(path: Path, width: int) -> Path:
    """X[1,64] -> (MatMul with a width-dependent weight -> Relu) x 4 -> Y."""
    rng = np.random.default_rng(0)
    nodes, initializers, source = [], [], "X"
    sizes = [64, 64, 128, 64, 32]
    for index in range(4):
        weight = numpy_helper.from_array(
            rng.standard_normal((sizes[index], sizes[index + 1])).astype(np.float32), f"w{index}")
        initializers.append(weight)
        out = "Y" if index == 3 else f"r{index}"
        nodes += [helper.make_node("MatMul", [source, weight.name], [f"m{index}"]),
                  helper.make_node("Relu", [f"m{index}"], [out])]
        source = out
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [width, 64])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [width, 32])],
        initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_merging_profiles_of_one_class_combines_repeated_signatures() -> None:
    entry = {"latency_ms": 1.0, "energy_mj": None, "samples": 10}
    first = Profile.from_dict({"hardware_class": "c", "node": "n", "created": "2026-01-01",
                               "runtime": {"provider": "cpu", "threads": 1, "versions": {}},
                               "entries": {"a": entry, "b": entry}})
    second = Profile.from_dict({**first.to_dict(), "created": "2026-01-02",
                                "entries": {"a": {**entry, "latency_ms": 4.0}}})
    merged = merge_profiles([first, second])
    assert merged.entries["a"].latency_ms == pytest.approx(2.0)  # geometric mean
    assert merged.entries["a"].samples == 20
    assert merged.entries["b"].latency_ms == 1.0
    with pytest.raises(ProfileError, match="different hardware classes"):
        merge_profiles([first, Profile.from_dict({**first.to_dict(), "hardware_class": "d"})])


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda data: data.pop("hardware_class"), "hardware_class"),
    (lambda data: data["runtime"].pop("threads"), "runtime.threads"),
    (lambda data: data["entries"]["a"].update(latency_ms=-1), "latency_ms"),
    (lambda data: data["entries"]["a"].update(samples=0), "samples"),
])
def test_a_malformed_profile_names_the_field(mutate: object, field: str) -> None:
    data = {"hardware_class": "c", "node": "n", "created": "2026-01-01",
            "runtime": {"provider": "cpu", "threads": 1, "versions": {}},
            "entries": {"a": {"latency_ms": 1.0, "energy_mj": None, "samples": 1}}}
    mutate(data)  # type: ignore[operator]
    with pytest.raises(ProfileError, match=field.replace(".", r"\.")):
        Profile.from_dict(data)


def test_meters_report_none_where_absent(tmp_path: Path) -> None:
    assert rapl_meter(tmp_path) is None
    assert ina3221_meter(tmp_path) is None
    assert detect_meter("cpu", tmp_path) is None
    try:
        import pynvml

        pynvml.nvmlInit()
        gpus = pynvml.nvmlDeviceGetCount()
    except Exception:  # no driver: NVML must say None, not a number
        gpus = 0
    if gpus == 0:
        assert nvml_meter() is None
        assert detect_meter("cuda", tmp_path) is None


def test_rapl_meter_reads_counters_and_survives_wrap_around(tmp_path: Path) -> None:
    package = tmp_path / "class/powercap/intel-rapl:0"
    package.mkdir(parents=True)
    (package / "max_energy_range_uj").write_text("1000000\n")
    (package / "energy_uj").write_text("999000\n")
    (tmp_path / "class/powercap/intel-rapl:0:0").mkdir()  # a sub-domain: not summed
    meter = rapl_meter(tmp_path)
    assert meter is not None
    meter.begin()
    (package / "energy_uj").write_text("4000\n")  # wrapped: 1000 + 4000 uJ later
    assert meter.end() == pytest.approx(5.0)


def test_ina3221_meter_integrates_the_input_rail(tmp_path: Path) -> None:
    hwmon = tmp_path / "bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3"
    hwmon.mkdir(parents=True)
    for channel, (label, millivolts, milliamps) in enumerate(
            [("VDD_IN", 5000, 1000), ("VDD_CPU_GPU_CV", 5000, 400)], start=1):
        (hwmon / f"in{channel}_label").write_text(label)
        (hwmon / f"in{channel}_input").write_text(str(millivolts))
        (hwmon / f"curr{channel}_input").write_text(str(milliamps))
    meter = ina3221_meter(tmp_path)
    assert meter is not None
    meter.begin()
    time.sleep(0.2)
    energy = meter.end()
    assert energy is not None
    assert 5000 * 0.15 < energy < 5000 * 0.3  # 5 W on the input rail for ~0.2 s, in mJ


def test_cpu_quota_reads_cgroup_v1_and_v2(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("4:memory:/x\n1:cpu:/slow\n0::/\n")
    group = tmp_path / "fs/cpu/slow"
    group.mkdir(parents=True)
    (group / "cpu.cfs_quota_us").write_text("25000\n")
    (group / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_quota(proc, tmp_path / "fs") == 0.25
    (group / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_quota(proc, tmp_path / "fs") is None
    proc.write_text("0::/pod\n")
    (tmp_path / "fs/pod").mkdir()
    (tmp_path / "fs/pod/cpu.max").write_text("50000 100000\n")
    assert cpu_quota(proc, tmp_path / "fs") == 0.5


def test_profile_command_writes_the_contract_and_rejects_bad_options(tmp_path: Path) -> None:
    model = _chain_model(tmp_path / "chain.onnx", 4)
    out = tmp_path / "p.json"
    result = runner.invoke(app, ["profile", str(model), "--out", str(out), "--repeats", "2",
                                 "--threads", "1", "--hardware-class", "tiny", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data == json.loads(out.read_text())
    assert data["hardware_class"] == "tiny"
    assert data["runtime"]["provider"] == "cpu"
    assert len(data["entries"]) == len({sig.key for sig in model_signatures(
        analyse_model(model))})
    bad_options = [("--sample-fraction", "1.5"), ("--repeats", "0"), ("--statistic", "mean"),
                   ("--provider", "tpu")]
    if not _cuda_works():  # never record CPU timings under a cuda class
        bad_options.append(("--provider", "cuda"))
    for option, value in bad_options:
        bad = runner.invoke(app, ["profile", str(model), "--out", str(out), option, value])
        assert bad.exit_code == 2
        assert option in bad.stderr


def test_auto_provider_profiles_what_a_worker_here_would_run(tmp_path: Path) -> None:
    from splitdnn.runtime.engine import BlockEngine

    model = _chain_model(tmp_path / "chain.onnx", 3)
    out = tmp_path / "p.json"
    result = runner.invoke(app, ["profile", str(model), "--out", str(out), "--repeats", "1",
                                 "--provider", "auto", "--hardware-class", "here", "--json"])
    assert result.exit_code == 0, result.output
    worker_runs = BlockEngine(model).providers[0]
    expected = "cuda" if worker_runs == "CUDAExecutionProvider" else "cpu"
    assert json.loads(result.stdout)["runtime"]["provider"] == expected
    assert expected == ("cuda" if _cuda_works() else "cpu")


def _cuda_works() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        return bool(pynvml.nvmlDeviceGetCount())
    except Exception:
        return False
