"""Gaussian discriminant analysis: class means and one shared, shrunk covariance (closed form).

The linear classifier it implies (as in "A Hard-to-Beat Baseline for Training-free CLIP-based
Adaptation", ICLR 2024): w_k = Σ⁻¹μ_k, b_k = -½ μ_kᵀΣ⁻¹μ_k (uniform class prior). At 16 shots the
sample covariance is singular in P dimensions, so it is shrunk towards a scaled identity,
Σ_s = (1 - s)·Σ + s·(tr Σ / P)·I, with s chosen by cross-validation on the shots.
"""

from __future__ import annotations

import numpy as np

SHRINKAGES = (0.02, 0.05, 0.1, 0.2, 0.4, 0.7, 0.9)


def fit(X: np.ndarray, y: np.ndarray, num_classes: int, *, shrinkage: float) -> dict:
    """Linear weights f64[P, K] and bias f64[K] of GDA with shrinkage `shrinkage` in (0, 1]."""
    means = np.stack([X[y == k].mean(axis=0) for k in range(num_classes)])
    centred = X - means[y]
    P = X.shape[1]
    cov = centred.T @ centred / max(len(X), 1)
    cov = (1.0 - shrinkage) * cov + shrinkage * (np.trace(cov) / P + 1e-12) * np.eye(P)
    weights = np.linalg.solve(cov, means.T)  # [P, K]
    bias = -0.5 * np.einsum("kp,pk->k", means, weights)
    return {"weights": weights, "bias": bias}


def apply(arrays: dict, X: np.ndarray) -> np.ndarray:
    return X @ np.asarray(arrays["weights"], np.float64) + np.asarray(arrays["bias"], np.float64)
