"""Gradient estimators on functions with known gradients, and the Z-pruning mask."""

from __future__ import annotations

import numpy as np

from edge_tune.optim.base import rng
from edge_tune.optim.estimators import (
    cge_gradient,
    cge_points,
    es_gradient,
    gaussian_directions,
    rge_gradient,
    rge_points,
    z_pruning_mask,
    z_pruning_scores,
    zscore,
)

D = 10
GEN = np.random.default_rng(1234)
H = GEN.standard_normal((D, D))
H = H @ H.T / D + np.eye(D)
B = GEN.standard_normal(D)
X = GEN.standard_normal(D)
CUBIC = GEN.uniform(0.5, 2.0, D)


def quadratic(rows):
    return 0.5 * np.einsum("ni,ij,nj->n", rows, H, rows) + rows @ B


def quadratic_grad(x):
    return H @ x + B


def test_cge_is_exact_on_a_quadratic():
    grad, skipped = cge_gradient(quadratic(cge_points(X, 1e-3)), 1e-3)
    assert skipped == 0
    np.testing.assert_allclose(grad, quadratic_grad(X), rtol=0, atol=1e-8)


def test_cge_error_is_order_mu_squared_on_a_cubic():
    # f = quadratic + Σ c_i x_i³: the central difference of x³ is 3x² + µ², so the error is c_i·µ².
    def f(rows):
        return quadratic(rows) + (CUBIC * rows**3).sum(-1)

    exact = quadratic_grad(X) + 3 * CUBIC * X**2
    for mu in (1e-1, 1e-2):
        grad, _ = cge_gradient(f(cge_points(X, mu)), mu)
        np.testing.assert_allclose((grad - exact) / mu**2, CUBIC, rtol=1e-4)


def test_cge_skips_pairs_with_nonfinite_losses():
    losses = quadratic(cge_points(X, 1e-3))
    losses[2] = np.nan  # "+" probe of coordinate 2
    grad, skipped = cge_gradient(losses, 1e-3)
    assert skipped == 1 and grad[2] == 0.0
    np.testing.assert_allclose(np.delete(grad, 2), np.delete(quadratic_grad(X), 2), atol=1e-8)


def test_rge_is_unbiased_over_many_seeds():
    # On a quadratic the two-point slope is exactly uᵀ∇f, so ĝ = u uᵀ∇f with covariance
    # |g|²I + ggᵀ: the mean of N draws has relative RMS error sqrt((d+1)/N) = 0.023 for N = 20,000.
    n_draws = 20_000
    g = quadratic_grad(X)
    total = np.zeros(D)
    for seed in range(n_draws // 100):
        u = gaussian_directions(rng(seed, 2, 0), 100, D)
        est = np.zeros(D)
        for k in range(100):  # one direction per estimate, as in the paper (q = 1)
            est += rge_gradient(quadratic(rge_points(X, 1e-3, u[k : k + 1])), 1e-3, u[k : k + 1])[0]
        total += est
    mean = total / n_draws
    assert np.linalg.norm(mean - g) / np.linalg.norm(g) < 3 * np.sqrt((D + 1) / n_draws)


def test_rge_with_q_directions_averages_them_and_skips_bad_pairs():
    u = gaussian_directions(rng(0, 2, 0), 4, D)
    losses = quadratic(rge_points(X, 1e-3, u))
    grad, skipped = rge_gradient(losses, 1e-3, u)
    g = quadratic_grad(X)
    np.testing.assert_allclose(grad, (u @ g) @ u / 4, atol=1e-8)
    losses[5] = np.inf  # "-" probe of direction 1
    grad, skipped = rge_gradient(losses, 1e-3, u)
    keep = [0, 2, 3]
    assert skipped == 1
    np.testing.assert_allclose(grad, (u[keep] @ g) @ u[keep] / 3, atol=1e-8)
    zero, all_skipped = rge_gradient(np.full(8, np.nan), 1e-3, u)
    assert all_skipped == 4 and not zero.any()


def test_masked_directions_only_touch_kept_coordinates():
    mask = np.zeros(D, dtype=bool)
    mask[[1, 4]] = True
    u = gaussian_directions(rng(0, 2, 0), 3, D) * mask
    grad, _ = rge_gradient(quadratic(rge_points(X, 1e-3, u)), 1e-3, u)
    assert np.all(grad[~mask] == 0) and np.all(grad[mask] != 0)


def test_es_gradient_points_along_the_gradient():
    # A large population on a linear function: the ES estimate's cosine with the gradient is ~1.
    g = quadratic_grad(X)
    z = np.random.default_rng(0).standard_normal((4000, D))
    scales = np.ones(D)
    losses = (X + 0.01 * z) @ g
    est = es_gradient(losses, z, None, scales, 0.01)
    assert est @ g / (np.linalg.norm(est) * np.linalg.norm(g)) > 0.95


def test_zscore_standardises_and_handles_constant_input():
    v = np.array([1.0, 2.0, 3.0, 4.0])
    z = zscore(v)
    assert abs(z.mean()) < 1e-12 and abs(z.std() - 1) < 1e-12
    assert not zscore(np.full(4, 7.0)).any()


def test_z_pruning_mask_keeps_the_documented_coordinates():
    # Crafted by hand: ĝ² = [1, 9, 81, 0, 4, 4], mean 16.5, std 28.99, so
    # z(ĝ²) = [-0.535, -0.259, 2.225, -0.569, -0.431, -0.431] and with w² = [1, 4, 0, 9, 1, 4]
    # score = w²·z = [-0.535, -1.035, 0.0, -5.123, -0.431, -1.725].
    w = np.array([1.0, 2.0, 0.0, 3.0, 1.0, 2.0])
    g = np.array([1.0, 3.0, 9.0, 0.0, 2.0, 2.0])
    np.testing.assert_allclose(
        z_pruning_scores(w, g), [-0.535, -1.035, 0.0, -5.123, -0.431, -1.725], atol=2e-3
    )
    # keep="high" (edge preset) keeps the 3 largest scores: coordinates 2, 4, 0.
    assert set(np.flatnonzero(z_pruning_mask(w, g, 0.5, "high"))) == {0, 2, 4}
    # keep="low" (the released code, and our paper preset) keeps the 3 smallest: 3, 5, 1.
    assert set(np.flatnonzero(z_pruning_mask(w, g, 0.5, "low"))) == {1, 3, 5}


def test_z_pruning_mask_keeps_at_least_one_and_all_at_fraction_one():
    w = np.arange(1.0, 9.0)
    g = np.arange(8.0, 0.0, -1.0)
    assert z_pruning_mask(w, g, 0.01).sum() == 1
    assert z_pruning_mask(w, g, 1.0).all()
