"""Zeroth-order SGD with the two-point Gaussian random-direction estimator (MeZO-style).

The dense baseline (`zo`) and the building block of SharpZO's stage 2, where a Z-pruning mask
restricts which coordinates are perturbed. The update is plain `w ← w − η·ĝ`, with no buffer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from edge_tune.optim.base import (
    STREAM_RGE,
    Optimizer,
    OptimizerError,
    check_dim,
    check_losses,
    check_x0,
    freeze,
    rng,
    update_best,
)
from edge_tune.optim.estimators import gaussian_directions, rge_gradient, rge_points


@dataclass(frozen=True)
class ZOConfig:
    """Hyper-parameters of dense RGE ZO-SGD."""

    learning_rate: float = 1e-3  # η
    smoothing: float = 1e-3  # µ_rge
    directions: int = 1  # q; a step costs 2q queries
    seed: int = 0


class ZOState(NamedTuple):
    seed: int
    step: int
    queries: int
    x: np.ndarray
    skipped_steps: int  # steps where every ± pair had a NaN/inf loss
    best_loss: float
    best_x: np.ndarray
    nonfinite: int


def check_zo(learning_rate: float, smoothing: float, directions: int) -> None:
    """Refuse settings under which the estimator is undefined."""
    if not smoothing > 0:
        raise OptimizerError(f"smoothing must be > 0, got {smoothing}", hint="Use e.g. 1e-3")
    if not learning_rate > 0:
        raise OptimizerError(
            f"learning_rate must be > 0, got {learning_rate}", hint="Use e.g. 1e-3"
        )
    if int(directions) < 1:
        raise OptimizerError(
            f"directions must be >= 1, got {directions}", hint="Use 1, the paper's setting"
        )


def masked_directions(
    seed: int, step: int, count: int, mask: np.ndarray | None, dim: int, stream: int = STREAM_RGE
) -> np.ndarray:
    """The step's q directions from counters, then masked (the stream never depends on the mask)."""
    u = gaussian_directions(rng(seed, stream, step), count, dim)
    return u if mask is None else u * mask


def zo_step(
    x: np.ndarray,
    losses: np.ndarray,
    smoothing: float,
    learning_rate: float,
    directions: np.ndarray,
) -> tuple[np.ndarray, int, bool]:
    """One SGD step from the 2q losses: (new x, skipped pairs, whether the step was skipped)."""
    grad, skipped = rge_gradient(losses, smoothing, directions)
    if skipped == directions.shape[0]:
        return x, skipped, True
    return x - learning_rate * grad, skipped, False


class Anchor(NamedTuple):
    """The last accepted point of a line-searched stage 2: where it is, its loss, its ĝ, and how
    many trial points since then were rejected."""

    x: np.ndarray
    loss: float
    grad: np.ndarray
    rejections: int


#: Rejected trial points in a row before the search re-measures the anchor along a new direction.
MAX_REJECTIONS = 2


def centre_loss(losses: np.ndarray) -> float:
    """L(x) + O(µ²) for free: the mean of the finite (L+ + L−)/2 pairs (inf if none is finite)."""
    q = losses.shape[0] // 2
    pairs = (losses[:q] + losses[q:]) / 2
    pairs = pairs[np.isfinite(pairs)]
    return float(pairs.mean()) if pairs.size else math.inf


def line_search_step(
    x: np.ndarray,
    losses: np.ndarray,
    smoothing: float,
    directions: np.ndarray,
    anchor: Anchor | None,
    learning_rate: float,
    grow: float,
    shrink: float,
) -> tuple[np.ndarray, Anchor, float, bool]:
    """A backtracking ZO step that adapts η to the measured gradient scale.

    The probes at x ± µ·u measure L(x) as well as the slope. If x is worse than the anchor (the
    last accepted point), x is rejected: η shrinks and the next trial point is taken from the
    anchor along the anchor's own ĝ, with no new direction spent. Otherwise x becomes the anchor,
    η grows, and the next trial point is x − η·ĝ(x). The centre loss carries a curvature term
    µ²·uᵀHu/2 that changes with u, so near a minimum a good point can look worse than the anchor:
    after MAX_REJECTIONS the anchor itself is the next trial point and is accepted as measured.
    Returns (next trial point, anchor, η, accepted).
    """
    loss = centre_loss(losses)
    if anchor is not None and not loss <= anchor.loss:
        rate = learning_rate * shrink
        if anchor.rejections + 1 >= MAX_REJECTIONS:
            return anchor.x, Anchor(anchor.x, math.inf, anchor.grad, 0), rate, False
        return (
            anchor.x - rate * anchor.grad,
            anchor._replace(rejections=anchor.rejections + 1),
            rate,
            False,
        )
    grad, _ = rge_gradient(losses, smoothing, directions)
    rate = learning_rate if anchor is None else learning_rate * grow
    return x - rate * grad, Anchor(x, loss, grad, 0), rate, True


def zo_sgd(config: ZOConfig, dim: int) -> Optimizer:
    """Dense two-point RGE ZO-SGD (the MeZO-style baseline): a step costs 2q queries."""
    d = check_dim(dim)
    check_zo(config.learning_rate, config.smoothing, config.directions)
    q = int(config.directions)

    def init(x0: np.ndarray) -> ZOState:
        x = check_x0(x0, d)
        return freeze(
            ZOState(
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

    def ask(state: ZOState) -> np.ndarray:
        u = masked_directions(state.seed, state.step, q, None, d)
        return rge_points(state.x, config.smoothing, u)

    def tell(state: ZOState, losses: np.ndarray, *, val_accuracy: float | None = None):
        del val_accuracy
        losses = check_losses(losses, 2 * q)
        rows = ask(state)
        u = masked_directions(state.seed, state.step, q, None, d)
        x, _, skipped = zo_step(state.x, losses, config.smoothing, config.learning_rate, u)
        best_loss, best_x = update_best(state.best_loss, state.best_x, losses, rows)
        bad = int((~np.isfinite(losses)).sum())
        new = ZOState(
            seed=state.seed,
            step=state.step + 1,
            queries=state.queries + 2 * q,
            x=x,
            skipped_steps=state.skipped_steps + int(skipped),
            best_loss=best_loss,
            best_x=best_x,
            nonfinite=state.nonfinite + bad,
        )
        finite = losses[np.isfinite(losses)]
        info = {
            "stage": "zo",
            "phase": "step",
            "queries": 2 * q,
            "total_queries": new.queries,
            "best_loss": best_loss,
            "mean_loss": float(finite.mean()) if finite.size else math.nan,
            "nonfinite": bad,
            "skipped": bool(skipped),
        }
        return freeze(new), info

    return Optimizer(
        name="zo", config=config, init=init, ask=ask, tell=tell, params=lambda state: state.x
    )
