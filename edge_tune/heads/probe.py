"""A multinomial logistic-regression probe with an L2 penalty, fitted by accelerated gradient descent.

Minimises mean cross-entropy(X W + b) + ½·l2·‖W‖² over centred, L2-normalised features; the
objective is smooth (the softmax Hessian is at most ½·I per row), so Nesterov's method with the
fixed step 1/L, L = ½·λ_max(XᵀX/N) + l2, converges without a line search. Plain numpy, a few
hundred matrix products of [N, P] x [P, K]: milliseconds at 16 shots x 10 classes.
"""

from __future__ import annotations

import numpy as np

L2_STRENGTHS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
MAX_ITERATIONS = 400
TOLERANCE = 1e-6  # stop when the gradient's max-norm falls below this


def fit(X: np.ndarray, y: np.ndarray, num_classes: int, *, l2: float) -> dict:
    """Weights f64[P, K] and bias f64[K] of the probe (bias unpenalised)."""
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    centre = X.mean(axis=0)
    Xc = X - centre
    N, P = Xc.shape
    onehot = np.zeros((N, num_classes))
    onehot[np.arange(N), y] = 1.0
    lipschitz = 0.5 * (np.linalg.norm(Xc, ord=2) ** 2 / N + 1.0) + l2  # +1: the bias column
    step = 1.0 / lipschitz
    W = np.zeros((P, num_classes))
    b = np.zeros(num_classes)
    W_prev, b_prev = W, b
    for t in range(1, MAX_ITERATIONS + 1):
        momentum = (t - 1) / (t + 2)
        Wm, bm = W + momentum * (W - W_prev), b + momentum * (b - b_prev)
        logits = Xc @ Wm + bm
        logits -= logits.max(axis=1, keepdims=True)
        prob = np.exp(logits)
        prob /= prob.sum(axis=1, keepdims=True)
        residual = (prob - onehot) / N
        grad_W = Xc.T @ residual + l2 * Wm
        grad_b = residual.sum(axis=0)
        W_prev, b_prev = W, b
        W, b = Wm - step * grad_W, bm - step * grad_b
        if max(np.abs(grad_W).max(), np.abs(grad_b).max()) < TOLERANCE:
            break
    return {"weights": W, "bias": b - centre @ W}


def apply(arrays: dict, X: np.ndarray) -> np.ndarray:
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    return X @ np.asarray(arrays["weights"], np.float64) + np.asarray(arrays["bias"], np.float64)
