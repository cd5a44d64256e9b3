"""Collaborative filtering: biased matrix factorisation with a feature prior, fitted by ALS.

The (hardware class × signature) matrix of log-latencies (or log-energies) is modelled as::

    y[i, j] = mu + b[i] + c[j] + u[i] · v[j]

with class bias ``b``, signature bias ``c`` and rank-``k`` factors ``u``, ``v`` (paper 004,
§III-B: fill the sparse matrix by factorisation). Alternating least squares solves each
row's ``(b, u)`` and each column's ``(c, v)`` in closed form. Each column's ``(c, v)`` is
shrunk towards a *prior* predicted from the signature's features (log FLOPs, log bytes,
dominant op type) instead of towards zero, so a signature that no class has measured yet —
a new model's new layer — still gets a sensible column, and measured columns need fewer
observations. The rank and the shrinkage are chosen on a validation split of the observed
cells; the final model is refitted on all of them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

RANKS = (0, 1, 2, 3)
SHRINKAGE = (0.001, 0.01, 0.1, 1.0)
ITERATIONS = 40
BIAS_REGULARISATION = 1e-3
VALIDATION_SHARE = 0.2
BOUND_MARGIN = 1.0
PRIOR_RIDGE = 1.0  # on standardised features: a handful of columns cannot swing the prior


@dataclass
class Observations:
    """Observed cells: row (class) and column (signature) indices and their values."""

    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray
    shape: tuple[int, int]

    def subset(self, mask: np.ndarray) -> Observations:
        return Observations(self.rows[mask], self.cols[mask], self.values[mask], self.shape)


@dataclass
class FactorModel:
    """A fitted factorisation: predicts every cell of the matrix."""

    mu: float
    row_bias: np.ndarray
    col_bias: np.ndarray
    row_factors: np.ndarray
    col_factors: np.ndarray
    rank: int
    shrinkage: float
    bounds: tuple[float, float] = (-np.inf, np.inf)

    def predict(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        interaction = np.einsum("nk,nk->n", self.row_factors[rows], self.col_factors[cols])
        return np.clip(self.mu + self.row_bias[rows] + self.col_bias[cols] + interaction,
                       *self.bounds)

    def matrix(self) -> np.ndarray:
        return np.clip(self.mu + self.row_bias[:, None] + self.col_bias[None, :]
                       + self.row_factors @ self.col_factors.T, *self.bounds)


def fit_factorisation(
    data: Observations, features: np.ndarray, rank: int, shrinkage: float, seed: int = 0,
    iterations: int = ITERATIONS,
) -> FactorModel:
    """ALS for one rank and shrinkage; ``features`` has one row per column of the matrix.

    Penalties are weighted by each row's and column's number of observed cells (ALS-WR,
    Zhou et al. 2008), which keeps the few rows and the many columns on one scale.
    """
    n_rows, n_cols = data.shape
    rng = np.random.default_rng(seed)
    mu = float(data.values.mean())
    col_params = np.zeros((n_cols, rank + 1))  # [c_j, v_j]
    col_params[:, 1:] = rng.normal(0.0, 0.1, (n_cols, rank))
    row_params = np.zeros((n_rows, rank + 1))  # [b_i, u_i]
    row_penalty = _ridge_regularisation(rank, BIAS_REGULARISATION, shrinkage)
    col_penalty = _ridge_regularisation(rank, shrinkage, shrinkage)
    observed_cols = np.bincount(data.cols, minlength=n_cols) > 0
    for _ in range(iterations):
        row_params = _solve_groups(data.rows, n_rows, col_params[data.cols],
                                   data.values - mu, row_penalty, np.zeros_like(row_params))
        _center(row_params, col_params)
        prior = _feature_prior(features, col_params, observed_cols)
        col_params = _solve_groups(data.cols, n_cols, row_params[data.rows],
                                   data.values - mu, col_penalty, prior)
        _center(col_params, row_params)
    # A prediction may leave the observed range by at most BOUND_MARGIN (an e-fold): beyond
    # it a few unlucky factors, not the data, would decide the value.
    bounds = (float(data.values.min()) - BOUND_MARGIN, float(data.values.max()) + BOUND_MARGIN)
    return FactorModel(mu, row_params[:, 0], col_params[:, 0], row_params[:, 1:],
                       col_params[:, 1:], rank, shrinkage, bounds)


def _center(params: np.ndarray, other: np.ndarray) -> None:
    """Move the factors' mean into the other side's bias (same predictions, no drift).

    ``u_i · v_j = (u_i - ū) · v_j + ū · v_j``: the second term is a bias of ``j``. Without
    this, ALS trades the mean factor against the biases and converges very slowly.
    """
    mean = params[:, 1:].mean(axis=0)
    params[:, 1:] -= mean
    other[:, 0] += other[:, 1:] @ mean


def _ridge_regularisation(rank: int, bias: float, factors: float) -> np.ndarray:
    return np.diag([bias, *([factors] * rank)])


def _solve_groups(
    groups: np.ndarray, count: int, other: np.ndarray, residual: np.ndarray,
    penalty: np.ndarray, prior: np.ndarray,
) -> np.ndarray:
    """Ridge-solve every row's (or column's) bias and factors at once.

    A cell's value minus ``mu`` is ``own_bias + other_bias + own_factors · other_factors``;
    ``other`` holds the other side's ``[bias, factors]`` for each cell. Each group is
    shrunk towards its ``prior``, with strength ``penalty`` times its number of cells;
    a group without cells keeps its prior.
    """
    size = other.shape[1]
    design = np.column_stack([np.ones(len(groups)), other[:, 1:]])
    target = residual - other[:, 0]
    cells = np.bincount(groups, minlength=count).astype(np.float64)
    gram = np.zeros((count, size, size))
    np.add.at(gram, groups, design[:, :, None] * design[:, None, :])
    moment = np.zeros((count, size))
    np.add.at(moment, groups, design * target[:, None])
    weighted = cells[:, None, None] * penalty[None, :, :]
    solved = np.linalg.solve(gram + weighted + 1e-9 * np.eye(size)[None],
                             (moment + np.einsum("gij,gj->gi", weighted, prior))[..., None])
    return np.where(cells[:, None] > 0, solved[..., 0], prior)


def _feature_prior(
    features: np.ndarray, col_params: np.ndarray, observed: np.ndarray
) -> np.ndarray:
    """Ridge regression from features to the observed columns' (c, v); predicted for all."""
    if not observed.any() or features.shape[1] == 0:
        return np.zeros_like(col_params)
    x = features[observed]
    penalty = PRIOR_RIDGE * np.eye(x.shape[1])
    penalty[0, 0] = BIAS_REGULARISATION  # the intercept column is not shrunk
    weights = np.linalg.solve(x.T @ x + penalty, x.T @ col_params[observed])
    return features @ weights


