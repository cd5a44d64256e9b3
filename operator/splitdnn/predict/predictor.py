"""Predict every segment's latency and energy on a hardware class; evaluate the predictors.

:class:`CostPredictor` fits collaborative filtering on a profile store (latency, and energy
where some class measured it). Adding a class is adding its (possibly small, sampled)
profile file to the store: the next fit uses it, and nothing else is profiled again.

:func:`evaluate` is ``predict-eval``: hide all but a fraction P of each class's entries,
predict the hidden ones with CF and with the Neurosurgeon-style baseline, and compare.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from splitdnn.graph.analysis import ModelGraph
from splitdnn.predict.baseline import fit_class_regression
from splitdnn.predict.cf import FactorModel, choose_and_fit
from splitdnn.predict.matrix import CostMatrix, build_matrix, feature_matrix
from splitdnn.profiling.signature import SegmentFeatures, model_signatures
from splitdnn.profiling.store import Profile, ProfileError

QUANTITIES = {"latency_ms": "latency", "energy_mj": "energy"}


@dataclass
class FittedQuantity:
    """CF fitted to one quantity: the matrix it saw and the factor model."""

    matrix: CostMatrix
    model: FactorModel

    def value(self, hardware_class: str, signature: str) -> tuple[float, str]:
        if signature not in self.matrix.signatures:
            raise ProfileError(f"signature {signature!r} is in no profile: pass its features "
                               f"to CostPredictor(extra=...) to predict it")
        row = self.matrix.classes.index(hardware_class)
        col = self.matrix.signatures.index(signature)
        measured = self.matrix.observed.get((row, col))
        if measured is not None:
            return measured, "measured"
        predicted = self.model.predict(np.array([row]), np.array([col]))[0]
        return float(math.exp(predicted)), "predicted"


class CostPredictor:
    """CF over a store's profiles, able to predict signatures no class has measured."""

    def __init__(self, profiles: dict[str, Profile],
                 extra: dict[str, SegmentFeatures] | None = None, seed: int = 0) -> None:
        if not profiles:
            raise ProfileError("--profiles: the store holds no profiles")
        self.profiles = profiles
        self.features = {key: entry.features for profile in profiles.values()
                         for key, entry in profile.entries.items() if entry.features}
        self.features.update(extra or {})
        self.fitted: dict[str, FittedQuantity] = {}
        for quantity in QUANTITIES:
            matrix = build_matrix(profiles, quantity, self.features)
            if matrix.observed:
                features = feature_matrix(matrix.signatures, self.features)
                model = choose_and_fit(matrix.observations(), features, seed)
                self.fitted[quantity] = FittedQuantity(matrix, model)

    def segment_cost(self, hardware_class: str, signature: str) -> dict[str, Any]:
        """Latency and energy of one signature on one class, each measured or predicted."""
        latency, source = self.fitted["latency_ms"].value(hardware_class, signature)
        energy: float | None = None
        energy_source: str | None = None
        fitted_energy = self.fitted.get("energy_mj")
        if fitted_energy is not None and _has_energy(self.profiles[hardware_class]):
            energy, energy_source = fitted_energy.value(hardware_class, signature)
        return {"latency_ms": latency, "source": source, "energy_mj": energy,
                "energy_source": energy_source}


def _has_energy(profile: Profile) -> bool:
    """Energy is predicted only for classes with a meter; others keep null, never invented."""
    return any(entry.energy_mj is not None for entry in profile.entries.values())


def predict_model(
    profiles: dict[str, Profile], hardware_class: str, graph: ModelGraph, seed: int = 0
) -> dict[str, Any]:
    """Every segment of the model on the class: ``predict``'s JSON object."""
    if hardware_class not in profiles:
        raise ProfileError(f"--hardware-class {hardware_class!r}: not in the store (it has "
                           f"{', '.join(sorted(profiles))}); profile it first, even a small "
                           f"sample")
    signatures = model_signatures(graph)
    predictor = CostPredictor(profiles, {sig.key: sig.features for sig in signatures}, seed)
    segments = []
    for segment, signature in zip(graph.segments, signatures, strict=True):
        cost = predictor.segment_cost(hardware_class, signature.key)
        segments.append({"index": segment.index, "first_layer": segment.first_layer,
                         "last_layer": segment.last_layer, "signature": signature.key, **cost})
    energies = [segment["energy_mj"] for segment in segments]
    return {
        "model": graph.source,
        "hardware_class": hardware_class,
        "classes": sorted(profiles),
        "rank": predictor.fitted["latency_ms"].model.rank,
        "total_latency_ms": sum(segment["latency_ms"] for segment in segments),
        "total_energy_mj": None if None in energies else sum(energies),
        "measured": sum(segment["source"] == "measured" for segment in segments),
        "segments": segments,
    }


