"""ZIP's SPSA with intrinsic-dimensional clipping (Park et al., ICLR 2025; reference §10).

Perturbation p with |p_j| ~ U[0.5, 1] and a random sign; ĝ_j = (L(w + c_k p) − L(w − c_k p)) /
(2 c_k p_j), averaged over `averages` draws; if ‖ĝ‖ ≥ √d it is rescaled to norm √d; then
w ← w − a_k ĝ with a_k = a/(k + o)^α and c_k = c/k^γ, k = 1, 2, ...
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from edge_tune.optim.base import (
    STREAM_SPSA,
    Optimizer,
    OptimizerError,
    check_dim,
    check_losses,
    check_x0,
    freeze,
    rng,
    update_best,
)


@dataclass(frozen=True)
class SPSAConfig:
    """ZIP's `vit_b16.yaml` values: [o, c, a, α, γ] = [1.0, 0.01, 0.01, 0.4, 0.1], SP_AVG = 5."""

    a: float = 0.01
    c: float = 0.01
    stability: float = 1.0  # o
    alpha: float = 0.4
    gamma: float = 0.1
    averages: int = 5  # a step costs 2·averages queries
    clip: bool = True  # intrinsic-dimensional clipping at √d
    seed: int = 0


class SPSAState(NamedTuple):
    seed: int
    step: int
    queries: int
    x: np.ndarray
    skipped_steps: int
    best_loss: float
    best_x: np.ndarray
    nonfinite: int


def segmented_uniform(seed: int, step: int, count: int, dim: int) -> np.ndarray:
    """ZIP's perturbations: magnitude U[0.5, 1], sign ±1, regenerated from counters."""
    g = rng(seed, STREAM_SPSA, step)
    magnitude = g.uniform(0.5, 1.0, size=(count, dim))
    sign = np.where(g.random((count, dim)) < 0.5, -1.0, 1.0)
    return magnitude * sign


def spsa_clip(config: SPSAConfig, dim: int) -> Optimizer:
    """SPSA-clip as an `Optimizer`."""
    d = check_dim(dim)
    if config.averages < 1 or not config.a > 0 or not config.c > 0:
        raise OptimizerError(
            "SPSA needs averages >= 1, a > 0 and c > 0",
            hint="Use ZIP's values: a = c = 0.01, averages = 5",
        )
    n = int(config.averages)

    def schedule(step: int) -> tuple[float, float]:
        k = step + 1
        return config.a / (k + config.stability) ** config.alpha, config.c / k**config.gamma

    def init(x0: np.ndarray) -> SPSAState:
        x = check_x0(x0, d)
        return freeze(
            SPSAState(
                seed=int(config.seed),
                step=0,
                queries=0,
                x=x,
                skipped_steps=0,
                best_loss=math.inf,
                best_x=x.copy(),
                nonfinite=0,
            )
        )

    def ask(state: SPSAState) -> np.ndarray:
        _, c_k = schedule(state.step)
        p = segmented_uniform(state.seed, state.step, n, d)
        return np.concatenate([state.x + c_k * p, state.x - c_k * p])

    def tell(state: SPSAState, losses: np.ndarray, *, val_accuracy: float | None = None):
        del val_accuracy
        losses = check_losses(losses, 2 * n)
        a_k, c_k = schedule(state.step)
        p = segmented_uniform(state.seed, state.step, n, d)
        plus, minus = losses[:n], losses[n:]
        ok = np.isfinite(plus) & np.isfinite(minus)
        skipped = not ok.any()
        x = state.x
        if not skipped:
            grad = (((plus[ok] - minus[ok]) / (2 * c_k))[:, None] / p[ok]).mean(axis=0)
            norm = float(np.linalg.norm(grad))
            if config.clip and norm >= math.sqrt(d):
                grad = grad * (math.sqrt(d) / norm)
            x = x - a_k * grad
        best_loss, best_x = update_best(state.best_loss, state.best_x, losses, ask(state))
        bad = int((~np.isfinite(losses)).sum())
        new = SPSAState(
            seed=state.seed,
            step=state.step + 1,
            queries=state.queries + 2 * n,
            x=x,
            skipped_steps=state.skipped_steps + int(skipped),
            best_loss=best_loss,
            best_x=best_x,
            nonfinite=state.nonfinite + bad,
        )
        finite = losses[np.isfinite(losses)]
        info = {
            "stage": "spsa-clip",
            "phase": "step",
            "queries": 2 * n,
            "total_queries": new.queries,
            "best_loss": best_loss,
            "mean_loss": float(finite.mean()) if finite.size else math.nan,
            "nonfinite": bad,
            "skipped": skipped,
        }
        return freeze(new), info

    return Optimizer(
        name="spsa-clip", config=config, init=init, ask=ask, tell=tell, params=lambda state: state.x
    )
