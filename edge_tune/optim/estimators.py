"""Gradient estimators from forward passes only, as (points, gradient) pairs.

`*_points` says where to evaluate (rows handed to the objective); `*_gradient` turns the losses of
exactly those rows into an estimate. Directions are regenerated from counters, never stored.
Row layout for every estimator: all "+" rows first, then all "-" rows.
"""

from __future__ import annotations

import numpy as np


def cge_points(x: np.ndarray, smoothing: float) -> np.ndarray:
    """Coordinate-wise central-difference probes x ± µ·e_i (SharpZO §3.1): 2d rows."""
    d = x.shape[0]
    step = smoothing * np.eye(d)
    return np.concatenate([x + step, x - step])


def cge_gradient(losses: np.ndarray, smoothing: float) -> tuple[np.ndarray, int]:
    """ĝ_i = (L(x+µe_i) − L(x−µe_i)) / 2µ; exact for quadratics, O(µ²) error otherwise.

    A pair with a non-finite loss contributes 0 for its coordinate; returns (ĝ, skipped pairs).
    """
    d = losses.shape[0] // 2
    plus, minus = losses[:d], losses[d:]
    ok = np.isfinite(plus) & np.isfinite(minus)
    grad = (np.where(ok, plus, 0.0) - np.where(ok, minus, 0.0)) / (2.0 * smoothing)
    return grad, int(d - ok.sum())


def gaussian_directions(generator: np.random.Generator, count: int, dim: int) -> np.ndarray:
    """u_k ~ N(0, I_d), drawn full length so the stream never depends on a mask."""
    return generator.standard_normal((count, dim))


def rge_points(x: np.ndarray, smoothing: float, directions: np.ndarray) -> np.ndarray:
    """Two-point random-direction probes x ± µ·v_k (v already masked): 2q rows."""
    return np.concatenate([x + smoothing * directions, x - smoothing * directions])


def rge_gradient(
    losses: np.ndarray, smoothing: float, directions: np.ndarray
) -> tuple[np.ndarray, int]:
    """ĝ = mean_k [(L+ − L−)/2µ]·v_k over the directions whose pair is finite.

    Unbiased for ∇f when E[v vᵀ] = I and f is quadratic (the central difference is then exact).
    Returns (ĝ, skipped directions); if every pair is non-finite ĝ is all zeros.
    """
    q = directions.shape[0]
    plus, minus = losses[:q], losses[q:]
    ok = np.isfinite(plus) & np.isfinite(minus)
    if not ok.any():
        return np.zeros(directions.shape[1]), q
    slopes = (plus[ok] - minus[ok]) / (2.0 * smoothing)
    return slopes @ directions[ok] / ok.sum(), int(q - ok.sum())


def es_gradient(
    losses: np.ndarray,
    whitened: np.ndarray,
    basis: np.ndarray | None,
    scales: np.ndarray,
    step_size: float,
) -> np.ndarray:
    """Gradient estimate from a CMA population's own evaluations (no extra query).

    For x_i = m + σ·B·D·z_i, Gaussian smoothing gives ∇ ≈ mean_i (L_i − L̄)·C⁻¹(x_i − m)/σ
    = mean_i (L_i − L̄)·B·D⁻¹·z_i / σ. Non-finite losses are dropped.
    """
    ok = np.isfinite(losses)
    if ok.sum() < 2:
        return np.zeros(whitened.shape[1])
    centred = losses[ok] - losses[ok].mean()
    direction = (centred @ whitened[ok]) / scales / (ok.sum() * step_size)
    return direction if basis is None else basis @ direction


def zscore(values: np.ndarray) -> np.ndarray:
    """(v − mean)/std with the population std; all-equal values give zeros."""
    std = values.std()
    return np.zeros_like(values) if std == 0 else (values - values.mean()) / std


def z_pruning_scores(x: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """SharpZO eq. 5 (reconstructed): score_i = w_i² · z(ĝ_i²), a Wanda-style Fisher proxy."""
    return x * x * zscore(grad * grad)


def z_pruning_mask(
    x: np.ndarray, grad: np.ndarray, keep_fraction: float, keep: str = "high"
) -> np.ndarray:
    """The coordinates that stay perturbed: the round(keep_fraction·d) highest (or lowest) scores.

    `keep="high"` keeps large w²·z(ĝ²) (large weight and large relative gradient); `keep="low"` is
    what the released code does (it sorts ascending and keeps the first k). Ties break by index.
    """
    d = x.shape[0]
    k = min(d, max(1, int(round(keep_fraction * d))))
    scores = z_pruning_scores(x, grad)
    order = np.argsort(-scores if keep == "high" else scores, kind="stable")
    mask = np.zeros(d, dtype=bool)
    mask[order[:k]] = True
    return mask