def evaluate(profiles: dict[str, Profile], fraction: float, seed: int = 0) -> dict[str, Any]:
    """``predict-eval``: hide all but ``fraction`` of each class's entries and predict them."""
    if not 0 < fraction < 1:
        raise ProfileError(f"--fraction must be in (0, 1), got {fraction}")
    features = {key: entry.features for profile in profiles.values()
                for key, entry in profile.entries.items() if entry.features}
    missing = sorted({key for profile in profiles.values() for key in profile.entries}
                     - set(features))
    if missing:
        raise ProfileError(f"--profiles: {len(missing)} entries have no 'features' (first: "
                           f"{missing[0]!r}); the baseline needs them: re-profile with "
                           f"`splitdnn profile`")
    result = _evaluate_quantity(profiles, "latency_ms", fraction, seed, features)
    if result is None:
        raise ProfileError("--profiles: no latency entries to evaluate")
    energy = _evaluate_quantity(profiles, "energy_mj", fraction, seed, features)
    return {**result, "fraction": fraction, "seed": seed, "energy": energy}


def _evaluate_quantity(
    profiles: dict[str, Profile], quantity: str, fraction: float, seed: int,
    features: dict[str, SegmentFeatures],
) -> dict[str, Any] | None:
    matrix = build_matrix(profiles, quantity)
    if not matrix.observed:
        return None
    kept, hidden = _hide(matrix, fraction, seed)
    if not hidden:
        raise ProfileError(f"--fraction {fraction}: hides nothing; each class needs at least "
                           f"two entries")
    model = choose_and_fit(matrix.observations(kept), feature_matrix(matrix.signatures,
                                                                     features), seed)
    hidden_obs = matrix.observations(hidden)
    truth = np.exp(hidden_obs.values)
    cf = np.exp(model.predict(hidden_obs.rows, hidden_obs.cols))
    baseline = _baseline_predictions(matrix, kept, hidden, features)
    kept_cols = {col for _, col in kept}
    unit = "ms" if quantity == "latency_ms" else "mj"
    per_class = {}
    for row, name in enumerate(matrix.classes):
        mine = hidden_obs.rows == row
        if mine.any():
            per_class[name] = {"cf": _errors(truth[mine], cf[mine], unit),
                               "baseline": _errors(truth[mine], baseline[mine], unit),
                               "n_hidden": int(mine.sum())}
    return {
        "cf": _errors(truth, cf, unit),
        "baseline": _errors(truth, baseline, unit),
        "n_hidden": len(hidden),
        "n_kept": len(kept),
        "cold_signatures": len({col for _, col in hidden} - kept_cols),
        "rank": model.rank,
        "classes": matrix.classes,
        "per_class": per_class,
    }


def _hide(matrix: CostMatrix, fraction: float, seed: int
          ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Per class, keep a random ``fraction`` of its cells (at least one); hide the rest."""
    rng = np.random.default_rng(seed)
    kept: list[tuple[int, int]] = []
    hidden: list[tuple[int, int]] = []
    for row in range(len(matrix.classes)):
        cells = sorted(cell for cell in matrix.observed if cell[0] == row)
        order = rng.permutation(len(cells))
        keep = max(1, round(fraction * len(cells)))
        kept.extend(cells[index] for index in order[:keep])
        hidden.extend(cells[index] for index in order[keep:])
    return kept, hidden


def _baseline_predictions(
    matrix: CostMatrix, kept: list[tuple[int, int]], hidden: list[tuple[int, int]],
    features: dict[str, SegmentFeatures],
) -> np.ndarray:
    result = np.empty(len(hidden))
    for row in range(len(matrix.classes)):
        train = [cell for cell in kept if cell[0] == row]
        if not train:  # a class without this quantity (no energy meter): nothing hidden either
            continue
        regression = fit_class_regression([features[matrix.signatures[col]] for _, col in train],
                                          [matrix.observed[cell] for cell in train])
        targets = [index for index, cell in enumerate(hidden) if cell[0] == row]
        if targets:
            predicted = regression.predict([features[matrix.signatures[hidden[index][1]]]
                                            for index in targets])
            result[targets] = predicted
    return result


def _errors(truth: np.ndarray, predicted: np.ndarray, unit: str) -> dict[str, float]:
    """RMSE in the quantity's unit and mean absolute percentage error (in percent)."""
    rmse = float(np.sqrt(np.mean((predicted - truth) ** 2)))
    mape = float(100 * np.mean(np.abs(predicted - truth) / truth))
    return {f"rmse_{unit}": rmse, "mape": mape}


def store_profiles(profiles: Iterable[Profile]) -> dict[str, Profile]:
    """Profiles keyed by hardware class (one per class, as ``ProfileStore`` merges them)."""
    return {profile.hardware_class: profile for profile in profiles}
