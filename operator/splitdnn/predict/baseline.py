"""Neurosurgeon-style baseline: per hardware class, per op type, latency regressed on size.

Neurosurgeon (Kang et al., ASPLOS 2017; the predictor paper 004 compares against) fits, for
each kind of layer on each device, a regression of latency on the layer's configuration
(FLOPs and data sizes). Here the op type of a segment is its dominant op (the one with most
FLOPs) and the regression is least squares of latency in milliseconds on
``[1, FLOPs, bytes moved]`` (bytes moved = input + output + parameter bytes), with
non-negative coefficients so that a few points cannot make a large layer predict a negative
time. An op type with too few measurements on a class falls back to that class's regression
over all op types. Predictions are floored at the smallest latency the class measured.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from splitdnn.profiling.signature import SegmentFeatures

MIN_POINTS_PER_FEATURE = 2


def _design(features: list[SegmentFeatures]) -> np.ndarray:
    return np.array([[1.0, feature.flops / 1e6,
                      (feature.input_bytes + feature.output_bytes + feature.params_bytes) / 1e6]
                     for feature in features], dtype=np.float64).reshape(len(features), 3)


def _least_squares(design: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Non-negative least squares by trying every subset of columns (there are three)."""
    columns = design.shape[1]
    best, best_error = np.zeros(columns), float(np.sum(target**2))
    for size in range(1, columns + 1):
        for subset in itertools.combinations(range(columns), size):
            chosen = list(subset)
            solution, *_ = np.linalg.lstsq(design[:, chosen], target, rcond=None)
            if np.any(solution < 0):
                continue
            error = float(np.sum((design[:, chosen] @ solution - target) ** 2))
            if error < best_error:
                best = np.zeros(columns)
                best[chosen] = solution
                best_error = error
    return best


@dataclass
class ClassRegression:
    """One hardware class's per-op-type linear models and its fallback."""

    per_op: dict[str, np.ndarray]
    fallback: np.ndarray
    floor_ms: float

    def predict(self, features: list[SegmentFeatures]) -> np.ndarray:
        design = _design(features)
        result = np.empty(len(features))
        for index, feature in enumerate(features):
            coefficients = self.per_op.get(feature.dominant_op, self.fallback)
            result[index] = design[index] @ coefficients
        return np.maximum(result, self.floor_ms)


def fit_class_regression(features: list[SegmentFeatures], latency_ms: list[float]
                         ) -> ClassRegression:
    """Fit one class's models from its measured signatures."""
    if not features:
        raise ValueError("the baseline needs at least one measured signature per class")
    design = _design(features)
    target = np.asarray(latency_ms, dtype=np.float64)
    needed = MIN_POINTS_PER_FEATURE * design.shape[1]
    per_op = {}
    for op in sorted({feature.dominant_op for feature in features}):
        members = np.array([feature.dominant_op == op for feature in features])
        if members.sum() >= needed:
            per_op[op] = _least_squares(design[members], target[members])
    return ClassRegression(per_op, _least_squares(design, target), float(target.min()))
