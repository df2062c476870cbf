"""Closed-form heads on cached image features: nearest class mean, GDA, a logistic probe, Tip-Adapter.

A head is fitted in milliseconds of numpy on the L2-normalised image features `fit` already caches,
with no text-graph query. Each module has one job and the same two pure functions:

    arrays = fit(X f32[N, P], y i64[N], num_classes, **hyper)   # a dict of numpy arrays
    logits = apply(arrays, X f32[M, P]) -> f64[M, K]

`HEADS` maps a head's name to its module and the hyper-parameter grid that cross-validation on the
shots searches (`edge_tune.select`). The arrays are what `classifier.npz` stores (no pickle).
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from edge_tune.heads import gda, ncm, probe, tip

#: name -> (module with fit/apply, grid of hyper-parameter dicts searched on the shots)
HEADS: dict[str, tuple[ModuleType, tuple[dict, ...]]] = {
    "ncm": (ncm, ({},)),
    "gda": (gda, tuple({"shrinkage": s} for s in gda.SHRINKAGES)),
    "probe": (probe, tuple({"l2": c} for c in probe.L2_STRENGTHS)),
    "tip": (tip, tuple({"beta": b} for b in tip.BETAS)),
}
HEAD_NAMES = tuple(HEADS)


def fit_head(name: str, X: np.ndarray, y: np.ndarray, num_classes: int, hyper: dict) -> dict:
    """Fit head `name` on (X, y); classes with no sample get a neutral column (see `apply_head`).

    Cross-validation folds at 1-4 shots per class can leave a class without a training sample; the
    head then scores it at each row's mean logit, so the text side alone decides for that class.
    """
    module, _ = HEADS[name]
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    present = np.unique(y)
    remap = np.full(num_classes, -1, dtype=np.int64)
    remap[present] = np.arange(len(present))
    arrays = module.fit(X, remap[y], len(present), **hyper)
    arrays["classes"] = present.astype(np.int64)
    arrays["num_classes"] = np.array(num_classes, dtype=np.int64)
    return arrays


def apply_head(name: str, arrays: dict, X: np.ndarray) -> np.ndarray:
    """f64[M, K] logits of a fitted head; classes it never saw get each row's mean logit."""
    module, _ = HEADS[name]
    inner = module.apply(arrays, np.asarray(X, dtype=np.float64))
    classes = np.asarray(arrays["classes"])
    K = int(arrays["num_classes"])
    if len(classes) == K:
        return inner
    out = np.repeat(inner.mean(axis=1, keepdims=True), K, axis=1)
    out[:, classes] = inner
    return out


__all__ = ["HEADS", "HEAD_NAMES", "apply_head", "fit_head"]
