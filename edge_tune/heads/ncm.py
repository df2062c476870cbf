"""Nearest class mean: cosine similarity to each class's mean feature (prototypes)."""

from __future__ import annotations

import numpy as np


def fit(X: np.ndarray, y: np.ndarray, num_classes: int) -> dict:
    """Prototypes f64[K, P]: the L2-normalised mean of each class's L2-normalised features."""
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    means = np.stack([X[y == k].mean(axis=0) for k in range(num_classes)])
    return {"prototypes": means / np.linalg.norm(means, axis=1, keepdims=True)}


def apply(arrays: dict, X: np.ndarray) -> np.ndarray:
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    return X @ np.asarray(arrays["prototypes"], dtype=np.float64).T
