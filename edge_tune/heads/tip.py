"""Tip-Adapter's training-free cache (ECCV 2022): keys are the shots' features, values their labels.

logits_k(x) = Σ_i exp(-β (1 - cos(x, key_i))) · [label_i = k]; the blend with the text logits (Tip-
Adapter's α) is chosen by `edge_tune.select`, β here by cross-validation on the shots.
"""

from __future__ import annotations

import numpy as np

BETAS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


def fit(X: np.ndarray, y: np.ndarray, num_classes: int, *, beta: float) -> dict:
    keys = X / np.linalg.norm(X, axis=1, keepdims=True)
    values = np.zeros((len(X), num_classes))
    values[np.arange(len(X)), y] = 1.0
    return {"keys": keys, "values": values, "beta": np.array(float(beta))}


def apply(arrays: dict, X: np.ndarray) -> np.ndarray:
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    affinity = np.exp(-float(arrays["beta"]) * (1.0 - X @ np.asarray(arrays["keys"], np.float64).T))
    return affinity @ np.asarray(arrays["values"], np.float64)