def validation_split(data: Observations, seed: int) -> np.ndarray:
    """A mask of training cells; every row and column keeps at least one training cell."""
    rng = np.random.default_rng(seed)
    train = rng.random(data.values.size) >= VALIDATION_SHARE
    for index_array in (data.rows, data.cols):
        for key in np.unique(index_array):
            cells = np.flatnonzero(index_array == key)
            if not train[cells].any():
                train[rng.choice(cells)] = True
    return train


def choose_and_fit(
    data: Observations, features: np.ndarray, seed: int = 0,
    ranks: tuple[int, ...] = RANKS, shrinkages: tuple[float, ...] = SHRINKAGE,
) -> FactorModel:
    """Pick rank and shrinkage by validation RMSE, then refit on every observed cell."""
    max_rank = max(0, min(data.shape) - 1)
    candidates = [(rank, shrink) for rank, shrink in itertools.product(ranks, shrinkages)
                  if rank <= max_rank]
    train = validation_split(data, seed)
    best = candidates[0]
    if (~train).any() and len(candidates) > 1:
        held_out = data.subset(~train)
        errors = {}
        for rank, shrink in candidates:
            model = fit_factorisation(data.subset(train), features, rank, shrink, seed)
            residual = model.predict(held_out.rows, held_out.cols) - held_out.values
            errors[(rank, shrink)] = float(np.sqrt(np.mean(residual**2)))
        best = min(candidates, key=lambda candidate: errors[candidate])
    return fit_factorisation(data, features, best[0], best[1], seed)
