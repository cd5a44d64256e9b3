"""Collaborative filtering, the Neurosurgeon-style baseline, predict and predict-eval."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from splitdnn.cli import app
from splitdnn.graph import analyse_model, resolve_model
from splitdnn.predict import (
    FactorModel,
    Observations,
    choose_and_fit,
    evaluate,
    fit_factorisation,
    predict_model,
)
from splitdnn.predict.baseline import fit_class_regression
from splitdnn.profiling import Profile, ProfileEntry, ProfileStore, SegmentFeatures
from tests.unit.test_profiling import conv_model

DATA = Path(__file__).resolve().parent.parent / "data" / "profiles"
runner = CliRunner()


def low_rank_matrix(rows: int, cols: int, rank: int, seed: int) -> np.ndarray:
    """mu + row bias + column bias + rank-k interaction, on a log-latency-like scale."""
    rng = np.random.default_rng(seed)
    return (1.0 + rng.normal(0, 1.0, (rows, 1)) + rng.normal(0, 2.0, (1, cols))
            + rng.normal(0, 0.6, (rows, rank)) @ rng.normal(0, 0.6, (rank, cols)))


def test_cf_recovers_a_low_rank_matrix_from_half_its_entries() -> None:
    truth = low_rank_matrix(12, 150, rank=2, seed=1)
    seen = np.random.default_rng(2).random(truth.shape) < 0.5
    rows, cols = np.nonzero(seen)
    data = Observations(rows, cols, truth[rows, cols], truth.shape)
    no_features = np.ones((truth.shape[1], 1))  # intercept only: pure CF
    hidden_rows, hidden_cols = np.nonzero(~seen)
    hidden = truth[hidden_rows, hidden_cols]

    def hidden_rmse(model: FactorModel) -> float:
        return float(np.sqrt(np.mean((model.predict(hidden_rows, hidden_cols) - hidden) ** 2)))

    model = choose_and_fit(data, no_features, seed=0)
    biases_only = fit_factorisation(data, no_features, rank=0, shrinkage=0.03)
    assert model.rank >= 2
    assert float(np.std(hidden)) > 1.5
    assert hidden_rmse(model) < 0.15  # a few columns seen in only 2-3 classes dominate this
    assert float(np.median(np.abs(model.predict(hidden_rows, hidden_cols) - hidden))) < 0.05
    assert hidden_rmse(model) < 0.5 * hidden_rmse(biases_only)


def test_cf_predicts_unmeasured_columns_from_their_features() -> None:
    rng = np.random.default_rng(3)
    feature = rng.normal(0, 1, 60)
    truth = (np.array([[0.0], [1.0], [2.0]]) + 1.5 * feature[None, :]
             + rng.normal(0, 0.02, (3, 60)))
    cold = np.arange(50, 60)  # no class measured these signatures
    rows, cols = np.nonzero(np.ones((3, 50), dtype=bool))
    data = Observations(rows, cols, truth[rows, cols], truth.shape)
    features = np.column_stack([np.ones(60), feature])
    model = choose_and_fit(data, features, seed=0)
    predicted = model.matrix()[:, cold]
    assert np.abs(predicted - truth[:, cold]).max() < 0.2


def synthetic_profiles(classes: int, signatures: int, seed: int) -> dict[str, Profile]:
    """Full profiles whose latencies follow a rank-2 model with a FLOPs-driven column bias."""
    truth = np.exp(low_rank_matrix(classes, signatures, rank=2, seed=seed) - 3)
    profiles = {}
    for row in range(classes):
        entries = {
            f"sig{col}": ProfileEntry(float(truth[row, col]), None, 5, SegmentFeatures(
                {"Conv": 1}, "Conv", 1, 10**6 * (col + 1), 1000 * (col + 1), 1000, 4000))
            for col in range(signatures)}
        profiles[f"class{row}"] = Profile(f"class{row}", "node", {
            "provider": "cpu", "threads": 1, "versions": {}}, entries, "2026-01-01")
    return profiles


def test_a_new_class_with_a_small_sample_is_predicted_from_the_others() -> None:
    profiles = synthetic_profiles(6, 80, seed=4)
    newcomer = profiles["class5"]
    truth = {key: entry.latency_ms for key, entry in newcomer.entries.items()}
    rng = np.random.default_rng(5)
    sampled = sorted(rng.choice(sorted(truth), size=24, replace=False))  # 30 % of its layers
    newcomer.entries = {key: newcomer.entries[key] for key in sampled}
    from splitdnn.predict import CostPredictor

    predictor = CostPredictor(profiles)
    errors = []
    for key, latency in truth.items():
        cost = predictor.segment_cost("class5", key)
        assert cost["source"] == ("measured" if key in sampled else "predicted")
        errors.append(abs(math.log(cost["latency_ms"] / latency)))
    assert max(errors) < 0.15  # every unmeasured cell within ~15 %
    assert cost["energy_mj"] is None  # nothing measured energy: null, not invented


def test_baseline_fits_a_per_op_linear_latency_model() -> None:
    features = [SegmentFeatures({op: 1}, op, 1, flops, 4000, 4000, 0)
                for op in ("Conv", "Relu") for flops in range(10**6, 2 * 10**7, 10**6)]
    latency = [0.01 + (2e-7 if feature.dominant_op == "Conv" else 1e-8) * feature.flops
               for feature in features]
    regression = fit_class_regression(features, latency)
    assert set(regression.per_op) == {"Conv", "Relu"}
    assert np.allclose(regression.predict(features), latency, rtol=1e-6)


def test_predict_eval_reports_cf_and_baseline_on_the_dataset() -> None:
    code = runner.invoke(app, ["predict-eval", "--profiles", str(DATA), "--fraction", "0.3",
                               "--seed", "1", "--json"])
    assert code.exit_code == 0, code.output
    data = json.loads(code.stdout)
    assert {"cf", "baseline", "n_hidden"} <= set(data)
    for method in ("cf", "baseline"):
        assert set(data[method]) == {"rmse_ms", "mape"}
    store = ProfileStore(DATA)
    total = sum(len(profile.entries) for profile in store.profiles.values())
    assert 0.6 * total < data["n_hidden"] < 0.8 * total
    assert data["cf"]["mape"] < data["baseline"]["mape"]


def test_predict_covers_every_segment_of_a_profiled_and_an_unseen_model(tmp_path: Path) -> None:
    store = ProfileStore(DATA)
    hardware_class = store.classes[0]
    resolved = resolve_model("torchvision:resnet18")
    profiled = analyse_model(resolved.onnx_path, resolved.input_shape, "torchvision:resnet18")
    unseen = conv_model(tmp_path / "unseen.onnx", before=2, channels=24, side=20)
    for graph in (profiled, unseen):
        result = predict_model(store.profiles, hardware_class, graph)
        assert [segment["index"] for segment in result["segments"]] == list(
            range(len(graph.segments)))
        assert all(segment["latency_ms"] > 0 for segment in result["segments"])
        assert {segment["source"] for segment in result["segments"]} <= {"measured", "predicted"}
        assert all(segment["energy_mj"] is None for segment in result["segments"])
        assert result["total_latency_ms"] == pytest.approx(
            sum(segment["latency_ms"] for segment in result["segments"]))
        if graph is profiled:
            assert result["measured"] == len(result["segments"])
        else:
            assert result["measured"] == 0


def test_predict_command_json_and_errors(tmp_path: Path) -> None:
    store = ProfileStore(DATA)
    result = runner.invoke(app, ["predict", "--profiles", str(DATA), "--hardware-class",
                                 store.classes[-1], "torchvision:resnet18", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {"index", "latency_ms", "energy_mj", "source"} <= set(data["segments"][0])
    unknown = runner.invoke(app, ["predict", "--profiles", str(DATA), "--hardware-class",
                                  "nope", "torchvision:resnet18"])
    assert unknown.exit_code == 2 and "--hardware-class" in unknown.stderr
    empty = runner.invoke(app, ["predict-eval", "--profiles", str(tmp_path)])
    assert empty.exit_code == 2 and "--profiles" in empty.stderr
    bad = runner.invoke(app, ["predict-eval", "--profiles", str(DATA), "--fraction", "1.2"])
    assert bad.exit_code == 2 and "--fraction" in bad.stderr


def test_evaluate_rejects_profiles_without_features() -> None:
    profiles = synthetic_profiles(2, 6, seed=0)
    for profile in profiles.values():
        profile.entries["sig2"].features = None
    with pytest.raises(ValueError, match="features"):
        evaluate(profiles, 0.5)


@pytest.mark.parametrize("source", sorted(path.stem for path in DATA.glob("*.json")))
def test_a_new_class_from_a_real_sample_needs_no_other_profiling(
        tmp_path: Path, source: str) -> None:
    """Drop one class to a 30 % sample under a new name: CF fills in the other 70 %, and
    the sum over all signatures (what a planner adds up) lands within 20 % of the truth."""
    store = ProfileStore(DATA)
    rng = np.random.default_rng(0)
    full = store.profiles.pop(source)
    keys = sorted(full.entries)
    sample = set(rng.choice(keys, size=round(0.3 * len(keys)), replace=False).tolist())
    newcomer = Profile("newcomer", "node", full.runtime,
                       {key: full.entries[key] for key in sample}, full.created)
    for profile in store.profiles.values():
        profile.save(tmp_path / f"{profile.hardware_class}.json")
    newcomer.save(tmp_path / "newcomer.json")
    from splitdnn.predict import CostPredictor

    predictor = CostPredictor(ProfileStore(tmp_path).profiles)
    costs = {key: predictor.segment_cost("newcomer", key) for key in keys}
    assert {key for key, cost in costs.items() if cost["source"] == "measured"} == sample
    predicted = sum(cost["latency_ms"] for cost in costs.values())
    truth = sum(entry.latency_ms for entry in full.entries.values())
    assert abs(predicted / truth - 1) < 0.2


def test_energy_is_predicted_only_for_classes_with_a_meter() -> None:
    profiles = synthetic_profiles(4, 40, seed=6)
    for name in ("class0", "class1", "class2"):  # class3 has no meter: energy stays null
        for entry in profiles[name].entries.values():
            entry.energy_mj = 3.0 * entry.latency_ms
    truth = profiles["class2"].entries.pop("sig7")
    from splitdnn.predict import CostPredictor

    predictor = CostPredictor(profiles)
    hidden = predictor.segment_cost("class2", "sig7")
    assert hidden["energy_source"] == "predicted" and hidden["source"] == "predicted"
    assert hidden["energy_mj"] == pytest.approx(truth.energy_mj, rel=0.25)
    assert predictor.segment_cost("class3", "sig7")["energy_mj"] is None
    result = evaluate(profiles, 0.5, seed=0)
    assert result["energy"] is not None
    assert {"cf", "baseline", "n_hidden"} <= set(result["energy"])
    assert set(result["energy"]["cf"]) == {"rmse_mj", "mape"}
