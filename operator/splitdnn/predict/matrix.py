"""The hardware class × signature matrix built from a profile store, and signature features.

Rows are hardware classes, columns are signatures: every signature any class measured plus
any the caller wants predicted (a new model's segments). Cells hold log-latency (or
log-energy), the scale on which classes differ by roughly constant factors.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from splitdnn.predict.cf import Observations
from splitdnn.profiling.signature import SegmentFeatures
from splitdnn.profiling.store import Profile


@dataclass
class CostMatrix:
    """Measured cells of one quantity (latency or energy) on the class × signature grid."""

    classes: list[str]
    signatures: list[str]
    observed: dict[tuple[int, int], float]  # (row, col) -> measured value (ms or mJ)

    def observations(self, cells: Iterable[tuple[int, int]] | None = None) -> Observations:
        """The chosen (default: all) observed cells, as log values."""
        chosen = list(self.observed if cells is None else cells)
        rows = np.array([row for row, _ in chosen], dtype=np.int64)
        cols = np.array([col for _, col in chosen], dtype=np.int64)
        values = np.log(np.array([self.observed[cell] for cell in chosen], dtype=np.float64))
        return Observations(rows, cols, values, (len(self.classes), len(self.signatures)))


def build_matrix(
    profiles: dict[str, Profile], quantity: str, extra_signatures: Iterable[str] = ()
) -> CostMatrix:
    """Latency (``latency_ms``) or energy (``energy_mj``) cells of every class's profile."""
    classes = sorted(profiles)
    signatures = sorted({key for profile in profiles.values() for key in profile.entries}
                        | set(extra_signatures))
    column = {key: index for index, key in enumerate(signatures)}
    observed: dict[tuple[int, int], float] = {}
    for row, name in enumerate(classes):
        for key, entry in profiles[name].entries.items():
            value = entry.latency_ms if quantity == "latency_ms" else entry.energy_mj
            if value is not None and value > 0:
                observed[(row, column[key])] = float(value)
    return CostMatrix(classes, signatures, observed)


def feature_matrix(signatures: list[str], features: dict[str, SegmentFeatures]) -> np.ndarray:
    """Standardised numeric features plus one-hot dominant op (intercept in column 0).

    A signature without known features gets the mean feature row (zeros after scaling).
    """
    ops = sorted({feature.dominant_op for feature in features.values()})
    numeric = np.array([_numeric(features.get(key)) for key in signatures], dtype=np.float64)
    known = np.array([key in features for key in signatures])
    if known.any():
        mean = np.nanmean(numeric[known], axis=0)
        scale = np.nanstd(numeric[known], axis=0)
        numeric = np.where(np.isnan(numeric), mean, numeric)
        numeric = (numeric - mean) / np.where(scale > 0, scale, 1.0)
    else:
        numeric = np.zeros_like(numeric)
    onehot = np.array([[1.0 if key in features and features[key].dominant_op == op else 0.0
                        for op in ops] for key in signatures]).reshape(len(signatures), len(ops))
    return np.column_stack([np.ones(len(signatures)), numeric, onehot])


def _numeric(feature: SegmentFeatures | None) -> list[float]:
    if feature is None:
        return [math.nan] * 5
    return [math.log1p(feature.flops), math.log1p(feature.input_bytes),
            math.log1p(feature.output_bytes), math.log1p(feature.params_bytes),
            math.log(max(feature.layers, 1))]
